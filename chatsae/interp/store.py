"""Reading the output of ``chatsae features`` (layout: ``docs/interp.md``).

A features directory holds ``meta.json``, ``state.safetensors`` (the collector state, see
:mod:`chatsae.interp.collector`), ``logit_lens.safetensors``, ``tokens.json`` (token id -> decoded string) and,
while a run is in progress, ``log/`` (per-batch diffs, see :mod:`chatsae.interp.statelog`).
"""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path
from typing import NamedTuple

import torch
from safetensors.torch import load_file
from torch import Tensor

from ..core.utils import read_json_file
from .collector import TEMPLATE_CLASS
from .statelog import BASE_FILE, StateLog

META_FILE = "meta.json"
TOKENS_FILE = "tokens.json"
LOGITS_FILE = "logit_lens.safetensors"
AUTOINTERP_FILE = "autointerp.json"
KINDS = ("top", "quantile", "random")
CHECKED_FILES = (BASE_FILE, LOGITS_FILE, TOKENS_FILE)
"""Files of a finished features run whose digests ``meta.json`` holds (``checksums``); ``meta.json`` holds its own
(``meta_digest``, over its content without that key)."""
META_EXPECTED = "chatsae's features metadata (a JSON object)"
AUTOINTERP_EXPECTED = "chatsae's auto-interpretation results (a JSON object with 'latents' and 'runs')"
_VERIFIED: dict[tuple[str, int, int], str] = {}
_VERIFIED_LOCK = threading.Lock()


def read_autointerp(path: str | Path) -> dict:
    """The content of an ``autointerp.json`` (a ValueError naming the file when it is damaged or too deeply nested)."""
    return read_json_file(path, AUTOINTERP_EXPECTED)


def _file_digest(path: Path) -> str:
    """blake2b-128 of a file, computed once per process for a given (path, size, mtime)."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    with _VERIFIED_LOCK:
        if key in _VERIFIED:
            return _VERIFIED[key]
    h = hashlib.blake2b(digest_size=16)
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    with _VERIFIED_LOCK:
        _VERIFIED[key] = h.hexdigest()
    return h.hexdigest()


def meta_digest(meta: dict) -> str:
    """Digest of ``meta`` as read back from JSON, without its ``meta_digest`` key."""
    body = {k: v for k, v in json.loads(json.dumps(meta, default=str)).items() if k != "meta_digest"}
    return hashlib.blake2b(json.dumps(body, sort_keys=True).encode(), digest_size=16).hexdigest()


def seal(root: Path, meta: dict) -> None:
    """Add to ``meta`` (in place, before it is written) the digests of the run's files and of itself."""
    meta["checksums"] = {
        "algorithm": "blake2b-128",
        "files": {name: _file_digest(root / name) for name in CHECKED_FILES if (root / name).is_file()},
    }
    meta["meta_digest"] = meta_digest(meta)


def verify(root: Path, meta: dict) -> None:
    """Compare a finished run's files with the digests of its ``meta.json`` (runs written before them: unchecked)."""
    if "meta_digest" in meta and meta_digest(meta) != meta["meta_digest"]:
        raise ValueError(f"{root / META_FILE}: its content changed since it was written (digest mismatch)")
    for name, digest in (meta.get("checksums") or {}).get("files", {}).items():
        path = root / name
        if not path.is_file():
            raise ValueError(f"{path}: missing (listed in {root / META_FILE}); rerun `chatsae features`")
        if _file_digest(path) != digest:
            raise ValueError(
                f"{path}: its bytes changed since `chatsae features` wrote it (checksum mismatch); move it away and "
                "rerun `chatsae features --overwrite` (chatsae replaces only files it wrote, unchanged)"
            )


