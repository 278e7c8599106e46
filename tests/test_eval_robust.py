"""Measures FVU cannot hide behind (chatsae.eval.robust): dominant channels, FVU without them, standardised FVU,
median cosine, against hand computations; planted massive channels in synthetic activations give the warnings in
the summary; a tiny random Qwen2 with two residual channels scaled up shows them detected through evaluation."""

from __future__ import annotations

import math

import pytest
import torch

from chatsae.data.formats import Record
from chatsae.eval import EvalConfig, EvalResult, evaluate
from chatsae.eval import robust as R
from chatsae.eval.metrics import ASSISTANT, TEMPLATE
from chatsae.eval.report import summary_lines
from chatsae.eval.streaming import ReconstructionAccumulator, SubsetAccumulator
from chatsae.sae import SAEConfig, create_sae


def test_dominant_channels_by_hand():
    var = torch.tensor([1.0, 30.0, 2.0, 1.0, 40.0, 1.0, 2.0, 3.0, 10.0, 10.0])  # total 100
    assert R.dominant_channels(var) == [(4, pytest.approx(0.4)), (1, pytest.approx(0.3))]  # both > 20%; 70% > 50%
    # no channel above 20%, but the top two hold 36% + 18% = 54% > 50%, and 2 <= min(8, 16 // 8)
    var2 = torch.tensor([36.0, 18.0] + [46.0 / 14] * 14)
    assert [c for c, _ in R.dominant_channels(var2)] == [0, 1]
    assert R.dominant_channels(torch.ones(64)) == []  # isotropic: 32 channels for half the variance is not "few"
    assert R.dominant_channels(torch.zeros(4)) == []


def test_channel_fvus_and_median_by_hand():
    sse = torch.tensor([1.0, 4.0, 9.0])
    var = torch.tensor([100.0, 8.0, 10.0])
    assert R.channel_fvu(sse, var) == pytest.approx(14 / 118)
    assert R.channel_fvu(sse, var, [0]) == pytest.approx(13 / 18)
    assert R.standardized_fvu(sse, var) == pytest.approx((0.01 + 0.5 + 0.9) / 3)
    assert math.isnan(R.channel_fvu(sse, torch.zeros(3)))
    cos = torch.tensor([0.95, -0.2, 0.5, 0.31, 0.99, 0.7, 0.12])
    assert R.histogram_median(R.cosine_histogram(cos)) == pytest.approx(0.5, abs=1e-4)  # sorted: 4th of 7
    assert R.histogram_median(R.cosine_histogram(cos[1:])) == pytest.approx(0.31, abs=1e-4)  # lower median of 6
    assert R.histogram_median(R.cosine_histogram(torch.tensor([1.0, -1.0, 1.0]))) == pytest.approx(1.0, abs=1e-4)
    assert math.isnan(R.histogram_median(torch.zeros(10)))


def planted(n: int = 400, h: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Activations whose channel 3 is massive on every 20th token (like a sink), and a reconstruction exact on
    that channel but poor elsewhere: (x, x_hat, massive-token mask)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, h, generator=g)
    massive = torch.arange(n) % 20 == 0
    x[massive, 3] = 500.0 + torch.randn(int(massive.sum()), generator=g)
    x_hat = 0.2 * x + torch.randn(n, h, generator=g)
    x_hat[:, 3] = x[:, 3]
    return x, x_hat, massive


