"""Hook points on tiny random-weight models of several families: capture (with stop-at-layer) and edit."""

from __future__ import annotations

import pytest
import torch
import transformers
from torch import nn

from chatsae.models import KINDS, HookPoint, capture, capture_many, d_model, decoder_layers, edit, n_layers

VOCAB, HIDDEN, LAYERS = 256, 32, 3
_COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=HIDDEN,
    intermediate_size=64,
    num_hidden_layers=LAYERS,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
)
_GPT2 = dict(vocab_size=VOCAB, n_embd=HIDDEN, n_layer=LAYERS, n_head=4, n_positions=64, bos_token_id=0, eos_token_id=0)
_NEOX = dict(
    vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=LAYERS, num_attention_heads=4
)
_GEMMA3_MM = dict(  # Gemma 3 with its vision tower (model_type "gemma3"), run on text only
    text_config={**_COMMON, "head_dim": 8},
    vision_config=dict(
        hidden_size=HIDDEN,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        image_size=28,
        patch_size=14,
    ),
    mm_tokens_per_image=4,
    image_token_index=VOCAB - 1,
    boi_token_index=VOCAB - 3,
    eoi_token_index=VOCAB - 2,
)
# family: (config class, model class, config kwargs, path of the blocks, module that writes attn_out, ... mlp_out).
# The module names are written out here independently of chatsae.models.hooks: for Gemma 2/3 ("sandwich" norms) the
# values added to the residual stream are the outputs of the post-attention / post-feedforward norms.
FAMILIES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", _COMMON, "model.layers", "self_attn", "mlp"),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", _COMMON, "model.layers", "self_attn", "mlp"),
    "mistral": ("MistralConfig", "MistralForCausalLM", _COMMON, "model.layers", "self_attn", "mlp"),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {**_COMMON, "head_dim": 8}, "model.layers", "self_attn", "mlp"),
    "gemma": ("GemmaConfig", "GemmaForCausalLM", {**_COMMON, "head_dim": 8}, "model.layers", "self_attn", "mlp"),
    "gemma2": (
        "Gemma2Config",
        "Gemma2ForCausalLM",
        {**_COMMON, "head_dim": 8},
        "model.layers",
        "post_attention_layernorm",
        "post_feedforward_layernorm",
    ),
    "gemma3": (
        "Gemma3TextConfig",
        "Gemma3ForCausalLM",
        {**_COMMON, "head_dim": 8},
        "model.layers",
        "post_attention_layernorm",
        "post_feedforward_layernorm",
    ),
    "gemma3_mm": (
        "Gemma3Config",
        "Gemma3ForConditionalGeneration",
        _GEMMA3_MM,
        "model.language_model.layers",
        "post_attention_layernorm",
        "post_feedforward_layernorm",
    ),
    "gpt2": ("GPT2Config", "GPT2LMHeadModel", _GPT2, "transformer.h", "attn", "mlp"),
    "gpt_neox": ("GPTNeoXConfig", "GPTNeoXForCausalLM", _NEOX, "gpt_neox.layers", "attention", "mlp"),
}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny matmuls: one intra-op thread avoids OpenMP spin-waiting on a shared, busy CPU (100x faster here)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _get(obj, path):
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


@pytest.fixture(scope="module", params=list(FAMILIES))
def fam(request):
    """(family name, model, blocks, attn_out module name, mlp_out module name)."""
    cfg_name, model_name, kwargs, path, attn_name, mlp_name = FAMILIES[request.param]
    if not hasattr(transformers, model_name):
        pytest.skip(f"transformers {transformers.__version__} has no {model_name}")
    torch.manual_seed(0)
    model = getattr(transformers, model_name)(getattr(transformers, cfg_name)(**kwargs)).eval()
    model.generation_config.eos_token_id = None  # generate exactly max_new_tokens
    return request.param, model, _get(model, path), attn_name, mlp_name


def _inputs(seed: int = 1, pad: bool = True):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (2, 9), generator=g)
    mask = torch.ones_like(ids)
    if pad:
        mask[1, :3] = 0  # left padding in row 1
    return ids, mask


def _submodule(fam, kind: str, layer: int) -> nn.Module:
    _, _, blocks, attn_name, mlp_name = fam
    return getattr(blocks[layer], attn_name if kind == "attn_out" else mlp_name)


def _first(out):
    return out[0] if isinstance(out, tuple) else out


def _manual_zero(fam, kind: str, layer: int):
    """A hand-written hook that zero-ablates ``kind.layer``; returns its handle."""
    _, _, blocks, _, _ = fam
    if kind == "resid_pre":
        return blocks[layer].register_forward_pre_hook(lambda m, args: (torch.zeros_like(args[0]), *args[1:]))
    module = blocks[layer] if kind == "resid_post" else _submodule(fam, kind, layer)

    def zero(m, args, out):
        return (torch.zeros_like(out[0]), *out[1:]) if isinstance(out, tuple) else torch.zeros_like(out)

    return module.register_forward_hook(zero)


