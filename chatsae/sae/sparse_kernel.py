"""Fused training losses for JumpReLU and TopK SAEs that use the sparsity of the latents.

Only the encoder matmul ``x @ W_enc`` ([B, d_in] x [d_in, d_sae]) is dense. With ``n`` active (or near-threshold)
entries of the [B, d_sae] latent matrix, the rest costs O(n * d_in) instead of O(B * d_sae * d_in):

* decoder forward ``f @ W_dec``: an embedding bag over the active rows of ``W_dec``;
* ``dL/df`` at the active entries: a sampled dense-dense product (SDDMM, ``torch.sparse.sampled_addmm``);
* ``dL/dW_dec = f^T g`` and ``dL/dW_enc = (dz^T x)^T``: one CSR [d_sae, B] built once (entries sorted by latent),
  times a dense [B, d_in] matrix;
* no gradient for ``x``; when ``b_dec`` is subtracted from the input its encoder-side gradient is
  ``-W_enc @ colsum(dz)`` (a [d_in, d_sae] x [d_sae] product instead of a [B, d_sae] x [d_sae, d_in] one).

JumpReLU evaluates ``z > theta`` once for the activation and the L0 term; the bandwidth window ``|z - theta| < eps/2``
(which carries the threshold pseudo-derivatives, methods.md §2) is found on a superset of candidates and then tested
with exactly the reference expression, so both paths pick the same entries. When the latents are not sparse (a fresh
JumpReLU SAE has L0 ~ d_sae / 6) the JumpReLU loss takes a dense path with the same savings in passes (no grad for x,
one mask, the window kept sparse). :func:`choose` decides per batch; ``CHATSAE_SAE_KERNEL`` or the SAE's ``kernel``
attribute (``auto | sparse | dense | reference``) forces one. Under autocast, when ``x`` needs a gradient, on devices
other than the CPU and CUDA, and on CUDA below ``CUDA_MIN_WEIGHTS`` encoder entries (where kernel launches dominate),
``auto`` keeps the plain autograd code ("reference").
"""

from __future__ import annotations

import os
import threading
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import FIRE_THRESHOLD

KERNELS = ("auto", "sparse", "dense", "reference")
SPARSE_MAX_DENSITY = 0.1
"""JumpReLU: ``auto`` takes the sparse path when (active + near-threshold latents) / d_sae is below this (CPU).
Idle 2-core machine, 2026-12-04, trained weights with scaled thresholds (``benchmarks/sae_step_sweep.py --only
crossover``): sparse / dense step 2.08x at density 0.042, 1.40x at 0.090, 1.15x at 0.107, 0.94x at 0.126."""
CUDA_MIN_WEIGHTS = 4096 * 16384
"""On CUDA, ``auto`` uses the fused kernels from this encoder size (d_in x d_sae entries) on, and the plain autograd
code below it. H200, 2026-12-04, batch 4096, d_in 4096, Gaussian inputs (``benchmarks/cuda_step.py --sweep-widths``;
docs/performance.md): sparse / reference step at d_sae 8192, 16384, 32768, 65536, 131072 = 0.90, 1.30, 1.67, 2.19,
2.44 (JumpReLU, L0 ~ 43) and 0.89, 1.24, 1.53, 1.91, - (TopK k 64); the dense JumpReLU path (a fresh SAE's L0 ~ d_sae/3)
1.08-1.15; at 576 x 4608 every fused kernel is slower (0.57-0.75). TopK: only while no AuxK term is active (AuxK on
CUDA is not measured)."""
TOPK_SPARSE_MAX_DENSITY = 0.1
"""TopK: the same for (k + AuxK latents) / d_sae; k 32 + k_aux 288 of 4608 (AuxK on) measured faster sparse."""
_SAMPLE_ROWS = 256
_scratch = threading.local()
"""Per-thread reused buffers: SAEs trained together (``--cache none`` with several SAEs) run their steps in parallel
threads, and one buffer shared between them would be overwritten mid-step by another SAE's backward."""


def scratch(name: str, shape: tuple[int, ...], like: Tensor) -> Tensor:
    """A reused buffer for a [B, d_sae] temporary that never leaves a backward pass (above glibc's mmap threshold a
    fresh one is mapped and page-faulted on every step). One per name and thread; replaced when the shape changes."""
    bufs: dict[tuple[Any, ...], Tensor] = _scratch.__dict__.setdefault("bufs", {})
    key = (name, like.device, like.dtype)
    buf = bufs.get(key)
    if buf is None or tuple(buf.shape) != shape:
        buf = bufs[key] = torch.empty(shape, dtype=like.dtype, device=like.device)
    return buf


