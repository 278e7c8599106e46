"""``chatsae features``: stream samples through model + SAE and keep, for every latent, its top-activating contexts,
quantile/random contexts, firing statistics and the tokens its decoder direction promotes (logit lens).

Samples are fed FAST-style (each conversation on its own, chat template applied, never concatenated). Results go to
``out`` (default ``SAE_DIR/features``): see :mod:`chatsae.interp.store` and ``docs/interp.md`` for the layout. Every
batch is logged as a small diff (:mod:`chatsae.interp.statelog`), so a crash loses at most the batch in flight and a
rerun with the same settings resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save
from torch import Tensor, nn

from ..core.config import validate
from ..core.devices import resolve_device
from ..core.locking import mark_dir
from ..core.ownership import MARKER, check_replace, is_chatsae_dir, read_marker, remove_owned, written
from ..core.progress import Progress
from ..core.utils import atomic_file, read_json_file
from ..data import bucket_batches, pad_batch
from ..data.formats import FORMAT_NAMES
from ..data.methods import FAST_MAX_LENGTH
from ..models import check_hook, check_sae_width
from ..models.prefix import capture_shared
from ..sae import SAE
from .collector import BatchView, CollectorConfig, FeatureCollector
from .statelog import BASE_FILE, LOG_DIR, StateLog, diff_state
from .store import AUTOINTERP_FILE, LOGITS_FILE, META_EXPECTED, META_FILE, TOKENS_FILE, FeatureData, seal

FORMAT_VERSION = 2
"""2: non-activating contexts are quiet windows (1: quiet whole samples). Part of the fingerprint, so results of
another version are neither reused nor resumed."""


@dataclass
class FeaturesConfig:
    """Top-activating contexts and statistics of every latent (``chatsae features``)."""

    model: str | None = None
    """Model to run: HF name, local directory, GGUF file or 'embedded'. None = the SAE's metadata model_name."""
    data: str | None = None
    """Chat data to stream (file or dataset, see chatsae.data.read_records). None = the SAE's metadata eval_data,
    else its training data ('default' = chatsae's own chat data); use --skip-samples to step over training samples."""
    data_format: str = "auto"
    """Record format of --data (auto, messages, sharegpt, alpaca, qa)."""
    hook: str | None = None
    """Hook point, e.g. resid_post.15. None = the SAE's metadata hook_name."""
    out: str | None = None
    """Output directory. None = SAE_DIR/features."""
    n_samples: int = 10000
    """Samples (conversations) to stream; the FAST paper uses 10,000."""
    skip_samples: int = 0
    """Skip the first N kept samples of --data (e.g. the ones the SAE was trained on)."""
    max_length: int = FAST_MAX_LENGTH
    """Truncate each sample at this many tokens (FAST: 8192)."""
    dedup_n: int | None = 20
    """n-gram deduplication of samples (FAST: 20); None disables it."""
    top_k: int = 5
    """Top-activating samples kept per latent, ranked by the latent's max activation in the sample (paper: 5)."""
    n_quantile: int = 20
    """Uniform reservoir of activating samples per latent (split into activation quantiles later)."""
    n_random: int = 20
    """Uniform reservoir of non-activating samples per latent (latent is 0 on the whole sample)."""
    window_before: int = 24
    """Tokens kept before the max-activating token of a context."""
    window_after: int = 8
    """Tokens kept after the max-activating token of a context."""
    skip_first_position: bool = True
    """Ignore position 0 of every sample (the attention sink, see methods.md section 5): it never counts as a firing,
    never ranks a context and is shown with activation 0."""
    n_logits: int = 10
    """Top promoted / suppressed tokens per latent (logit lens of the decoder row)."""
    max_tokens: int = 8192
    """Token budget of a batch (batch size x longest sample)."""
    batch_size: int = 32
    """Maximum samples per batch."""
    checkpoint_every: int = 50
    """Fold the per-batch diffs into a full checkpoint every N batches."""
    seed: int = 42
    """Seed of the reservoir sampling."""
    device: str = "cpu"
    """Device of model and SAE (cpu, cuda, auto)."""
    dtype: str = "float32"
    """Model dtype (the SAE runs in its own dtype)."""
    resume: bool = True
    """Resume an interrupted run with the same settings in --out (otherwise start over)."""
    overwrite: bool = False
    """Replace existing results in --out, even complete ones or ones made with other settings."""

    def spec(self, d_sae: int) -> CollectorConfig:
        return CollectorConfig(
            d_sae=d_sae,
            top_k=self.top_k,
            n_quantile=self.n_quantile,
            n_random=self.n_random,
            window_before=self.window_before,
            window_after=self.window_after,
        )

    def __post_init__(self) -> None:

        validate(
            self,
            positive=("n_samples", "top_k", "max_tokens", "batch_size", "checkpoint_every", "max_length"),
            non_negative=(
                "n_quantile",
                "n_random",
                "window_before",
                "window_after",
                "skip_samples",
                "n_logits",
                "dedup_n",
            ),
            choices={"data_format": FORMAT_NAMES},
            dtypes=("dtype",),
            devices=("device",),
            paths=("data", "out"),
            seeds=("seed",),
        )


