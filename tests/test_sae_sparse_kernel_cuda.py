"""The fused kernels on a CUDA device against the plain autograd reference on the same device (skipped without CUDA:
the CPU versions of these checks are in test_sae_sparse_kernel.py, which runs everywhere)."""

from __future__ import annotations

import pytest
import torch
from test_sae_sparse_kernel import D_SAE, assert_close, loss_and_grads, make_sae

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(autouse=True)
def _no_tf32():
    """Exact float32 matmuls, as on the CPU, so that the 1e-5 tolerance of the CPU tests applies unchanged."""
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = old


def on_cuda(arch: str, trained: bool, **kw: object):
    sae, x = make_sae(arch, trained, **kw)
    return sae.cuda(), x.cuda()


@pytest.mark.parametrize("kernel", ["sparse", "dense"])
@pytest.mark.parametrize("trained", [False, True])
def test_jumprelu_kernels_match_reference_on_cuda(kernel: str, trained: bool) -> None:
    sae, x = on_cuda("jumprelu", trained, jumprelu_bandwidth=0.05, apply_b_dec_to_input=True)
    ref, ref_grads = loss_and_grads(sae, "reference", x)
    out, grads = loss_and_grads(sae, kernel, x)
    assert out.mse.grad_fn.path == kernel
    assert out.loss.device.type == "cuda"
    assert_close(out, grads, ref, ref_grads)


@pytest.mark.parametrize("n_dead", [0, 80])
def test_topk_sparse_matches_reference_on_cuda(n_dead: int) -> None:
    sae, x = on_cuda("topk", False, apply_b_dec_to_input=True)
    dead = torch.zeros(D_SAE, dtype=torch.bool, device="cuda")
    dead[:n_dead] = True
    ref, ref_grads = loss_and_grads(sae, "reference", x, dead)
    out, grads = loss_and_grads(sae, "sparse", x, dead)
    assert type(out.mse.grad_fn).__name__ == "TopKLossBackward"
    assert_close(out, grads, ref, ref_grads)


def test_auto_keeps_reference_on_cuda_below_the_measured_width() -> None:
    """On CUDA below ``CUDA_MIN_WEIGHTS`` ``auto`` runs the plain autograd code (docs/performance.md, "CUDA")."""
    sae, x = on_cuda("jumprelu", True)
    out, _ = loss_and_grads(sae, "auto", x)
    assert getattr(out.mse.grad_fn, "path", None) is None


@pytest.mark.parametrize("trained", [False, True])
def test_jumprelu_auto_takes_the_fused_kernel_on_cuda_when_wide(monkeypatch: pytest.MonkeyPatch, trained: bool) -> None:
    """From ``CUDA_MIN_WEIGHTS`` on, ``auto`` picks the fused kernel, sparse or dense by the batch's density as on
    the CPU, and matches the reference."""
    from chatsae.sae import sparse_kernel

    sae, x = on_cuda("jumprelu", trained)
    monkeypatch.setattr(sparse_kernel, "CUDA_MIN_WEIGHTS", sae.W_enc.numel())
    ref, ref_grads = loss_and_grads(sae, "reference", x)
    out, grads = loss_and_grads(sae, "auto", x)
    assert out.mse.grad_fn.path == ("sparse" if trained else "dense")
    assert_close(out, grads, ref, ref_grads)


def test_topk_auto_takes_the_sparse_kernel_on_cuda_only_when_wide(monkeypatch: pytest.MonkeyPatch) -> None:
    from chatsae.sae import sparse_kernel

    sae, x = on_cuda("topk", False)
    out, _ = loss_and_grads(sae, "auto", x)
    assert type(out.mse.grad_fn).__name__ != "TopKLossBackward"  # 32 x 256: far below CUDA_MIN_WEIGHTS
    monkeypatch.setattr(sparse_kernel, "CUDA_MIN_WEIGHTS", sae.W_enc.numel())
    ref, ref_grads = loss_and_grads(sae, "reference", x)
    out, grads = loss_and_grads(sae, "auto", x)
    assert type(out.mse.grad_fn).__name__ == "TopKLossBackward"
    assert_close(out, grads, ref, ref_grads)
    dead = torch.zeros(D_SAE, dtype=torch.bool, device="cuda")
    dead[:3] = True  # AuxK on: not measured on CUDA, so the reference code
    out, _ = loss_and_grads(sae, "auto", x, dead)
    assert type(out.mse.grad_fn).__name__ != "TopKLossBackward"
