"""SAELens interoperability, both ways: ``sae_lens.SAE.load_from_disk`` reads what chatsae saves and gives the same
encode/decode outputs, and chatsae's ``load_sae`` reads what SAELens's ``save_model`` writes.

Runs only where ``sae_lens`` is importable: ``make compat`` builds ``.venv-saelens`` (sae-lens pins its own
dependencies) and runs this file there.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

sae_lens = pytest.importorskip("sae_lens")

from chatsae.sae import load_sae, save_sae  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")

D_IN, D_SAE = 16, 48
VARIANTS = [("jumprelu", "direct"), ("jumprelu", "log"), ("standard", None), ("topk", None), ("gated", None)]
TOL = {"rtol": 1e-5, "atol": 1e-5}
SAELENS_CLASSES = {
    "jumprelu": ("JumpReLUSAE", "JumpReLUSAEConfig"),
    "standard": ("StandardSAE", "StandardSAEConfig"),
    "topk": ("TopKSAE", "TopKSAEConfig"),
    "gated": ("GatedSAE", "GatedSAEConfig"),
}


def inputs(scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(11)
    return scale * torch.randn(32, D_IN, generator=g)


def assert_same_outputs(ours, theirs, x: torch.Tensor) -> None:
    f_ours, f_theirs = ours.encode(x), theirs.encode(x)
    scale = x.abs().max().item()
    tol = {"rtol": TOL["rtol"], "atol": TOL["atol"] * max(scale, 1.0)}
    assert (f_ours != 0).any() and (f_ours == 0).any()  # a sparse code, not a degenerate one
    torch.testing.assert_close(f_theirs, f_ours, **tol)
    torch.testing.assert_close(theirs.decode(f_ours), ours.decode(f_ours), **tol)
    torch.testing.assert_close(theirs(x), ours(x), **tol)


@pytest.mark.parametrize("folded", [False, True])
@pytest.mark.parametrize(("arch", "param"), VARIANTS)
def test_saelens_loads_chatsae_sae(random_sae, tmp_path: Path, arch: str, param: str | None, folded: bool) -> None:
    cfg = {"jumprelu_threshold_param": param} if param else {}
    meta = {"model_name": "embedded", "hook_name": "resid_post.15", "context_size": 2048, "method": "fast"}
    ours = random_sae(arch, d_in=D_IN, d_sae=D_SAE, metadata=meta, **cfg)
    scale = 1.0
    if folded:  # a trained SAE is saved with its input scale folded in; check at raw-activation magnitudes
        scale = 150.0
        ours.fold_input_scale(scale)
    path = save_sae(ours, tmp_path / arch)

    theirs = sae_lens.SAE.load_from_disk(path)
    assert type(theirs).__name__ == SAELENS_CLASSES[arch][0]
    assert theirs.cfg.architecture() == arch
    assert (theirs.cfg.d_in, theirs.cfg.d_sae) == (D_IN, D_SAE)
    assert theirs.cfg.apply_b_dec_to_input == ours.cfg.apply_b_dec_to_input
    assert theirs.cfg.normalize_activations == "none"
    if arch == "topk":
        assert theirs.cfg.k == ours.cfg.k and theirs.cfg.rescale_acts_by_decoder_norm is False
    # metadata survives (SAELens's view of the hook is the TransformerLens name)
    assert theirs.cfg.metadata.hook_name == "blocks.15.hook_resid_post"
    assert theirs.cfg.metadata.model_name == "embedded" and theirs.cfg.metadata.context_size == 2048
    assert theirs.cfg.metadata.method == "fast"
    assert_same_outputs(ours, theirs, inputs(scale))


def random_saelens_sae(arch: str, **cfg_kw):
    cls_name, cfg_name = SAELENS_CLASSES[arch]
    cfg_cls = getattr(sae_lens, cfg_name)
    meta = sae_lens.saes.sae.SAEMetadata(hook_name="blocks.4.hook_resid_post", model_name="gpt2")
    sae = getattr(sae_lens, cls_name)(cfg_cls(d_in=D_IN, d_sae=D_SAE, metadata=meta, **cfg_kw))
    torch.manual_seed(3)
    with torch.no_grad():
        for name, p in sae.named_parameters():
            if name == "threshold":
                p.copy_(0.05 + 0.25 * torch.rand_like(p))
            elif name.startswith("W_"):
                p.copy_(torch.randn_like(p) / D_IN**0.5)
            else:  # biases and r_mag
                p.copy_(0.2 * torch.randn_like(p))
    return sae


@pytest.mark.parametrize(
    ("arch", "cfg_kw"),
    [
        ("jumprelu", {}),
        ("jumprelu", {"apply_b_dec_to_input": True}),
        ("standard", {}),
        ("standard", {"apply_b_dec_to_input": False}),
        ("topk", {"k": 6}),
        ("topk", {"k": 6, "rescale_acts_by_decoder_norm": True}),
        ("gated", {}),
    ],
)
def test_chatsae_loads_saelens_sae(tmp_path: Path, arch: str, cfg_kw: dict) -> None:
    theirs = random_saelens_sae(arch, **cfg_kw)
    assert (theirs.W_dec.norm(dim=1) - 1).abs().max() > 0.1  # non-unit decoder rows: the rescale case matters
    theirs.save_model(tmp_path / arch)

    ours = load_sae(tmp_path / arch)
    assert ours.architecture == arch
    assert ours.cfg.apply_b_dec_to_input == theirs.cfg.apply_b_dec_to_input
    assert ours.cfg.metadata["hook_name"] == "blocks.4.hook_resid_post"
    if arch == "topk":
        assert ours.cfg.k == 6
    assert_same_outputs(ours, theirs, inputs())
    # and back: chatsae re-saves it, SAELens reads it again
    path = save_sae(ours, tmp_path / f"{arch}_again")
    assert_same_outputs(ours, sae_lens.SAE.load_from_disk(path), inputs())


def test_saelens_training_jumprelu_inference_save(tmp_path: Path) -> None:
    """A SAELens *training* SAE written with ``save_inference_model`` (the file a SAELens training run leaves)."""
    cfg = sae_lens.JumpReLUTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, jumprelu_init_threshold=0.1)
    theirs = sae_lens.JumpReLUTrainingSAE(cfg)
    with torch.no_grad():
        theirs.b_enc.copy_(0.2 * torch.randn(D_SAE))
        theirs.b_dec.copy_(0.2 * torch.randn(D_IN))
    theirs.save_inference_model(tmp_path / "t")
    ours = load_sae(tmp_path / "t")
    reference = sae_lens.SAE.load_from_disk(tmp_path / "t")
    assert_same_outputs(ours, reference, inputs())


def test_saelens_jumprelu_with_zero_thresholds(tmp_path: Path) -> None:
    """SAELens initialises thresholds at 0 (a plain ReLU): chatsae loads that with the direct parametrisation."""
    theirs = random_saelens_sae("jumprelu")
    with torch.no_grad():
        theirs.threshold.zero_()
    theirs.save_model(tmp_path / "z")
    ours = load_sae(tmp_path / "z")
    assert ours.cfg.jumprelu_threshold_param == "direct"
    assert_same_outputs(ours, theirs, inputs())


# ---- BatchTopK and Matryoshka (SAELens saves both as jumprelu) --------------------------------------------------
K_ARCHS = [("batchtopk", {}), ("matryoshka", {"matryoshka_prefixes": [6, 24, D_SAE]})]


def saelens_batchtopk(arch: str, **cfg_kw):
    """SAELens's own training SAE for ``arch``."""
    if arch == "batchtopk":
        return sae_lens.BatchTopKTrainingSAE(sae_lens.BatchTopKTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, **cfg_kw))
    cfg = sae_lens.MatryoshkaBatchTopKTrainingSAEConfig(
        d_in=D_IN, d_sae=D_SAE, matryoshka_widths=[6, 24, D_SAE], **cfg_kw
    )
    return sae_lens.MatryoshkaBatchTopKTrainingSAE(cfg)