# ---- logit lens ---------------------------------------------------------------------------------------------------
_NORM_PATHS = (
    "model.norm",
    "model.language_model.norm",
    "model.final_layernorm",
    "transformer.ln_f",
    "gpt_neox.final_layer_norm",
    "model.decoder.final_layer_norm",
    "transformer.norm_f",
)


def final_norm(model: nn.Module) -> nn.Module | None:
    """The model's final norm before the unembedding, or None if not found."""
    for path in _NORM_PATHS:
        obj: Any = model
        for part in path.split("."):
            obj = getattr(obj, part, None)
        if isinstance(obj, nn.Module):
            return obj
    return None


def norm_direction(model: nn.Module, directions: Tensor) -> Tensor:
    """Apply the linear part of the final norm to residual directions ``[n, d]``: centre (LayerNorm only) and scale
    by the norm's weight (``1 + weight`` for Gemma's RMSNorm). The division by the RMS is a positive per-token
    scalar and does not change a ranking, so it is left out; so is a LayerNorm bias (the same for every latent)."""
    norm = final_norm(model)
    if norm is None:
        return directions
    if isinstance(norm, nn.LayerNorm):
        directions = directions - directions.mean(dim=-1, keepdim=True)
    weight = getattr(norm, "weight", None)
    if isinstance(weight, Tensor) and weight.shape[-1] == directions.shape[-1]:
        w = weight.detach().to(directions)
        directions = directions * ((1.0 + w) if "gemma" in type(norm).__name__.lower() else w)
    return directions


@torch.no_grad()
def logit_lens(model: nn.Module, W_dec: Tensor, n: int, chunk: int = 256) -> dict[str, Tensor]:
    """Top-``n`` promoted and suppressed tokens of each decoder row: ``W_U @ norm(d_k)``.

    Returns ``top_ids``/``top_values``/``bottom_ids``/``bottom_values`` ``[d_sae, n]`` (ids int64).
    """
    # a transformers method: torch types nn.Module.__getattr__ as Tensor | Module, hence the ignore
    W_U = model.get_output_embeddings().weight.detach()  # type: ignore[operator]  # [V, d]
    out: dict[str, list[Tensor]] = {"top_ids": [], "top_values": [], "bottom_ids": [], "bottom_values": []}
    n = min(n, W_U.shape[0])
    for start in range(0, W_dec.shape[0], chunk):
        rows = norm_direction(model, W_dec[start : start + chunk].to(W_U.device, torch.float32))
        logits = rows @ W_U.float().T  # [chunk, V]
        top, bottom = logits.topk(n, dim=1), logits.topk(n, dim=1, largest=False)
        out["top_ids"].append(top.indices.cpu())
        out["top_values"].append(top.values.cpu())
        out["bottom_ids"].append(bottom.indices.cpu())
        out["bottom_values"].append(bottom.values.cpu())
    return {k: torch.cat(v) for k, v in out.items()}


# ---- the run ------------------------------------------------------------------------------------------------------
def _fingerprint(cfg: FeaturesConfig, sae: SAE, hook: str, plan: list[list[int]]) -> str:
    """Hash of everything that determines the results: settings, SAE weights, data order."""
    keep = {
        k: v for k, v in asdict(cfg).items() if k not in ("out", "resume", "overwrite", "device", "checkpoint_every")
    }
    spec = [FORMAT_VERSION, keep, hook, sae.cfg.to_dict(), plan]
    h = hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode())
    for name, p in sorted(sae.state_dict().items()):
        h.update(name.encode() + p.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:32]


