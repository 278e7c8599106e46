"""Streaming accumulators: evaluate over many batches without holding activations, then ``result() -> dict``.

Each accumulator keeps O(H + d_sae + number of sequences) state, in float64 on the device of the first batch:

- :class:`ReconstructionAccumulator`: per-sequence squared-error sums and token counts (FAST Eq. 7 exactly, even if
  a sequence spans batches), the token mean and the sum of squared deviations about it merged batch by batch with
  Chan et al.'s parallel formula (FVU about the mean without the cancellation of ``E[x²] − E[x]²``), cosine and
  relative-norm sums; per channel the squared error and the squared deviation about the mean, and a histogram of
  per-token cosines, for the measures of :mod:`chatsae.eval.robust` (dominant channels, FVU without them,
  standardised FVU, median cosine).
- :class:`SparsityAccumulator`: firing counts per latent and the exact L0 distribution (a bincount).
- :class:`LMLossAccumulator`: sums of per-token CE clean / spliced / zero-ablated and KL.
- :class:`SubsetAccumulator`: all three for every token subset of :data:`~chatsae.eval.metrics.SUBSETS`.

Their results equal the one-shot functions of :mod:`chatsae.eval.metrics` on the concatenated batches. Each also
keeps per-sequence sums (:class:`SequenceSums`; ``per_sequence()``), from which :mod:`chatsae.eval.stats`
bootstraps intervals over sequences.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from . import metrics as M
from . import robust as R

Result = dict[str, Any]


def _float(t: Tensor | float) -> float:
    return float(t.item() if isinstance(t, Tensor) else t)


class SequenceSums:
    """Named per-sequence sums, ``add(seq_ids [n], name=[n] values, ...)``; arrays grow with the largest id seen."""

    def __init__(self) -> None:
        self.sums: dict[str, Tensor] = {}
        self.size = 0

    def add(self, seq_ids: Tensor, **values: Tensor) -> None:
        if seq_ids.numel() == 0:
            return
        ids = seq_ids.long()
        need = int(ids.max()) + 1
        if need > self.size:
            grow = max(need, 2 * self.size)
            for k, v in self.sums.items():
                self.sums[k] = torch.cat([v, v.new_zeros(grow - self.size)])
            self.size = grow
        for k, v in values.items():
            if k not in self.sums:
                self.sums[k] = torch.zeros(self.size, dtype=torch.float64, device=ids.device)
            self.sums[k] = self.sums[k].to(ids.device).index_add_(0, ids, v.to(ids.device).double())

    def get(self, name: str, n_seq: int | None = None) -> Tensor:
        """``[n_seq]`` sums of ``name`` (default: up to the largest id seen), on the CPU; zeros if never added."""
        n = self.size if n_seq is None else n_seq
        v = self.sums.get(name, torch.zeros(0, dtype=torch.float64)).cpu()
        return torch.cat([v, v.new_zeros(max(n - v.shape[0], 0))])[:n]


class ReconstructionAccumulator:
    """Reconstruction metrics of one token subset: ``update(x, x_hat, seq_ids)`` with ``[n, H]``, ``[n, H]``, ``[n]``.

    Sequence ids must be non-negative integers, the same id in every batch for tokens of the same sequence.
    """

    def __init__(self) -> None:
        self.n = 0
        self.d = 0
        self.sse: Tensor | None = None  # Σ ||x − x̂||²
        self.mean: Tensor | None = None  # [H] running token mean
        self.m2: Tensor | None = None  # Σ ||x − mean||² (all dims)
        self.cos: Tensor | None = None  # sums over tokens
        self.rel: Tensor | None = None
        self.sq_norm: Tensor | None = None
        self.centre: Tensor | None = None  # [H] the first batch's mean: per-sequence squares are taken about it
        self.m2_ch: Tensor | None = None  # [H] Σ (x_k − mean_k)² per channel
        self.sse_ch: Tensor | None = None  # [H] Σ (x_k − x̂_k)² per channel
        self.cos_hist: Tensor | None = None  # [COSINE_BINS] per-token cosines
        self.seq = SequenceSums()  # n, sse, sq_c = Σ ||x − centre||² per sequence

    def update(self, x: Tensor, x_hat: Tensor, seq_ids: Tensor) -> None:
        if x.shape[0] == 0:
            return
        if self.mean is None:
            dev = x.device
            self.d = x.shape[-1]
            zero = torch.zeros((), dtype=torch.float64, device=dev)
            self.sse, self.m2, self.cos, self.rel, self.sq_norm = (zero.clone() for _ in range(5))
            self.mean = torch.zeros(self.d, dtype=torch.float64, device=dev)
            self.centre = x.double().mean(dim=0)
            self.m2_ch = torch.zeros(self.d, dtype=torch.float64, device=dev)
            self.sse_ch = torch.zeros(self.d, dtype=torch.float64, device=dev)
            self.cos_hist = torch.zeros(R.COSINE_BINS, dtype=torch.int64, device=dev)
        assert self.sse is not None and self.m2 is not None and self.centre is not None
        assert self.cos is not None and self.rel is not None and self.sq_norm is not None
        assert self.m2_ch is not None and self.sse_ch is not None and self.cos_hist is not None
        err = M.squared_error(x, x_hat)
        self.sse += err.sum()
        cos = M.cosine_similarity(x, x_hat)
        self.cos += cos.sum()
        self.cos_hist += R.cosine_histogram(cos)
        self.sse_ch += R.channel_sse(x, x_hat)
        self.rel += M.relative_norm(x, x_hat).sum()
        xd = x.double()
        self.sq_norm += xd.pow(2).sum()
        # Chan et al.: merge (n_a, mean_a, M2_a) with the batch's (n_b, mean_b, M2_b)
        n_b = x.shape[0]
        mean_b = xd.mean(dim=0)
        m2_b = (xd - mean_b).pow(2).sum()
        n = self.n + n_b
        delta = mean_b - self.mean
        self.m2 += m2_b + delta.pow(2).sum() * (self.n * n_b / n)
        self.m2_ch += (xd - mean_b).pow(2).sum(dim=0) + delta.pow(2) * (self.n * n_b / n)
        self.mean += delta * (n_b / n)
        self.n = n
        # per-sequence sums: Eq. 7 and the bootstrap
        sq_c = (xd - self.centre).pow(2).sum(dim=-1)
        self.seq.add(seq_ids.to(x.device), n=torch.ones_like(err), sse=err, sq_c=sq_c)

    def per_sequence(self, n_seq: int | None = None) -> dict[str, Tensor]:
        """``[n_seq]`` per-sequence ``n`` (tokens), ``sse`` (Σ ||x − x̂||²) and ``m2``: ``Σ ||x − centre||² −
        n·||mean − centre||²`` with ``centre`` the first batch's mean, whose sum over sequences is exactly the
        squared deviation about the mean (the FVU denominator) and which attributes it to sequences."""
        out = {k: self.seq.get(k, n_seq) for k in ("n", "sse")}
        shift = 0.0 if self.mean is None or self.centre is None else float((self.mean - self.centre).pow(2).sum())
        out["m2"] = self.seq.get("sq_c", n_seq) - out["n"] * shift
        return out

    def result(self) -> Result:
        """tokens, sequences, mse (Eq. 7), log2_mse, mse_token (flat), fvu, explained_variance, cosine_similarity,
        relative_norm, mean_sq_norm and the robust measures (:func:`chatsae.eval.robust.robust_result`); NaN metrics
        when the subset had no token."""
        nan = float("nan")
        robust = R.robust_result(self.sse_ch, self.m2_ch, self.cos_hist)
        if self.n == 0:
            keys = (
                "mse",
                "log2_mse",
                "mse_token",
                "fvu",
                "explained_variance",
                "cosine_similarity",
                "relative_norm",
                "mean_sq_norm",
            )
            return {"tokens": 0, "sequences": 0, **dict.fromkeys(keys, nan), **robust}
        assert self.sse is not None and self.m2 is not None  # set by the first non-empty update
        assert self.cos is not None and self.rel is not None and self.sq_norm is not None
        seq_n, seq_sse = self.seq.get("n"), self.seq.get("sse")
        present = seq_n > 0
        mse = _float((seq_sse[present] / seq_n[present]).mean() / self.d)
        sse, m2 = _float(self.sse), _float(self.m2)
        fvu = sse / m2 if m2 > 0 else nan
        return {
            "tokens": self.n,
            "sequences": int(present.sum()),
            "mse": mse,
            "log2_mse": M.log2(mse),
            "mse_token": sse / (self.n * self.d),
            "fvu": fvu,
            "explained_variance": 1 - fvu,
            "cosine_similarity": _float(self.cos) / self.n,
            "relative_norm": _float(self.rel) / self.n,
            "mean_sq_norm": _float(self.sq_norm) / self.n,
            **robust,
        }


class SparsityAccumulator:
    """Latent statistics of one token subset: ``update(f)`` with ``[n, d_sae]`` latent activations."""

    def __init__(self, d_sae: int, dense_threshold: float = M.DENSE_THRESHOLD) -> None:
        self.d_sae, self.dense_threshold = d_sae, dense_threshold
        self.n = 0
        self.fire_counts = torch.zeros(d_sae, dtype=torch.int64)
        self.l0_counts = torch.zeros(d_sae + 1, dtype=torch.int64)  # l0_counts[j] = tokens with L0 == j
        self.seq = SequenceSums()  # l0 = Σ L0 per sequence (when sequence ids are given)

    def update(self, f: Tensor, seq_ids: Tensor | None = None) -> None:
        """``f`` ``[n, d_sae]``; ``seq_ids`` ``[n]`` (optional) for the per-sequence L0 sums."""
        on = M.fired(f)
        self.add(on.sum(dim=0), on.sum(dim=-1), seq_ids)

    def add(self, fire_counts: Tensor, l0: Tensor, seq_ids: Tensor | None = None) -> None:
        """The counts of ``n`` tokens: ``fire_counts`` ``[d_sae]`` (tokens each latent fired on), ``l0`` ``[n]``
        int64 (latents firing per token), ``seq_ids`` ``[n]`` (optional)."""
        if l0.shape[0] == 0:
            return
        if self.fire_counts.device != l0.device:
            self.fire_counts, self.l0_counts = self.fire_counts.to(l0.device), self.l0_counts.to(l0.device)
        self.fire_counts += fire_counts
        self.l0_counts += torch.bincount(l0, minlength=self.d_sae + 1)
        self.n += l0.shape[0]
        if seq_ids is not None:
            self.seq.add(seq_ids.to(l0.device), l0=l0)

    def frequency(self) -> Tensor:
        """``[d_sae]`` fraction of this subset's tokens each latent fired on."""
        return M.firing_frequency(self.fire_counts.cpu(), self.n)

    def l0_quantile(self, q: float) -> float:
        """Exact quantile (lower) of the per-token L0 distribution."""
        cdf = self.l0_counts.cpu().cumsum(0)
        return float(torch.searchsorted(cdf, torch.tensor(q * self.n).ceil().clamp_min(1).long()).item())

    def result(self) -> Result:
        """l0 (mean), l0_std, l0_p10 / p50 / p90, l0_max, dead_latents, dense_latents (and their fractions)."""
        nan = float("nan")
        if self.n == 0:
            keys = ("l0", "l0_std", "l0_p10", "l0_p50", "l0_p90", "l0_max")
            return {
                **dict.fromkeys(keys, nan),
                "dead_latents": None,
                "dense_latents": None,
                "dead_fraction": nan,
                "dense_fraction": nan,
            }
        counts = self.l0_counts.cpu().double()
        values = torch.arange(self.d_sae + 1, dtype=torch.float64)
        mean = float((counts * values).sum() / self.n)
        var = float((counts * (values - mean).pow(2)).sum() / self.n)
        freq = self.frequency()
        dead, dense = M.dead_latents(freq), M.dense_latents(freq, self.dense_threshold)
        return {
            "l0": mean,
            "l0_std": var**0.5,
            "l0_p10": self.l0_quantile(0.1),
            "l0_p50": self.l0_quantile(0.5),
            "l0_p90": self.l0_quantile(0.9),
            "l0_max": float(torch.nonzero(counts).max()),
            "dead_latents": dead,
            "dense_latents": dense,
            "dead_fraction": dead / self.d_sae,
            "dense_fraction": dense / self.d_sae,
        }


