"""BatchTopK SAE: loss and gradients against a naive implementation (both kernels), the candidate selection, the
threshold estimate by hand, JumpReLU inference, save/load, scale folding, checkpoint state and a short training run."""

from __future__ import annotations

import json

import pytest
import torch

from chatsae.core.config import ConfigError
from chatsae.sae import BatchTopKSAE, SAEConfig, create_sae, load_sae, save_sae
from chatsae.sae.batchtopk_kernel import batch_topk_entries


def make(arch: str = "batchtopk", d_in: int = 12, d_sae: int = 48, k: int = 3, **kw) -> BatchTopKSAE:
    sae = create_sae(SAEConfig(architecture=arch, d_in=d_in, d_sae=d_sae, k=k, dtype="float64", **kw), seed=3)
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.2, generator=torch.Generator().manual_seed(1))
        sae.b_dec.normal_(0, 0.2, generator=torch.Generator().manual_seed(2))
    assert isinstance(sae, BatchTopKSAE)
    return sae


def naive_loss(sae: BatchTopKSAE, x: torch.Tensor, dead: torch.Tensor | None, widths: list[int]) -> torch.Tensor:
    """Sum over levels of ||x - f[:, :w] W_dec[:w] - b_dec||^2 (f: the k*B largest ReLU'd entries of the batch, by a
    full sort) plus AuxK (per row, the k_aux largest dead pre-activations, ReLU'd, decode the detached residual)."""
    c = sae.cfg
    z = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    B, d = z.shape
    r = z.relu().reshape(-1)
    keep = torch.zeros_like(r, dtype=torch.bool)
    keep[torch.argsort(r.detach(), descending=True)[: c.k * B]] = True
    f = (r * keep).reshape(B, d)
    loss = z.new_zeros(())
    for w in widths:
        loss = loss + ((f[:, :w] @ sae.W_dec[:w] + sae.b_dec - x) ** 2).sum(1).mean()
    if dead is None or not dead.any():
        return loss
    k_aux = c.aux_k or c.d_in // 2
    n_dead = int(dead.sum())
    kd, scale = min(k_aux, n_dead), c.aux_coef * min(n_dead / k_aux, 1.0)
    residual = (x - (f @ sae.W_dec + sae.b_dec)).detach()
    dead_cols = dead.nonzero().squeeze(1)
    fa = torch.zeros_like(z)
    for b in range(B):
        top = torch.argsort(z[b, dead_cols].detach(), descending=True)[:kd]
        cols = dead_cols[top]
        fa = fa.index_put((torch.full_like(cols, b), cols), z[b, cols].relu())
    return loss + scale * ((fa @ sae.W_dec - residual) ** 2).sum(1).mean()


