#!/usr/bin/env bash
# Interpretability on the SAE of `make run` (run from the repository root after `make run`; ../shared/data present).
# Outputs under runs/embedded_mid_fast_jumprelu/sae/{features,dashboard,neuronpedia}.
set -euo pipefail
SAE=runs/embedded_mid_fast_jumprelu/sae
C=.venv/bin/chatsae
# top-activating contexts etc. on 300 alpaca samples (not the SAE's training data: it was trained on the default data)
time $C features $SAE --data ../shared/data/alpaca_4000.json --n-samples 300
# the FAST paper's 1-5 protocol on 8 random fired latents, judged offline by the embedded SmolLM2-135M-Instruct
# (answers cached in runs/judge_cache: a rerun costs nothing)
time $C autointerp $SAE --judge local --protocol fast --n-latents 8 --max-tokens 128 --cache-dir runs/judge_cache
# all protocols (fast, detection, fuzzing) on 2 latents
time $C autointerp $SAE --judge local --protocol all --n-latents 2 --max-tokens 128 --seed 7 --cache-dir runs/judge_cache
time $C dashboard $SAE
time $C export-neuronpedia $SAE
