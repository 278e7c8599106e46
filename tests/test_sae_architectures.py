"""Forward passes and losses of every architecture against naive references written from methods.md §2-3,
TopK's AuxK, the Gated frozen-decoder auxiliary loss, the decoder-norm constraint and input-scale folding."""

from __future__ import annotations

import copy

import pytest
import torch

from chatsae.sae import ARCHITECTURES, SAEConfig, create_sae

pytestmark = pytest.mark.usefixtures("single_thread")

D_IN, D_SAE, BATCH = 16, 48, 10
VARIANTS = [("jumprelu", "direct"), ("jumprelu", "log"), ("standard", None), ("topk", None), ("gated", None)]


def make(random_sae, arch: str, param: str | None = None, **cfg):
    if param is not None:
        cfg["jumprelu_threshold_param"] = param
    return random_sae(arch, d_in=D_IN, d_sae=D_SAE, **cfg).double()


def loop_pre(x: torch.Tensor, W: torch.Tensor, b: torch.Tensor | None, b_dec: torch.Tensor | None) -> list[list[float]]:
    """z_bi = sum_j (x_bj - b_dec_j) W_ji + b_i with explicit loops (b_dec None: not subtracted)."""
    rows = []
    for xb in x.tolist():
        xin = xb if b_dec is None else [a - c for a, c in zip(xb, b_dec.tolist(), strict=True)]
        rows.append(
            [
                sum(xin[j] * W[j, i].item() for j in range(W.shape[0])) + (0.0 if b is None else b[i].item())
                for i in range(W.shape[1])
            ]
        )
    return rows


def naive_decode(f: list[list[float]], sae) -> torch.Tensor:
    return torch.tensor(f, dtype=torch.float64) @ sae.W_dec.detach() + sae.b_dec.detach()


def b_dec_or_none(sae) -> torch.Tensor | None:
    return sae.b_dec.detach() if sae.cfg.apply_b_dec_to_input else None


@pytest.mark.parametrize("param", ["direct", "log"])
def test_jumprelu_forward_matches_loops(random_sae, param: str) -> None:
    sae = make(random_sae, "jumprelu", param)
    x = torch.randn(BATCH, D_IN, dtype=torch.float64)
    z = loop_pre(x, sae.W_enc.detach(), sae.b_enc.detach(), b_dec_or_none(sae))
    theta = sae.threshold.tolist()
    f = [[v if v > t else 0.0 for v, t in zip(row, theta, strict=True)] for row in z]
    assert 0 < sum(v != 0 for row in f for v in row) < BATCH * D_SAE
    torch.testing.assert_close(sae.encode(x), torch.tensor(f, dtype=torch.float64))
    torch.testing.assert_close(sae(x), naive_decode(f, sae))
    out = sae.loss(x, 0.5)
    n_active = sum(v != 0 for row in f for v in row) / BATCH
    mse = (naive_decode(f, sae) - x).pow(2).sum(-1).mean()
    torch.testing.assert_close(out.loss, mse + 0.5 * n_active)


@pytest.mark.parametrize("apply_b_dec", [True, False])
def test_standard_forward_and_weighted_l1(random_sae, apply_b_dec: bool) -> None:
    sae = make(random_sae, "standard", apply_b_dec_to_input=apply_b_dec)
    with torch.no_grad():  # decoder rows of varied norms: the L1 term must weight by them
        sae.W_dec.mul_(torch.linspace(0.5, 2.0, D_SAE, dtype=torch.float64)[:, None])
    x = torch.randn(BATCH, D_IN, dtype=torch.float64)
    z = loop_pre(x, sae.W_enc.detach(), sae.b_enc.detach(), b_dec_or_none(sae))
    f = [[max(v, 0.0) for v in row] for row in z]
    torch.testing.assert_close(sae.encode(x), torch.tensor(f, dtype=torch.float64))
    out = sae.loss(x, 0.7)
    norms = [sum(w * w for w in row) ** 0.5 for row in sae.W_dec.tolist()]
    l1 = sum(v * n for row in f for v, n in zip(row, norms, strict=True)) / BATCH
    mse = (naive_decode(f, sae) - x).pow(2).sum(-1).mean()
    torch.testing.assert_close(out.sparsity, torch.tensor(l1, dtype=torch.float64))
    torch.testing.assert_close(out.loss, mse + 0.7 * l1)
    assert out.aux.item() == 0.0