def test_sizes(fam):
    _, model, blocks, _, _ = fam
    assert n_layers(model) == LAYERS and d_model(model) == HIDDEN
    assert decoder_layers(model) is blocks


def test_resid_capture_matches_hidden_states(fam):
    _, model, _, _, _ = fam
    ids, mask = _inputs()
    with torch.no_grad():
        hs = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    # hidden_states[i] is the input of block i; the last entry is after the final norm, so it is not compared.
    for layer in range(LAYERS):
        pre = capture(model, f"resid_pre.{layer}", ids, mask)
        assert pre.shape == (2, 9, HIDDEN)
        torch.testing.assert_close(pre, hs[layer], rtol=0, atol=1e-6)
        if layer < LAYERS - 1:
            post = capture(model, HookPoint("resid_post", layer), ids, mask)
            torch.testing.assert_close(post, hs[layer + 1], rtol=0, atol=1e-6)


def test_attn_mlp_capture_matches_plain_hooks(fam):
    _, model, blocks, _, _ = fam
    ids, mask = _inputs()
    seen: dict[str, torch.Tensor] = {}
    handles = []
    for layer in range(LAYERS):
        for kind in ("attn_out", "mlp_out"):
            key = f"{kind}.{layer}"
            handles.append(
                _submodule(fam, kind, layer).register_forward_hook(
                    lambda m, a, out, key=key: seen.__setitem__(key, _first(out).detach().clone())
                )
            )
    try:
        with torch.no_grad():
            model(input_ids=ids, attention_mask=mask)
    finally:
        for h in handles:
            h.remove()
    for key, expected in seen.items():
        torch.testing.assert_close(capture(model, key, ids, mask), expected, rtol=0, atol=1e-6)
    # What is "added to the residual stream": resid_post - resid_pre == attn_out + mlp_out, in every family.
    for layer in range(LAYERS):
        acts = capture_many(model, [f"{kind}.{layer}" for kind in KINDS], ids, mask, stop=False)
        delta = acts[f"resid_post.{layer}"] - acts[f"resid_pre.{layer}"]
        torch.testing.assert_close(delta, acts[f"attn_out.{layer}"] + acts[f"mlp_out.{layer}"], rtol=1e-5, atol=1e-5)


def test_stop_skips_later_layers(fam):
    _, model, blocks, _, _ = fam
    ids, mask = _inputs()
    calls = {"later": 0, "head": 0, "block1": 0}
    watched = [(blocks[2], "later"), (model.get_output_embeddings(), "head"), (blocks[1], "block1")]
    handles = [m.register_forward_hook(lambda *a, k=k: calls.__setitem__(k, calls[k] + 1)) for m, k in watched]
    try:
        for kind in KINDS:
            capture(model, f"{kind}.1", ids, mask)
        assert calls["later"] == 0 and calls["head"] == 0
        assert calls["block1"] == 1  # only resid_post.1 needs block 1 to return
        acts = capture_many(model, ["resid_post.1", "attn_out.0"], ids, mask)
        assert set(acts) == {"resid_post.1", "attn_out.0"}
        assert calls["later"] == 0 and calls["block1"] == 2
        capture(model, "resid_post.1", ids, mask, stop=False)
        assert calls["later"] == 1 and calls["head"] == 1
    finally:
        for h in handles:
            h.remove()


def _logits(model, ids, mask):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).logits


@pytest.mark.parametrize("kind", KINDS)
def test_edit_identity_and_zero_ablation(fam, kind):
    _, model, _, _, _ = fam
    ids, mask = _inputs()
    clean = _logits(model, ids, mask)
    with edit(model, f"{kind}.1", lambda act: act):
        assert torch.equal(_logits(model, ids, mask), clean)
    with edit(model, f"{kind}.1", torch.zeros_like):
        ablated = _logits(model, ids, mask)
    handle = _manual_zero(fam, kind, 1)
    try:
        manual = _logits(model, ids, mask)
    finally:
        handle.remove()
    torch.testing.assert_close(ablated, manual, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(ablated, clean, atol=1e-3)
    assert torch.equal(_logits(model, ids, mask), clean)  # hooks are gone


def test_edit_resid_pre_equals_edit_previous_resid_post(fam):
    _, model, _, _, _ = fam
    ids, mask = _inputs()
    vec = torch.randn(HIDDEN, generator=torch.Generator().manual_seed(3))
    with edit(model, "resid_pre.2", lambda act: act + vec):
        a = _logits(model, ids, mask)
    with edit(model, "blocks.1.hook_resid_post", lambda act: act + vec):
        b = _logits(model, ids, mask)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_edit_in_generate_with_kv_cache(fam):
    _, model, _, _, _ = fam
    ids, _ = _inputs(pad=False)
    ids = ids[:1]
    vec = 4.0 * torch.randn(HIDDEN, generator=torch.Generator().manual_seed(4))
    lengths: list[int] = []

    def steer(act):
        lengths.append(act.shape[1])
        return act + vec

    with edit(model, "mlp_out.1", steer), torch.no_grad():
        out = model.generate(ids, max_new_tokens=4, do_sample=False, use_cache=True, pad_token_id=0)
    new = out[0, ids.shape[1] :]
    assert lengths == [ids.shape[1], 1, 1, 1]  # prompt, then one token per step through the KV cache
    # Reference: greedy decoding without a cache, re-running the whole sequence under the same edit each step.
    seq = ids
    with edit(model, "mlp_out.1", lambda act: act + vec):
        for _ in range(4):
            nxt = _logits(model, seq, torch.ones_like(seq))[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], dim=1)
    assert torch.equal(new, seq[0, ids.shape[1] :])


