"""Running the prefix every row shares once (chatsae.models.prefix) equals plain passes over whole rows."""

from __future__ import annotations

import contextlib
import importlib
import math
from collections.abc import Iterator

import pytest
import test_eval_restart
import torch
import transformers
from test_eval_driver import chat
from test_eval_restart import record_calls, small_sae
from test_models_hooks import VOCAB

from chatsae.eval import EvalConfig, evaluate
from chatsae.eval import metrics as M
from chatsae.eval.config import resolve_config
from chatsae.eval.evaluate import evaluate_many, loss_by_part
from chatsae.models import KINDS, HookPoint, capture_many, d_model, decoder_layers, edit, mlp_module
from chatsae.models import prefix as P
from chatsae.models.resume import clean_forward

pytestmark = pytest.mark.usefixtures("single_thread")  # tiny matmuls: one torch thread (see conftest)
family_model = test_eval_restart.family_model  # the fixture: one tiny model per family
passes_module = importlib.import_module("chatsae.eval.spliced_passes")  # where the forward passes run


def _batch(prefix: int = 9, lengths: tuple[int, ...] = (16, 12, 16, 10, 14)) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded random rows of the given lengths that share their first ``prefix`` tokens (and no more)."""
    g = torch.Generator().manual_seed(prefix)
    ids = torch.randint(3, VOCAB, (len(lengths), max(lengths)), generator=g)
    ids[:, :prefix] = ids[0, :prefix]
    ids[:, prefix] = torch.arange(len(lengths)) + 3  # the rows part here
    mask = torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        mask[row, :n] = 1
    return ids, mask


def test_shared_prefix_length():
    ids, mask = _batch(9)
    assert P.shared_prefix_length(ids, mask) == 9
    assert P.shared_prefix_length(ids, mask, min_tokens=10) == 0  # too short to be worth a call
    assert P.shared_prefix_length(ids[:1], mask[:1]) == 0  # one row: nothing to share
    same = ids[:1].repeat(3, 1)
    assert P.shared_prefix_length(same, torch.ones_like(same)) == same.shape[1] - 1  # identical rows: all but one
    short = mask.clone()
    short[2, 5:] = 0  # a row that ends inside the common tokens: only its real tokens are shared
    assert P.shared_prefix_length(ids, short, min_tokens=1) == 5
    left = mask.flip(1)  # left padding: the first columns are not real in every row
    assert P.shared_prefix_length(ids, left) == 0


def test_can_share_prefix(tiny_llama, monkeypatch):
    model, _ = tiny_llama
    assert P.can_share_prefix(model)
    monkeypatch.setattr(P, "TRANSFORMERS_MAJOR", 4)  # not tested before transformers 5: declined
    assert not P.can_share_prefix(model)
    monkeypatch.undo()
    monkeypatch.setattr(P, "SHARES_PREFIX", frozenset())  # a family outside the tested ones
    assert not P.can_share_prefix(model)


def _sharing_batch(model) -> tuple[torch.Tensor, torch.Tensor, int, torch.Tensor]:
    """``(ids, mask, prefix length, real-token mask [B, T, 1])`` of the test batch; skips a model that cannot share."""
    if not P.can_share_prefix(model):
        pytest.skip(f"{model.config.model_type}: no prefix sharing with transformers {transformers.__version__}")
    ids, mask = _batch()
    return ids, mask, P.shared_prefix_length(ids, mask), mask.bool()[..., None]


@contextlib.contextmanager
def _counting(model) -> Iterator[tuple[list[int], list[tuple[int, int]]]]:
    """Yields (the blocks whose MLP ran, ``(rows, positions)`` of each embedding call), filled as passes run."""
    ran: list[int] = []
    rows: list[tuple[int, int]] = []
    blocks = decoder_layers(model)
    handles = [mlp_module(b).register_forward_pre_hook(lambda m, a, i=i: ran.append(i)) for i, b in enumerate(blocks)]
    handles.append(model.get_input_embeddings().register_forward_hook(lambda m, a, o: rows.append(o.shape[:2])))
    try:
        yield ran, rows
    finally:
        for h in handles:
            h.remove()


def test_shared_passes_equal_whole_row_passes(family_model):
    """Clean and edited passes with the shared prefix equal plain passes at every real position, for every hook kind
    at the first and the last layer; the prefix runs over one row and the rest restarts at the hook."""
    model = family_model
    ids, mask, length, real = _sharing_batch(model)
    blocks = decoder_layers(model)
    with _counting(model) as (ran, rows):
        for kind in KINDS:
            for layer in (0, len(blocks) - 1):
                hook = HookPoint(kind, layer)
                torch.manual_seed(layer)
                direction = torch.randn(d_model(model))

                def fn(a: torch.Tensor, direction: torch.Tensor = direction) -> torch.Tensor:
                    return 0.5 * a + direction

                with torch.no_grad():
                    plain, ckpt = clean_forward(model, hook, ids, mask)
                    with edit(model, hook, fn):
                        full = model(input_ids=ids, attention_mask=mask).logits
                    split, joined, shared = P.clean_forward_shared(model, hook, ids, mask, length)
                    ran.clear()
                    rows.clear()
                    edited = P.edited_forward_shared(model, shared, ids, mask, fn(joined.act))
                torch.testing.assert_close(split.prefix, plain[:1, :length], rtol=0, atol=1e-5)
                torch.testing.assert_close(
                    split.rest * real[:, length:], plain[:, length:] * real[:, length:], rtol=0, atol=1e-5
                )
                for got, ref in ((joined.state, ckpt.state), (joined.act, ckpt.act)):
                    torch.testing.assert_close(got * real, ref * real, rtol=0, atol=1e-5, msg=str(hook))
                torch.testing.assert_close(edited.prefix, full[:1, :length], rtol=0, atol=1e-5, msg=str(hook))
                torch.testing.assert_close(
                    edited.rest * real[:, length:],
                    full[:, length:] * real[:, length:],
                    rtol=0,
                    atol=1e-5,
                    msg=str(hook),
                )
                assert ((full - plain) * real).abs().max() > 1e-3, hook  # the edit really changes the logits
                # the prefix: one row, every block; the rest: every row, the blocks from the hook on
                start = layer + 1 if kind == "resid_post" else layer
                assert rows == [(1, length), (ids.shape[0], ids.shape[1] - length)], hook
                assert ran == list(range(len(blocks))) + list(range(start, len(blocks))), hook


def test_losses_of_split_logits_equal_those_of_whole_logits():
    """The prefix's positions scored once (its last one per row: the labels differ there) equal scoring each row."""
    torch.manual_seed(0)
    ids, mask = _batch()
    length = P.shared_prefix_length(ids, mask)
    a, b = torch.randn(2, *ids.shape, VOCAB)
    a[:, :length] = a[:1, :length]  # rows agree over the prefix, as in a real pass
    b[:, :length] = b[:1, :length]
    labels, valid = M.next_token_labels(ids, mask)
    whole = M.paired_losses(a, b, labels, valid)
    split = loss_by_part(
        M.paired_losses,
        [P.SplitLogits(a[:1, :length], a[:, length:]), P.SplitLogits(b[:1, :length], b[:, length:])],
        labels,
        valid,
    )
    for got, ref in zip(split, whole, strict=True):
        torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-6)
    assert float(whole[2].sum()) > 0.1 and bool((labels[:, length - 1] != labels[0, length - 1]).any())