LM_KEYS = ("ce_clean", "ce_spliced", "ce_zero", "kl")


class LMLossAccumulator:
    """Mean per-token losses of one subset: ``update(ce_clean=[n], ce_spliced=[n], kl=[n], ce_zero=[n] | None)``."""

    def __init__(self) -> None:
        self.n = 0
        self.sums: dict[str, Tensor] = {}
        self.seq = SequenceSums()  # lm_n and each loss summed per sequence (when sequence ids are given)

    def update(self, seq_ids: Tensor | None = None, **losses: Tensor | None) -> None:
        given = {k: v for k, v in losses.items() if v is not None}
        if set(given) - set(LM_KEYS):
            raise ValueError(f"unknown loss names {sorted(set(given) - set(LM_KEYS))}; expected {LM_KEYS}")
        n = next(iter(given.values())).shape[0] if given else 0
        if n == 0:
            return
        for k, v in given.items():
            self.sums[k] = self.sums.get(k, 0) + v.double().sum()
        self.n += n
        if seq_ids is not None:
            ref = next(iter(given.values()))
            self.seq.add(seq_ids.to(ref.device), lm_n=torch.ones_like(ref), **given)

    def result(self) -> Result:
        """lm_tokens, ce_clean, ce_spliced, delta_ce, kl, ce_zero, ce_recovered (None when not computed)."""
        keys = ("ce_clean", "ce_spliced", "delta_ce", "kl", "ce_zero", "ce_recovered")
        if self.n == 0:
            return {"lm_tokens": 0, **dict.fromkeys(keys)}
        mean = {k: _float(v) / self.n for k, v in self.sums.items()}
        out = M.lm_loss_summary(mean["ce_clean"], mean["ce_spliced"], mean.get("ce_zero"), mean["kl"])
        return {"lm_tokens": self.n, **out}


