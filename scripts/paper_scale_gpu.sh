#!/usr/bin/env bash
# Paper scale on a lent GPU, in ONE device call of <= 8 minutes: benchmarks/paper_scale.py on Llama-3.1-8B-Instruct's
# and Qwen2.5-7B-Instruct's architectures (random bf16 weights made on the GPU, built up to the middle layer), FAST
# harvest of chatsae's bundled chat data, the SAE step at 8x and 16x (TF32 and bf16 autocast), and SAELens's JumpReLU
# training step on the same activations and widths when its wheels are there (Llama only, to stay in time).
# SAELens's activation store is not timed: it needs transformer_lens and a HookedTransformer of the model, which the
# machine (no package index, no hub) cannot get; the harvest it would be compared with is the rows printed here.
#
# Prepare here, on CPU (the lent machine has no embedded model, no package index; both paths are git-ignored):
#   .venv/bin/python benchmarks/paper_scale.py --save-sequences .gpu/paper_seqs.pt      # tokenised data, ~2 MB
#   scripts/gpu_session/bundle.sh                # optional: .whl/peer (SAELens wheels) for the side-by-side
# Device call (run tool): carry [".gpu/paper_seqs.pt", ".whl"], timeout_s 540, command:
#   bash scripts/paper_scale_gpu.sh
# Results: printed, and JSON files in $OUT (default /tmp/out, the run tool's $OUT). Seconds per model: LLAMA_S, QWEN_S.
# CPU dry run: DEVICE=cpu CONFIGS=tiny EXTRA="--tokens 4000 --batch-tokens 1024 --keep 1024 --sae-steps 3" bash ...
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
PY=${PY:-$(command -v python3)}
DEVICE=${DEVICE:-cuda}
CONFIGS=${CONFIGS:-llama8b qwen7b}
LLAMA_S=${LLAMA_S:-210}
QWEN_S=${QWEN_S:-150}
SEQS=${SEQS:-.gpu/paper_seqs.pt}
mkdir -p "$OUT"
T0=$SECONDS

SITE=/tmp/paper_site
PEERS=()
if ls .whl/*.whl >/dev/null 2>&1; then  # gguf, which chatsae.models imports
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" .whl/*.whl \
        || echo "paper_scale_gpu: gguf wheel: install failed"
fi
if ls .whl/peer/*.whl >/dev/null 2>&1; then
    if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/paper_peer \
        .whl/peer/*.whl; then
        PEERS=(--peers /tmp/paper_peer)
    else
        echo "paper_scale_gpu: peer wheels: install failed; SAELens not timed"
    fi
else
    echo "paper_scale_gpu: no .whl/peer: SAELens not timed"
fi
export PYTHONPATH=$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}
if [ "$DEVICE" = cuda ]; then
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 | tee "$OUT/env.log"
fi
"$PY" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" \
    2>&1 | tee -a "$OUT/env.log"
SEQ_ARGS=()
if [ -f "$SEQS" ]; then SEQ_ARGS=(--sequences "$SEQS"); else echo "paper_scale_gpu: no $SEQS: tokenising here"; fi

rc=0
for config in $CONFIGS; do
    case $config in
        llama8b) secs=$LLAMA_S; peers=("${PEERS[@]}") ;;
        qwen7b) secs=$QWEN_S; peers=() ;;
        *) secs=${TINY_S:-20}; peers=("${PEERS[@]}") ;;
    esac
    echo "== $config ($secs s) at $((SECONDS - T0)) s"
    # shellcheck disable=SC2086  # EXTRA is a list of flags
    timeout $((secs + 60)) "$PY" benchmarks/paper_scale.py --device "$DEVICE" --config "$config" \
        --max-seconds "$secs" --json "$OUT/paper_scale_$config.json" "${SEQ_ARGS[@]}" "${peers[@]}" ${EXTRA:-} \
        2>&1 | grep -v "Loading weights" | tee "$OUT/paper_scale_$config.log"
    status=${PIPESTATUS[0]}
    [ "$status" -eq 0 ] || { echo "paper_scale_gpu: $config exited $status"; rc=1; }
done
echo "paper_scale_gpu: done in $((SECONDS - T0)) s (rc $rc)"
exit $rc
