"""benchmarks/paper_scale.py: FLOP counting by hand, the projection arithmetic, and a CPU run of the tiny config."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import pytest

from chatsae.data.sequences import ASSISTANT, TEMPLATE, TokenSequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import paper_scale as ps  # noqa: E402


def test_block_weights_match_the_published_parameter_counts():
    # whole models: blocks + embedding + untied head (+ RMSNorm weights): 8,030,261,248 and 7,615,616,512 on the hub
    for name, total in (("llama8b", 8_030_261_248), ("qwen7b", 7_615_616_512)):
        family, cfg = ps.CONFIGS[name]
        d, n = cfg["hidden_size"], cfg["num_hidden_layers"]
        assert n * ps.block_weights(cfg, family) + 2 * cfg["vocab_size"] * d + (2 * n + 1) * d == total
    assert (ps.hook_layer("llama8b"), ps.hook_layer("qwen7b"), ps.hook_layer("tiny")) == (16, 14, 2)


def test_forward_flops_tiny_by_hand():
    # tiny: d 64, 4 heads of 16, 2 kv heads, MLP 192; the hook resid_post.2 runs 3 blocks
    block = 64 * 64 + 2 * 64 * 32 + 64 * 64 + 3 * 64 * 192
    assert ps.block_weights(ps.CONFIGS["tiny"][1], "llama") == block == 49_152
    assert ps.forward_flops("tiny", [10, 20]) == 2 * 3 * block * 30 + 4 * 3 * 64 * (10 * 10 + 20 * 20)
    # a 4-token prefix runs once: 4 + 6 + 16 positions; (query, key) pairs 4*4 + 6*10 + 16*20
    assert ps.forward_flops("tiny", [10, 20], prefix=4) == 2 * 3 * block * 26 + 4 * 3 * 64 * 396


def test_built_model_stops_at_the_hook_and_has_the_counted_weights():
    model = ps.build_model("tiny", "cpu")
    layers = model.model.layers
    assert len(layers) == ps.hook_layer("tiny") + 1
    linear = sum(p.numel() for n, p in layers.named_parameters() if n.endswith("proj.weight"))
    assert linear == len(layers) * ps.block_weights(ps.CONFIGS["tiny"][1], "llama")


def test_projection_arithmetic():
    p = ps.projection(vectors_s=1000.0, sae_tok_s=4000.0, saes=3)
    h, t = ps.PAPER_TOKENS / 1000 / 3600, 3 * ps.PAPER_TOKENS / 4000 / 3600
    assert p["harvest_h"] == pytest.approx(h) and p["train_h"] == pytest.approx(t)
    assert p["disk_h"] == pytest.approx(h + t) and p["stream_h"] == pytest.approx(max(h, t))


def _chat_like(n: int) -> list[TokenSequence]:
    """Chat-shaped sequences: a shared 12-token opening, then 20-300 content tokens."""
    rng = random.Random(0)
    out = []
    for i in range(n):
        m = rng.randint(20, 300)
        ids = list(range(1, 13)) + [rng.randrange(49_000) for _ in range(m)]
        out.append(TokenSequence(ids, [True] * 12 + [False] * m, [TEMPLATE] * 12 + [ASSISTANT] * m, [i] * (12 + m)))
    return out


def test_main_tiny_on_cpu(tmp_path, capsys):
    seqs = tmp_path / "seqs.pt"
    ps.save_sequences(_chat_like(60), str(seqs))
    out_json = tmp_path / "out.json"
    argv = ["--config", "tiny", "--device", "cpu", "--tokens", "4000", "--batch-tokens", "1024", "--widths", "1,2"]
    argv += ["--keep", "512", "--sae-steps", "2", "--saes", "4", "--max-seconds", "4", "--peak-tflops", "1"]
    out = ps.main([*argv, "--sequences", str(seqs), "--json", str(out_json)])
    printed = capsys.readouterr().out
    assert "harvest:" in printed and "projection 2x, 4 SAE(s)" in printed
    assert json.loads(out_json.read_text()) == json.loads(json.dumps(out))
    h = out["harvest"]
    assert h["tokens"] > 0 and h["tok_s"] > 0 and 0 < h["vectors_s"] <= h["tok_s"] and h["tflop_s"] > 0
    assert 0.0 <= h["padding_share"] <= 0.05  # --max-padding 0.05 bounds every batch
    assert h["mfu"] == pytest.approx(h["tflop_s"] / 1.0) and h["matmul_fraction"] > 0 and h["peak_gib"] is None
    assert out["hook"] == "resid_post.2" and out["d_model"] == 64 and all(v > 0 for v in out["matmul_tflops"].values())
    assert set(out["sae"]) == {f"{w}x {m}" for w in (1, 2) for m in ("fp32/tf32", "bf16 autocast")}
    for key, r in out["sae"].items():
        width = int(key.split("x")[0]) * 64
        assert r["tok_s"] > 0 and r["steps"] == 2 and r["batch"] == 512
        assert r["tflop_s"] == pytest.approx(12 * 64 * width * r["tok_s"] / 1e12)
    for w in ("1x", "2x"):
        one, four = out["projection"][w]
        assert (one["saes"], four["saes"]) == (1, 4) and one["harvest_h"] == four["harvest_h"]
        assert four["train_h"] == pytest.approx(4 * one["train_h"])
        assert one["harvest_h"] == pytest.approx(ps.PAPER_TOKENS / h["vectors_s"] / 3600)


@pytest.mark.parametrize("name", ["llama8b", "qwen7b"])
def test_paper_configs_build_up_to_the_hook(name):
    model = ps.build_model(name, "meta")  # shapes only, no memory
    family, cfg = ps.CONFIGS[name]
    layers = model.model.layers
    assert len(layers) == ps.hook_layer(name) + 1 and model.config.hidden_size == cfg["hidden_size"]
    counted = sum(p.numel() for n, p in layers.named_parameters() if "proj" in n)
    assert counted == len(layers) * ps.block_weights(cfg, family)
    rope = getattr(model.config, "rope_parameters", None) or {}
    assert rope.get("rope_theta", getattr(model.config, "rope_theta", None)) == cfg["rope_theta"]
