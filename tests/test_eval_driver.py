"""The evaluation driver on the tiny random Llama: splicing, LM-loss pieces, and an end-to-end evaluate()."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from chatsae.data.formats import Record
from chatsae.data.sequences import pad_batch
from chatsae.eval import SUBSETS, EvalConfig, EvalResult, evaluate, read_result, spliced_losses
from chatsae.eval.evaluate import build_sequences, evaluate_many
from chatsae.eval.metrics import TEMPLATE
from chatsae.models import KINDS, capture, edit
from chatsae.sae import SAEConfig, create_sae

RECON_KEYS = {
    "tokens",
    "sequences",
    "mse",
    "log2_mse",
    "mse_token",
    "fvu",
    "explained_variance",
    "cosine_similarity",
    "cosine_median",
    "fvu_no_dominant",
    "fvu_standardized",
    "dominant_channels",
    "dominant_share",
    "relative_norm",
    "mean_sq_norm",
}
SPARSITY_KEYS = {
    "l0",
    "l0_std",
    "l0_p10",
    "l0_p50",
    "l0_p90",
    "l0_max",
    "dead_latents",
    "dense_latents",
    "dead_fraction",
    "dense_fraction",
}
LM_KEYS = {"lm_tokens", "ce_clean", "ce_spliced", "delta_ce", "kl", "ce_zero", "ce_recovered"}
TOP_KEYS = {"schema_version", "headline", "sae", "setup", "metrics", "latents", "per_sequence"}
HEADLINE_KEYS = {
    "mse",
    "mse_st",
    "mse_st_strict",
    "log2_mse",
    "log2_mse_st",
    "log2_mse_st_strict",
    "log2_mse_no_pos0",
    "log2_mse_st_no_pos0",
    "log2_mse_st_prefix",
    "log2_mse_st_turns",
    "log2_mse_st_strict_no_pos0",
    "fvu",
    "fvu_no_pos0",
    "cosine_similarity",
    "cosine_median_no_pos0",
    "fvu_no_dominant_no_pos0",
    "fvu_standardized_no_pos0",
    "l0",
    "dead_fraction",
    "dense_fraction",
    "delta_ce",
    "kl",
    "ce_recovered",
}
SETUP_KEYS = {
    "model",
    "hook",
    "method",
    "data",
    "holdout",
    "holdout_seed",
    "max_samples",
    "max_tokens",
    "max_length",
    "context_size",
    "sequences",
    "tokens",
    "lm_loss",
    "splice_first_position",
    "dense_threshold",
    "device",
    "model_dtype",
    "seconds",
    "evaluated_together",
}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny matmuls: one intra-op thread is several times faster than contended OpenMP threads on a shared CPU."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def chat(i: int) -> Record:
    return Record(
        i,
        [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": f"Question {i}: what is {i} plus {i}?" + " Please explain." * (i % 3)},
            {"role": "assistant", "content": f"It is {2 * i}." + " Because adding works like that." * (i % 4)},
        ],
        None,
    )


@pytest.fixture(scope="module")
def batch(tiny_llama):
    """Two chat sequences of different lengths, right-padded: (input_ids, attention_mask, sequences)."""
    _, tok = tiny_llama
    seqs = build_sequences([chat(1), chat(7)], tok, EvalConfig(method="fast", max_length=8192))
    pb = pad_batch(seqs, tok.pad_token_id)
    assert pb.attention_mask.sum(1).tolist()[0] != pb.attention_mask.sum(1).tolist()[1]  # padding present
    return pb.input_ids, pb.attention_mask, seqs


@pytest.mark.parametrize("kind", KINDS)
def test_identity_splice_is_lossless_and_zero_splice_is_zero_ablation(tiny_llama, batch, kind):
    model, _ = tiny_llama
    ids, am, _ = batch
    hook = f"{kind}.1"
    same = spliced_losses(model, hook, ids, am, lambda a: a.clone())
    m = same.mask
    assert m.sum() == am.sum() - 2  # every real token but the last of each sequence has a label
    assert torch.equal(same.ce_spliced, same.ce_clean)
    assert same.kl[m].abs().max() < 1e-6
    zero = spliced_losses(model, hook, ids, am, torch.zeros_like)
    assert torch.allclose(zero.ce_spliced, zero.ce_zero, atol=1e-6)
    assert (zero.ce_zero[m] - zero.ce_clean[m]).abs().max() > 1e-3  # the hook really is edited
    assert zero.kl[m].mean() > 1e-4
    # position 0 kept clean: its logits only depend on itself, so its loss stays clean; later ones change
    keep = spliced_losses(model, hook, ids, am, torch.zeros_like, splice_first_position=False)
    assert torch.allclose(keep.ce_spliced[:, 0], keep.ce_clean[:, 0], atol=1e-5)
    assert torch.allclose(keep.ce_spliced, keep.ce_zero, atol=1e-6)  # zero-ablation keeps position 0 too
    assert (keep.ce_spliced[:, 1:][m[:, 1:]] - keep.ce_clean[:, 1:][m[:, 1:]]).abs().max() > 1e-3


def test_losses_exclude_padding(tiny_llama, batch):
    """The padded row's losses equal those of the same sequence run alone."""
    model, _ = tiny_llama
    ids, am, seqs = batch
    short = int(am.sum(1).argmin())
    n = int(am[short].sum())
    both = spliced_losses(model, "resid_post.2", ids, am, lambda a: 0.5 * a)
    alone = spliced_losses(
        model, "resid_post.2", ids[short : short + 1, :n], am[short : short + 1, :n], lambda a: 0.5 * a
    )
    for field in ("ce_clean", "ce_spliced", "kl", "ce_zero"):
        assert torch.allclose(getattr(both, field)[short, :n], getattr(alone, field)[0], atol=1e-4), field
    assert not both.mask[short, n - 1 :].any()


