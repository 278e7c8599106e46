"""Matryoshka SAE: the summed prefix losses and gradients against a naive implementation (both kernels), the prefix
widths and their errors, save/load, scale folding and a short training run."""

from __future__ import annotations

import json

import pytest
import torch
from test_sae_batchtopk import grads, make, naive_loss

from chatsae.cli import main
from chatsae.core.config import ConfigError
from chatsae.sae import MatryoshkaSAE, SAEConfig, create_sae, load_sae, save_sae


@pytest.mark.parametrize("kernel", ["reference", "sparse"])
@pytest.mark.parametrize("with_dead", [False, True])
def test_loss_and_gradients_match_naive(kernel, with_dead):
    widths = [4, 12, 20, 48]
    sae = make("matryoshka", matryoshka_prefixes=widths, aux_k=5)
    assert isinstance(sae, MatryoshkaSAE)
    sae.kernel = kernel
    x = torch.randn(40, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    dead = torch.zeros(48, dtype=torch.bool)
    if with_dead:
        dead[1::4] = True
    want = naive_loss(sae, x, dead, widths)
    want_g = grads(sae, want)
    out = sae.loss(x, 0.0, dead)
    got_g = grads(sae, out.loss)
    assert float(out.loss.detach()) == pytest.approx(float(want.detach()), rel=1e-12)
    # the full SAE's mse is reported alone; the inner levels add to the loss only
    full_only = naive_loss(sae, x, None, [48])
    assert float(out.mse.detach()) == pytest.approx(float(full_only.detach()), rel=1e-12)
    assert float(out.loss.detach()) > float(out.mse.detach() + out.aux.detach()) + 1e-6
    for name, g in want_g.items():
        torch.testing.assert_close(got_g[name], g, rtol=1e-10, atol=1e-12, msg=name)


def test_default_prefixes_and_errors():
    assert SAEConfig(architecture="matryoshka", d_sae=4608).prefix_widths() == [288, 576, 1152, 2304, 4608]
    assert SAEConfig(architecture="matryoshka", d_in=4, d_sae=20, k=2).prefix_widths() == [1, 2, 5, 10, 20]
    with pytest.raises(ConfigError, match="matryoshka-prefixes"):
        SAEConfig(architecture="matryoshka", matryoshka_prefixes=[64, 32, 4608])
    with pytest.raises(ConfigError, match="matryoshka-prefixes"):
        SAEConfig(architecture="matryoshka", matryoshka_prefixes=[0, 4608])
    with pytest.raises(ConfigError, match="must end at d_sae=4608"):  # checked when the SAE is built
        create_sae(SAEConfig(architecture="matryoshka", matryoshka_prefixes=[64, 128]))


def test_save_load_roundtrip(tmp_path):
    sae = make("matryoshka", matryoshka_prefixes=[6, 24, 48])
    sae.loss(torch.randn(64, 12, dtype=torch.float64))
    save_sae(sae, tmp_path / "m")
    raw = json.loads((tmp_path / "m" / "cfg.json").read_text())
    assert raw["architecture"] == "jumprelu" and raw["chatsae"]["matryoshka_prefixes"] == [6, 24, 48]
    back = load_sae(tmp_path / "m")
    assert isinstance(back, MatryoshkaSAE) and back.levels() == [6, 24, 48]
    x = torch.randn(30, 12, dtype=torch.float64) * 2
    torch.testing.assert_close(back.encode(x), sae.encode(x), rtol=0, atol=0)
    torch.testing.assert_close(back(x), sae(x), rtol=0, atol=0)


def test_fold_input_scale_keeps_outputs():
    sae = make("matryoshka", matryoshka_prefixes=[6, 24, 48])
    sae.loss(torch.randn(64, 12, dtype=torch.float64))
    x = torch.randn(30, 12, dtype=torch.float64) * 3
    f, x_hat = sae.encode(x / 4.0), sae(x / 4.0)
    sae.fold_input_scale(4.0)
    torch.testing.assert_close(sae.encode(x), 4.0 * f)
    torch.testing.assert_close(sae(x), 4.0 * x_hat)


def test_training_reduces_loss_and_orders_latents():
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(32, 16, generator=g)
    freq = torch.linspace(0.4, 0.02, 32)  # a few frequent features, many rare ones
    codes = (torch.rand(4096, 32, generator=g) < freq) * torch.rand(4096, 32, generator=g)
    x = codes @ feats
    sae = create_sae(SAEConfig(architecture="matryoshka", d_in=16, d_sae=64, k=4, matryoshka_prefixes=[8, 64]), seed=0)
    opt = torch.optim.Adam(sae.parameters(), lr=3e-3)
    losses = []
    for step in range(80):
        out = sae.loss(x[(step % 16) * 256 : (step % 16 + 1) * 256])
        opt.zero_grad()
        out.loss.backward()
        sae.remove_parallel_decoder_grad()
        opt.step()
        sae.normalize_decoder()
        losses.append(float(out.loss.detach()))
    assert sum(losses[-8:]) < 0.6 * sum(losses[:8])
    with torch.no_grad():  # the first prefix must reconstruct alone: its latents fire more often than the rest
        fired = (sae.encode(x) > 0).float().mean(0)
    assert float(fired[:8].mean()) > 2 * float(fired[8:].mean())


def test_cli_trains_and_saves_matryoshka(tmp_path):
    args = ["train", "--arch", "matryoshka", "--activations", "synthetic", "--d-in", "16", "--width", "64"]
    args += ["--k", "4", "--matryoshka-prefixes", "8,16,64", "--total-tokens", "2048", "--batch-size", "256"]
    args += ["--init-sample-tokens", "256", "--no-progress", "--out-dir", str(tmp_path / "run")]
    assert main(args) == 0
    sae = load_sae(tmp_path / "run" / "sae")
    assert isinstance(sae, MatryoshkaSAE) and sae.levels() == [8, 16, 64] and sae.cfg.k == 4
    assert float(sae.threshold) > 0  # estimated in training, saved in raw-activation units
    assert main([*args[:-2], "--out-dir", str(tmp_path / "bad"), "--matryoshka-prefixes", "8,16"]) == 1