class SubsetAccumulator:
    """Every metric on every token subset. ``update`` takes flat token tensors (padding removed)."""

    def __init__(
        self,
        d_sae: int,
        subsets: tuple[str, ...] = M.SUBSETS,
        dense_threshold: float = M.DENSE_THRESHOLD,
        special_ids: Any = None,
    ) -> None:
        """``special_ids``: the tokenizer's special token ids (the strict special set; see ``update``'s
        ``token_ids``)."""
        self.subsets = subsets
        self.recon = {s: ReconstructionAccumulator() for s in subsets}
        self.sparsity = {s: SparsityAccumulator(d_sae, dense_threshold) for s in subsets}
        self.lm = {s: LMLossAccumulator() for s in subsets}
        self.special_ids = None if special_ids is None else torch.as_tensor(sorted(special_ids), dtype=torch.long)
        self.n_seq = 0
        self.first_user = torch.empty(0, dtype=torch.long)
        """``[S]`` position of each sequence's first user token seen so far (int64 max: none yet)."""

    def _before_user(self, token_class: Tensor, positions: Tensor, seq_ids: Tensor | None) -> Tensor | None:
        """``[n]`` bool: no user token earlier in the token's sequence, over every call so far (a sequence's tokens
        may come in several calls, in position order). None without ``seq_ids``."""
        if seq_ids is None:
            return None
        seq_ids = seq_ids.long().cpu()
        n = int(seq_ids.max()) + 1 if seq_ids.numel() else 0
        if n > self.first_user.numel():
            grow = torch.full((n - self.first_user.numel(),), torch.iinfo(torch.long).max)
            self.first_user = torch.cat([self.first_user, grow])
        user = (token_class == M.USER).cpu()
        pos = positions.long().cpu()
        self.first_user.scatter_reduce_(0, seq_ids[user], pos[user], "amin")
        return (pos < self.first_user[seq_ids]).to(positions.device)

    def _masks(
        self, token_class: Tensor, positions: Tensor, token_ids: Tensor | None, seq_ids: Tensor | None = None
    ) -> dict[str, Tensor]:
        strict = None
        if token_ids is not None and self.special_ids is not None:
            strict = M.strict_special(token_ids, self.special_ids)
        before = self._before_user(token_class, positions, seq_ids)
        return {k: m for k, m in M.subset_masks(token_class, positions, strict, before).items() if k in self.recon}

    def update(
        self,
        x: Tensor,
        x_hat: Tensor,
        f: Tensor,
        token_class: Tensor,
        positions: Tensor,
        seq_ids: Tensor,
        token_ids: Tensor | None = None,
    ) -> None:
        """``x, x_hat [n, H]``, ``f [n, d_sae]``, ``token_class, positions, seq_ids [n]``; ``token_ids [n]`` for the
        strict special subsets (empty without them)."""
        if seq_ids.numel():
            self.n_seq = max(self.n_seq, int(seq_ids.max()) + 1)
        masks = self._masks(token_class, positions, token_ids, seq_ids)
        # the firing counts of every subset in one product (subset masks x fired): f is read once, not once per
        # subset; exact (integers below 2^24 in float32, else float64)
        on = M.fired(f).to(torch.float32 if f.shape[0] < 2**24 else torch.float64)
        l0 = on.sum(dim=-1).long()
        counts = (torch.stack(list(masks.values())).to(on.dtype) @ on).long() if masks else None
        for i, (name, m) in enumerate(masks.items()):
            self.recon[name].update(x[m], x_hat[m], seq_ids[m])
            self.sparsity[name].add(counts[i], l0[m], seq_ids[m])  # type: ignore[index]

    def update_lm(
        self,
        token_class: Tensor,
        positions: Tensor,
        seq_ids: Tensor | None = None,
        token_ids: Tensor | None = None,
        **losses: Tensor | None,
    ) -> None:
        """Per-position losses ``[n]`` (``ce_clean``, ``ce_spliced``, ``kl``, optional ``ce_zero``); a loss belongs
        to the subsets of the position whose logits are scored (its label is the next token). ``seq_ids`` ``[n]``
        for the per-sequence sums, ``token_ids`` ``[n]`` (of the scored positions) for the strict subsets."""
        for name, m in self._masks(token_class, positions, token_ids, seq_ids).items():
            ids = None if seq_ids is None else seq_ids[m]
            self.lm[name].update(ids, **{k: None if v is None else v[m] for k, v in losses.items()})

    def result(self) -> dict[str, Result]:
        """``{subset: {metric: value}}`` merging the three accumulators' results."""
        return {s: {**self.recon[s].result(), **self.sparsity[s].result(), **self.lm[s].result()} for s in self.subsets}

    def per_sequence(self) -> dict[str, dict[str, list[float]]]:
        """``{subset: {name: [S] list}}`` per-sequence sums over the S sequences seen (ids 0..S-1): ``n``, ``sse``,
        ``m2`` (reconstruction), ``l0``, and with LM losses ``lm_n``, ``ce_clean``, ``ce_spliced``, ``kl``,
        ``ce_zero``; the input of :func:`chatsae.eval.stats.sequence_terms`."""
        out = {}
        for s in self.subsets:
            sums = self.recon[s].per_sequence(self.n_seq)
            sums["l0"] = self.sparsity[s].seq.get("l0", self.n_seq)
            lm = self.lm[s].seq
            for k in ("lm_n", *LM_KEYS):
                if k in lm.sums:
                    sums[k] = lm.get(k, self.n_seq)
            out[s] = {k: v.tolist() for k, v in sums.items()}
        return out

    def firing_frequency(self, subset: str = "all") -> Tensor:
        """``[d_sae]`` firing frequency of each latent on ``subset``."""
        return self.sparsity[subset].frequency()