class _TupleBlock(nn.Module):
    """An old-style block: takes ``hidden_states`` by keyword, returns ``(hidden_states, extra)``."""

    def __init__(self) -> None:
        super().__init__()
        self.self_attn = nn.Linear(4, 4)
        self.mlp = nn.Linear(4, 4)

    def forward(self, hidden_states=None, scale=1.0):
        a = self.self_attn(hidden_states)
        h = hidden_states + a
        return h + self.mlp(h) * scale, "extra"


class _ToyModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.layers = nn.ModuleList([_TupleBlock() for _ in range(3)])

    def forward(self, input_ids, attention_mask=None, use_cache=False):
        h = self.embed(input_ids)
        outs = []
        for block in self.layers:
            h, extra = block(hidden_states=h)
            outs.append(extra)
        return h


def test_tuple_outputs_and_keyword_hidden_states():
    torch.manual_seed(0)
    model = _ToyModel().eval()
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        h0 = model.embed(ids)
        h1 = model.layers[0](hidden_states=h0)[0]
    torch.testing.assert_close(capture(model, "resid_pre.1", ids), h1)
    torch.testing.assert_close(capture(model, "resid_post.0", ids), h1)
    with edit(model, "resid_post.0", torch.zeros_like), edit(model, "resid_pre.2", lambda a: a + 1.0):
        edited = model(ids)
    with torch.no_grad():
        h2 = model.layers[1](hidden_states=torch.zeros_like(h1))[0]
        expected = model.layers[2](hidden_states=h2 + 1.0)[0]
    torch.testing.assert_close(edited, expected)


def test_hookpoint_parse_and_names():
    h = HookPoint.parse("resid_post.15")
    assert h == HookPoint("resid_post", 15) and str(h) == "resid_post.15"
    assert h.saelens_name == "blocks.15.hook_resid_post"
    for kind in KINDS:
        assert HookPoint.parse(f"blocks.7.hook_{kind}") == HookPoint(kind, 7)
        assert HookPoint.parse(HookPoint.parse(f"{kind}.3").saelens_name) == HookPoint(kind, 3)
    points = sorted([HookPoint.parse(s) for s in ["resid_post.1", "resid_pre.2", "mlp_out.1"]], key=lambda p: p.order)
    assert points == [HookPoint("mlp_out", 1), HookPoint("resid_post", 1), HookPoint("resid_pre", 2)]
    for bad in ["resid.3", "resid_post", "resid_post.-1", "blocks.x.hook_resid_post", ""]:
        with pytest.raises(ValueError, match="hook point"):
            HookPoint.parse(bad)
    with pytest.raises(ValueError, match="hook kind"):
        HookPoint("embed", 0)


def test_errors_and_cleanup(fam):
    _, model, blocks, _, _ = fam
    ids, mask = _inputs()
    with pytest.raises(ValueError, match=r"out of range.*3 layers"):
        capture(model, "resid_post.3", ids)
    with pytest.raises(ValueError, match="out of range"), edit(model, "mlp_out.9", lambda a: a):
        pass
    n_hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    with pytest.raises(RuntimeError, match="boom"), edit(model, "attn_out.1", torch.zeros_like):
        raise RuntimeError("boom")
    with pytest.raises(ValueError, match="changed the shape"), edit(model, "resid_post.0", lambda a: a[:, :1]):
        _logits(model, ids, mask)
    with pytest.raises(TypeError, match="must return a tensor"), edit(model, "resid_pre.0", lambda a: None):
        _logits(model, ids, mask)
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()) == n_hooks
    out = capture(model, "resid_post.0", ids, mask)
    assert not out.is_inference() and not out.requires_grad
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()) == n_hooks