def saelens_step(sae, x: torch.Tensor, dead: torch.Tensor | None = None):
    step = sae_lens.saes.sae.TrainStepInput(
        sae_in=x, coefficients={}, dead_neuron_mask=dead, n_training_steps=0, is_logging_step=False
    )
    return sae.training_forward_pass(step)


@pytest.mark.parametrize("folded", [False, True])
@pytest.mark.parametrize(("arch", "kw"), K_ARCHS)
def test_saelens_loads_chatsae_batchtopk_as_jumprelu(random_sae, tmp_path: Path, arch: str, kw: dict, folded: bool):
    ours = random_sae(arch, d_in=D_IN, d_sae=D_SAE, **kw)
    ours.loss(inputs())  # sets the threshold from a batch
    assert float(ours.threshold) > 0
    scale = 150.0 if folded else 1.0
    ours.fold_input_scale(scale)
    path = save_sae(ours, tmp_path / arch)
    theirs = sae_lens.SAE.load_from_disk(path)
    assert type(theirs).__name__ == "JumpReLUSAE"
    torch.testing.assert_close(theirs.threshold, ours.threshold.expand(D_SAE), rtol=0, atol=0)
    assert_same_outputs(ours, theirs, inputs(scale))
    back = load_sae(path)  # chatsae's own block: read back as the same architecture
    assert back.architecture == arch and float(back.threshold) == float(ours.threshold)


