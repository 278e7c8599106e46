"""JumpReLU straight-through pseudo-gradients (methods.md §2) against values and closed forms computed by hand."""

from __future__ import annotations

import pytest
import torch

from chatsae.sae import SAEConfig, create_sae
from chatsae.sae.jumprelu import JumpReLUFunction, StepFunction

pytestmark = pytest.mark.usefixtures("single_thread")

EPS = 0.1
THETA = [0.5, 1.0, 0.2]
# rows = batch; per column the distances z - theta put some entries inside the kernel window |z - theta| < eps / 2
Z = [
    [0.52, 0.20, 0.21],  # inside, far below, inside
    [0.47, 1.04, 0.90],  # inside, inside, far above
    [0.58, 1.20, 0.10],  # far above (outside window), far above, far below
    [0.40, 0.96, 0.19],  # far below, inside, inside
]
GRAD_OUT = [
    [1.0, -2.0, 0.5],
    [3.0, 1.5, -1.0],
    [-0.5, 2.0, 4.0],
    [2.0, -1.0, 1.0],
]


def in_window(z: float, theta: float) -> float:
    """K((z - theta) / eps) for the rectangle kernel, written out."""
    return 1.0 if -EPS / 2 < z - theta < EPS / 2 else 0.0


def expected_grads(step: bool) -> tuple[list[list[float]], list[float]]:
    """(dL/dz [B][d], dL/dtheta [d]) by plain loops over the hand-made inputs."""
    grad_z = [[0.0] * len(THETA) for _ in Z]
    grad_theta = [0.0] * len(THETA)
    for b, row in enumerate(Z):
        for i, (z, th) in enumerate(zip(row, THETA, strict=True)):
            g = GRAD_OUT[b][i]
            if step:
                grad_theta[i] += -(1.0 / EPS) * in_window(z, th) * g
            else:
                grad_theta[i] += -(th / EPS) * in_window(z, th) * g
                grad_z[b][i] = g if z > th else 0.0
    return grad_z, grad_theta