def check_features_dir(out: Path, meta: Any) -> None:
    """Refuse ``out`` holding a ``meta.json`` when it is not chatsae's features directory: its marker names another
    kind, or (no marker) the file lacks the fields chatsae writes (an older features directory has them)."""
    kind = read_marker(out).get("kind") if is_chatsae_dir(out) else None
    if meta is None or kind == "features":
        return
    legacy = kind is None and isinstance(meta, dict) and {"format_version", "fingerprint"} <= set(meta)
    if not legacy:
        what = f"a chatsae {kind} directory" if kind else f"its {META_FILE} was not written by chatsae"
        raise ValueError(f"{out}: not a chatsae features directory ({what}); choose another --out")


FEATURE_FILES = (META_FILE, TOKENS_FILE, LOGITS_FILE, BASE_FILE)
"""The files a features run writes at the top of its directory (besides the diffs in ``log/``)."""


def remove_features(out: Path) -> None:
    """Remove the results of an earlier run in ``out`` for ``--overwrite``: only the files chatsae recorded writing
    there, unchanged (:func:`chatsae.core.ownership.remove_owned`; ``autointerp.json`` and the diffs in ``log/``
    included); a user's file is kept, and one where the new run writes (``tokens.json``...) is refused before anything
    is removed. A directory of a version that recorded no files: the names it wrote are taken as chatsae's."""
    legacy = not written(out)
    if not legacy:
        for name in FEATURE_FILES:
            check_replace(out / name, "--out")
    log = out / LOG_DIR
    old_diffs = [f"{LOG_DIR}/{p.name}" for p in log.iterdir() if p.is_file()] if legacy and log.is_dir() else []
    mark_dir(out, "features")
    remove_owned(out, legacy=(*FEATURE_FILES, AUTOINTERP_FILE, *old_diffs) if legacy else ())


def _write_json(path: Path, obj: Any) -> None:
    with atomic_file(path, "w") as fh:
        json.dump(obj, fh, indent=1, default=str)


def _token_strings(tokenizer: Any, ids: Iterable[int]) -> dict[str, str]:
    return {str(i): tokenizer.decode([i]) for i in sorted(set(ids)) if i >= 0}


def collect_features(
    sae: SAE,
    model: nn.Module,
    tokenizer: Any,
    sequences: Iterable[Any],
    cfg: FeaturesConfig,
    out: str | Path,
    hook: str | None = None,
    provenance: dict[str, Any] | None = None,
    stop_after: int | None = None,
) -> FeatureData:
    """Run the collection over ``sequences`` (``chatsae.data.TokenSequence``, e.g. from ``fast_sequences``) and
    return the loaded results. ``stop_after`` ends the run after that many new batches (for tests of resuming)."""

    out = Path(out)
    hook = str(check_hook(model, hook or cfg.hook or sae.cfg.metadata.get("hook_name", "")))
    check_sae_width(sae.cfg.d_in, model, hook)
    device = resolve_device(cfg.device)
    seqs = list(itertools.islice(iter(sequences), cfg.skip_samples, cfg.skip_samples + cfg.n_samples))
    if not seqs:
        raise ValueError(f"no samples to stream (after skipping {cfg.skip_samples}); check --data")
    batches = list(bucket_batches(seqs, max_tokens=cfg.max_tokens, max_batch_size=cfg.batch_size))
    plan = [[s.sample_ids[0] for s in b] for b in batches]
    fp = _fingerprint(cfg, sae, hook, plan)
    spec = cfg.spec(sae.cfg.d_sae)
    log, meta_path = StateLog(out), out / META_FILE
    meta = read_json_file(meta_path, META_EXPECTED) if meta_path.is_file() else None
    check_features_dir(out, meta)
    if meta is not None and not cfg.overwrite:
        if meta.get("fingerprint") != fp:
            raise ValueError(
                f"{out}: holds results made with other settings, data or SAE weights; pass "
                "--overwrite to replace them or choose another --out"
            )
        if meta.get("complete"):
            return FeatureData(out)
    start_step, state = 0, None
    if meta is not None and cfg.resume and not cfg.overwrite and log.exists():
        state, saved = log.load(device)
        start_step = int(saved.get("step", 0))
        mark_dir(out, "features")  # an older features directory gets its marker now
    else:
        if meta is not None:  # our own directory (it has meta.json): remove only the files chatsae recorded there
            remove_features(out)
        elif out.is_dir() and {p.name for p in out.iterdir()} - {MARKER}:
            raise ValueError(f"{out}: exists, is not empty and holds no {META_FILE}; choose another --out")
        out.mkdir(parents=True, exist_ok=True)
        mark_dir(out, "features")
        meta = {"format_version": FORMAT_VERSION, "fingerprint": fp, "complete": False}
        _write_json(meta_path, meta)
        log.checkpoint(FeatureCollector(spec).state, {"step": 0, "samples": 0, "tokens": 0})
    collector = FeatureCollector(spec, state, device)
    sae = sae.to(device).eval()
    model_dtype = next(model.parameters()).dtype
    t0, new_batches = time.perf_counter(), 0
    samples = sum(len(b) for b in batches[:start_step])
    with Progress(len(batches), "features", unit="batches") as bar:
        bar.advance(start_step)
        for step, batch in enumerate(batches, start=1):
            if step <= start_step:
                continue
            if stop_after is not None and new_batches >= stop_after:
                return FeatureData(out, allow_incomplete=True)
            view = _encode_batch(
                sae, model, hook, pad_batch(batch, tokenizer.pad_token_id or 0), cfg, device, model_dtype
            )
            before = {k: v.clone() for k, v in collector.state.items()}
            collector.update(view, torch.Generator().manual_seed(cfg.seed * 1_000_003 + step))
            samples += len(batch)
            progress = {"step": step, "samples": samples}
            if step % cfg.checkpoint_every == 0 or step == len(batches):
                log.checkpoint(collector.state, progress)
            else:
                log.append(diff_state(before, collector.state), progress)
            new_batches += 1
            bar.advance(1, samples=str(samples))
    _finish(out, meta, collector, model, tokenizer, sae, cfg, hook, samples, provenance, time.perf_counter() - t0)
    return FeatureData(out)