def sort_topk(z: list[list[float]], k: int) -> list[list[float]]:
    """Keep the k largest entries of each row (via a full sort), ReLU, zero the rest."""
    out = []
    for row in z:
        kth = sorted(row, reverse=True)[k - 1]
        out.append([max(v, 0.0) if v >= kth else 0.0 for v in row])
    return out


@pytest.mark.parametrize("k", [1, 5, 13])
def test_topk_forward_matches_sort(random_sae, k: int) -> None:
    sae = make(random_sae, "topk", k=k)
    x = torch.randn(BATCH, D_IN, dtype=torch.float64)
    z = loop_pre(x, sae.W_enc.detach(), sae.b_enc.detach(), b_dec_or_none(sae))
    f = sort_topk(z, k)
    torch.testing.assert_close(sae.encode(x), torch.tensor(f, dtype=torch.float64))
    torch.testing.assert_close(sae(x), naive_decode(f, sae))
    assert ((sae.encode(x) != 0).sum(-1) <= k).all()
    # with all pre-activations positive exactly k latents fire per row
    with torch.no_grad():
        sae.b_enc.fill_(100.0)
    assert ((sae.encode(x) != 0).sum(-1) == k).all()


def test_gated_forward_matches_formula(random_sae) -> None:
    sae = make(random_sae, "gated")
    x = torch.randn(BATCH, D_IN, dtype=torch.float64)
    W = sae.W_enc.detach()
    W_mag = W * sae.r_mag.detach().exp()[None, :]  # exp(r_mag) ⊙ W_gate, per latent column
    pi = loop_pre(x, W, sae.b_gate.detach(), sae.b_dec.detach())
    m = loop_pre(x, W_mag, sae.b_mag.detach(), sae.b_dec.detach())
    f = [[max(mv, 0.0) if pv > 0 else 0.0 for pv, mv in zip(pr, mr, strict=True)] for pr, mr in zip(pi, m, strict=True)]
    assert 0 < sum(v != 0 for row in f for v in row) < BATCH * D_SAE
    torch.testing.assert_close(sae.encode(x), torch.tensor(f, dtype=torch.float64))
    out = sae.loss(x, 0.4)
    pi_t = torch.tensor(pi, dtype=torch.float64)
    mse = (naive_decode(f, sae) - x).pow(2).sum(-1).mean()
    sparsity = (pi_t.relu() * sae.W_dec.detach().norm(dim=1)).sum(-1).mean()
    aux = (pi_t.relu() @ sae.W_dec.detach() + sae.b_dec.detach() - x).pow(2).sum(-1).mean()
    torch.testing.assert_close(out.sparsity, sparsity)
    torch.testing.assert_close(out.aux, aux)
    torch.testing.assert_close(out.loss, mse + 0.4 * sparsity + aux)


@pytest.mark.parametrize("apply_b_dec", [True, False])
def test_gated_aux_loss_uses_frozen_decoder(random_sae, apply_b_dec: bool) -> None:
    sae = make(random_sae, "gated", apply_b_dec_to_input=apply_b_dec)
    x = torch.randn(BATCH, D_IN, dtype=torch.float64)
    out = sae.loss(x, 0.4)
    params = [sae.W_dec, sae.b_dec, sae.W_enc, sae.b_gate]
    g_dec, g_bdec, g_enc, g_gate = torch.autograd.grad(out.aux, params, allow_unused=True, retain_graph=True)
    # no gradient reaches the decoder through the aux term (b_dec only through the encoder input x - b_dec)
    assert g_dec is None or torch.equal(g_dec, torch.zeros_like(g_dec))
    if not apply_b_dec:
        assert g_bdec is None or torch.equal(g_bdec, torch.zeros_like(g_bdec))
    assert g_enc.abs().sum() > 0 and g_gate.abs().sum() > 0  # ... but the gate gets one
    g_dec_total = torch.autograd.grad(out.loss, sae.W_dec)[0]
    again = sae.loss(x, 0.4)
    g_dec_rest = torch.autograd.grad(again.loss - again.aux, sae.W_dec)[0]
    torch.testing.assert_close(g_dec_total, g_dec_rest)


