"""Which SAE latents fire on the chat template's special tokens (FAST paper §6).

For every template token (``token_class == TEMPLATE``: ``<|im_start|>``, ``<|im_end|>``, role names, the newline
after a role, ...) latents are ranked by their **average max activation**: per sample, the max activation of the
latent over that token's occurrences in the sample, averaged over the samples that contain the token. Also reported:
the firing rate on the token (share of its occurrences where the latent is > 0) and on all non-template tokens (a
latent that fires everywhere is not specific to the token).

Tokens are keyed by their text, with two refinements: whitespace-only template tokens are keyed with the token
before them (``\\n after user`` vs ``\\n after <|im_end|>``), and the token at position 0 gets its own key
(``<|im_start|> @ position 0``): from the middle layers on it is an attention sink with a norm ~100x larger than any
other token's (methods.md §5), so it is never pooled with the later ``<|im_start|>`` tokens.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from ..core.locking import claim_dir
from ..core.ownership import check_replace
from ..core.utils import write_output_file
from ..data import TEMPLATE, bucket_batches, fast_sequences, pad_batch
from ..data.methods import FAST_MAX_LENGTH
from ..models.prefix import capture_shared
from .interventions import resolve_hook, tokenizer_special_ids

if TYPE_CHECKING:
    from ..sae import SAE


def _visible(text: str) -> str:
    """Whitespace made visible (newlines, tabs; spaces too in whitespace-only text)."""
    text = text if text.strip() else text.replace(" ", "␣")
    return text.replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")


def token_key(tokenizer: Any, ids: list[int], t: int, template: list[bool], special: frozenset[int]) -> str:
    """The table key of template token ``ids[t]`` (see the module doc). ``template``: template-token flags of the
    sequence; ``special``: special-token ids. A whitespace token is keyed with the template word before it, back to
    the previous special token (``\\n after assistant`` even when ``assistant`` is two tokens)."""
    text = tokenizer.decode([int(ids[t])])
    if t == 0:
        return f"{_visible(text)} @ position 0"
    if text.strip():
        return _visible(text)
    j = t - 1
    while (
        j > 0
        and t - j < 8
        and template[j - 1]
        and ids[j] not in special
        and ids[j - 1] not in special
        and tokenizer.decode([int(ids[j - 1])]).strip()
    ):
        j -= 1
    return f"{_visible(text)} after {_visible(tokenizer.decode([int(i) for i in ids[j:t]]))}"


class _Stats:
    """Accumulators of one template-token key (all ``[d_sae]`` float64)."""

    def __init__(self, d_sae: int):
        self.sum_max = torch.zeros(d_sae, dtype=torch.float64)
        self.fire = torch.zeros(d_sae, dtype=torch.float64)
        self.n_samples = 0
        self.n_occurrences = 0


@dataclass
class TokenLatent:
    """One row of the table."""

    token: str
    rank: int
    latent: int
    avg_max_activation: float
    """Mean over samples containing the token of the latent's max activation on the token's occurrences."""
    firing_rate: float
    """Share of the token's occurrences where the latent is > 0."""
    other_firing_rate: float
    """Share of all non-template tokens where the latent is > 0."""


@dataclass
class SpecialTokenTable:
    """What :func:`special_token_table` returns and :func:`write_table` writes."""

    settings: dict[str, Any]
    tokens: dict[str, dict[str, int]]
    """key -> {"n_samples", "n_occurrences"}, in order of first appearance."""
    rows: list[TokenLatent]
    n_samples: int
    n_other_tokens: int


class SpecialTokenAccumulator:
    """Streaming statistics: feed latent activations of padded batches with :meth:`add`, read with :meth:`table`."""

    def __init__(self, tokenizer: Any, d_sae: int):
        self.tokenizer, self.d_sae = tokenizer, d_sae
        self.special = tokenizer_special_ids(tokenizer)
        self._keys: dict[tuple, str] = {}
        self.stats: dict[str, _Stats] = {}
        self.other_fire = torch.zeros(d_sae, dtype=torch.float64)
        self.n_other = self.n_samples = 0

    @torch.no_grad()
    def add(self, f: Tensor, input_ids: Tensor, template: Tensor, real: Tensor) -> None:
        """``f`` [B, T, d_sae] latent activations; ``input_ids``/``template``/``real`` [B, T] (template-token mask,
        non-padding mask). Sequences must start at column 0 (right padding). Reductions run on ``f``'s device."""
        f = f.detach()
        real = real.to(f.device).bool()
        template = template.to(f.device).bool() & real
        other = real & ~template
        other[:, 0] = False
        self.other_fire += (f[other] > 0).sum(0).to("cpu", torch.float64)
        self.n_other += int(other.sum())
        rows: list[int] = []  # one group per (sample, key)
        cols: list[int] = []
        group_of: list[int] = []
        keys: list[str] = []
        ids_all, flags_all = input_ids.tolist(), template.tolist()
        for b, (ids, flags) in enumerate(zip(ids_all, flags_all, strict=True)):
            self.n_samples += 1
            groups: dict[str, int] = {}
            for t in [t for t, flag in enumerate(flags) if flag]:
                cache_key = (t == 0, *ids[max(t - 8, 0) : t + 1], *flags[max(t - 8, 0) : t])
                key = self._keys.get(cache_key)
                if key is None:
                    key = self._keys[cache_key] = token_key(self.tokenizer, ids, t, flags, self.special)
                if key not in groups:
                    groups[key] = len(keys)
                    keys.append(key)
                rows.append(b)
                cols.append(t)
                group_of.append(groups[key])
        if not keys:
            return
        acts = f[torch.tensor(rows, device=f.device), torch.tensor(cols, device=f.device)]  # [N, d_sae]
        g = torch.tensor(group_of, device=f.device)
        index = g[:, None].expand_as(acts)
        gmax = torch.full((len(keys), acts.shape[1]), -torch.inf, dtype=acts.dtype, device=f.device)
        gmax = gmax.scatter_reduce(0, index, acts, "amax").to("cpu", torch.float64)
        gfire = acts.new_zeros(len(keys), acts.shape[1]).index_add_(0, g, (acts > 0).to(acts.dtype))
        gfire = gfire.to("cpu", torch.float64)
        counts = torch.bincount(g, minlength=len(keys)).tolist()
        for i, key in enumerate(keys):
            st = self.stats.get(key) or self.stats.setdefault(key, _Stats(self.d_sae))
            st.sum_max += gmax[i]
            st.fire += gfire[i]
            st.n_samples += 1
            st.n_occurrences += counts[i]

    def table(self, top_k: int = 10, settings: dict[str, Any] | None = None) -> SpecialTokenTable:
        """Top ``top_k`` latents per key by average max activation."""
        other_rate = self.other_fire / max(self.n_other, 1)
        rows: list[TokenLatent] = []
        for key, st in self.stats.items():
            avg = st.sum_max / st.n_samples
            rate = st.fire / st.n_occurrences
            order = torch.argsort(avg, descending=True, stable=True)[:top_k]
            rows += [
                TokenLatent(key, r + 1, int(k), float(avg[k]), float(rate[k]), float(other_rate[k]))
                for r, k in enumerate(order.tolist())
            ]
        tokens = {k: {"n_samples": s.n_samples, "n_occurrences": s.n_occurrences} for k, s in self.stats.items()}
        return SpecialTokenTable(settings or {}, tokens, rows, self.n_samples, self.n_other)


