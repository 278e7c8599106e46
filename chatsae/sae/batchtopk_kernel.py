"""Fused sparse training loss of the BatchTopK and Matryoshka SAEs (CPU).

Only the encoder matmul ``z = x @ W_enc`` is dense. The ``k * B`` kept entries of the batch are found without a
top-k over all ``B * d_sae`` values (which costs seconds at 4096 x 4608 on a CPU): a strided sample of rows gives a
floor that about ``1.2 k B`` entries exceed, those candidates are gathered, and an exact top-k among them picks the
``k * B`` largest (falling back to every positive entry when the floor was too high). The decoder, ``dL/df`` and the
weight gradients then run on the kept entries only, with :mod:`.sparse_kernel`'s primitives (embedding bag, SDDMM,
CSR products).

Matryoshka levels ``w_1 < ... < w_L = d_sae`` split the kept entries into column bands ``[w_{j-1}, w_j)``; the
reconstruction of level ``j`` is ``b_dec`` plus the bands up to ``j``, so each entry is decoded once and the gradient
reaching an entry of band ``i`` is ``W_dec[c] . G_i[b]`` with ``G_i = sum_{j >= i} dL/dx_hat_j``.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor

from .base import FIRE_THRESHOLD
from .sparse_kernel import decode_bag, sddmm

SAMPLE_ROWS = 128
"""Rows of the batch sampled to place the candidate floor."""
MARGIN = 1.2
"""The floor is set so that about this many times ``k * B`` entries exceed it (a too-high floor costs a second pass)."""


def batch_topk_entries(z: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """The ``n`` largest entries of ``relu(z)`` ``[B, d_sae]`` that are positive, as ``(flat indices ascending,
    values)`` ``[m]`` with ``m <= n`` (fewer when fewer than ``n`` entries are positive). Values equal those of
    ``relu(z).flatten().topk(n)`` up to the order and the choice among ties at the n-th value."""
    flat = z.reshape(-1)
    n = min(n, flat.numel())
    step = max(1, z.shape[0] // SAMPLE_ROWS)
    sample = z[::step].reshape(-1)
    want = int(MARGIN * n * sample.numel() / flat.numel()) + 64
    floor = 0.0
    if want < sample.numel():
        floor = max(float(sample.topk(want, sorted=False).values.min()), 0.0)  # faster than kthvalue here
    idx = (flat > floor).nonzero().squeeze(1)
    if idx.numel() < n and floor > 0:
        idx = (flat > 0).nonzero().squeeze(1)
    vals = flat.index_select(0, idx)
    if vals.numel() > n:
        keep = torch.zeros(vals.numel(), dtype=torch.bool, device=z.device)
        keep[vals.topk(n, sorted=False).indices] = True  # a mask keeps the ascending order of idx
        idx, vals = idx[keep], vals[keep]
    return idx, vals


def _crow(rows: Tensor, n_rows: int) -> Tensor:
    """CSR row pointer ``[n_rows + 1]`` of ascending ``rows``."""
    crow = rows.new_zeros(n_rows + 1)
    torch.cumsum(torch.bincount(rows, minlength=n_rows), 0, out=crow[1:])
    return crow


def _by_latent(rows: Tensor, cols: Tensor, values: Tensor, rhs: Tensor, d_sae: int) -> Tensor:
    """``[d_sae, d]``: row c = sum over the entries (b, c) of ``values * rhs[b]`` (repeated entries add up)."""
    perm = torch.argsort(cols, stable=True)
    with warnings.catch_warnings():  # "Sparse CSR tensor support is in beta state", once per process
        warnings.simplefilter("ignore")
        m = torch.sparse_csr_tensor(
            _crow(cols[perm], d_sae), rows[perm], values[perm], (d_sae, rhs.shape[0]), check_invariants=False
        )
    return m @ rhs


class BatchTopKLoss(torch.autograd.Function):
    """``(mse, inner_mse, aux, f, x_hat, l0, fire_counts, min_kept)`` of a BatchTopK SAE with Matryoshka levels
    ``widths`` (``[d_sae]``: plain BatchTopK) and the AuxK loss over ``dead_idx`` (int64, may be empty).

    ``mse`` is the full SAE's, ``inner_mse`` the sum over the levels before the last (0 without them); ``aux_scale`` =
    aux_coef * min(n_dead / k_aux, 1), ``k_dead`` = min(k_aux, n_dead); ``min_kept`` is the smallest kept activation
    (inf when none is positive). Gradients equal those of batchtopk.BatchTopKSAE / matryoshka.MatryoshkaSAE's plain
    autograd loss; f, x_hat, l0, the counts and min_kept carry none.
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
        widths: list[int],
        dead_idx: Tensor,
        k_dead: int,
        aux_scale: float,
        apply_b_dec: bool,
    ) -> tuple[Tensor, ...]:
        B, d_sae = x.shape[0], W_dec.shape[0]
        xin = x - b_dec if apply_b_dec else x
        z = torch.addmm(b_enc, xin, W_enc)  # [B, d_sae]
        flat, vals = batch_topk_entries(z, k * B)
        rows, cols = flat // d_sae, flat % d_sae
        bands: list[tuple[Tensor, Tensor]] = []  # per level: (entry positions, CSR row pointer)
        x_hat = b_dec.expand(B, -1)
        resids = []
        lo = 0
        for hi in widths:
            pos = ((cols >= lo) & (cols < hi)).nonzero().squeeze(1) if len(widths) > 1 else None
            sel_rows = rows if pos is None else rows[pos]
            crow = _crow(sel_rows, B)
            bc, bv = (cols, vals) if pos is None else (cols[pos], vals[pos])
            x_hat = x_hat + decode_bag(crow, bc, bv, W_dec)
            resids.append(x_hat - x)
            bands.append((torch.arange(cols.numel(), device=x.device) if pos is None else pos, crow))
            lo = hi
        resid = resids[-1]
        mse = resid.pow(2).sum() / B
        inner = sum((r.pow(2).sum() / B for r in resids[:-1]), x.new_zeros(()))
        aux, aux_part = x.new_zeros(()), None
        if k_dead > 0:
            atop, aidx = z.index_select(1, dead_idx).topk(k_dead, dim=-1, sorted=False)
            aidx = dead_idx[aidx]
            avals = atop.relu()
            aresid = decode_bag(None, aidx, avals, W_dec) + resid  # e_hat - (x - x_hat)
            aux = aux_scale * aresid.pow(2).sum() / B
            aux_part = (aidx.reshape(-1), avals.reshape(-1), atop.reshape(-1) > 0, aresid)
        f = z.zero_()  # z is ours: f reuses its memory
        f.view(-1).index_copy_(0, flat, vals)
        counts = torch.bincount(cols, weights=(vals > FIRE_THRESHOLD).to(z.dtype), minlength=d_sae)
        l0 = x.new_tensor(float((vals > 0).sum()) / B)
        min_kept = vals.min() if vals.numel() else x.new_tensor(float("inf"))
        ctx.save_for_backward(xin, W_enc, W_dec, rows, cols, vals, torch.stack(resids))
        ctx.bands, ctx.aux_part, ctx.k_dead, ctx.aux_scale, ctx.apply_b_dec = (
            bands,
            aux_part,
            k_dead,
            aux_scale,
            apply_b_dec,
        )
        ctx.mark_non_differentiable(f, x_hat, l0, counts, min_kept)
        return mse, inner, aux, f, x_hat, l0, counts, min_kept

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(
        ctx: Any, grad_mse: Tensor, grad_inner: Tensor, grad_aux: Tensor, *_: Any
    ) -> tuple[Tensor | None, ...]:
        xin, W_enc, W_dec, rows, cols, vals, resids = ctx.saved_tensors
        B, d_sae = xin.shape[0], W_dec.shape[0]
        L = resids.shape[0]
        coef = torch.stack([grad_inner] * (L - 1) + [grad_mse]).to(resids.dtype) * (2.0 / B)
        g = resids * coef[:, None, None]  # dL/dx_hat of each level [L, B, d_in]
        G = g.flip(0).cumsum(0).flip(0)  # band i gets the gradients of levels i..L
        gf = torch.empty_like(vals)
        level_rows = torch.empty_like(rows)
        for i, (pos, crow) in enumerate(ctx.bands):
            gf[pos] = sddmm(G[i], W_dec, crow, cols[pos])
            level_rows[pos] = rows[pos] + i * B
        grad_b_dec = g.sum(dim=(0, 1))
        enc_rows, enc_cols, dz, dec_vals, rhs = rows, cols, gf, vals, G.reshape(L * B, -1)
        dec_rows = level_rows
        if ctx.aux_part is not None:  # AuxK entries: decoder rhs rows L*B.., encoder rows as they are
            acols, avals, agate, aresid = ctx.aux_part
            ga = aresid * (2.0 * ctx.aux_scale / B * grad_aux)
            arows = torch.arange(B, device=xin.device).repeat_interleave(ctx.k_dead)
            gfa = sddmm(ga, W_dec, torch.arange(0, B * ctx.k_dead + 1, ctx.k_dead, device=xin.device), acols)
            enc_rows, enc_cols = torch.cat([rows, arows]), torch.cat([cols, acols])
            dz = torch.cat([gf, torch.where(agate, gfa, 0.0)])
            dec_rows, dec_vals = torch.cat([level_rows, arows + L * B]), torch.cat([vals, avals])
            rhs = torch.cat([rhs, ga])
        grad_W_dec = _by_latent(dec_rows, enc_cols, dec_vals, rhs, d_sae)
        grad_W_enc = _by_latent(enc_rows, enc_cols, dz, xin, d_sae).t()
        grad_b_enc = torch.bincount(enc_cols, weights=dz, minlength=d_sae).to(g.dtype)
        if ctx.apply_b_dec:
            grad_b_dec = grad_b_dec - W_enc @ grad_b_enc
        return None, grad_W_enc, grad_b_enc, grad_W_dec, grad_b_dec, None, None, None, None, None, None
