"""Steering quality (chatsae.workflows.steering_quality): answer NLL under steering against a hand-made splice,
gsm8k answer parsing, matched random latents, and the paired summary on the tiny random Llama."""

from __future__ import annotations

import math

import pytest
import torch

from chatsae.models import edit
from chatsae.sae import SAEConfig, create_sae
from chatsae.steer.measures import answer_nll
from chatsae.workflows.steering_quality import (
    activation_scale,
    final_number,
    gsm8k_item,
    matched_random_latents,
    normalize_number,
    quality_summary,
    reference_nll,
    run_quality,
)


@pytest.fixture(scope="module")
def sae():
    torch.manual_seed(0)
    return create_sae(SAEConfig("topk", d_in=64, d_sae=32, k=4, metadata={"hook_name": "resid_post.1"}))


def test_gsm8k_parsing():
    item = gsm8k_item("q?", "She sold 48/2 = <<48/2=24>>24 clips.\n#### 1,072")
    assert item.final == "1072"
    assert final_number("so the total is 1072.") == "1072" and final_number("#### 72\nthen 5") == "5"
    assert final_number("#### 3.50") == "3.5" and final_number("no number") is None
    assert normalize_number("12.0") == "12" and normalize_number("abc") == "abc"
    assert gsm8k_item("q", "no marker").final is None


def test_matched_random_latents():
    scale = torch.tensor([10.0, 6.0, 19.0, 21.0, 4.0, 0.0, 12.0, 9.0])
    picked = matched_random_latents(scale, 0, 3, seed=1)
    assert len(picked) == 3 and 0 not in picked
    assert all(5.0 <= float(scale[k]) <= 20.0 for k in picked)  # within 2x of latent 0's scale
    assert picked == matched_random_latents(scale, 0, 3, seed=1)  # fixed seed
    assert matched_random_latents(scale, 0, 3, seed=2, exclude=[6]) == [1, 2, 7]  # the whole pool, sorted
    with pytest.raises(ValueError, match="only 3 latents"):
        matched_random_latents(scale, 0, 4, exclude=[6])
    with pytest.raises(ValueError, match="never fires"):
        matched_random_latents(scale, 5, 1)


def test_reference_nll_equals_a_hand_made_splice(tiny_llama, sae):
    model, tok = tiny_llama
    prompts = [[1, 5, 9, 14], [1, 7, 3]]
    answers = [[20, 21, 22], [30, 31]]
    clean = answer_nll(model, prompts, answers)
    assert reference_nll(model, sae, 3, 0.0, prompts, answers) == clean
    steered = reference_nll(model, sae, 3, 50.0, prompts, answers, batch_size=1)
    d = sae.W_dec[3].detach()
    for i, (p, a) in enumerate(zip(prompts, answers, strict=True)):  # one unpadded sequence at a time
        ids = torch.tensor([p + a])
        with torch.no_grad(), edit(model, "resid_post.1", lambda x: x + 50.0 * d):
            logp = torch.log_softmax(model(ids).logits[0].float(), -1)
        nll = -sum(float(logp[len(p) - 1 + j, t]) for j, t in enumerate(a))
        assert steered[i][0] == pytest.approx(nll, rel=1e-4) and steered[i][1] == len(a)
        assert not math.isclose(steered[i][0], clean[i][0], rel_tol=1e-3)


def test_run_quality_and_summary(tiny_llama, sae):
    model, tok = tiny_llama
    items = [gsm8k_item(f"What is {i} plus {i}?", f"{i} + {i} = {2 * i}\n#### {2 * i}") for i in range(4)]
    res = run_quality(
        model, tok, sae, items, {"top": [0], "random": [1, 2]}, alphas=(0.0, 80.0), max_new_tokens=3, batch_size=2
    )
    assert res["items"] == 4 and set(res["per_item"]) == {"top", "random"}
    clean = res["per_item"]["top"][0][0.0]
    assert res["per_item"]["random"][1][0.0] is clean  # the clean model runs once
    assert len(clean["nll"]) == 4 and all(c in (0.0, 1.0) for c in clean["correct"])
    s = quality_summary(res, n_boot=200)
    top0 = s["groups"]["top"]["0.0"]
    assert top0["nll_vs_alpha_0"]["value"] == 0.0 and top0["accuracy_vs_alpha_0"]["value"] == 0.0
    expect = sum(clean["nll"]) / sum(clean["n"])
    assert top0["nll"]["value"] == pytest.approx(expect)
    rand = s["groups"]["random"]["80.0"]["nll"]["value"]  # the mean over the group's latents
    per = [sum(r[80.0]["nll"]) / sum(r[80.0]["n"]) for r in res["per_item"]["random"].values()]
    assert rand == pytest.approx(sum(per) / 2)
    pairs = [p for p in s["pairs"] if p["metric"] == "nll"]
    assert len(pairs) == 1 and pairs[0]["alpha"] == 80.0 and "top" in pairs[0]["verdict"]


def test_activation_scale_matches_per_prompt_computation(tiny_llama, sae):
    from chatsae.models import capture

    model, _ = tiny_llama
    prompts = [[1, 5, 9, 14, 3], [1, 7, 3], [1, 2, 2, 8, 9, 10]]
    scale = activation_scale(model, sae, prompts, batch_size=2)
    with torch.no_grad():  # unpadded, one prompt at a time, position 0 dropped
        f = torch.cat([sae.encode(capture(model, "resid_post.1", torch.tensor([p]))[0, 1:]) for p in prompts]).double()
    fired = (f > 0).sum(0)
    expect = torch.where(fired > 0, f.sum(0) / fired.clamp_min(1), torch.zeros(()))
    assert torch.allclose(scale, expect, rtol=1e-4, atol=1e-6) and (scale > 0).sum() >= 4