def kernel_setting(attr: str) -> str:
    """The kernel asked for: ``CHATSAE_SAE_KERNEL`` if set, else the SAE's ``kernel`` attribute."""
    kernel = os.environ.get("CHATSAE_SAE_KERNEL", "") or attr
    if kernel not in KERNELS:
        raise ValueError(f"SAE kernel (CHATSAE_SAE_KERNEL or sae.kernel): {kernel!r} is not one of {KERNELS}")
    return kernel


def fused_allowed(x: Tensor, *params: Tensor, cuda_min_weights: int | None = None) -> bool:
    """Whether the fused Functions apply: float inputs, no autocast, no gradient wanted for ``x``, and the CPU, or
    CUDA when the encoder (``params[0]``) has at least ``cuda_min_weights`` entries (None: never on CUDA)."""
    dev = x.device.type
    big = cuda_min_weights is not None and params[0].numel() >= cuda_min_weights
    on_device = dev == "cpu" or (dev == "cuda" and big)
    return (
        on_device
        and not x.requires_grad
        and not torch.is_autocast_enabled(dev)
        and all(p.dtype == x.dtype for p in params)
    )


def choose(kernel: str, density: float, max_density: float | None = None) -> str:
    """``sparse`` or ``dense`` for a batch whose latent density (share of [B, d_sae] entries used) is ``density``."""
    if kernel in ("sparse", "dense"):
        return kernel
    return "sparse" if density < (SPARSE_MAX_DENSITY if max_density is None else max_density) else "dense"


# ---- sparse primitives ---------------------------------------------------------------------------------------


def _crow(rows: Tensor, n_rows: int) -> Tensor:
    """CSR row pointer ``[n_rows + 1]`` for ``rows`` sorted ascending."""
    crow = rows.new_zeros(n_rows + 1)
    torch.cumsum(torch.bincount(rows, minlength=n_rows), 0, out=crow[1:])
    return crow


def _csr(crow: Tensor, cols: Tensor, values: Tensor, shape: tuple[int, int]) -> Tensor:
    with warnings.catch_warnings():  # "Sparse CSR tensor support is in beta state", once per process
        warnings.simplefilter("ignore")
        return torch.sparse_csr_tensor(crow, cols, values, shape, check_invariants=False)


def sddmm(g: Tensor, W_dec: Tensor, crow: Tensor, cols: Tensor) -> Tensor:
    """``g[b] . W_dec[c]`` for every CSR entry (b, c) of a [B, d_sae] pattern. g ``[B, d_in]`` -> ``[n]``."""
    pattern = _csr(crow, cols, g.new_zeros(cols.shape[0]), (g.shape[0], W_dec.shape[0]))  # beta=0 may still read it
    return torch.sparse.sampled_addmm(pattern, g, W_dec.t(), beta=0.0).values()


class ByLatent:
    """The entries (row b, latent c) regrouped by latent: CSR ``[d_sae, n_rhs]`` products ``sum_e v_e rhs[b_e]``."""

    def __init__(self, rows: Tensor, cols: Tensor, d_sae: int, n_rhs: int) -> None:
        self.perm = torch.argsort(cols, stable=True)
        self.crow = _crow(cols[self.perm], d_sae)
        self.rows = rows[self.perm]
        self.shape = (d_sae, n_rhs)

    def mm(self, values: Tensor, rhs: Tensor) -> Tensor:
        """``[d_sae, d]``: row c = sum over entries of latent c of ``values_e * rhs[b_e]``; rhs ``[n_rhs, d]``."""
        return _csr(self.crow, self.rows, values[self.perm], self.shape) @ rhs


def decode_bag(crow_or_none: Tensor | None, cols: Tensor, vals: Tensor, W_dec: Tensor) -> Tensor:
    """``sum_e vals_e W_dec[cols_e]`` per row: ``[B, d_in]``. 2-D ``cols``/``vals`` (fixed k per row) need no crow."""
    if crow_or_none is None:
        return F.embedding_bag(cols, W_dec, per_sample_weights=vals, mode="sum")
    return F.embedding_bag(cols, W_dec, crow_or_none[:-1], per_sample_weights=vals, mode="sum")


