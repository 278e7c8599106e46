"""Where a training run's activations come from: synthetic vectors, saved activations (a cache directory or a tensor
file), or a harvest from a model (into a disk cache, or streamed while the SAE trains), with the provenance each
source adds to the SAE's metadata."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

from ..activations import SyntheticSource, TensorSource
from ..activations.cache import CacheSource
from ..activations.pipeline import (
    HarvestContext,
    harvest,
    load_data_and_model,
    resolve_hooks,
    resolved_model_dtype,
    sequences_for,
)
from ..activations.streaming import StreamingSource
from ..core.config import to_dict
from ..core.distributed import world_size
from ..core.utils import atomic_file
from ..models import d_model
from .run_spec import RunSpec, harvest_kwargs


class RunSource(NamedTuple):
    source: Any
    metadata: dict[str, Any]
    """Provenance the source adds to the SAE's metadata."""
    context: HarvestContext | None
    """From a harvest (disk cache or streamed): model, tokenizer, hook, held-out records; None for saved or
    synthetic activations."""


def make_source(spec: RunSpec, out_dir: Path) -> RunSource:
    """The activation source of ``spec`` (harvesting into ``out_dir`` when training on a model)."""

    run, tc, data = spec.run, spec.train, spec.data
    if run.activations == "synthetic":
        d_in = spec.sae.d_in
        n_features = run.synthetic_features or 2 * d_in
        source: Any = SyntheticSource(
            d_in=d_in, n_features=n_features, batch_size=tc.batch_size, mean_active=run.synthetic_active, seed=tc.seed
        )
        return RunSource(source, {"data": "synthetic", "hook_name": "synthetic"}, None)
    if run.activations:
        path = Path(run.activations)
        if path.is_dir():
            source = CacheSource(path, tc.batch_size, buffer_tokens=data.buffer_tokens, seed=tc.seed)
            return RunSource(source, _cache_meta(source.cache.manifest, path), None)
        return RunSource(TensorSource.from_file(path, tc.batch_size, seed=tc.seed), {"activations": str(path)}, None)

    spec.report(
        f"chatsae train: model {data.model} ({resolved_model_dtype(data)}), data {data.data_path}, "
        f"method {data.method} -> {out_dir}"
    )
    if data.cache == "none":
        return _streaming_source(spec, out_dir)
    cache_dir, manifest, stats, context = harvest(data, spec.harvest, out_dir, **harvest_kwargs(spec))
    if stats.sequences:
        spec.report(
            f"harvested {stats.tokens_kept:,} vectors from {stats.sequences:,} sequences in "
            f"{stats.seconds:.0f}s ({stats.as_dict()['tokens_per_s']:,.0f} tok/s, padding "
            f"{100 * stats.padding_fraction:.1f}%)"
        )
    source = CacheSource(cache_dir, tc.batch_size, buffer_tokens=data.buffer_tokens, seed=tc.seed)
    return RunSource(source, {**_harvest_meta(spec, out_dir, context), "cache_tokens": manifest.n_tokens}, context)


def _streaming_source(spec: RunSpec, out_dir: Path) -> RunSource:
    """``--cache none``: the model harvests in a producer thread while the SAE trains (no activation cache)."""

    data, tc = spec.data, spec.train
    train, held_out, data_info, model, tokenizer = load_data_and_model(data, spec.model_and_tokenizer)
    hooks = resolve_hooks(data, model)
    if len(hooks) > 1:
        raise ValueError(f"--cache none streams one hook; --hooks {data.hooks} needs the disk cache (--cache disk)")
    if spec.shared_stream is not None:  # several SAEs from one streamed harvest (one process)
        source: StreamingSource = spec.shared_stream.source(
            hooks[0], d_model(model), tc.batch_size, buffer_tokens=data.buffer_tokens, seed=tc.seed
        )
    else:  # under torchrun each rank streams its own windows and its share (B / W rows) of each global batch
        source = StreamingSource(
            model,
            tokenizer,
            hooks[0],
            lambda: sequences_for(data, train, tokenizer),
            spec.harvest,
            d_model(model),
            tc.batch_size // world_size(),
            buffer_tokens=data.buffer_tokens,
            seed=tc.seed,
        )
    context = HarvestContext(model, tokenizer, hooks, held_out, data_info, train)
    meta = {**_harvest_meta(spec, out_dir, context), "activations": "streamed"}
    return RunSource(source, meta, context)


def _cache_meta(man: Any, path: Path) -> dict[str, Any]:
    """Provenance of an SAE trained on an existing cache: what its manifest records of the harvest, so that
    ``chatsae eval`` splices and splits as for an SAE trained by one ``chatsae train`` (position 0 kept clean when
    the harvest excluded it, the training holdout re-derived from the data file)."""
    info = man.info or {}
    data, opts = info.get("data") or {}, info.get("options") or {}
    meta: dict[str, Any] = {
        "model_name": man.model,
        "hook_name": man.hook,
        "method": man.method,
        "activations": str(path),
    }
    for key in ("context_size", "max_length"):
        if info.get(key) is not None:
            meta[key] = info[key]
    if data.get("data"):
        meta["data"] = data["data"]
        if info.get("holdout"):
            meta.update(holdout=info["holdout"], holdout_seed=0)
    meta.update({k: v for k, v in opts.items() if k.startswith("exclude")})
    return meta


def _harvest_meta(spec: RunSpec, out_dir: Path, context: HarvestContext) -> dict[str, Any]:
    """Provenance of an SAE trained on activations harvested from a model (the held-out records written beside it)."""
    data = spec.data
    return {
        "model_name": data.model,
        "hook_name": str(context.hook),
        "method": data.method,
        "context_size": data.context_size,
        "max_length": data.max_length,
        "data": data.data_path,
        "eval_data": write_held_out(context.held_out, out_dir),
        "holdout": data.holdout,
        "holdout_seed": 0,
        **{k: v for k, v in to_dict(spec.harvest).items() if k.startswith("exclude")},
    }


def write_held_out(records: list[Any], out_dir: Path) -> str | None:
    """Write the held-out records as JSONL (messages or text) so `chatsae eval SAE_DIR` finds them by itself."""
    if not records:
        return None

    path = out_dir / "heldout.jsonl"
    with atomic_file(path, "w") as fh:
        for r in records:
            fh.write(json.dumps({"messages": r.messages} if r.messages is not None else {"text": r.text}) + "\n")
    return str(path)