def special_token_table(
    model: nn.Module,
    tokenizer: Any,
    sae: SAE,
    records: Iterable[Any],
    n_samples: int = 1000,
    top_k: int = 10,
    max_tokens: int = 4096,
    max_length: int = FAST_MAX_LENGTH,
    hook: Any = None,
    dedup_n: int | None = 20,
    settings: dict[str, Any] | None = None,
) -> SpecialTokenTable:
    """Stream the first ``n_samples`` chat samples of ``records`` (FAST: one conversation per sequence) through the
    model up to the SAE's hook, in length-bucketed batches of at most ``max_tokens`` tokens, and rank latents per
    template token. Memory is bounded by one batch plus ``[n_keys, d_sae]`` accumulators."""

    hook = resolve_hook(sae, hook)
    device = next(model.parameters()).device
    sae_dtype = sae.W_dec.dtype
    sae = sae.to(device)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    acc = SpecialTokenAccumulator(tokenizer, sae.W_dec.shape[0])
    seqs = islice(fast_sequences(records, tokenizer, max_length=max_length, dedup_n=dedup_n), n_samples)
    for batch in bucket_batches(seqs, max_tokens=max_tokens, max_batch_size=64, bucket_window=256):
        pb = pad_batch(batch, pad)
        acts = capture_shared(model, hook, pb.input_ids.to(device), pb.attention_mask.to(device))
        with torch.no_grad():
            f = sae.encode(acts.to(sae_dtype))
        acc.add(f, pb.input_ids, pb.token_class == TEMPLATE, pb.attention_mask.bool())
    if acc.n_samples == 0:
        raise ValueError("no chat samples to analyse (is the data empty, or all duplicates?)")
    info = {"hook": str(hook), "n_samples": acc.n_samples, "top_k": top_k, **(settings or {})}
    return acc.table(top_k, info)


def table_markdown(table: SpecialTokenTable) -> str:
    """The table as Markdown: settings, per-token counts, then the top latents of every token."""
    lines = ["# Latents of the chat template's special tokens", ""]
    lines += [f"- **{k}**: `{v}`" for k, v in table.settings.items()]
    lines += [
        "",
        "Average max activation: per sample, the latent's max activation over the token's occurrences, "
        "averaged over the samples containing the token. Firing rate: share of the token's occurrences with "
        "the latent > 0; other-token rate: the same over all non-template tokens (position 0 excluded). "
        "The token at position 0 (attention sink) is reported on its own.",
        "",
        "| token | samples | occurrences |",
        "|---|---:|---:|",
    ]
    lines += [f"| {_code(k)} | {v['n_samples']} | {v['n_occurrences']} |" for k, v in table.tokens.items()]
    lines += [
        "",
        "| token | rank | latent | avg max activation | firing rate | other-token firing rate |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {_code(r.token)} | {r.rank} | {r.latent} | {r.avg_max_activation:.4g} | {r.firing_rate:.3f} | "
        f"{r.other_firing_rate:.4f} |"
        for r in table.rows
    ]
    return "\n".join(lines) + "\n"


def _code(text: str) -> str:
    """A table cell showing ``text`` as code (pipes escaped, as GFM tables need even inside code spans)."""
    return "`" + text.replace("|", "\\|") + "`"


def write_table(table: SpecialTokenTable, out_dir: str | Path, overwrite: bool = False) -> tuple[Path, Path]:
    """Write ``special_tokens.md`` and ``special_tokens.json`` into ``out_dir`` (claimed as chatsae's; a user's file
    of either name is never replaced; atomically)."""
    out = claim_dir(out_dir, "special-tokens", overwrite, "--out")
    md, js = out / "special_tokens.md", out / "special_tokens.json"
    for path in (md, js):
        check_replace(path, "--out")
    write_output_file(md, table_markdown(table), "--out")
    write_output_file(js, json.dumps(asdict(table), indent=1, ensure_ascii=False), "--out")
    return md, js