def naive_ce(model, ids):
    logits = model(input_ids=ids[None]).logits[0].double()
    return [float(torch.logsumexp(logits[t], -1) - logits[t, ids[t + 1]]) for t in range(len(ids) - 1)]


@pytest.fixture(scope="module")
def sae():
    torch.manual_seed(0)
    return create_sae(
        SAEConfig("topk", d_in=64, d_sae=256, k=8, metadata={"hook_name": "resid_post.1", "method": "fast"})
    )


def test_evaluate_end_to_end(tiny_llama, sae, tmp_path):
    model, tok = tiny_llama
    records = [chat(i) for i in range(6)]
    out = tmp_path / "eval.json"
    cfg = EvalConfig(progress=False, batch_tokens=300, output=str(out))  # several batches
    res = evaluate(sae, model, tok, records, cfg, sae_path="somewhere")
    d = json.loads(out.read_text())
    assert set(d) == TOP_KEYS and set(d["headline"]) == HEADLINE_KEYS and set(d["setup"]) == SETUP_KEYS
    assert set(d["metrics"]) == set(SUBSETS)
    for subset, values in d["metrics"].items():
        assert set(values) == RECON_KEYS | SPARSITY_KEYS | LM_KEYS, subset
    assert set(d["latents"]) == {"d_sae", "dead", "dense", "dead_fraction", "dense_fraction", "firing_histogram"}
    assert sum(d["latents"]["firing_histogram"]["counts"]) == 256 - d["latents"]["dead"]
    assert d["setup"]["sequences"] == 6 and d["setup"]["hook"] == "resid_post.1" and d["sae"]["path"] == "somewhere"
    assert d["metrics"]["text"]["tokens"] == 0 and d["metrics"]["text"]["mse"] is None  # no plain text in chat data
    for subset in ("all", "all_no_pos0", "special", "system", "user", "assistant"):
        assert d["metrics"][subset]["tokens"] > 0 and d["metrics"][subset]["ce_clean"] > 0, subset
    assert d["metrics"]["all"]["l0"] == 8.0  # TopK k=8 (random SAE: every kept pre-activation > 0)
    assert read_result(out).metrics == EvalResult.from_dict(d).metrics

    # independent reference: each sequence alone (no padding), Eq. 7 and CE by hand
    seqs = build_sequences(records, tok, EvalConfig(method="fast", max_length=8192))
    per_seq_err, per_seq_st, ce, ce_spliced = [], [], [], []
    first = d["setup"]["splice_first_position"]

    def splice(act: torch.Tensor) -> torch.Tensor:  # the SAE at every position (or every one but the first)
        out = sae(act)
        if not first:
            out[:, 0] = act[:, 0]
        return out

    with torch.no_grad():
        for s in seqs:
            ids = torch.tensor(s.input_ids)
            x = capture(model, "resid_post.1", ids[None])[0]
            err = (x - sae(x)).double().pow(2).sum(-1)
            per_seq_err.append(err.mean().item())
            st = torch.tensor([c == TEMPLATE for c in s.token_class])
            per_seq_st.append(err[st].mean().item())
            ce += naive_ce(model, ids)
            with edit(model, "resid_post.1", splice):
                ce_spliced += naive_ce(model, ids)
    assert res.metrics["all"]["mse"] == pytest.approx(sum(per_seq_err) / len(seqs) / 64, rel=1e-4)
    assert res.metrics["special"]["mse"] == pytest.approx(sum(per_seq_st) / len(seqs) / 64, rel=1e-4)
    assert res.metrics["all"]["tokens"] == sum(len(s.input_ids) for s in seqs)
    assert res.metrics["all"]["lm_tokens"] == len(ce)
    assert res.metrics["all"]["ce_clean"] == pytest.approx(sum(ce) / len(ce), rel=1e-4)
    assert res.metrics["all"]["ce_spliced"] == pytest.approx(sum(ce_spliced) / len(ce_spliced), rel=1e-4)
    assert abs(sum(ce_spliced) - sum(ce)) > 1e-3 * len(ce)  # the splice changes the loss: the check has teeth
    assert res.headline["log2_mse"] == pytest.approx(math.log2(res.metrics["all"]["mse"]))


