"""The paper-scale shapes and their arithmetic, for ``paper_scale.py``: Llama-3.1-8B-Instruct's and
Qwen2.5-7B-Instruct's published configs (and a tiny one for CPU smoke tests), the paper's hook (the middle layer),
the matmul weights of a decoder block, the FLOPs of a forward up to the hook, the model built up to it with random
weights, and the hours of one paper run projected from measured rates."""

from __future__ import annotations

from typing import Any

import torch

PAPER_TOKENS = 40_960_000
"""Training tokens of one paper run (the projection's budget)."""
LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}
CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    "llama8b": (  # meta-llama/Llama-3.1-8B-Instruct config.json
        "llama",
        dict(
            hidden_size=4096,
            intermediate_size=14336,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=8,
            vocab_size=128256,
            max_position_embeddings=131072,
            rope_theta=500000.0,
            rope_scaling=LLAMA3_ROPE,
            rms_norm_eps=1e-5,
            tie_word_embeddings=False,
            hidden_act="silu",
            attention_bias=False,
            mlp_bias=False,
        ),
    ),
    "qwen7b": (  # Qwen/Qwen2.5-7B-Instruct config.json (q/k/v projections carry a bias)
        "qwen2",
        dict(
            hidden_size=3584,
            intermediate_size=18944,
            num_hidden_layers=28,
            num_attention_heads=28,
            num_key_value_heads=4,
            vocab_size=152064,
            max_position_embeddings=32768,
            rope_theta=1000000.0,
            rms_norm_eps=1e-6,
            tie_word_embeddings=False,
            hidden_act="silu",
            use_sliding_window=False,
        ),
    ),
    "tiny": (  # a CPU smoke test of the same code
        "llama",
        dict(
            hidden_size=64,
            intermediate_size=192,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=1000,
            max_position_embeddings=8192,
            rope_theta=10000.0,
            rms_norm_eps=1e-5,
            tie_word_embeddings=False,
        ),
    ),
}
PEAK_BF16_TFLOPS = {"H100 PCIe": 756.0, "H100": 989.4, "H200": 989.4, "A100": 312.0, "L40S": 362.1}
"""Dense bf16 peak by device name (first match; H100 SXM and H200 share the same tensor cores)."""


def hook_layer(name: str) -> int:
    """The paper's hook: the middle layer, ``n_layers // 2`` (chatsae's default)."""
    return int(CONFIGS[name][1]["num_hidden_layers"]) // 2


def block_weights(cfg: dict[str, Any], family: str) -> int:
    """Matmul weights (and q/k/v biases for Qwen2) of one decoder block."""
    d, heads, kv = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = d // heads
    attn = d * heads * hd + 2 * d * kv * hd + heads * hd * d
    bias = heads * hd + 2 * kv * hd if family == "qwen2" else 0
    return attn + bias + 3 * d * cfg["intermediate_size"]


def forward_flops(name: str, lengths: list[int], prefix: int = 0) -> float:
    """FLOPs of one batch's forward up to the hook: rows of ``lengths`` real tokens whose first ``prefix`` tokens run
    once (chatsae.models.prefix)."""
    family, cfg = CONFIGS[name]
    layers = hook_layer(name) + 1
    weights = layers * block_weights(cfg, family)
    width = cfg["num_attention_heads"] * (cfg["hidden_size"] // cfg["num_attention_heads"])
    run = prefix + sum(t - prefix for t in lengths)
    pairs = prefix * prefix + sum((t - prefix) * t for t in lengths)  # (query, key) positions
    return 2.0 * weights * run + 4.0 * layers * width * pairs


def build_model(name: str, device: str) -> torch.nn.Module:
    """The architecture up to its hook, random weights made on ``device``: bfloat16 on CUDA, float32 elsewhere (as
    chatsae's ``--model-dtype auto``; CPUs without bfloat16 matmuls run it far slower)."""
    import transformers

    family, cfg = CONFIGS[name]
    config_cls = transformers.LlamaConfig if family == "llama" else transformers.Qwen2Config
    config = config_cls(**{**cfg, "num_hidden_layers": hook_layer(name) + 1})
    torch.manual_seed(0)
    with torch.device(device):
        dtype = torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval().requires_grad_(False)


def projection(vectors_s: float, sae_tok_s: float, saes: int) -> dict[str, float]:
    """Hours of one paper run (40.96M vectors) with ``saes`` SAEs from one harvest: disk cache (harvest, then train
    each) and streamed (ideal overlap: the slower of the two)."""
    h, t = PAPER_TOKENS / vectors_s, saes * PAPER_TOKENS / sae_tok_s
    return {
        "saes": saes,
        "harvest_h": h / 3600,
        "train_h": t / 3600,
        "disk_h": (h + t) / 3600,
        "stream_h": max(h, t) / 3600,
    }