def test_planted_massive_channel_streaming_equals_hand_computation():
    x, x_hat, _ = planted()
    acc = ReconstructionAccumulator()
    for a in range(0, len(x), 64):  # several batches
        acc.update(x[a : a + 64], x_hat[a : a + 64], torch.arange(len(x))[a : a + 64] // 10)
    r = acc.result()
    xd, hd = x.double(), x_hat.double()
    var = (xd - xd.mean(0)).pow(2).sum(0)
    sse = (xd - hd).pow(2).sum(0)
    assert r["fvu"] == pytest.approx(float(sse.sum() / var.sum()), rel=1e-9) and r["fvu"] < 0.1
    share3 = float(var[3] / var.sum())
    assert share3 > 0.9 and r["dominant_channels"] == [[3, pytest.approx(share3, rel=1e-9)]]
    keep = torch.arange(16) != 3
    assert r["fvu_no_dominant"] == pytest.approx(float(sse[keep].sum() / var[keep].sum()), rel=1e-9)
    assert r["fvu_standardized"] == pytest.approx(float((sse / var).mean()), rel=1e-9)
    cos = torch.nn.functional.cosine_similarity(xd, hd, dim=-1)
    assert r["cosine_median"] == pytest.approx(float(cos.sort().values[len(cos) // 2 - 1]), abs=1e-4)
    assert r["cosine_median"] < 0.9 and r["fvu_no_dominant"] > 3 * r["fvu"]
    warnings = R.fidelity_warnings(r, "no pos 0")
    assert len(warnings) == 4  # median cosine, FVU without the dominant channel, standardised FVU, the channel
    assert "median cosine of reconstructions is" in warnings[0] and "3 (" in warnings[-1]


def test_summary_shows_robust_measures_warnings_and_the_measured_position0_ratio():
    x, x_hat, massive = planted()
    positions = torch.arange(len(x)) % 20  # every 20th token is position 0 of its sequence: the massive one
    seq_ids = torch.arange(len(x)) // 20
    token_class = torch.full_like(positions, ASSISTANT)
    token_class[positions == 0] = TEMPLATE
    acc = SubsetAccumulator(d_sae=8)
    acc.update(x, x_hat, torch.relu(torch.randn(len(x), 8)), token_class, positions, seq_ids)
    res = EvalResult({"d_in": 16}, {"dense_threshold": 0.1}, acc.result(), {}, acc.per_sequence())
    norms = x.double().pow(2).sum(-1)
    ratio = float(norms[massive].mean() / norms[~massive].mean())  # ~250,000 / 16
    rows = res.table_rows()
    note = rows["with position 0 (attention sink)"]
    assert f"{ratio:,.4g}x" in note and "20,000" not in note
    warnings = [v for k, v in rows.items() if k.startswith("WARNING")]
    assert any("channels dominating the activation variance (pos 0 incl.): 3 (" in w for w in warnings)
    assert any("median cosine" in w and "(pos 0 incl.)" in w for w in warnings)
    assert not any("(no pos 0)" in w for w in warnings)  # without the sink no channel dominates, FVU is honest
    assert rows["eval cosine median"] != "-" and rows["eval fvu without dominant channels"] != "-"
    lines = summary_lines(res)
    assert any(
        line.startswith("robust (without position 0): median cosine") and f"{ratio:,.4g}x" in line for line in lines
    )
    assert sum(line.startswith("WARNING: ") for line in lines) == len(warnings)


def chat(i: int) -> Record:
    return Record(
        i,
        [
            {"role": "user", "content": f"Question {i}: what is {i} plus {i}?"},
            {"role": "assistant", "content": f"It is {2 * i}." + " Because adding works like that." * (i % 3)},
        ],
        None,
    )


def test_tiny_qwen2_with_scaled_channels_shows_them_dominant(massive_qwen2_model, chat_tokenizer):
    model = massive_qwen2_model  # two residual channels carried from the embedding up: massive in every token
    sae = create_sae(
        SAEConfig("topk", d_in=64, d_sae=128, k=8, metadata={"hook_name": "resid_post.1", "method": "fast"})
    )
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        res = evaluate(
            sae, model, chat_tokenizer, [chat(i) for i in range(4)], EvalConfig(progress=False, lm_loss=False)
        )
    finally:
        torch.set_num_threads(n)
    dom = res.metrics["all_no_pos0"]["dominant_channels"]
    assert {c for c, _ in dom} == {5, 17} and sum(s for _, s in dom) > 0.9
    assert res.headline["fvu_no_dominant_no_pos0"] is not None and res.headline["cosine_median_no_pos0"] is not None
    assert any("channels dominating the activation variance (no pos 0): " in w for w in res.warnings())