# ---- TopK AuxK ---------------------------------------------------------------------------------------------------
def naive_auxk(sae, x: torch.Tensor, dead: torch.Tensor) -> float:
    with torch.no_grad():
        z = sae.encoder_input(x) @ sae.W_enc + sae.b_enc
        resid = x - sae(x)
        n_dead = int(dead.sum())
        k_aux = sae.cfg.aux_k or sae.cfg.d_in // 2
        total = 0.0
        for b in range(x.shape[0]):
            dead_vals = sorted(((z[b, i].item(), i) for i in range(D_SAE) if dead[i]), reverse=True)
            e_hat = torch.zeros(D_IN, dtype=torch.float64)
            for v, i in dead_vals[: min(k_aux, n_dead)]:
                e_hat += max(v, 0.0) * sae.W_dec[i]
            total += (e_hat - resid[b]).pow(2).sum().item()
        return sae.cfg.aux_coef * min(n_dead / k_aux, 1.0) * total / x.shape[0]


@pytest.mark.parametrize("n_dead", [3, 30])
def test_auxk_value_and_dead_only(random_sae, n_dead: int) -> None:
    sae = make(random_sae, "topk", k=4)
    x = torch.randn(BATCH, D_IN, dtype=torch.float64)
    dead = torch.zeros(D_SAE, dtype=torch.bool)
    dead[torch.randperm(D_SAE)[:n_dead]] = True
    out = sae.loss(x, 0.0, dead)
    assert out.aux.item() > 0
    assert out.aux.item() == pytest.approx(naive_auxk(sae, x, dead), rel=1e-10)
    torch.testing.assert_close(out.loss, out.mse + out.aux)
    # only dead latents take part: the aux gradient on live decoder rows / encoder columns is zero
    g_dec, g_enc = torch.autograd.grad(out.aux, [sae.W_dec, sae.W_enc])
    assert torch.equal(g_dec[~dead], torch.zeros_like(g_dec[~dead]))
    assert torch.equal(g_enc[:, ~dead], torch.zeros_like(g_enc[:, ~dead]))
    assert g_dec[dead].abs().sum() > 0


def test_auxk_zero_without_dead_latents(random_sae) -> None:
    sae = make(random_sae, "topk", k=4)
    x = torch.randn(BATCH, D_IN, dtype=torch.float64)
    for dead in (None, torch.zeros(D_SAE, dtype=torch.bool)):
        out = sae.loss(x, 0.0, dead)
        assert out.aux.item() == 0.0
        assert torch.equal(out.loss, out.mse)


# ---- decoder-norm constraint -------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["jumprelu", "topk", "gated"])
def test_parallel_gradient_removal(random_sae, arch: str) -> None:
    sae = make(random_sae, arch)
    with torch.no_grad():  # rows of non-unit norm: the removal must use the row direction
        sae.W_dec.mul_(torch.linspace(0.5, 3.0, D_SAE, dtype=torch.float64)[:, None])
    g = torch.randn_like(sae.W_dec)
    sae.W_dec.grad = g.clone()
    sae.remove_parallel_decoder_grad()
    after = sae.W_dec.grad
    w = sae.W_dec.detach()
    # orthogonal to each row afterwards
    torch.testing.assert_close((after * w).sum(1), torch.zeros(D_SAE, dtype=torch.float64), atol=1e-12, rtol=0)
    # the orthogonal part is unchanged: projecting onto random directions orthogonal to each row gives the same value
    v = torch.randn_like(w)
    v -= (v * w).sum(1, keepdim=True) / (w * w).sum(1, keepdim=True) * w
    torch.testing.assert_close((after * v).sum(1), (g * v).sum(1))
    # what was removed is parallel to the row: |cos(g - after, w)| = 1
    cos = torch.nn.functional.cosine_similarity(g - after, w, dim=1)
    torch.testing.assert_close(cos.abs(), torch.ones(D_SAE, dtype=torch.float64))