@pytest.mark.parametrize(("hook", "first"), [("resid_post.1", False), ("attn_out.2", True), ("resid_pre.0", True)])
def test_evaluate_shares_the_prefix_and_matches_full_passes(tiny_llama, monkeypatch, hook, first):
    """End to end on chat records with a system prompt: every clean and spliced pass shares the prefix, and every
    metric equals full passes over whole rows (``restart=False``) and restarted whole-row passes."""
    model, tok = tiny_llama
    sae = small_sae(hook, method="fast")
    records = [chat(i) for i in range(6)]
    shared = record_calls(monkeypatch, passes_module, "clean_forward_shared")
    out = {}
    for name, options in {"full": {"restart": False}, "whole": {"share_prefix": False}, "shared": {}}.items():
        shared.clear()
        cfg = EvalConfig(progress=False, batch_tokens=400, splice_first_position=first, **options)
        out[name] = evaluate(sae, model, tok, records, cfg).metrics
        assert bool(shared) == (name == "shared"), name
    assert all(split.prefix.shape[1] >= P.MIN_PREFIX for split, _, _ in shared)
    compared = 0
    for reference in ("full", "whole"):
        for subset, values in out[reference].items():
            for key, value in values.items():
                got = out["shared"][subset][key]
                if isinstance(value, float) and math.isnan(value) or value is None:
                    assert got is None or math.isnan(got), (subset, key)
                elif isinstance(value, (int, float)) and not isinstance(value, bool):
                    tol = 1e-5 * max(1.0, abs(value))
                    if key == "ce_recovered":  # rounding in CE zero scaled by 1 / (CE zero - CE clean)
                        gap = abs(values["ce_zero"] - values["ce_clean"])
                        tol += 1e-5 * abs(values["ce_zero"]) * (1 + abs(value)) / gap
                    assert abs(got - value) <= tol, (reference, subset, key, got, value)
                    compared += key in ("ce_clean", "ce_spliced", "kl", "ce_zero")
    assert compared > 0 and out["full"]["all"]["kl"] > 1e-4


