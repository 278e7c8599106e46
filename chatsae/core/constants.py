"""File names and dtype names chatsae reads and writes, in one place."""

from __future__ import annotations

# ---- an SAE directory (SAELens layout) ---------------------------------------------------------------------------
SAE_CFG_FILE = "cfg.json"
"""SAELens config (with chatsae's own config under ``chatsae``)."""
SAE_WEIGHTS_FILE = "sae_weights.safetensors"
SAE_SPARSITY_FILE = "sparsity.safetensors"
"""log10 firing frequency of each latent over training (SAELens ``sparsity``)."""
CHECKSUMS_FILE = "checksums.json"
"""blake2b digests of the other files of an SAE directory or a checkpoint, verified on read."""
RUN_CONFIG_FILE = "config.json"
"""Beside a trained SAE: the settings of the run that trained it."""
TRAINING_SUMMARY_FILE = "training_summary.json"
"""Beside a trained SAE: the final training metrics and run facts."""

# ---- a training run directory ------------------------------------------------------------------------------------
SAE_DIR = "sae"
METRICS_LOG_FILE = "metrics.jsonl"
"""One JSON object per ``log_every`` training steps."""
EVAL_FILE = "eval.json"
"""Held-out evaluation of the run's SAE (``chatsae eval``'s default output beside the SAE)."""
CHECKPOINTS_DIR = "checkpoints"
CHECKPOINT_SAE_FILE = "sae.safetensors"
CHECKPOINT_OPTIMIZER_FILE = "optimizer.pt"
CHECKPOINT_STATE_FILE = "state.pt"
CHECKPOINT_SAE_CONFIG_FILE = "sae_config.json"
CHECKPOINT_RUN_CONFIG_FILE = "run_config.json"

# ---- an activation cache -----------------------------------------------------------------------------------------
CACHE_MANIFEST_FILE = "manifest.json"

# ---- dtypes ------------------------------------------------------------------------------------------------------
FLOAT_DTYPES = ("float32", "float16", "bfloat16")
"""Canonical names of the floating dtypes options accept (aliases such as ``bf16`` are normalised to these)."""
DTYPE_ALIASES = {"fp32": "float32", "float": "float32", "fp16": "float16", "half": "float16", "bf16": "bfloat16"}