def _window_entries(z: Tensor, theta: Tensor, eps: float, candidates: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(rows, cols, z values) of the candidate entries (a [B, d_sae] bool) inside the reference window."""
    rows, cols = candidates.nonzero(as_tuple=True)
    zc = z[rows, cols]
    inside = ((zc - theta[cols]) / eps).abs() < 0.5  # exactly jumprelu.rectangle's test
    return rows[inside], cols[inside], zc[inside]


# ---- JumpReLU ------------------------------------------------------------------------------------------------


class JumpReLULoss(torch.autograd.Function):
    """``(mse, l0, f, x_hat, fire_counts)`` of a JumpReLU SAE; f, x_hat and the counts carry no gradient.

    Gradients equal those of jumprelu.JumpReLUFunction + StepFunction (rectangle pseudo-derivatives for theta).
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        W_enc: Tensor,
        b_enc: Tensor,
        theta: Tensor,
        W_dec: Tensor,
        b_dec: Tensor,
        eps: float,
        apply_b_dec: bool,
        kernel: str,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        B = x.shape[0]
        xin = x - b_dec if apply_b_dec else x
        z = torch.addmm(b_enc, xin, W_enc)  # [B, d_sae]
        sample = z[:_SAMPLE_ROWS]
        density = float((sample > theta - eps).sum()) / max(sample.numel(), 1)
        path = choose(kernel, density)
        if path == "sparse":
            # candidates z > theta - eps contain the active entries and the whole window
            rows, cols = (z > theta - eps).nonzero(as_tuple=True)
            flat = rows * z.shape[1] + cols
            zc = z.view(-1).index_select(0, flat)
            dc = zc - theta[cols]
            active = dc > 0  # the same floats as z > theta
            inside = (dc / eps).abs() < 0.5  # exactly jumprelu.rectangle's test
            keep = (active | inside).nonzero().squeeze(1)
            rows, cols, flat, zc, active, inside = (t[keep] for t in (rows, cols, flat, zc, active, inside))
            crow = _crow(rows, B)
            vals = torch.where(active, zc, 0.0)  # f at the kept entries (0 at the inactive window entries)
            x_hat = decode_bag(crow, cols, vals, W_dec) + b_dec
            f = z.zero_()  # z is ours and already paged in: f reuses its memory
            f.view(-1).index_copy_(0, flat, vals)
            n_active = int(active.sum())
            counts = torch.bincount(cols, weights=(vals > FIRE_THRESHOLD).to(z.dtype), minlength=z.shape[1])
            resid = x_hat - x
            ctx.save_for_backward(xin, W_enc, theta, W_dec, resid, crow, rows, cols, vals, active, inside)
        else:
            off = z <= theta  # the complement of z > theta, evaluated once for f, L0 and dz
            rw, cw, _ = _window_entries(z, theta, eps, (z > theta - eps) & (z < theta + eps))
            f = z.masked_fill_(off, 0.0)  # z is ours: f reuses its memory
            x_hat = torch.addmm(b_dec, f, W_dec)
            n_active = off.numel() - int(off.sum())
            counts = (f > FIRE_THRESHOLD).to(f.dtype).sum(0)
            resid = x_hat - x
            ctx.save_for_backward(xin, W_enc, theta, W_dec, resid, off, f, rw, cw)
        ctx.path, ctx.eps, ctx.apply_b_dec = path, eps, apply_b_dec
        mse = resid.pow(2).sum() / B
        l0 = x.new_tensor(n_active / B)
        ctx.mark_non_differentiable(f, x_hat, counts)
        return mse, l0, f, x_hat, counts

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(
        ctx: Any, grad_mse: Tensor, grad_l0: Tensor, _gf: Any, _gx: Any, _gc: Any
    ) -> tuple[Tensor | None, ...]:
        eps = ctx.eps
        xin, W_enc, theta, W_dec, resid = ctx.saved_tensors[:5]
        B, d_sae = xin.shape[0], W_dec.shape[0]
        g = resid * (2.0 / B * grad_mse)  # dL/dx_hat [B, d_in]
        if ctx.path == "sparse":
            crow, rows, cols, vals, active, inside = ctx.saved_tensors[5:]
            gf = sddmm(g, W_dec, crow, cols)  # dL/df at active and window entries
            dz = torch.where(active, gf, 0.0)
            by_latent = ByLatent(rows, cols, d_sae, B)
            grad_W_dec = by_latent.mm(vals, g)
            grad_W_enc = by_latent.mm(dz, xin).t()
            grad_b_enc = torch.bincount(cols, weights=dz, minlength=d_sae).to(g.dtype)
            cw, gw = cols[inside], gf[inside]
        else:
            off, f, rw, cw = ctx.saved_tensors[5:]
            gf_full = torch.mm(g, W_dec.t(), out=scratch("grad_f", (B, d_sae), g))  # [B, d_sae]
            gw = gf_full[rw, cw]
            dz = gf_full.masked_fill_(off, 0.0)
            grad_W_dec = f.t() @ g
            grad_W_enc = xin.t() @ dz
            grad_b_enc = dz.sum(0)
        counts = torch.bincount(cw, minlength=d_sae).to(g.dtype)
        grad_theta = -(theta / eps) * torch.bincount(cw, weights=gw, minlength=d_sae).to(g.dtype)
        grad_theta = grad_theta - (grad_l0 / (eps * B)) * counts
        grad_b_dec = g.sum(0)
        if ctx.apply_b_dec:
            grad_b_dec = grad_b_dec - W_enc @ grad_b_enc
        return None, grad_W_enc, grad_b_enc, grad_theta, grad_W_dec, grad_b_dec, None, None, None


# ---- TopK + AuxK ---------------------------------------------------------------------------------------------


class TopKLoss(torch.autograd.Function):
    """``(mse, aux, f, x_hat, l0, fire_counts)`` of a TopK SAE with the AuxK loss over ``dead_idx`` (int64, may be
    empty).

    ``aux_scale`` = aux_coef * min(n_dead / k_aux, 1); ``k_dead`` = min(k_aux, n_dead). Matches topk.TopKSAE.loss.
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        W_enc: Tensor,
        b_enc: Tensor,
        W_dec: Tensor,
        b_dec: Tensor,
        k: int,
        dead_idx: Tensor,
        k_dead: int,
        aux_scale: float,
        apply_b_dec: bool,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        B = x.shape[0]
        xin = x - b_dec if apply_b_dec else x
        z = torch.addmm(b_enc, xin, W_enc)  # [B, d_sae]
        top, idx = z.topk(k, dim=-1, sorted=False)
        vals = top.relu()
        x_hat = decode_bag(None, idx, vals, W_dec) + b_dec
        resid = x_hat - x
        mse = resid.pow(2).sum() / B
        rows = torch.arange(B, device=x.device).repeat_interleave(k)
        cols, fvals, gate = idx.reshape(-1), vals.reshape(-1), top.reshape(-1) > 0
        aux, aux_part = x.new_zeros(()), None
        if k_dead > 0:
            atop, aidx = z.index_select(1, dead_idx).topk(k_dead, dim=-1, sorted=False)
            aidx = dead_idx[aidx]
            avals = atop.relu()
            e_hat = decode_bag(None, aidx, avals, W_dec)
            aresid = e_hat + resid  # e_hat - (x - x_hat)
            aux = aux_scale * aresid.pow(2).sum() / B
            aux_part = (aidx.reshape(-1), avals.reshape(-1), atop.reshape(-1) > 0, aresid)
        f = z.zero_().scatter_(1, idx, vals)  # z is ours: f reuses its memory
        ctx.save_for_backward(xin, W_enc, W_dec, resid, rows, cols, fvals, gate)
        ctx.aux_part, ctx.k, ctx.k_dead, ctx.aux_scale, ctx.apply_b_dec = aux_part, k, k_dead, aux_scale, apply_b_dec
        l0 = x.new_tensor(float(gate.sum()) / B)
        counts = torch.bincount(cols, weights=(fvals > FIRE_THRESHOLD).to(z.dtype), minlength=z.shape[1])
        ctx.mark_non_differentiable(f, x_hat, l0, counts)
        return mse, aux, f, x_hat, l0, counts

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(
        ctx: Any, grad_mse: Tensor, grad_aux: Tensor, _gf: Any, _gx: Any, _gl: Any, _gc: Any
    ) -> tuple[Tensor | None, ...]:
        xin, W_enc, W_dec, resid, rows, cols, fvals, gate = ctx.saved_tensors
        B, d_sae = xin.shape[0], W_dec.shape[0]
        g = resid * (2.0 / B * grad_mse)
        gf = sddmm(g, W_dec, torch.arange(0, B * ctx.k + 1, ctx.k, device=g.device), cols)
        dz = torch.where(gate, gf, 0.0)
        grad_b_dec = g.sum(0)
        if ctx.aux_part is not None:  # AuxK entries go in rows B..2B-1 of the right-hand sides
            acols, avals, agate, aresid = ctx.aux_part
            ga = aresid * (2.0 * ctx.aux_scale / B * grad_aux)
            gfa = sddmm(ga, W_dec, torch.arange(0, B * ctx.k_dead + 1, ctx.k_dead, device=g.device), acols)
            rows = torch.cat([rows, torch.arange(B, 2 * B, device=g.device).repeat_interleave(ctx.k_dead)])
            cols, fvals = torch.cat([cols, acols]), torch.cat([fvals, avals])
            dz = torch.cat([dz, torch.where(agate, gfa, 0.0)])
            g, xin2 = torch.cat([g, ga]), torch.cat([xin, xin])
        else:
            xin2 = xin
        by_latent = ByLatent(rows, cols, d_sae, g.shape[0])
        grad_W_dec = by_latent.mm(fvals, g)
        grad_W_enc = by_latent.mm(dz, xin2).t()
        grad_b_enc = torch.bincount(cols, weights=dz, minlength=d_sae).to(g.dtype)
        if ctx.apply_b_dec:
            grad_b_dec = grad_b_dec - W_enc @ grad_b_enc
        return None, grad_W_enc, grad_b_enc, grad_W_dec, grad_b_dec, None, None, None, None, None
