"""The judged steering study (chatsae.workflows.steering_judged) on the tiny random Llama: positions and exactness of
the intervention, alpha = r x the measured hook norm, blind pairwise judging in both A/B orders, null percentiles."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from chatsae.data import read_records
from chatsae.models import capture
from chatsae.steer import special_token_ids
from chatsae.steer.measures import pad_ids
from chatsae.steer.report import encode_prompt
from chatsae.workflows import steering_judged as J

pytestmark = pytest.mark.usefixtures("single_thread")  # tiny tensors

LAYER = 1
HOOK = f"resid_post.{LAYER}"
QUESTIONS = ["Hi there", "Name three red fruits.", "Why is the sky blue?"]


def _prompts(tok):
    return [encode_prompt(tok, [{"role": "user", "content": q}]) for q in QUESTIONS]


def test_direction_steering_edits_exactly_the_special_positions(tiny_llama):
    model, tok = tiny_llama
    prompts = _prompts(tok)
    ids, mask = pad_ids(prompts, tok.pad_token_id)  # left-padded, rows of different length
    deltas = torch.randn(len(prompts), 64)
    clean = capture(model, HOOK, ids, mask)
    steering = J.DirectionSteering(model, 64, HOOK, positions="special", tokenizer=tok)
    steering.row_delta = deltas
    with steering:
        edited = capture(model, HOOK, ids, mask)  # capture's hook runs after the steering hook
    n_edited = steering.n_edited
    special = torch.isin(ids, torch.tensor(sorted(special_token_ids(tok)))) & mask.bool()
    assert 0 < special.sum() < mask.sum()
    diff = edited - clean
    assert torch.equal(diff[~special], torch.zeros_like(diff[~special]))  # ordinary tokens and padding untouched
    for b in range(len(prompts)):
        torch.testing.assert_close(diff[b][special[b]], deltas[b].expand_as(diff[b][special[b]]))
    assert n_edited == int(special.sum())
    with steering:  # a later layer changes at ordinary positions too (attention), an earlier one never
        later = capture(model, "resid_post.2", ids, mask)
        earlier = capture(model, "resid_post.0", ids, mask)
    assert torch.equal(earlier, capture(model, "resid_post.0", ids, mask))
    assert not torch.allclose(later[~special], capture(model, "resid_post.2", ids, mask)[~special])


def test_generate_steered_matches_one_prompt_at_a_time(tiny_llama):
    model, tok = tiny_llama
    prompts = _prompts(tok)
    deltas = torch.stack([torch.zeros(64), 30 * J.random_unit_directions(1, 64, seed=3)[0]])
    batched = J.generate_steered(model, tok, prompts, deltas, HOOK, max_new_tokens=5, batch_size=4)
    single = J.generate_steered(model, tok, prompts[1:2], deltas[1:], HOOK, max_new_tokens=5, batch_size=1)
    assert batched[1][1] == single[0][0]
    assert batched[0] != batched[1]  # the steering changes the greedy answers


def _naive_median_norm(model, tok, questions):
    norms = []
    for q in questions:
        ids = torch.tensor([encode_prompt(tok, [{"role": "user", "content": q}])])
        with torch.no_grad():
            h = model(input_ids=ids, output_hidden_states=True).hidden_states[LAYER + 1][0]
        norms.append(h[1:].norm(dim=-1))  # position 0 (the attention sink) excluded
    return float(torch.cat(norms).median())


def test_run_study_scales_alpha_by_the_measured_norm(tiny_llama, monkeypatch):
    from chatsae.activations.pipeline import default_data_path
    from chatsae.sae import SAEConfig, create_sae

    model, tok = tiny_llama
    torch.manual_seed(1)
    sae = create_sae(SAEConfig(architecture="jumprelu", d_in=64, d_sae=96, metadata={"hook_name": HOOK}))
    with torch.no_grad():
        sae.W_enc.mul_(4.0)
        sae.threshold_param.fill_(0.05)
    seen = []
    real = J.generate_steered

    def spy(model, tok, prompt_ids, deltas, *a, **kw):
        seen.append(deltas.norm(dim=1))
        return real(model, tok, prompt_ids, deltas, *a, **kw)

    monkeypatch.setattr(J, "generate_steered", spy)
    records = read_records(str(default_data_path()), limit=8)
    result = J.run_study(
        model, tok, {"a": sae}, QUESTIONS, records, lambda reqs: [0.9] * len(reqs), ratios=(0.5, 2.0), n_null=3,
        selection_samples=8, max_new_tokens=3, batch_size=8, log=lambda s: None,
    )  # fmt: skip
    norm = _naive_median_norm(model, tok, QUESTIONS)
    assert result["median_token_norm"] == pytest.approx(norm, rel=1e-5)
    assert result["alphas"] == pytest.approx({"0.5": 0.5 * norm, "2": 2.0 * norm})
    for r, n in zip((0.5, 2.0), seen, strict=True):
        torch.testing.assert_close(n, torch.full((4,), r * norm), rtol=1e-5, atol=1e-4)  # 1 SAE + 3 null
    chosen = result["chosen_latents"]["a"]["latent"]
    d = sae.W_dec[chosen].detach()
    assert torch.allclose(seen[0][0], torch.tensor(0.5 * norm)) and d.norm() > 0
    summary = result["summary"]["0.5"]
    assert summary["verdict"] == "no verdict at this budget"  # one SAE is never enough
    # a judge with only a position bias scores every pair 0.5
    assert all(v == pytest.approx(0.5) for by in result["scores"].values() for s in by.values() for v in s)


def _requests_judge(pref):
    """A fake judge: P(A) = pref(question, a, b); records the requests."""
    calls = []

    def judge(reqs):
        calls.extend(reqs)
        return [pref(*r) for r in reqs]

    return judge, calls


def test_both_orders_cancel_a_position_bias():
    n = 200
    questions = [f"q{i}" for i in range(n)]
    steered = [f"s{i}" for i in range(n)]
    clean = [f"c{i}" for i in range(n)]
    judge, calls = _requests_judge(lambda q, a, b: 0.9)  # always says A
    scores = J.judge_pairs(judge, questions, steered, clean, seed=1)
    assert [s.score for s in scores] == pytest.approx([0.5] * n)
    assert all(not s.consistent for s in scores)
    assert len(calls) == 2 * n
    for i, s in enumerate(scores):  # both orders asked, the coin's order first
        first, second = calls[2 * i], calls[2 * i + 1]
        assert {first[1:], second[1:]} == {(steered[i], clean[i]), (clean[i], steered[i])}
        assert (first[1] == steered[i]) == s.steered_first
    share = np.mean([s.steered_first for s in scores])
    assert 0.35 < share < 0.65  # randomised, not fixed


def test_a_content_judge_is_order_independent_and_identical_answers_are_not_asked():
    judge, calls = _requests_judge(lambda q, a, b: 0.8 if a.startswith("good") else 0.2)
    scores = J.judge_pairs(judge, ["q", "q2", "q3"], ["good 1", "bad", "same"], ["bad", "good 2", "same"], seed=0)
    assert [s.score for s in scores] == pytest.approx([0.8, 0.2, 0.5])
    assert scores[0].consistent and scores[1].consistent and scores[2].consistent is None
    assert len(calls) == 4 and all(c[0] != "q3" for c in calls)


def test_logprob_judge_batched_equals_single(tiny_llama):
    model, tok = tiny_llama
    judge = J.logprob_pair_judge(model, tok, batch_size=3)
    reqs = [("Why?", "Because.", "I do not know, it is complicated"), ("2+2?", "4", "5"), ("Hi", "Hello!", "Bye")]
    batched = judge(reqs)
    text = tok.apply_chat_template(J.pair_messages(*reqs[1]), continue_final_message=True, tokenize=False)
    assert text.rstrip().endswith(J.PREFILL)
    ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        lp = torch.log_softmax(model(input_ids=ids).logits[0, -1], -1)
    a = torch.logsumexp(lp[[tok.encode(v, add_special_tokens=False)[-1] for v in ("A", " A")]], 0)
    b = torch.logsumexp(lp[[tok.encode(v, add_special_tokens=False)[-1] for v in ("B", " B")]], 0)
    assert batched[1] == pytest.approx(float(torch.sigmoid(a - b)), abs=1e-5)
    assert all(0 < p < 1 for p in batched)


def test_null_percentile_matches_a_naive_count():
    rng = random.Random(0)
    for _ in range(50):
        null = [rng.choice([0.3, 0.4, 0.5, 0.6]) + rng.random() * 0.01 * rng.randint(0, 1) for _ in range(21)]
        value = rng.choice([*null, 0.45, 0.2, 0.9])
        below = sum(1 for v in null if v < value)
        equal = sum(1 for v in null if v == value)
        assert J.null_percentile(value, null) == pytest.approx(100 * (below + equal / 2) / len(null))
    assert J.null_percentile(1.0, [0.1] * 20) == 100.0 and J.null_percentile(0.0, [0.1] * 20) == 0.0


def test_summary_intervals_and_verdict_gate():
    rng = np.random.default_rng(0)
    P = 30
    null = {f"null:{j}": (0.5 + 0.02 * rng.standard_normal(P)).tolist() for j in range(20)}
    good = {f"sae:s{k}": (0.8 + 0.02 * rng.standard_normal(P)).tolist() for k in range(3)}
    out = J.summarize({"0.5": {**good, **null}})["0.5"]
    null_rates = [float(np.mean(v)) for v in null.values()]
    for name, entry in out["saes"].items():
        rate = float(np.mean(good[f"sae:{name}"]))
        assert entry["win_rate"][0] == pytest.approx(rate) and entry["win_rate"][1] < rate < entry["win_rate"][2]
        assert entry["null_percentile"] == 100.0 == J.null_percentile(rate, null_rates)
    assert out["pooled_minus_null"][1] > 0 and out["verdict"] == "special-token latents beat the null"
    two = J.summarize({"0.5": {**dict(list(good.items())[:2]), **null}})["0.5"]
    assert two["verdict"] == "no verdict at this budget"  # fewer than 3 SAEs


def test_cli_steer_study_end_to_end(tiny_llama, tmp_path, capsys):
    import json

    from chatsae.cli import main
    from chatsae.sae import SAEConfig, create_sae, save_sae

    model, tok = tiny_llama
    model.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    torch.manual_seed(2)
    meta = {"hook_name": HOOK, "model_name": str(tmp_path / "model")}
    for name in ("a", "b"):
        sae = create_sae(SAEConfig(architecture="jumprelu", d_in=64, d_sae=96, metadata=meta))
        with torch.no_grad():
            sae.W_enc.mul_(4.0)
            sae.threshold_param.fill_(0.05)
        save_sae(sae, tmp_path / name / "sae")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Hi\nName a colour.\n")
    args = ["steer-study", str(tmp_path / "a" / "sae"), str(tmp_path / "b" / "sae"), "--prompts", str(prompts)]
    args += ["--ratios", "1.0", "--n-null", "2", "--selection-samples", "4", "--max-new-tokens", "2"]
    args += ["--judge-model", str(tmp_path / "model"), "--out", str(tmp_path / "out")]
    assert main(args) == 0, capsys.readouterr().err
    data = json.loads((tmp_path / "out" / "study.json").read_text())
    assert set(data["chosen_latents"]) == {"a", "b"} and data["judge"].endswith("(logprobs)")
    assert set(data["scores"]["1"]) == {"sae:a", "sae:b", "null:0", "null:1"}
    assert "no verdict at this budget" in (tmp_path / "out" / "study.md").read_text()  # 2 SAEs: never a verdict
    assert main([*args[:3], "--null", "nope", "--out", str(tmp_path / "o2")]) == 1
    assert "--null" in capsys.readouterr().err


def test_cli_steer_study_never_writes_over_a_user_file_or_into_its_input(tmp_path, capsys):
    """The ownership rule for `steer-study --out`: a user's non-empty directory is refused without --overwrite, a
    user's study.md is never replaced (with --overwrite either), and --out inside the SAE directory is refused; all
    before a model loads, every file left as it was."""
    from chatsae.cli import main
    from chatsae.sae import SAEConfig, create_sae, save_sae

    sae_dir = tmp_path / "a" / "sae"
    save_sae(create_sae(SAEConfig(architecture="jumprelu", d_in=8, d_sae=16, metadata={"hook_name": HOOK})), sae_dir)
    user = tmp_path / "mine"
    user.mkdir()
    (user / "study.md").write_text("my notes")
    base = ["steer-study", str(sae_dir), "--model", str(tmp_path / "no-model")]
    assert main([*base, "--out", str(user)]) == 1
    assert str(user) in capsys.readouterr().err
    assert main([*base, "--out", str(user), "--overwrite"]) == 1
    assert "study.md" in capsys.readouterr().err
    assert (user / "study.md").read_text() == "my notes" and sorted(p.name for p in user.iterdir()) == ["study.md"]
    assert main([*base, "--out", str(sae_dir / "study")]) == 1
    capsys.readouterr()
    assert not (sae_dir / "study").exists()