def test_evaluate_options(tiny_llama, sae):
    model, tok = tiny_llama
    records = [chat(i) for i in range(8)]
    base = dict(progress=False, lm_loss=False)
    fast = evaluate(sae, model, tok, records, EvalConfig(max_samples=3, **base))
    assert fast.setup["sequences"] == 3 and fast.metrics["all"]["ce_clean"] is None
    assert fast.headline["delta_ce"] is None and fast.headline["log2_mse"] is not None
    budget = evaluate(sae, model, tok, records, EvalConfig(max_tokens=150, **base))
    assert budget.setup["tokens"] == 150
    held = evaluate(sae, model, tok, records, EvalConfig(holdout=2, holdout_seed=3, **base))
    assert held.setup["sequences"] == 2 and held.setup["holdout"] == 2
    blocks = evaluate(sae, model, tok, records, EvalConfig(method="bt-f", context_size=64, **base))
    assert blocks.setup["method"] == "bt-f" and blocks.setup["sequences"] == math.ceil(blocks.setup["tokens"] / 64)
    # in blocks, only every 64th token sits at position 0
    assert blocks.metrics["all"]["tokens"] - blocks.metrics["all_no_pos0"]["tokens"] == blocks.setup["sequences"]
    with pytest.raises(ValueError, match="hook"):
        no_hook = create_sae(SAEConfig("topk", d_in=64, d_sae=32, k=4))
        evaluate(no_hook, model, tok, records, EvalConfig(**base))
    with pytest.raises(ValueError, match="d_in=32"):
        narrow = create_sae(SAEConfig("topk", d_in=32, d_sae=32, k=4, metadata={"hook_name": "resid_post.1"}))
        evaluate(narrow, model, tok, records, EvalConfig(**base))


def test_splice_first_position_follows_metadata(tiny_llama):
    model, tok = tiny_llama
    torch.manual_seed(1)
    trained_without = create_sae(
        SAEConfig(
            "jumprelu",
            d_in=64,
            d_sae=64,
            metadata={"hook_name": "resid_post.1", "method": "fast", "exclude_first_position": True},
        )
    )
    res = evaluate(trained_without, model, tok, [chat(2), chat(3)], EvalConfig(progress=False))
    assert res.setup["splice_first_position"] is False
    forced = evaluate(
        trained_without, model, tok, [chat(2), chat(3)], EvalConfig(progress=False, splice_first_position=True)
    )
    assert forced.setup["splice_first_position"] is True
    # same reconstruction metrics (position 0 is always measured), different spliced loss
    assert forced.metrics["all"]["mse"] == pytest.approx(res.metrics["all"]["mse"], rel=1e-6)
    assert forced.metrics["all"]["ce_spliced"] != pytest.approx(res.metrics["all"]["ce_spliced"], rel=1e-6)