def run(fn: type[torch.autograd.Function]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    z = torch.tensor(Z, dtype=torch.float64, requires_grad=True)
    theta = torch.tensor(THETA, dtype=torch.float64, requires_grad=True)
    out = fn.apply(z, theta, EPS)
    out.backward(torch.tensor(GRAD_OUT, dtype=torch.float64))
    return out.detach(), z.grad, theta.grad


def test_window_is_non_trivial() -> None:
    hits = sum(in_window(z, th) for row in Z for z, th in zip(row, THETA, strict=True))
    assert 4 <= hits < len(Z) * len(THETA)


def test_jumprelu_function_forward_and_gradients() -> None:
    out, gz, gt = run(JumpReLUFunction)
    want_out = [[z if z > th else 0.0 for z, th in zip(row, THETA, strict=True)] for row in Z]
    assert torch.equal(out, torch.tensor(want_out, dtype=torch.float64))
    want_gz, want_gt = expected_grads(step=False)
    torch.testing.assert_close(gz, torch.tensor(want_gz, dtype=torch.float64))
    torch.testing.assert_close(gt, torch.tensor(want_gt, dtype=torch.float64))
    assert (gt != 0).all()


def test_step_function_forward_and_gradients() -> None:
    out, gz, gt = run(StepFunction)
    want_out = [[1.0 if z > th else 0.0 for z, th in zip(row, THETA, strict=True)] for row in Z]
    assert torch.equal(out, torch.tensor(want_out, dtype=torch.float64))
    assert torch.equal(gz, torch.zeros_like(gz))
    _, want_gt = expected_grads(step=True)
    torch.testing.assert_close(gt, torch.tensor(want_gt, dtype=torch.float64))
    assert (gt != 0).all()


def test_theta_gradient_broadcasts_over_leading_dims() -> None:
    """A [2, 2, d] input gives the same theta gradient as the flattened [4, d] batch."""
    z = torch.tensor(Z, dtype=torch.float64).reshape(2, 2, 3).requires_grad_()
    theta = torch.tensor(THETA, dtype=torch.float64, requires_grad=True)
    JumpReLUFunction.apply(z, theta, EPS).backward(torch.tensor(GRAD_OUT, dtype=torch.float64).reshape(2, 2, 3))
    _, want_gt = expected_grads(step=False)
    torch.testing.assert_close(theta.grad, torch.tensor(want_gt, dtype=torch.float64))


def closed_form_theta_grad(sae, x: torch.Tensor, coef: float) -> torch.Tensor:
    """dL/dtheta of L = mean_b ||x_hat_b - x_b||^2 + coef * mean_b sum_i H(z_bi - theta_i), by hand.

    ``dL/df_bi = (2/B) (x_hat_b - x_b) . W_dec,i``; JumpReLU's pseudo-derivative gives
    ``-(theta_i/eps) K`` per entry and the L0 term ``-(coef/B)(1/eps) K``."""
    eps = sae.cfg.jumprelu_bandwidth
    with torch.no_grad():
        theta = sae.threshold
        xin = x - sae.b_dec if sae.cfg.apply_b_dec_to_input else x
        z = xin @ sae.W_enc + sae.b_enc
        f = z * (z > theta)
        x_hat = f @ sae.W_dec + sae.b_dec
        batch = x.shape[0]
        dldf = (2.0 / batch) * (x_hat - x) @ sae.W_dec.T  # [B, d_sae]
        k = ((z - theta).abs() < eps / 2).to(x.dtype)
        return (dldf * (-(theta / eps) * k)).sum(0) + (coef / batch) * (-(1.0 / eps) * k).sum(0)


@pytest.mark.parametrize("param", ["direct", "log"])
def test_loss_gradient_on_theta_matches_closed_form(param: str, random_sae) -> None:
    # a wide bandwidth so that many (token, latent) pairs sit inside the kernel window
    sae = random_sae("jumprelu", d_in=12, d_sae=20, jumprelu_bandwidth=0.2, jumprelu_threshold_param=param)
    sae.double()
    x = torch.randn(64, 12, dtype=torch.float64)
    coef = 0.3
    out = sae.loss(x, coef)
    out.loss.backward()
    want = closed_form_theta_grad(sae, x, coef)
    assert (want != 0).sum() >= 10
    if param == "direct":
        torch.testing.assert_close(sae.threshold_param.grad, want)
    else:  # d/d(log theta) = theta * d/dtheta
        torch.testing.assert_close(sae.log_threshold.grad, sae.threshold.detach() * want)
    # the reported L0 is the plain count of active latents
    with torch.no_grad():
        z = x @ sae.W_enc + sae.b_enc
        assert out.sparsity.item() == pytest.approx((z > sae.threshold).sum(-1).double().mean().item())


@pytest.mark.parametrize("param", ["direct", "log"])
def test_threshold_parametrisations_agree(param: str) -> None:
    cfg = SAEConfig(
        architecture="jumprelu", d_in=8, d_sae=16, jumprelu_init_threshold=0.05, jumprelu_threshold_param=param
    )
    sae = create_sae(cfg)
    torch.testing.assert_close(sae.threshold, torch.full((16,), 0.05))
    names = {n for n, _ in sae.named_parameters()}
    assert ("log_threshold" in names) == (param == "log")
    assert ("threshold_param" in names) == (param == "direct")


def test_clamp_threshold_keeps_theta_positive() -> None:
    sae = create_sae(SAEConfig(architecture="jumprelu", d_in=4, d_sae=6))
    with torch.no_grad():
        sae.threshold_param.copy_(torch.tensor([-1.0, 0.0, 1e-9, 0.5, -0.1, 2.0]))
    sae.clamp_threshold()
    assert (sae.threshold > 0).all()
    assert sae.threshold[3].item() == 0.5 and sae.threshold[5].item() == 2.0