def _encode_batch(
    sae: SAE, model: nn.Module, hook: str, pb: Any, cfg: FeaturesConfig, device: torch.device, model_dtype: torch.dtype
) -> BatchView:
    ids, mask = pb.input_ids.to(device), pb.attention_mask.to(device)
    with torch.no_grad():
        x = capture_shared(model, hook, ids, mask)
        acts = sae.encode(x.to(sae.W_dec.dtype)).float()
    valid = mask.bool()
    if cfg.skip_first_position:
        valid = valid & (pb.positions.to(device) > 0)
    return BatchView(acts, ids, valid, mask.sum(1), pb.token_class.to(device).clamp_min(0), pb.sample_ids[:, 0])


def _finish(
    out: Path,
    meta: dict[str, Any],
    collector: FeatureCollector,
    model: nn.Module,
    tokenizer: Any,
    sae: SAE,
    cfg: FeaturesConfig,
    hook: str,
    samples: int,
    provenance: dict[str, Any] | None,
    seconds: float,
) -> None:
    """Logit lens, token strings and the final metadata (written last: ``complete`` marks a finished run)."""
    lens = logit_lens(model, sae.W_dec.detach(), cfg.n_logits)
    with atomic_file(out / LOGITS_FILE) as fh:
        fh.write(save({k: v.contiguous() for k, v in lens.items()}))
    s = collector.state
    ids: list[int] = []
    for key in ("top_tokens", "qnt_tokens", "neg_tokens", "tmpl_ids"):
        ids.extend(s[key].unique().tolist())
    ids.extend(lens["top_ids"].unique().tolist() + lens["bottom_ids"].unique().tolist())
    _write_json(out / TOKENS_FILE, _token_strings(tokenizer, ids))
    spec = collector.spec
    meta.update(
        {
            "complete": True,
            "config": asdict(cfg),
            "hook_name": hook,
            "d_sae": sae.cfg.d_sae,
            "sae": {"architecture": sae.cfg.architecture, "metadata": sae.cfg.metadata},
            "n_samples": samples,
            "n_tokens": int(s["class_tokens"].sum()),
            "window": [spec.window_before, spec.window_after],
            "hist": {
                "min_log10": spec.hist_min_log10,
                "max_log10": spec.hist_max_log10,
                "bins_per_decade": spec.hist_bins_per_decade,
            },
            "token_classes": ["text", "template", "system", "user", "assistant"],
            "seconds": round(seconds, 2),
            **(provenance or {}),
        }
    )
    StateLog(out).drop_log()  # the base holds every step now
    seal(out, meta)
    _write_json(out / META_FILE, meta)