def test_zero_ablation_pass_is_shared_between_saes(tiny_llama, sae):
    """With a shared cache, a second SAE on the same sequences skips the zero-ablated forward and gets the same
    numbers as without the cache; other sequences or another hook do not hit it."""
    model, tok = tiny_llama
    records = [chat(i) for i in range(6)]
    cfg = EvalConfig(progress=False, batch_tokens=300)
    torch.manual_seed(1)
    other = create_sae(
        SAEConfig("jumprelu", d_in=64, d_sae=128, metadata={"hook_name": "resid_post.1", "method": "fast"})
    )
    forwards = []
    handle = model.register_forward_pre_hook(lambda *_: forwards.append(1))
    try:
        plain = evaluate(other, model, tok, records, cfg)
        n_plain = len(forwards)
        cache: dict = {}
        evaluate(sae, model, tok, records, cfg, zero_ablation_cache=cache)
        n_batches = len(cache)
        assert n_batches >= 2 and len(forwards) - n_plain == n_plain  # first use: every pass runs
        forwards.clear()
        shared = evaluate(other, model, tok, records, cfg, zero_ablation_cache=cache)
        assert len(forwards) == n_plain - n_batches  # the zero-ablated pass of every batch was skipped
        assert len(cache) == n_batches
        assert json.dumps(shared.metrics, sort_keys=True) == json.dumps(plain.metrics, sort_keys=True)  # NaN-safe
        evaluate(sae, model, tok, records[:3], cfg, zero_ablation_cache=cache)  # other batches: new entries
        evaluate(
            sae,
            model,
            tok,
            records,
            EvalConfig(progress=False, batch_tokens=300, hook="resid_post.0"),
            zero_ablation_cache=cache,
        )
        assert len(cache) > n_batches + 1
    finally:
        handle.remove()


def test_several_saes_share_one_clean_pass(tiny_llama, sae, tmp_path):
    """evaluate_many: one clean and one zero-ablated pass per batch for all SAEs, one spliced pass each, and the
    same numbers as evaluating each SAE alone; SAEs needing other settings are refused."""
    from chatsae.eval.config import resolve_config

    model, tok = tiny_llama
    records = [chat(i) for i in range(6)]
    torch.manual_seed(2)
    other = create_sae(
        SAEConfig("jumprelu", d_in=64, d_sae=128, metadata={"hook_name": "resid_post.1", "method": "fast"})
    )
    # whole-row passes (share_prefix=False), so that model calls count passes; with the shared prefix every clean or
    # spliced pass is two calls (tests/test_models_prefix.py)
    base = EvalConfig(progress=False, batch_tokens=300, share_prefix=False)
    alone = [evaluate(s, model, tok, records, base) for s in (sae, other)]
    cfgs = [
        resolve_config(dataclasses.replace(base, output=str(tmp_path / f"{i}.json")), s.cfg.metadata)
        for i, s in enumerate((sae, other))
    ]
    forwards = []
    handle = model.register_forward_pre_hook(lambda *_: forwards.append(1))
    try:
        together = evaluate_many([sae, other], model, tok, records, cfgs, ["a", "b"])
    finally:
        handle.remove()
    n_batches = len(forwards) // 4
    assert n_batches >= 2 and len(forwards) == 4 * n_batches  # clean + 2 spliced + zero (not 2 x 3)
    for a, t, name in zip(alone, together, "ab", strict=True):
        assert json.dumps(t.metrics, sort_keys=True) == json.dumps(a.metrics, sort_keys=True)
        assert t.per_sequence == a.per_sequence and t.sae["path"] == name and t.setup["evaluated_together"] == 2
    written = read_result(tmp_path / "1.json")
    assert written.sae["path"] == "b" and written.metrics["all"] == together[1].metrics["all"]
    with pytest.raises(ValueError, match="same evaluation settings"):
        evaluate_many(
            [sae, other],
            model,
            tok,
            records,
            [
                cfgs[0],
                resolve_config(EvalConfig(progress=False, batch_tokens=200, share_prefix=False), other.cfg.metadata),
            ],
        )


def test_a_study_reevaluates_results_without_the_current_subsets() -> None:
    """EvalResult.is_current: a study reuses an eval file only when it has per-sequence sums and every subset of
    SUBSETS (an older file without the template parts is evaluated again)."""
    per_seq = {"all": {"n": [3, 4], "sse": [1.0, 2.0]}}
    full = EvalResult({}, {}, {s: {"tokens": 1} for s in SUBSETS}, per_sequence=per_seq)
    assert full.is_current()
    old = EvalResult({}, {}, {s: {"tokens": 1} for s in SUBSETS if s not in ("special_prefix", "special_turns")})
    old.per_sequence = per_seq
    assert not old.is_current()
    assert not EvalResult({}, {}, {s: {"tokens": 1} for s in SUBSETS}).is_current()  # no per-sequence sums
