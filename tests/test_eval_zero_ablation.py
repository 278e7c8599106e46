"""The zero-ablated losses from one short pass (chatsae.eval.zero_ablation) equal the full zero-ablated pass."""

from __future__ import annotations

import pytest
import test_eval_restart
import torch
from test_eval_driver import chat
from test_eval_restart import record_calls, small_sae
from test_models_hooks import VOCAB

from chatsae.eval import EvalConfig, evaluate
from chatsae.eval import metrics as M
from chatsae.eval import zero_ablation as Z
from chatsae.models import HookPoint, decoder_layers, edit, mlp_module
from chatsae.models.resume import clean_forward

pytestmark = pytest.mark.usefixtures("single_thread")  # tiny matmuls: one torch thread (see conftest)
family_model = test_eval_restart.family_model  # the fixture: one tiny model per family


def _batch(firsts: tuple[int, ...], lengths: tuple[int, ...], width: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded random rows with the given first tokens and lengths."""
    g = torch.Generator().manual_seed(len(firsts))
    ids = torch.randint(3, VOCAB, (len(firsts), width), generator=g)
    ids[:, 0] = torch.tensor(firsts)
    mask = torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        mask[row, :n] = 1
    return ids, mask


def _full(model, hook, ids, mask, first: bool) -> torch.Tensor:
    """The reference: the whole model with the hook zeroed, every row."""
    labels, valid = M.next_token_labels(ids, mask)
    with torch.no_grad(), edit(model, hook, Z.zeroing(first)):
        logits = model(input_ids=ids, attention_mask=mask).logits
    return M.token_cross_entropy(logits, labels, valid)


def _short(model, hook, ids, mask, first: bool, restart: bool = False) -> torch.Tensor | None:
    labels, valid = M.next_token_labels(ids, mask)
    ckpt = clean_forward(model, hook, ids, mask)[1] if restart else None
    return Z.zero_ablated_losses(model, HookPoint.parse(hook), ids, mask, labels, valid, first, ckpt)


@pytest.mark.parametrize("restart", [False, True], ids=["full-rows", "restarted-rows"])
@pytest.mark.parametrize("first", [False, True], ids=["pos0-clean", "pos0-zeroed"])
def test_short_pass_equals_the_full_zero_ablated_pass(family_model, first, restart):
    model = family_model
    blocks = decoder_layers(model)
    last = len(blocks) - 1
    # 6 rows, 2 distinct first tokens, right padding of several lengths (row 1, padded, represents token 5)
    ids, mask = _batch((9, 5, 9, 5, 9, 5), (12, 7, 12, 3, 9, 12))
    rows_seen: list[int] = []
    ran: list[int] = []
    handles = [model.get_input_embeddings().register_forward_hook(lambda m, a, o: rows_seen.append(o.shape[0]))]
    handles += [mlp_module(b).register_forward_pre_hook(lambda m, a, i=i: ran.append(i)) for i, b in enumerate(blocks)]
    try:
        for hook in ("resid_pre.0", f"resid_post.{last}", "resid_post.1", f"resid_pre.{last}"):
            ref = _full(model, hook, ids, mask, first)
            labels, valid = M.next_token_labels(ids, mask)
            ckpt = clean_forward(model, hook, ids, mask)[1] if restart else None
            rows_seen.clear()
            ran.clear()
            got = Z.zero_ablated_losses(model, HookPoint.parse(hook), ids, mask, labels, valid, first, ckpt)
            assert got is not None, hook
            assert rows_seen == [1 if first else 2], hook  # one pass over one row per distinct first token
            point = HookPoint.parse(hook)
            start = point.layer + 1 if point.kind == "resid_post" and restart else point.layer if restart else 0
            assert ran == list(range(start, len(blocks))), hook  # restarted: only the blocks from the hook on
            torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5, msg=hook)
            assert float(ref.sum()) > 1.0  # real losses were compared
    finally:
        for h in handles:
            h.remove()


def test_the_comparison_would_see_a_token_dependence(tiny_llama):
    """Forced onto ``attn_out`` (the residual stream, and so the tokens, survive the ablation) the short pass is
    wrong: the equality above is not a tautology of the comparison."""
    model, _ = tiny_llama
    ids, mask = _batch((5, 5, 5, 5), (12, 10, 12, 8))
    hook = "attn_out.1"
    assert _short(model, hook, ids, mask, False) is None  # not applied there
    point = HookPoint.parse(hook)
    labels, valid = M.next_token_labels(ids, mask)
    forced = pytest.MonkeyPatch()
    forced.setattr(Z, "canonical_rows", lambda *a: (torch.zeros(1, dtype=torch.long), torch.zeros(4, dtype=torch.long)))
    try:
        wrong = Z.zero_ablated_losses(model, point, ids, mask, labels, valid, False)
    finally:
        forced.undo()
    assert (wrong - _full(model, hook, ids, mask, False)).abs().max() > 1e-3


def test_short_pass_declines_where_it_does_not_apply(tiny_llama, monkeypatch):
    model, _ = tiny_llama
    ids, mask = _batch((5, 5, 5, 5), (12, 10, 12, 8))
    assert _short(model, "resid_post.1", ids, mask, False) is not None
    assert _short(model, "mlp_out.1", ids, mask, False) is None  # not a residual-stream hook
    left = mask.flip(1)
    assert _short(model, "resid_post.1", ids, left, False) is None  # left padding
    varied, _ = _batch((5, 6, 7, 5), (12, 10, 12, 8))
    assert _short(model, "resid_post.1", varied, mask, False) is None  # 3 first tokens for 4 rows: no saving
    assert _short(model, "resid_post.1", varied, mask, True) is not None  # position 0 zeroed: one row
    monkeypatch.setattr(Z, "POSITION_ONLY", frozenset())
    assert _short(model, "resid_post.1", ids, mask, False) is None  # an untested family


@pytest.mark.parametrize("first", [False, True])
def test_evaluate_takes_the_short_pass_and_matches_full_passes(tiny_llama, monkeypatch, first):
    """End to end on chat data: one short zero-ablated pass per batch, no restarted zero-ablated pass, and the same
    CE zero-ablated and CE recovered as ``restart=False`` (full passes over every row)."""
    import importlib

    passes_module = importlib.import_module("chatsae.eval.spliced_passes")  # where the forward passes run
    model, tok = tiny_llama
    sae = small_sae("resid_post.1")
    records = [chat(i) for i in range(8)]
    short = record_calls(monkeypatch, passes_module, "zero_ablated_losses")
    # edited passes: restarted, or prefix-shared (the records share their system prompt: chatsae.models.prefix)
    edited = [record_calls(monkeypatch, passes_module, name) for name in ("resumed_logits", "edited_forward_shared")]
    out = {}
    for restart in (True, False):
        cfg = EvalConfig(progress=False, batch_tokens=600, restart=restart, splice_first_position=first)
        out[restart] = evaluate(sae, model, tok, records, cfg).metrics
    # per batch: one short pass and one edited pass (the spliced one)
    assert short and all(o is not None for o in short) and sum(map(len, edited)) == len(short)
    fast, full = out[True], out[False]
    for subset in ("all", "special", "assistant"):
        for key in ("ce_zero", "ce_recovered", "ce_spliced", "kl"):
            # CE recovered is a ratio of two CE differences: float rounding of order 1e-6 in its terms moves it ~1e-5
            rel = 1e-4 if key == "ce_recovered" else 1e-5
            assert fast[subset][key] == pytest.approx(full[subset][key], rel=rel, abs=1e-6), (subset, key)
    assert abs(full["all"]["ce_zero"] - full["all"]["ce_clean"]) > 1e-3  # the ablation changes the losses
