"""Restarting edited passes at the hook layer (chatsae.models.resume) equals full edited forward passes."""

from __future__ import annotations

import math

import pytest
import torch
import transformers
from test_eval_driver import chat
from test_models_hooks import FAMILIES, VOCAB

from chatsae.eval import EvalConfig, evaluate
from chatsae.models import KINDS, d_model, decoder_layers, edit, mlp_module
from chatsae.models.resume import RESUMABLE, can_resume, clean_forward, resumed, resumed_logits
from chatsae.sae import SAE, SAEConfig, create_sae

pytestmark = pytest.mark.usefixtures("single_thread")  # tiny matmuls: one torch thread (see conftest)


@pytest.fixture(scope="module", params=list(FAMILIES))
def family_model(request):
    cfg_name, model_name, kwargs, *_ = FAMILIES[request.param]
    if not hasattr(transformers, model_name):
        pytest.skip(f"transformers {transformers.__version__} has no {model_name}")
    torch.manual_seed(0)
    return getattr(transformers, model_name)(getattr(transformers, cfg_name)(**kwargs)).eval()


def small_sae(hook: str, **metadata: str) -> SAE:
    """A random JumpReLU SAE for ``tiny_llama`` (d_in 64, d_sae 128) at ``hook``, thresholds 0.02 (latents fire)."""
    torch.manual_seed(0)
    sae = create_sae(SAEConfig("jumprelu", d_in=64, d_sae=128, metadata={"hook_name": hook, **metadata}))
    with torch.no_grad():
        sae.threshold_param.fill_(0.02)
    return sae


def record_calls(monkeypatch: pytest.MonkeyPatch, module: object, name: str) -> list:
    """Wrap ``module.name`` so that every call's result is appended to the list returned."""
    real, seen = getattr(module, name), []

    def wrapper(*args, **kw):
        out = real(*args, **kw)
        seen.append(out)
        return out

    monkeypatch.setattr(module, name, wrapper)
    return seen


def _padded(side: str) -> tuple[torch.Tensor, torch.Tensor]:
    """3 sequences of lengths 10, 6, 3 padded on ``side``."""
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(3, VOCAB, (3, 10), generator=g)
    mask = torch.zeros_like(ids)
    for row, n in enumerate((10, 6, 3)):
        if side == "left":
            mask[row, 10 - n :] = 1
        else:
            mask[row, :n] = 1
    return ids, mask


@pytest.mark.parametrize("side", ["left", "right"])
def test_restarted_logits_equal_full_spliced_forward(family_model, side):
    model = family_model
    assert model.config.model_type in RESUMABLE and can_resume(model)
    ids, mask = _padded(side)
    blocks = decoder_layers(model)
    calls: list[int] = []
    # a block really runs iff its MLP does (skipped blocks' own hooks still fire)
    counters = [
        mlp_module(b).register_forward_pre_hook(lambda m, a, i=i: calls.append(i)) for i, b in enumerate(blocks)
    ]
    try:
        for kind in KINDS:
            for layer in (0, len(blocks) - 1):
                hook = f"{kind}.{layer}"
                torch.manual_seed(layer)
                direction = torch.randn(d_model(model))

                def fn(a: torch.Tensor, direction: torch.Tensor = direction) -> torch.Tensor:
                    return 0.5 * a + direction

                with torch.no_grad():
                    with edit(model, hook, fn):
                        full = model(input_ids=ids, attention_mask=mask).logits
                    plain = model(input_ids=ids, attention_mask=mask).logits
                    clean, ckpt = clean_forward(model, hook, ids, mask)
                    calls.clear()
                    again = resumed_logits(model, ckpt, ids, mask, fn)
                # only the blocks from the hook layer on ran (resid_post.L: from L + 1)
                first = layer + 1 if kind == "resid_post" else layer
                assert calls == list(range(first, len(blocks))), hook
                torch.testing.assert_close(clean, plain, rtol=0, atol=1e-5)
                torch.testing.assert_close(again, full, rtol=0, atol=1e-5, msg=hook)
                assert (full - plain).abs().max() > 1e-3, hook  # the edit really changes the logits
        # the blocks are restored: a plain pass runs all of them again
        calls.clear()
        with torch.no_grad():
            model(input_ids=ids, attention_mask=mask)
        assert calls == list(range(len(blocks)))
    finally:
        for h in counters:
            h.remove()