@pytest.mark.parametrize("kernel", ["reference", "sparse"])
@pytest.mark.parametrize(("arch", "kw"), K_ARCHS)
def test_training_loss_and_gradients_match_saelens(random_sae, arch: str, kw: dict, kernel: str):
    """Same weights, same batch: chatsae's loss and gradients equal SAELens's training_forward_pass (the summed
    Matryoshka levels with b_dec in each; no dead latents: SAELens's AuxK does not ReLU the dead latents' values)."""
    ours = random_sae(arch, d_in=D_IN, d_sae=D_SAE, k=4, **kw)
    ours.kernel = kernel
    theirs = saelens_batchtopk(arch, k=4, rescale_acts_by_decoder_norm=False)
    with torch.no_grad():
        for name in ("W_enc", "W_dec", "b_enc", "b_dec"):
            getattr(theirs, name).copy_(getattr(ours, name))
    x = inputs()
    out = ours.loss(x, 0.0, torch.zeros(D_SAE, dtype=torch.bool))
    ref = saelens_step(theirs, x, torch.zeros(D_SAE, dtype=torch.bool))
    torch.testing.assert_close(out.loss, ref.loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.feature_acts, ref.feature_acts, rtol=1e-6, atol=1e-6)
    out.loss.backward()
    ref.loss.backward()
    for name in ("W_enc", "W_dec", "b_enc", "b_dec"):
        torch.testing.assert_close(getattr(ours, name).grad, getattr(theirs, name).grad, rtol=1e-4, atol=1e-5)
    # threshold: SAELens starts its moving average at 0, chatsae averages the first 1 / lr batches; both then follow
    # the same rule: theta <- (1 - lr) theta + lr m
    m = float(ref.feature_acts.detach()[ref.feature_acts > 0].min())
    assert float(theirs.topk_threshold) == pytest.approx(0.01 * m) and float(ours.topk_threshold) == pytest.approx(m)
    ours.loss(x * 0.5)
    ref2 = saelens_step(theirs, x * 0.5)
    m2 = float(ref2.feature_acts.detach()[ref2.feature_acts > 0].min())
    assert float(ours.topk_threshold) == pytest.approx((m + m2) / 2, rel=1e-5)
    assert float(theirs.topk_threshold) == pytest.approx(0.99 * 0.01 * m + 0.01 * m2, rel=1e-5)


@pytest.mark.parametrize(("arch", "kw"), K_ARCHS)
def test_chatsae_loads_saelens_batchtopk_inference_save(tmp_path: Path, arch: str, kw: dict) -> None:
    """What a SAELens BatchTopK / Matryoshka training run leaves (save_inference_model: jumprelu, the decoder norms
    folded into the encoder) loads in chatsae as a JumpReLU SAE with the same outputs."""
    torch.manual_seed(0)
    theirs = saelens_batchtopk(arch, k=4)  # rescale_acts_by_decoder_norm (SAELens's default), decoder norms 0.1
    with torch.no_grad():
        theirs.b_enc.copy_(0.2 * torch.randn(D_SAE))
        theirs.b_dec.copy_(0.2 * torch.randn(D_IN))
    for _ in range(3):
        saelens_step(theirs, inputs())
    assert float(theirs.topk_threshold) > 0
    theirs.save_inference_model(tmp_path / "t")
    ours = load_sae(tmp_path / "t")
    assert ours.architecture == "jumprelu"
    assert_same_outputs(ours, sae_lens.SAE.load_from_disk(tmp_path / "t"), inputs())