def test_evaluate_many_shares_the_prefix_once_per_pass(tiny_llama, monkeypatch):
    """Several SAEs: one shared clean pass per batch and one shared spliced pass per SAE (two model calls each:
    prefix, rest), the zero-ablated short pass once; same numbers as evaluating each alone."""
    model, tok = tiny_llama
    saes = [small_sae("resid_post.1", method="fast") for _ in range(3)]
    for i, sae in enumerate(saes):
        with torch.no_grad():
            sae.threshold_param.fill_(0.02 * (i + 1))
    records = [chat(i) for i in range(6)]
    cfg = EvalConfig(progress=False, batch_tokens=400, hook="resid_post.1", splice_first_position=True)
    alone = [evaluate(s, model, tok, records, cfg).metrics for s in saes]
    clean = record_calls(monkeypatch, passes_module, "clean_forward_shared")
    zero = record_calls(monkeypatch, passes_module, "zero_ablated_losses")
    calls: list[int] = []
    handle = model.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        together = evaluate_many(saes, model, tok, records, [resolve_config(cfg, saes[0].cfg.metadata)] * 3)
    finally:
        handle.remove()
    batches = len(zero)
    assert batches >= 1 and len(clean) == batches and len(calls) == batches * (2 + 2 * 3 + 1)
    for a, t in zip(alone, together, strict=True):
        assert t.metrics["all"]["ce_spliced"] == pytest.approx(a["all"]["ce_spliced"], rel=1e-6)
        assert t.metrics["all"]["kl"] == pytest.approx(a["all"]["kl"], rel=1e-6)
    assert len({round(t.metrics["all"]["kl"], 6) for t in together}) == 3  # three different SAEs were compared


@pytest.mark.parametrize("family", ["gemma2", "gemma3", "mistral"])
def test_sliding_window_attention_across_the_prefix(family):
    """A sliding window (4 tokens) shorter than the prefix (9): the rest's first positions still see the end of
    the prefix through the cache, later ones no longer see it; same logits as whole rows."""
    from test_models_hooks import FAMILIES

    cfg_name, model_name, kwargs, *_ = FAMILIES[family]
    torch.manual_seed(0)
    model = getattr(transformers, model_name)(getattr(transformers, cfg_name)(**kwargs, sliding_window=4)).eval()
    if not P.can_share_prefix(model):
        pytest.skip(f"no prefix sharing with transformers {transformers.__version__}")
    ids, mask = _batch()
    real = mask.bool()[..., None]
    length = P.shared_prefix_length(ids, mask)
    with torch.no_grad():
        plain = model(input_ids=ids, attention_mask=mask).logits
        wide = type(model)(type(model.config)(**kwargs)).eval()
        wide.load_state_dict(model.state_dict())
        assert ((wide(input_ids=ids, attention_mask=mask).logits - plain) * real).abs().max() > 1e-3  # it bites
        split, _, _ = P.clean_forward_shared(model, HookPoint("resid_post", 1), ids, mask, length)
    torch.testing.assert_close(split.prefix, plain[:1, :length], rtol=0, atol=1e-5)
    torch.testing.assert_close(split.rest * real[:, length:], plain[:, length:] * real[:, length:], rtol=0, atol=1e-5)


def test_capture_sharing_prefix_equals_capture_many(family_model):
    """Harvest capture: the prefix over one row and the rest against its cache give every hook's activations at
    every real position, each part stopping after the last hook; a lone ``resid_pre.0`` (no block runs, so no
    cache) and ``share=False`` take whole rows."""
    model = family_model
    ids, mask, length, real = _sharing_batch(model)
    last = len(decoder_layers(model)) - 1
    with _counting(model) as (ran, rows):
        for hooks in (
            [HookPoint("resid_post", 0), HookPoint("attn_out", 1)],
            [HookPoint("mlp_out", last)],
            [HookPoint("resid_pre", last), HookPoint("resid_pre", 0)],
        ):
            ref = capture_many(model, hooks, ids, mask)
            rows.clear()
            ran.clear()
            got = P.capture_sharing_prefix(model, hooks, ids, mask)
            assert rows == [(1, length), (ids.shape[0], ids.shape[1] - length)], hooks
            # MLPs that run before the stop, in each part
            deepest = max(h.layer + (h.kind in ("resid_post", "mlp_out")) for h in hooks)
            assert ran == list(range(deepest)) * 2, hooks
            for h in hooks:
                assert got[h].shape == ref[h].shape
                torch.testing.assert_close(got[h] * real, ref[h] * real, rtol=0, atol=1e-5, msg=str(h))
        for hooks, share in (([HookPoint("resid_pre", 0)], True), ([HookPoint("resid_post", 1)], False)):
            rows.clear()
            got = P.capture_sharing_prefix(model, hooks, ids, mask, share=share)
            assert rows == [tuple(ids.shape)], hooks  # whole rows
            torch.testing.assert_close(got[hooks[0]], capture_many(model, hooks, ids, mask)[hooks[0]])


