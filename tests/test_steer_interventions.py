"""Steering interventions on the tiny random Llama: exactness against naive hidden-state edits, positions, generate."""

from __future__ import annotations

import pytest
import torch

from chatsae.models import capture, decoder_layers
from chatsae.steer import LatentEdit, Steering, make_edits, special_token_ids, steer
from chatsae.steer.measures import pad_ids
from chatsae.steer.report import encode_prompt

pytestmark = pytest.mark.usefixtures("single_thread")  # tiny tensors

LAYER = 1
HOOK = f"resid_post.{LAYER}"


@pytest.fixture(scope="module")
def setup(tiny_llama):
    """(model, tokenizer, sae, prompt ids [2 prompts of different length], busy latent index)."""
    from chatsae.sae import SAEConfig, create_sae

    model, tok = tiny_llama
    torch.manual_seed(1)
    sae = create_sae(SAEConfig(architecture="jumprelu", d_in=64, d_sae=96, metadata={"hook_name": HOOK}))
    with torch.no_grad():  # activations of the tiny model have norm ~1: scale the encoder so latents fire sometimes
        sae.W_enc.mul_(4.0)
        sae.b_enc.copy_(0.1 * torch.randn(96))
        sae.threshold_param.copy_(0.1 + 0.3 * torch.rand(96))
        sae.b_dec.copy_(0.05 * torch.randn(64))
    prompts = [encode_prompt(tok, [{"role": "user", "content": c}]) for c in ("Hi there", "Name three red fruits.")]
    ids = torch.tensor([prompts[1]])
    f = sae.encode(capture(model, HOOK, ids))[0]  # [T, d_sae]
    rate = (f > 0).float().mean(0)
    busy = int(((rate - 0.5).abs()).argmin())  # fires on some positions, not all
    assert 0 < rate[busy] < 1
    return model, tok, sae, prompts, busy


def _naive_hook(model, fn):
    """A plain forward hook on decoder block LAYER replacing its output h by fn(h) (independent of chatsae)."""
    return decoder_layers(model)[LAYER].register_forward_hook(lambda m, a, out: fn(out))


def _logits(model, ids, mask=None):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).logits


def _naive_f(sae, x):
    """JumpReLU latents computed from the weights: z = x W_enc + b_enc; f = z * (z > threshold)."""
    z = x @ sae.W_enc + sae.b_enc
    return z * (z > sae.threshold)


def test_alpha_zero_leaves_logits_unchanged(setup):
    model, _, sae, prompts, k = setup
    ids = torch.tensor([prompts[1]])
    clean = _logits(model, ids)
    with steer(model, sae, k, 0.0) as s:
        steered = _logits(model, ids)
    assert s.n_edited == ids.shape[1]
    assert torch.equal(clean, steered)