def test_standard_keeps_decoder_gradient_and_norms(random_sae) -> None:
    sae = make(random_sae, "standard")
    assert sae.cfg.decoder_unit_norm is False
    g = torch.randn_like(sae.W_dec)
    sae.W_dec.grad = g.clone()
    sae.remove_parallel_decoder_grad()
    assert torch.equal(sae.W_dec.grad, g)
    with torch.no_grad():
        sae.W_dec.mul_(2.0)
    before = sae.W_dec.detach().clone()
    sae.normalize_decoder()
    assert torch.equal(sae.W_dec.detach(), before)


@pytest.mark.parametrize("arch", ["jumprelu", "topk", "gated"])
def test_decoder_rows_unit_norm_after_adam_steps(random_sae, arch: str) -> None:
    sae = random_sae(arch, d_in=D_IN, d_sae=D_SAE)
    opt = torch.optim.Adam(sae.parameters(), lr=0.05)
    x = torch.randn(64, D_IN)
    dead = torch.zeros(D_SAE, dtype=torch.bool)
    dead[:10] = True
    moved = 0.0
    for _ in range(5):
        before = sae.W_dec.detach().clone()
        opt.zero_grad()
        sae.loss(x, 0.1, dead).loss.backward()
        sae.remove_parallel_decoder_grad()
        opt.step()
        sae.normalize_decoder()
        moved += (sae.W_dec.detach() - before).abs().max().item()
        torch.testing.assert_close(sae.decoder_norms(), torch.ones(D_SAE), atol=1e-6, rtol=0)
    assert moved > 1e-3


# ---- input-scale folding -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("arch", "param"), VARIANTS)
def test_fold_input_scale(random_sae, arch: str, param: str | None) -> None:
    sae = make(random_sae, arch, param)
    scale = 37.5
    folded = copy.deepcopy(sae)
    folded.fold_input_scale(scale)
    x = scale * torch.randn(BATCH, D_IN, dtype=torch.float64)
    f_unfolded = sae.encode(x / scale)
    assert (f_unfolded != 0).any()
    torch.testing.assert_close(folded(x), scale * sae(x / scale))
    torch.testing.assert_close(folded.encode(x), scale * f_unfolded)
    if arch == "jumprelu":
        torch.testing.assert_close(folded.threshold, scale * sae.threshold)
    # the weight matrices themselves are untouched (methods.md §2: W_enc' = W_enc, W_dec' = W_dec)
    assert torch.equal(folded.W_enc, sae.W_enc) and torch.equal(folded.W_dec, sae.W_dec)


def test_registry_and_config_errors() -> None:
    assert set(ARCHITECTURES) == {"jumprelu", "standard", "topk", "gated", "batchtopk", "matryoshka"}
    with pytest.raises(ValueError, match="architecture"):
        SAEConfig(architecture="relu2")
    with pytest.raises(ValueError, match="k"):
        SAEConfig(architecture="topk", d_in=4, d_sae=8, k=9)
    with pytest.raises(ValueError, match="--jumprelu-threshold-param must be one of direct, log"):
        SAEConfig(jumprelu_threshold_param="sqrt")
    for arch in ARCHITECTURES:
        sae = create_sae(SAEConfig(architecture=arch, d_in=8, d_sae=24, k=3))
        assert sae.W_enc.shape == (8, 24) and sae.W_dec.shape == (24, 8)
        torch.testing.assert_close(sae.decoder_norms(), torch.ones(24))
        assert torch.equal(sae.W_enc, sae.W_dec.T)  # tied at init