def test_harvest_vectors_with_the_shared_prefix(tiny_llama):
    """activations_for_batch on chat records with a system prompt: the same kept vectors and metadata as whole rows
    (``HarvestConfig.share_prefix=False``), the prefix run once."""
    from chatsae.activations.harvest import HarvestConfig, activations_for_batch
    from chatsae.data.sequences import fast_sequences

    model, tok = tiny_llama
    seqs = list(fast_sequences([chat(i) for i in range(5)], tok, max_length=8192, dedup_n=None))
    hook = HookPoint("resid_post", 2)
    out = {}
    for share in (True, False):
        calls: list[tuple[int, int]] = []
        handle = model.get_input_embeddings().register_forward_hook(lambda m, a, o, c=calls: c.append(o.shape[:2]))
        try:
            out[share] = activations_for_batch(model, hook, seqs, tok.pad_token_id, HarvestConfig(share_prefix=share))
        finally:
            handle.remove()
        assert (len(calls) == 2 and calls[0][0] == 1 and calls[0][1] >= P.MIN_PREFIX) if share else len(calls) == 1
    (vec, meta), (ref, ref_meta) = out[True], out[False]
    assert vec.shape == ref.shape and vec.shape[0] > 50
    torch.testing.assert_close(vec, ref, rtol=0, atol=1e-5)
    assert meta.keys() == ref_meta.keys() and all(torch.equal(meta[k], ref_meta[k]) for k in meta)


def test_evaluate_without_lm_loss_shares_the_prefix(tiny_llama):
    """``lm_loss=False`` (only the model up to the hook, as interp features and steering read activations):
    ``capture_shared`` runs the prefix over one row and gives the same reconstruction metrics as whole rows."""
    model, tok = tiny_llama
    sae = small_sae("resid_post.2", method="fast")
    records = [chat(i) for i in range(6)]
    out = {}
    for share in (True, False):
        with _counting(model) as (_, rows):
            cfg = EvalConfig(progress=False, batch_tokens=400, lm_loss=False, share_prefix=share)
            out[share] = evaluate(sae, model, tok, records, cfg).metrics["all"]
        assert any(r[0] == 1 and r[1] >= P.MIN_PREFIX for r in rows) == share, rows
    for key in ("mse", "fvu", "l0", "cosine_similarity"):
        assert out[True][key] == pytest.approx(out[False][key], rel=1e-5), key
    assert out[False]["l0"] > 0


def test_a_training_run_evaluates_as_it_harvests(tiny_llama, tmp_path, monkeypatch):
    """``--no-share-prefix`` on ``chatsae train`` turns the shared prefix off in its harvest and in its held-out
    evaluation alike (the template's default system prompt opens every sample here)."""
    from test_multi_sae import _spec

    from chatsae.activations import harvest as harvest_mod
    from chatsae.activations.harvest import HarvestConfig
    from chatsae.workflows import train_run

    shared_eval = record_calls(monkeypatch, passes_module, "clean_forward_shared")
    asked: list[bool] = []  # the harvest's share argument, per batch
    real = harvest_mod.capture_sharing_prefix

    def spy(model, hooks, ids, mask, share=True):
        asked.append(share)
        return real(model, hooks, ids, mask, share)

    monkeypatch.setattr(harvest_mod, "capture_sharing_prefix", spy)
    for share in (True, False):
        shared_eval.clear()
        asked.clear()
        spec = _spec(tmp_path, tiny_llama, f"run_{share}", hook="resid_post.1")
        spec.harvest = HarvestConfig(shard_tokens=300, share_prefix=share)
        train_run(spec)
        assert asked and set(asked) == {share}, share
        assert bool(shared_eval) == share, share