def test_restart_rejects_other_inputs(tiny_llama):
    model, _ = tiny_llama
    ids = torch.randint(3, 100, (2, 7))
    _, ckpt = clean_forward(model, "resid_post.1", ids)
    with pytest.raises(ValueError, match="restart at 'resid_post.1'"), resumed(model, ckpt), torch.no_grad():
        model(input_ids=ids[:1])
    assert "forward" not in decoder_layers(model)[0].__dict__  # restored after the error


def test_unknown_family_is_probed(monkeypatch, capsys):
    """A model type outside RESUMABLE is probed once; a broken restart falls back with a notice."""
    from chatsae.models import resume

    cfg_name, model_name, kwargs, *_ = FAMILIES["llama"]
    model = getattr(transformers, model_name)(getattr(transformers, cfg_name)(**kwargs)).eval()
    monkeypatch.setattr(resume, "RESUMABLE", frozenset())
    assert can_resume(model) and model._chatsae_resumable  # the probe passes on a plain Llama
    del model._chatsae_resumable
    monkeypatch.setattr(resume, "replace_first_output", lambda template, new: 2 * new)  # skipped blocks now change it
    monkeypatch.setattr(resume, "_NOTICED", set())
    assert not can_resume(model)
    assert "cannot restart LlamaForCausalLM" in capsys.readouterr().err
    assert model._chatsae_resumable is False  # cached: not probed again


@pytest.mark.parametrize(("hook", "first"), [("resid_post.1", False), ("mlp_out.2", True), ("resid_pre.0", False)])
def test_evaluate_with_restart_equals_full_passes(tiny_llama, hook, first):
    model, tok = tiny_llama
    sae = small_sae(hook, method="fast")
    records = [chat(i) for i in range(4)]
    results = []
    for restart in (True, False):
        cfg = EvalConfig(progress=False, batch_tokens=300, restart=restart, splice_first_position=first)
        results.append(evaluate(sae, model, tok, records, cfg).metrics)
    fast, full = results
    n_lm = 0
    for subset, values in full.items():
        for key, value in values.items():
            got = fast[subset][key]
            if isinstance(value, float) and math.isnan(value):
                assert math.isnan(got), (subset, key)
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                tol = 1e-5 * max(1.0, abs(value))
                if key == "ce_recovered":  # a ratio over CE zero - CE clean: rounding in CE zero scaled by 1/that
                    gap = abs(values["ce_zero"] - values["ce_clean"])
                    tol += 1e-5 * abs(values["ce_zero"]) * (1 + abs(value)) / gap
                assert abs(got - value) <= tol, (subset, key, got, value)
                n_lm += key in ("ce_spliced", "kl", "ce_zero")
            else:
                assert got == value, (subset, key)
    assert n_lm > 0 and full["all"]["kl"] > 1e-4  # the LM losses were compared and the splice changes the model


def test_evaluate_without_zero_ablation_skips_one_pass_and_keeps_the_other_losses(tiny_llama, monkeypatch):
    """``zero_ablation=False``: one edited pass per batch fewer, the same delta LM loss and KL, CE recovered null.
    (At ``mlp_out``, where the zero-ablated pass is a restarted pass; residual-stream hooks take the short pass of
    tests/test_eval_zero_ablation.py.)"""
    import importlib

    passes_module = importlib.import_module("chatsae.eval.spliced_passes")  # where the forward passes run

    model, tok = tiny_llama
    sae = small_sae("mlp_out.1")
    records = [chat(i) for i in range(4)]
    # edited passes: restarted, or prefix-shared (these records share their system prompt: chatsae.models.prefix)
    calls = [record_calls(monkeypatch, passes_module, name) for name in ("resumed_logits", "edited_forward_shared")]
    out = {}
    for zero in (True, False):
        for seen in calls:
            seen.clear()
        cfg = EvalConfig(progress=False, batch_tokens=300, zero_ablation=zero)
        out[zero] = (evaluate(sae, model, tok, records, cfg).metrics["all"], sum(map(len, calls)))
    (on, n_on), (off, n_off) = out[True], out[False]
    assert n_off > 0 and n_on == 2 * n_off  # spliced + zero-ablated per batch, against spliced only
    for key in ("ce_clean", "ce_spliced", "delta_ce", "kl"):
        assert off[key] == on[key], key
    assert on["ce_recovered"] is not None and off["ce_recovered"] is None and off["ce_zero"] is None