@pytest.mark.parametrize("normalize", [False, True])
def test_add_equals_manual_hidden_state_edit(setup, normalize):
    model, _, sae, prompts, k = setup
    ids = torch.tensor([prompts[1]])
    d = sae.W_dec[k].detach()
    d = d / d.norm() if normalize else d
    handle = _naive_hook(model, lambda h: h + 3.0 * d)
    try:
        expected = _logits(model, ids)
    finally:
        handle.remove()
    with Steering(model, sae, LatentEdit(k, "add", 3.0), normalize=normalize):
        got = _logits(model, ids)
    assert not torch.allclose(expected, _logits(model, ids), atol=1e-3)  # the edit matters
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode,value", [("ablate", 0.0), ("clamp", 1.5)])
def test_ablate_and_clamp_equal_independent_edit(setup, mode, value):
    model, _, sae, prompts, k = setup
    ids = torch.tensor([prompts[1]])
    x = capture(model, HOOK, ids)  # [1, T, d]
    with torch.no_grad():
        f_k = _naive_f(sae, x)[..., k]
        x_new = x + (value - f_k)[..., None] * sae.W_dec[k]  # ablate: x - f_k d_k (error term kept)
    assert (f_k > 0).any()
    handle = _naive_hook(model, lambda h: x_new)
    try:
        expected = _logits(model, ids)
    finally:
        handle.remove()
    with Steering(model, sae, make_edits([k], mode, value)):
        got = _logits(model, ids)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_several_latents_sum_their_edits(setup):
    model, _, sae, prompts, k = setup
    ids = torch.tensor([prompts[1]])
    x = capture(model, HOOK, ids)
    j = (k + 1) % 96
    with torch.no_grad():
        f = _naive_f(sae, x)
        x_new = x + 2.0 * sae.W_dec[j] - f[..., k, None] * sae.W_dec[k]
    handle = _naive_hook(model, lambda h: x_new)
    try:
        expected = _logits(model, ids)
    finally:
        handle.remove()
    with Steering(model, sae, [LatentEdit(j, "add", 2.0), LatentEdit(k, "ablate")]):
        got = _logits(model, ids)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_clamp_to_current_value_is_noop(tiny_llama):
    """A latent whose activation is the constant c (zero encoder column, bias c): clamping it to c changes nothing;
    clamping it to c + 2 is adding 2 d_k."""
    from chatsae.sae import SAEConfig, create_sae

    model, tok = tiny_llama
    torch.manual_seed(2)
    sae = create_sae(SAEConfig(architecture="standard", d_in=64, d_sae=32, metadata={"hook_name": HOOK}))
    with torch.no_grad():
        sae.W_enc[:, 5] = 0.0
        sae.b_enc[5] = 0.7
        sae.b_dec.copy_(0.1 * torch.randn(64))
    ids = torch.tensor([encode_prompt(tok, [{"role": "user", "content": "Hello"}])])
    assert torch.allclose(sae.encode(capture(model, HOOK, ids))[..., 5], torch.tensor(0.7))
    clean = _logits(model, ids)
    with steer(model, sae, 5, 0.7, mode="clamp"):
        same = _logits(model, ids)
    with steer(model, sae, 5, 2.7, mode="clamp"):
        clamped = _logits(model, ids)
    with steer(model, sae, 5, 2.0, mode="add"):
        added = _logits(model, ids)
    assert torch.equal(same, clean)
    torch.testing.assert_close(clamped, added, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(clamped, clean, atol=1e-3)


def test_special_positions_only(setup):
    model, tok, sae, prompts, k = setup
    ids = torch.tensor([prompts[1]])
    special = special_token_ids(tok)
    is_special = torch.isin(ids[0], torch.tensor(sorted(special)))
    assert 0 < is_special.sum() < ids.shape[1]
    clean = capture(model, HOOK, ids)[0]
    with Steering(model, sae, LatentEdit(k, "add", 4.0), positions="special", tokenizer=tok):
        edited = capture(model, HOOK, ids)[0]  # capture's hook runs after the steering hook
    diff = edited - clean
    assert torch.equal(diff[~is_special], torch.zeros_like(diff[~is_special]))
    torch.testing.assert_close(diff[is_special], (4.0 * sae.W_dec[k].detach()).expand_as(diff[is_special]))


def test_special_ids_cover_template_tokens(chat_tokenizer):
    ids = special_token_ids(chat_tokenizer)
    words = {chat_tokenizer.decode([i]) for i in ids}
    assert {"<|im_start|>", "<|im_end|>", "user", "system"} <= words
    assert "\n" not in words and chat_tokenizer.encode(" the", add_special_tokens=False)[0] not in ids


def _generate(model, ids, mask=None, n=6, **kw):
    """Greedy generation; the mask is explicit (pad = <|im_end|> appears inside chat prompts)."""
    mask = torch.ones_like(ids) if mask is None else mask
    with torch.no_grad():
        return model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=n,
            do_sample=False,
            pad_token_id=2,
            eos_token_id=None,
            **kw,
        )


