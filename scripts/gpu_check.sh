#!/usr/bin/env bash
# GPU check of chatsae (never run in CI): on a CUDA machine, with the venv built (`make venv`, CUDA torch),
#   1. the main job on the embedded model on one GPU (harvest + train + held-out eval), bf16 model weights, TF32;
#   2. the same SAE trained on CPU from the same activation cache, both SAEs evaluated by the same `chatsae eval`
#      on the held-out records: the CUDA SAE's held-out FVU must be within 0.03 (absolute) of the CPU SAE's and its
#      delta CE within 20% (relative) of it (the two runs differ only by GPU arithmetic: TF32/fused Adam vs CPU
#      float32, so they drift apart a little over ~600 steps, no more);
#   3. the main job with 2 ranks under torchrun, when 2 GPUs are visible;
#   4. a streaming run (--cache none: no activation cache, harvest overlapped with training);
#   5. a 3-hook run (--hooks resid_post.8,resid_post.15,resid_post.22: three SAEs from one harvest).
# It prints harvest and training tokens/s of each run; a failed run or check does not stop the later ones, and the
# script exits non-zero at the end, naming every failure.
# Usage: scripts/gpu_check.sh [OUT_DIR]   (default runs/gpu_check; TOKENS=... sets the token budget, default 599040;
#   PY=... and CHATSAE=... name the python and the chatsae command when not .venv/bin/python and .venv/bin/chatsae)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
CHATSAE=${CHATSAE:-.venv/bin/chatsae}
OUT=${1:-runs/gpu_check}
TOKENS=${TOKENS:-599040}

if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "gpu_check: CUDA is not available here (torch $("$PY" -c 'import torch; print(torch.__version__)' 2>/dev/null \
        || echo 'not installed')); nothing to check. Run this on a CUDA machine." >&2
    exit 0
fi
NGPU=$("$PY" -c 'import torch; print(torch.cuda.device_count())')
echo "gpu_check: $NGPU GPU(s): $("$PY" -c 'import torch; print(torch.cuda.get_device_name(0))'); output in $OUT"
mkdir -p "$OUT"
COMMON=(--total-tokens "$TOKENS" --overwrite --no-progress)

speeds() {  # speeds RUN_DIR [CACHE_DIR]: harvest tok/s (from the cache manifest) and training tok/s
    "$PY" - "$@" <<'EOF'
import json, sys
from pathlib import Path
run = Path(sys.argv[1])
cache = Path(sys.argv[2]) if len(sys.argv) > 2 else run / "activations"
harvest = "n/a (no cache)"
if (cache / "manifest.json").is_file():
    h = json.loads((cache / "manifest.json").read_text()).get("info", {}).get("harvest") or {}
    harvest = f"{h.get('tokens_per_s', float('nan')):,.0f} tok/s"
s = json.loads((run / "sae" / "training_summary.json").read_text())
print(f"  {run}: harvest {harvest}; training {s['tokens_per_s']:,.0f} tok/s over {s['tokens']:,} tokens; "
      f"train FVU {s.get('train_fvu', float('nan')):.4f}, L0 {s.get('train_l0', float('nan')):.1f}")
EOF
}

t0=$SECONDS
FAILED=()
echo "== 1. main job, one GPU"
if ! { "$CHATSAE" train --out-dir "$OUT/gpu" --device cuda --model-device cuda "${COMMON[@]}" && speeds "$OUT/gpu"; }; then
    echo "gpu_check: 1 failed; 2 needs its cache and is skipped" >&2
    FAILED+=("1. main job" "2. CUDA vs CPU (skipped)")
else

echo "== 2. the same SAE trained on CPU from the same cache; both evaluated alike"
{ "$CHATSAE" train --activations "$OUT/gpu/activations" --out-dir "$OUT/cpu" --device cpu "${COMMON[@]}"
for run in gpu cpu; do
    "$CHATSAE" eval "$OUT/$run/sae" --data "$OUT/gpu/heldout.jsonl" --device cuda --dtype float32 \
        --output "$OUT/$run/eval_same.json" --no-progress >/dev/null
done
"$PY" - "$OUT" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
g, c = (json.loads((out / r / "eval_same.json").read_text())["metrics"] for r in ("gpu", "cpu"))
fvu_g, fvu_c = g["all_no_pos0"]["fvu"], c["all_no_pos0"]["fvu"]  # the tokens the SAE trains on
ce_g, ce_c = g["all"].get("delta_ce"), c["all"].get("delta_ce")
print(f"  held-out FVU: CUDA {fvu_g:.4f} vs CPU {fvu_c:.4f} (tolerance 0.03 absolute)")
ok = abs(fvu_g - fvu_c) <= 0.03
if ce_g is not None and ce_c is not None:
    print(f"  held-out delta CE: CUDA {ce_g:.4f} vs CPU {ce_c:.4f} (tolerance 20% relative)")
    ok &= abs(ce_g - ce_c) <= 0.2 * abs(ce_c) + 1e-3
print("  CUDA vs CPU:", "OK" if ok else "MISMATCH")
sys.exit(0 if ok else 1)
EOF
} || FAILED+=("2. CUDA vs CPU")
fi

if [ "$NGPU" -ge 2 ]; then
    echo "== 3. main job, 2 ranks under torchrun"
    { .venv/bin/torchrun --standalone --nproc_per_node 2 "$CHATSAE" train --out-dir "$OUT/ddp2" --device cuda \
        --model-device cuda "${COMMON[@]}" && speeds "$OUT/ddp2"; } || FAILED+=("3. torchrun, 2 ranks")
else
    echo "== 3. skipped: 2 ranks need 2 GPUs ($NGPU visible)"
fi

echo "== 4. streaming (--cache none)"
{ "$CHATSAE" train --out-dir "$OUT/stream" --cache none --device cuda --model-device cuda "${COMMON[@]}" \
    && speeds "$OUT/stream" \
    && { test ! -e "$OUT/stream/activations" || { echo "gpu_check: --cache none wrote a cache" >&2; false; }; }
} || FAILED+=("4. streaming")

echo "== 5. three hooks from one harvest"
{ "$CHATSAE" train --out-dir "$OUT/hooks3" --hooks resid_post.8,resid_post.15,resid_post.22 --device cuda \
    --model-device cuda "${COMMON[@]}" \
    && for h in resid_post.8 resid_post.15 resid_post.22; do speeds "$OUT/hooks3/$h" "$OUT/hooks3/activations/$h"; done
} || FAILED+=("5. three hooks")

if [ ${#FAILED[@]} -gt 0 ]; then
    printf 'gpu_check: FAILED after %s s:' "$((SECONDS - t0))" >&2; printf ' [%s]' "${FAILED[@]}" >&2; echo >&2
    exit 1
fi
echo "gpu_check: all checks passed in $((SECONDS - t0)) s"