def grads(sae: BatchTopKSAE, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    sae.zero_grad()
    loss.backward()
    return {n: p.grad.clone() for n, p in sae.named_parameters()}


@pytest.mark.parametrize("kernel", ["reference", "sparse"])
@pytest.mark.parametrize("with_dead", [False, True])
def test_loss_and_gradients_match_naive(kernel, with_dead):
    sae = make(aux_k=5)
    sae.kernel = kernel
    x = torch.randn(40, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    dead = torch.zeros(48, dtype=torch.bool)
    if with_dead:
        dead[::3] = True
    want = naive_loss(sae, x, dead, [48])
    want_g = grads(sae, want)
    out = sae.loss(x, 0.0, dead)
    got_g = grads(sae, out.loss)
    assert float(out.loss.detach()) == pytest.approx(float(want.detach()), rel=1e-12)
    assert (float(out.aux.detach()) > 0) == with_dead
    assert float(out.sparsity.detach()) == pytest.approx(3.0)  # k * B entries kept, all positive here
    assert int((out.feature_acts > 0).sum()) == 3 * 40
    for name, g in want_g.items():
        torch.testing.assert_close(got_g[name], g, rtol=1e-10, atol=1e-12, msg=name)


def test_candidate_selection_matches_full_topk():
    g = torch.Generator().manual_seed(0)
    for B, d, k, shift in ((600, 200, 4, 0.0), (600, 200, 4, -4.0), (7, 30, 2, 0.0)):
        z = torch.randn(B, d, generator=g) + shift  # shift -4: fewer than k*B positives (the fallback pass)
        idx, vals = batch_topk_entries(z, k * B)
        top = z.relu().reshape(-1).topk(k * B)
        positive = top.values > 0
        assert idx.tolist() == sorted(top.indices[positive].tolist())
        torch.testing.assert_close(vals, z.reshape(-1)[idx], rtol=0, atol=0)
        assert bool((idx[1:] > idx[:-1]).all())


def test_threshold_moving_average_by_hand():
    sae = create_sae(SAEConfig(architecture="batchtopk", d_in=4, d_sae=4, k=1, batchtopk_threshold_lr=0.1), seed=0)
    sae.kernel = "reference"
    with torch.no_grad():  # z = x exactly: W_enc = I, no biases, no b_dec subtraction effect (b_dec = 0)
        sae.W_enc.copy_(torch.eye(4))
    assert float(sae.threshold) == 0.0 and int(sae.threshold_updates) == 0
    # k * B = 2 kept of [[5, 1, 0, 0], [4, 3, 0, 0]]: 5 and 4 -> the smallest kept is 4
    sae.loss(torch.tensor([[5.0, 1.0, 0.0, 0.0], [4.0, 3.0, 0.0, 0.0]]))
    assert float(sae.topk_threshold) == pytest.approx(4.0)  # the first batch sets it
    sae.loss(torch.tensor([[2.0, 1.0, 0.0, 0.0], [0.5, 0.0, 0.0, 0.0]]))  # kept 2 and 1 -> 1
    assert float(sae.topk_threshold) == pytest.approx((4.0 + 1.0) / 2)  # rate max(0.1, 1/2): the mean so far
    sae.loss(-torch.ones(2, 4))  # nothing positive: unchanged, not counted
    assert float(sae.topk_threshold) == pytest.approx(2.5) and int(sae.threshold_updates) == 2
    for _ in range(8):  # updates 3..10 at m = 4: the mean of the ten batches
        sae.loss(torch.tensor([[4.0, 0.0, 0.0, 0.0]]))
    theta = (4.0 + 1.0 + 8 * 4.0) / 10
    assert float(sae.topk_threshold) == pytest.approx(theta)
    sae.loss(torch.tensor([[6.0, 0.0, 0.0, 0.0]]))  # the 11th: rate lr = 0.1 from now on (SAELens's rule)
    theta = 0.9 * theta + 0.1 * 6.0
    assert float(sae.topk_threshold) == pytest.approx(theta)
    sae.eval()
    sae.loss(torch.tensor([[9.0, 0.0, 0.0, 0.0]]))  # eval mode: no update
    assert float(sae.topk_threshold) == pytest.approx(theta)
    # inference: JumpReLU with theta (3.93)
    f = sae.encode(torch.tensor([[3.9, 4.0, -1.0, 10.0]]))
    assert f.tolist() == [[0.0, 4.0, 0.0, 10.0]]


def test_sparse_kernel_updates_threshold_like_reference():
    x = torch.randn(64, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    thetas = []
    for kernel in ("reference", "sparse"):
        sae = make()
        sae.kernel = kernel
        sae.loss(x)
        sae.loss(x * 0.5)
        thetas.append(float(sae.topk_threshold))
    assert thetas[0] == pytest.approx(thetas[1], rel=1e-12) and thetas[0] > 0


def test_save_load_roundtrip_and_saelens_view(tmp_path):
    sae = make()
    sae.loss(torch.randn(64, 12, dtype=torch.float64))
    save_sae(sae, tmp_path / "s")
    raw = json.loads((tmp_path / "s" / "cfg.json").read_text())
    assert raw["architecture"] == "jumprelu" and raw["chatsae"]["architecture"] == "batchtopk"
    back = load_sae(tmp_path / "s")
    assert isinstance(back, BatchTopKSAE) and back.cfg.k == 3
    assert float(back.threshold) == float(sae.threshold) > 0
    x = torch.randn(30, 12, dtype=torch.float64) * 2
    torch.testing.assert_close(back.encode(x), sae.encode(x), rtol=0, atol=0)
    torch.testing.assert_close(back(x), sae(x), rtol=0, atol=0)
    assert 0 < int((back.encode(x) > 0).sum()) < x.shape[0] * 48  # the threshold cuts


def test_fold_input_scale_keeps_outputs():
    sae = make()
    sae.loss(torch.randn(64, 12, dtype=torch.float64))
    x = torch.randn(30, 12, dtype=torch.float64) * 3
    s = 2.5
    f, x_hat = sae.encode(x / s), sae(x / s)
    sae.fold_input_scale(s)
    torch.testing.assert_close(sae.encode(x), s * f)
    torch.testing.assert_close(sae(x), s * x_hat)


def test_checkpoint_state_holds_threshold():
    sae = make()
    sae.loss(torch.randn(64, 12, dtype=torch.float64))
    other = make()
    other.load_state_dict(sae.state_dict())
    assert float(other.topk_threshold) == float(sae.topk_threshold) > 0 and int(other.threshold_updates) == 1


def test_training_reduces_loss():
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(32, 16, generator=g)
    codes = (torch.rand(2048, 32, generator=g) < 0.1) * torch.rand(2048, 32, generator=g)
    x = codes @ feats
    cfg = SAEConfig(architecture="batchtopk", d_in=16, d_sae=64, k=4, batchtopk_threshold_lr=0.2)
    sae = create_sae(cfg, seed=0)
    opt = torch.optim.Adam(sae.parameters(), lr=3e-3)
    losses = []
    for step in range(60):
        out = sae.loss(x[(step % 8) * 256 : (step % 8 + 1) * 256])
        opt.zero_grad()
        out.loss.backward()
        sae.remove_parallel_decoder_grad()
        opt.step()
        sae.normalize_decoder()
        losses.append(float(out.mse.detach()))
    assert sum(losses[-8:]) < 0.6 * sum(losses[:8])
    with torch.no_grad():  # inference L0 with the learnt threshold (a fast moving average here) is near k
        l0 = float((sae.encode(x) > 0).sum(-1).float().mean())
    assert 3 < l0 < 5.5, l0


def test_config_errors():
    with pytest.raises(ConfigError, match="k"):
        SAEConfig(architecture="batchtopk", d_in=4, d_sae=8, k=9)
    with pytest.raises(ConfigError, match="batchtopk-threshold-lr"):
        SAEConfig(architecture="batchtopk", batchtopk_threshold_lr=0.0)
    with pytest.raises(ValueError, match="one non-negative threshold"):
        make().load_saelens_state_dict({**make().saelens_state_dict(), "threshold": torch.rand(48)})