@pytest.mark.parametrize("use_cache", [True, False])
def test_prompt_only_leaves_generated_steps_unchanged(setup, use_cache):
    model, _, sae, prompts, k = setup
    ids = torch.tensor([prompts[1]])
    P = ids.shape[1]
    seen: list[torch.Tensor] = []
    with Steering(model, sae, LatentEdit(k, "add", 4.0), positions="prompt") as s:
        handle = _naive_hook(model, lambda h: seen.append(h.detach().clone()))  # sees the edited activation
        try:
            out = _generate(model, ids, use_cache=use_cache)
        finally:
            handle.remove()
    assert s.n_edited == P * (1 if use_cache else len(seen))
    clean = capture(model, HOOK, out)[0]  # clean activations of the whole generated sequence
    last = seen[-1][0]  # the last step's view: all positions (no cache) or the last input token (cache)
    if use_cache:
        gen = torch.cat([a[0] for a in seen[1:]])  # decode steps, T = 1 each
        torch.testing.assert_close(gen, clean[P : out.shape[1] - 1], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(seen[0][0] - clean[:P], (4.0 * sae.W_dec[k].detach()).expand(P, -1))
    else:
        torch.testing.assert_close(last[P:], clean[P : last.shape[0]], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(last[:P] - clean[:P], (4.0 * sae.W_dec[k].detach()).expand(P, -1))


@pytest.mark.parametrize("positions", ["all", "special", "prompt"])
def test_generate_with_cache_equals_without_cache(setup, positions):
    model, tok, sae, prompts, k = setup
    ids = torch.tensor([prompts[0]])
    with Steering(model, sae, LatentEdit(k, "add", 6.0), positions=positions, tokenizer=tok):
        cached = _generate(model, ids, n=8, use_cache=True, output_scores=True, return_dict_in_generate=True)
        uncached = _generate(model, ids, n=8, use_cache=False, output_scores=True, return_dict_in_generate=True)
    clean = _generate(model, ids, n=8, output_scores=True, return_dict_in_generate=True)
    assert torch.equal(cached.sequences, uncached.sequences)
    torch.testing.assert_close(torch.stack(cached.scores), torch.stack(uncached.scores), atol=1e-4, rtol=1e-4)
    assert not torch.allclose(torch.stack(cached.scores), torch.stack(clean.scores), atol=1e-3)


@pytest.mark.parametrize("positions", ["all", "special", "prompt"])
def test_left_padded_batch_matches_single_prompts(setup, positions):
    model, tok, sae, prompts, k = setup
    ids, mask = pad_ids(prompts, pad_id=2)
    assert (mask == 0).any()
    edit = LatentEdit(k, "add", 6.0)
    with Steering(model, sae, edit, positions=positions, tokenizer=tok) as s:
        batch = _generate(model, ids, mask, output_scores=True, return_dict_in_generate=True)
        n_batch = s.n_edited
        singles = [
            _generate(model, torch.tensor([p]), output_scores=True, return_dict_in_generate=True) for p in prompts
        ]
        assert s.n_edited == 2 * n_batch  # padding positions were not edited
    for row, (p, single) in enumerate(zip(prompts, singles, strict=True)):
        assert batch.sequences[row, ids.shape[1] :].tolist() == single.sequences[0, len(p) :].tolist()
        got = torch.stack([sc[row] for sc in batch.scores])
        torch.testing.assert_close(got, torch.stack([sc[0] for sc in single.scores]), atol=1e-4, rtol=1e-4)


def test_sampling_generation_runs_and_is_steered(setup):
    model, _, sae, prompts, k = setup
    ids = torch.tensor([prompts[0]])
    with Steering(model, sae, LatentEdit(k, "add", 6.0)) as s:
        torch.manual_seed(0)
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=4,
            do_sample=True,
            pad_token_id=2,
            eos_token_id=None,
        )
    assert out.shape == (1, ids.shape[1] + 4)
    assert s.n_edited == ids.shape[1] + 3  # prompt + 3 decode steps (the 4th token needs no forward pass)


def test_bad_arguments(setup):
    model, _, sae, _, _ = setup
    with pytest.raises(ValueError, match="out of range"):
        Steering(model, sae, LatentEdit(96))
    with pytest.raises(ValueError, match="unknown mode"):
        LatentEdit(0, "multiply")
    with pytest.raises(ValueError, match="tokenizer"):
        Steering(model, sae, LatentEdit(0), positions="special")
    with pytest.raises(ValueError, match="positions"):
        Steering(model, sae, LatentEdit(0), positions="middle")


@pytest.mark.slow
def test_embedded_model_special_steering_with_and_without_cache(embedded):
    """The real SmolLM2 (GGUF): steering at special tokens of layer 15 with a random SAE moves the logits, gives the
    same tokens with and without the KV cache, and alpha 0 is the clean answer."""
    from chatsae.sae import SAEConfig, create_sae

    model, tok = embedded
    torch.manual_seed(0)
    sae = create_sae(SAEConfig(architecture="jumprelu", d_in=576, d_sae=1152, metadata={"hook_name": "resid_post.15"}))
    ids = torch.tensor([encode_prompt(tok, [{"role": "user", "content": "What is the capital of France?"}])])
    kw = {"n": 8, "output_scores": True, "return_dict_in_generate": True}
    clean = _generate(model, ids, **kw)
    with steer(model, sae, 7, 0.0, positions="special", tokenizer=tok):
        zero = _generate(model, ids, **kw)
    with steer(model, sae, 7, 150.0, positions="special", tokenizer=tok) as s:
        cached = _generate(model, ids, use_cache=True, **kw)
        uncached = _generate(model, ids, use_cache=False, **kw)
    assert torch.equal(zero.sequences, clean.sequences)
    assert torch.equal(cached.sequences, uncached.sequences)
    steered_scores = torch.stack(cached.scores)
    torch.testing.assert_close(steered_scores, torch.stack(uncached.scores), atol=1e-3, rtol=1e-4)
    assert (steered_scores - torch.stack(clean.scores)).abs().max() > 0.1  # steering moved the logits
    assert s.n_edited > 0