class Context(NamedTuple):
    """A window of tokens around one position of a sample, with one latent's activation at each token."""

    tokens: list[int]
    """Token ids of the window (only tokens inside the sample)."""
    acts: list[float]
    """The latent's activation at each token (0 at positions that do not count, e.g. a skipped position 0)."""
    sample: int
    """Sample id (record index in the data source)."""
    pos: int
    """Position in the sample of the window's centre (the max-activating token; a random token for 'random')."""
    center: int
    """Index of that token inside ``tokens``."""
    max_act: float
    """The latent's max activation over the whole sample (0 for non-activating contexts)."""


class TemplateStat(NamedTuple):
    """How one latent behaves on one chat-template token id."""

    token_id: int
    count: int  # type: ignore[assignment]  # a field named like tuple.count (shadowing it is intended)
    """Occurrences of the token among the counted tokens."""
    fire_rate: float
    """Share of those occurrences where the latent fired."""
    mean_act: float
    """Mean activation over all occurrences (zeros included)."""


class FeatureData:
    """The results of a features run, loaded on the CPU."""

    def __init__(self, root: str | Path, allow_incomplete: bool = False) -> None:
        self.root = Path(root)
        meta_path = self.root / META_FILE
        if not meta_path.is_file():
            raise FileNotFoundError(f"{meta_path}: not found; run `chatsae features` first")
        self.meta = read_json_file(meta_path, META_EXPECTED)
        if not self.meta.get("complete") and not allow_incomplete:
            raise ValueError(f"{self.root}: the features run is not complete; rerun `chatsae features` to resume it")
        if self.meta.get("complete"):
            verify(self.root, self.meta)
        self.state, self.progress = StateLog(self.root).load()
        lens = self.root / LOGITS_FILE
        self.lens: dict[str, Tensor] | None = load_file(str(lens)) if lens.is_file() else None
        tokens = self.root / TOKENS_FILE
        self.token_strings: dict[str, str] = (
            read_json_file(tokens, "chatsae's token strings ({token id: text})") if tokens.is_file() else {}
        )
        self.d_sae = int(self.state["top_act"].shape[0])
        self.window_before = int(self.meta.get("window", [self.state["top_tokens"].shape[2] - 1, 0])[0])

    # ---- per-latent statistics (all [d_sae]) --------------------------------------------------------------------
    @property
    def n_tokens(self) -> int:
        return int(self.state["class_tokens"].sum())

    @property
    def fire_count(self) -> Tensor:
        return self.state["fire_count"].sum(0)

    @property
    def frequency(self) -> Tensor:
        """Firing frequency: share of counted tokens where the latent is > 0."""
        return self.fire_count.double() / max(self.n_tokens, 1)

    @property
    def max_act(self) -> Tensor:
        return self.state["top_act"][:, 0]

    @property
    def mean_act(self) -> Tensor:
        """Mean activation over the tokens where the latent fires (0 if it never fires)."""
        return self.state["act_sum"].sum(0) / self.fire_count.clamp_min(1)

    @property
    def special_share(self) -> Tensor:
        """Share of the latent's firings that fall on chat-template tokens."""
        return self.state["fire_count"][TEMPLATE_CLASS].double() / self.fire_count.clamp_min(1)

    @property
    def sample_frequency(self) -> Tensor:
        """Share of samples in which the latent fires at least once."""
        n = int(self.progress.get("samples", 0)) or int(self.meta.get("n_samples", 0))
        return self.state["qnt_seen"].double() / max(n, 1)

    def fired(self) -> Tensor:
        """Ids of the latents whose top contexts are not all zero (the FAST protocol's candidates)."""
        return (self.max_act > 0).nonzero(as_tuple=True)[0]

    # ---- per-latent details ---------------------------------------------------------------------------------------
    def token(self, token_id: int) -> str:
        return self.token_strings.get(str(token_id), f"<{token_id}>")

    def contexts(self, latent: int, kind: str = "top") -> list[Context]:
        """Contexts of ``latent``: 'top' (by max activation, best first), 'quantile' (reservoir of activating
        samples, sorted by max activation, best first) or 'random' (non-activating samples)."""
        if kind not in KINDS:
            raise ValueError(f"unknown context kind {kind!r}; use one of {KINDS}")
        if not 0 <= latent < self.d_sae:
            raise IndexError(f"latent {latent} out of range 0..{self.d_sae - 1}")
        s = self.state
        prefix = {"top": "top", "quantile": "qnt", "random": "neg"}[kind]
        samples, positions = s[f"{prefix}_sample"][latent], s[f"{prefix}_pos"][latent]
        tokens = s[f"{prefix}_tokens"][latent]
        acts = s.get(f"{prefix}_token_act", torch.zeros(tokens.shape))[latent] if kind != "random" else None
        maxes = s[f"{prefix}_act"][latent] if kind != "random" else torch.zeros(len(samples))
        out = []
        for i in range(len(samples)):
            if int(samples[i]) < 0:
                continue
            inside = tokens[i] >= 0
            first = int(inside.nonzero()[0]) if inside.any() else 0
            win_acts = acts[i][inside].tolist() if acts is not None else [0.0] * int(inside.sum())
            out.append(
                Context(
                    tokens[i][inside].tolist(),
                    win_acts,
                    int(samples[i]),
                    int(positions[i]),
                    self.window_before - first,
                    float(maxes[i]),
                )
            )
        if kind == "quantile":
            out.sort(key=lambda c: -c.max_act)
        return out

    def histogram(self, latent: int) -> tuple[list[float], list[int]]:
        """(bin edges ``[n_bins + 1]``, counts ``[n_bins]``) of the latent's non-zero activations (log-spaced bins;
        the first and last bins also hold the under- and overflow)."""
        h = self.meta.get("hist", {"min_log10": -4.0, "max_log10": 6.0, "bins_per_decade": 5})
        counts = self.state["hist"][latent]
        edges = torch.logspace(h["min_log10"], h["max_log10"], counts.numel() + 1, dtype=torch.float64)
        return edges.tolist(), counts.tolist()

    def template_stats(self, latent: int) -> list[TemplateStat]:
        """Statistics of the latent on each chat-template token id seen (most frequent token first)."""
        s = self.state
        out = []
        for slot in (s["tmpl_ids"] >= 0).nonzero(as_tuple=True)[0].tolist():
            count = int(s["tmpl_count"][slot])
            if count == 0:
                continue
            out.append(
                TemplateStat(
                    int(s["tmpl_ids"][slot]),
                    count,
                    int(s["tmpl_fire"][slot, latent]) / count,
                    float(s["tmpl_act_sum"][slot, latent]) / count,
                )
            )
        return sorted(out, key=lambda t: -t.count)

    def class_stats(self, latent: int) -> dict[str, tuple[int, float]]:
        """Per token class: (tokens where the latent fired, its mean activation over all tokens of the class)."""
        names = self.meta.get("token_classes", ["text", "template", "system", "user", "assistant"])
        s = self.state
        n = s["class_tokens"].clamp_min(1)
        return {
            name: (int(s["fire_count"][c, latent]), float(s["act_sum"][c, latent]) / int(n[c]))
            for c, name in enumerate(names)
        }

    def logits(self, latent: int) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
        """(promoted, suppressed) tokens of the latent's decoder row as (token id, logit) lists."""
        if self.lens is None:
            return [], []
        lens = self.lens
        top = list(zip(lens["top_ids"][latent].tolist(), lens["top_values"][latent].tolist(), strict=True))
        bottom = list(zip(lens["bottom_ids"][latent].tolist(), lens["bottom_values"][latent].tolist(), strict=True))
        return top, bottom

    def autointerp(self) -> dict[str, dict]:
        """Per-latent auto-interpretation results (``autointerp.json``) keyed by latent id string, or {}."""
        path = self.root / AUTOINTERP_FILE
        if not path.is_file():
            return {}
        return read_autointerp(path).get("latents", {})
