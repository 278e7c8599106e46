"""Streaming per-latent statistics over SAE activations, with memory bounded by ``d_sae`` (not by the data size).

:class:`FeatureCollector` holds a dict of fixed-shape tensors (its *state*) and updates it batch by batch:

- the top-``k`` samples of every latent by the latent's **max activation in the sample** (one entry per sample, as
  the FAST protocol's "top-5 sentences"), each with a token window around the max position and the latent's
  per-token activations in it;
- a uniform reservoir (Algorithm R) of ``n_quantile`` *activating* samples per latent, later split into activation
  quantiles (held-out examples for detection/fuzzing and for the dashboard);
- a uniform reservoir of ``n_random`` *non-activating* contexts per latent: each sample offers one window at a
  random position, kept for the latents that are 0 on every token of it;
- firing counts and activation sums per token class, a log10-binned activation histogram, and the same statistics
  for each chat-template token id (``<|im_start|>``, ``user``, ...).

Shapes below: ``d`` = d_sae, ``k`` = top_k, ``R`` = n_quantile, ``Q`` = n_random, ``W`` = window length,
``C`` = number of token classes, ``M`` = template-token slots.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

N_CLASSES = 5  # chatsae.data token classes: TEXT=0, TEMPLATE=1, SYSTEM=2, USER=3, ASSISTANT=4
TEMPLATE_CLASS = 1


@dataclass(frozen=True)
class CollectorConfig:
    """Shape parameters of a :class:`FeatureCollector` state."""

    d_sae: int
    top_k: int = 5
    n_quantile: int = 20
    n_random: int = 20
    window_before: int = 24
    window_after: int = 8
    hist_min_log10: float = -4.0
    hist_max_log10: float = 6.0
    hist_bins_per_decade: int = 5
    template_slots: int = 64

    @property
    def window(self) -> int:
        return self.window_before + 1 + self.window_after

    @property
    def n_bins(self) -> int:
        return round((self.hist_max_log10 - self.hist_min_log10) * self.hist_bins_per_decade)

    def hist_edges(self) -> Tensor:
        """Bin edges ``[n_bins + 1]`` in activation units (log-spaced); the end bins also take under/overflow."""
        return torch.logspace(self.hist_min_log10, self.hist_max_log10, self.n_bins + 1, dtype=torch.float64)


CollectorSpec = CollectorConfig
"""Deprecated alias of :class:`CollectorConfig` (its former name; kept so that old imports work)."""


def empty_state(spec: CollectorConfig, device: str | torch.device = "cpu") -> dict[str, Tensor]:
    """A fresh state: empty slots have activation 0 and sample -1; window tokens outside a sample are -1."""
    d, k, R, Q, W, M = spec.d_sae, spec.top_k, spec.n_quantile, spec.n_random, spec.window, spec.template_slots
    i64, f32, i32 = torch.int64, torch.float32, torch.int32

    def full(shape: tuple[int, ...], value: float, dtype: torch.dtype) -> Tensor:
        return torch.full(shape, value, dtype=dtype, device=device)

    state = {}
    for prefix, n in (("top", k), ("qnt", R)):
        state[f"{prefix}_act"] = full((d, n), 0.0, f32)
        state[f"{prefix}_sample"] = full((d, n), -1, i64)
        state[f"{prefix}_pos"] = full((d, n), -1, i64)
        state[f"{prefix}_tokens"] = full((d, n, W), -1, i32)
        state[f"{prefix}_token_act"] = full((d, n, W), 0.0, f32)
    state["qnt_seen"] = full((d,), 0, i64)
    state["neg_sample"] = full((d, Q), -1, i64)
    state["neg_pos"] = full((d, Q), -1, i64)
    state["neg_tokens"] = full((d, Q, W), -1, i32)
    state["neg_seen"] = full((d,), 0, i64)
    state["fire_count"] = full((N_CLASSES, d), 0, i64)
    state["act_sum"] = full((N_CLASSES, d), 0.0, torch.float64)
    state["class_tokens"] = full((N_CLASSES,), 0, i64)
    state["hist"] = full((d, spec.n_bins), 0, i64)
    state["tmpl_ids"] = full((M,), -1, i64)
    state["tmpl_count"] = full((M,), 0, i64)
    state["tmpl_fire"] = full((M, d), 0, i64)
    state["tmpl_act_sum"] = full((M, d), 0.0, torch.float64)
    return state


class BatchView:
    """One batch of a model's token activations through the SAE, with what the collector needs to know about it.

    ``acts`` ``[B, T, d]`` latent activations (positions that are not ``valid`` are set to 0), ``input_ids``
    ``[B, T]``, ``valid`` ``[B, T]`` bool (real tokens that count: not padding, not a skipped position 0),
    ``lengths`` ``[B]`` real tokens per sample (padding excluded), ``token_class`` ``[B, T]`` int,
    ``sample_ids`` ``[B]`` int64 global sample numbers.
    """

    def __init__(
        self, acts: Tensor, input_ids: Tensor, valid: Tensor, lengths: Tensor, token_class: Tensor, sample_ids: Tensor
    ) -> None:
        if acts.dim() != 3 or acts.shape[:2] != input_ids.shape or valid.shape != input_ids.shape:
            raise ValueError(
                f"BatchView: acts {tuple(acts.shape)}, input_ids {tuple(input_ids.shape)} and valid "
                f"{tuple(valid.shape)} disagree"
            )
        self.acts = acts * valid.unsqueeze(-1).to(acts.dtype)
        self.input_ids, self.valid, self.lengths = input_ids, valid, lengths.to(input_ids.device)
        self.token_class, self.sample_ids = token_class, sample_ids.to(input_ids.device)


class FeatureCollector:
    """Update a state dict (see :func:`empty_state`) with :meth:`update`; the state is all there is to save."""

    def __init__(
        self, spec: CollectorConfig, state: dict[str, Tensor] | None = None, device: str | torch.device = "cpu"
    ) -> None:
        self.spec = spec
        self.device = torch.device(device)
        self.state = (
            empty_state(spec, self.device) if state is None else {k: v.to(self.device) for k, v in state.items()}
        )

    # ---- window extraction ------------------------------------------------------------------------------------
    def _window_index(self, batch: BatchView, b: Tensor, pos: Tensor) -> tuple[Tensor, Tensor]:
        """Positions ``[N, W]`` (clamped) and in-sample mask ``[N, W]`` of windows around ``pos`` in sample ``b``."""
        offs = torch.arange(-self.spec.window_before, self.spec.window_after + 1, device=pos.device)
        idx = pos.unsqueeze(1) + offs
        inside = (idx >= 0) & (idx < batch.lengths[b].unsqueeze(1))
        return idx.clamp(0, batch.input_ids.shape[1] - 1), inside

    def _window_tokens(self, batch: BatchView, b: Tensor, pos: Tensor) -> Tensor:
        idx, inside = self._window_index(batch, b, pos)
        tok = batch.input_ids[b.unsqueeze(1), idx].to(torch.int32)
        return torch.where(inside, tok, torch.full_like(tok, -1))

    def _window_acts(self, batch: BatchView, b: Tensor, pos: Tensor, latent: Tensor) -> Tensor:
        idx, inside = self._window_index(batch, b, pos)
        act = batch.acts[b.unsqueeze(1), idx, latent.unsqueeze(1)].float()
        return act * inside

    # ---- update -----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def update(self, batch: BatchView, generator: torch.Generator | None = None) -> None:
        """Fold one batch into the state. ``generator`` (CPU) drives the reservoir sampling."""
        smax, argpos = batch.acts.max(dim=1)  # [B, d] per-sample max and its position
        self._update_top(batch, smax, argpos)
        self._update_reservoirs(batch, smax, argpos, generator)
        self._update_counts(batch)

    def _update_top(self, batch: BatchView, smax: Tensor, argpos: Tensor) -> None:
        s, k, d = self.state, self.spec.top_k, smax.shape[1]
        # non-firing samples get -1 so they never displace an entry (empty entries hold 0)
        new_act = torch.where(smax > 0, smax, torch.full_like(smax, -1.0)).T.float()
        cand = torch.cat([s["top_act"], new_act], dim=1)  # [d, k + B]
        val, idx = cand.topk(k, dim=1)
        from_new = (idx >= k) & (val > 0)
        old_idx = idx.clamp(max=k - 1)
        rows = torch.arange(d, device=idx.device).unsqueeze(1)
        out = {name: s[f"top_{name}"][rows, old_idx] for name in ("sample", "pos", "tokens", "token_act")}
        out["act"] = torch.where(val > 0, val, torch.zeros_like(val))
        j, slot = from_new.nonzero(as_tuple=True)
        if j.numel():
            b = idx[j, slot] - k
            pos = argpos[b, j]
            out["sample"][j, slot] = batch.sample_ids[b]
            out["pos"][j, slot] = pos
            out["tokens"][j, slot] = self._window_tokens(batch, b, pos)
            out["token_act"][j, slot] = self._window_acts(batch, b, pos, j)
        for name, value in out.items():
            s[f"top_{name}"] = value

    def _reservoir_slots(self, seen: Tensor, eligible: Tensor, size: int, gen: torch.Generator | None) -> Tensor:
        """Algorithm R for every latent at once: count the new item, return its slot ``[d]`` (-1 = not kept)."""
        seen += eligible.long()
        u = torch.rand(seen.shape, generator=gen, dtype=torch.float64).to(seen.device)
        r = (u * seen).long()  # uniform in [0, seen)
        slot = torch.where(seen <= size, seen - 1, torch.where(r < size, r, torch.full_like(r, -1)))
        return torch.where(eligible, slot, torch.full_like(slot, -1))

    def _update_reservoirs(self, batch: BatchView, smax: Tensor, argpos: Tensor, gen: torch.Generator | None) -> None:
        s, spec = self.state, self.spec
        for b in range(smax.shape[0]):  # sequential over samples: exact Algorithm R; vectorised over latents
            if int(batch.valid[b].sum()) == 0:
                continue
            bb = torch.tensor([b], device=smax.device)
            fired = smax[b] > 0
            slot = self._reservoir_slots(s["qnt_seen"], fired, spec.n_quantile, gen)
            j = (slot >= 0).nonzero(as_tuple=True)[0]
            if j.numel():
                pos, bj, sl = argpos[b, j], bb.expand_as(j), slot[j]
                s["qnt_act"][j, sl] = smax[b, j].float()
                s["qnt_sample"][j, sl] = batch.sample_ids[b]
                s["qnt_pos"][j, sl] = pos
                s["qnt_tokens"][j, sl] = self._window_tokens(batch, bj, pos)
                s["qnt_token_act"][j, sl] = self._window_acts(batch, bj, pos, j)
            # non-activating: a window at a random counted position where the latent is 0 on every token (it
            # may fire elsewhere in the sample: latents on chat-template tokens fire in every chat sample)
            valid_pos = batch.valid[b].nonzero(as_tuple=True)[0]
            center = valid_pos[torch.randint(len(valid_pos), (1,), generator=gen).to(valid_pos.device)]
            idx, inside = self._window_index(batch, bb, center)
            quiet = ~((batch.acts[b, idx[0]] > 0) & inside[0].unsqueeze(1)).any(0)  # [d]
            slot = self._reservoir_slots(s["neg_seen"], quiet, spec.n_random, gen)
            j = (slot >= 0).nonzero(as_tuple=True)[0]
            if j.numel():
                pos, sl = center.expand_as(j), slot[j]
                s["neg_sample"][j, sl] = batch.sample_ids[b]
                s["neg_pos"][j, sl] = pos
                s["neg_tokens"][j, sl] = self._window_tokens(batch, bb.expand_as(j), pos)

    def _update_counts(self, batch: BatchView) -> None:
        """Counters from the non-zero entries only (sparse: L0 per token, not d_sae)."""
        s, spec = self.state, self.spec
        d = batch.acts.shape[-1]
        a = batch.acts[batch.valid]  # [N, d] counted tokens only
        cls = batch.token_class[batch.valid].long().clamp(0, N_CLASSES - 1)
        s["class_tokens"] += torch.bincount(cls, minlength=N_CLASSES)
        tok, lat = (a > 0).nonzero(as_tuple=True)
        vals = a[tok, lat]
        ones = torch.ones_like(lat)
        key = cls[tok] * d + lat
        s["fire_count"].view(-1).index_add_(0, key, ones)
        s["act_sum"].view(-1).index_add_(0, key, vals.double())
        bins = ((vals.double().log10() - spec.hist_min_log10) * spec.hist_bins_per_decade).floor().long()
        s["hist"].view(-1).index_add_(0, lat * spec.n_bins + bins.clamp(0, spec.n_bins - 1), ones)
        is_tmpl = cls == TEMPLATE_CLASS
        if is_tmpl.any():
            ids = batch.input_ids[batch.valid]
            row_slot = torch.full_like(cls, -1)
            row_slot[is_tmpl] = self._template_slots(ids[is_tmpl])
            kept = row_slot[row_slot >= 0]
            s["tmpl_count"] += torch.bincount(kept, minlength=spec.template_slots)
            slot = row_slot[tok]
            m = slot >= 0
            s["tmpl_fire"].view(-1).index_add_(0, slot[m] * d + lat[m], ones[m])
            s["tmpl_act_sum"].view(-1).index_add_(0, slot[m] * d + lat[m], vals[m].double())

    def _template_slots(self, ids: Tensor) -> Tensor:
        """Slot of each template token id ``[N]``; new ids take free slots (-1 once all are taken)."""
        table = self.state["tmpl_ids"]
        for tid in ids.unique().tolist():
            if not (table == tid).any():
                free = (table < 0).nonzero(as_tuple=True)[0]
                if free.numel():
                    table[free[0]] = tid
        match = ids.unsqueeze(1) == table.unsqueeze(0)  # [N, M]
        return torch.where(match.any(1), match.long().argmax(1), torch.full_like(ids, -1))
