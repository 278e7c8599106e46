"""Several SAEs from one harvest: ``--hooks resid_post.8,resid_post.15,resid_post.22`` and/or
``--saes jumprelu:sparsity_coef=0.001,jumprelu:sparsity_coef=0.004,topk:k=32``.

One forward pass per model batch captures every hook (stopping after the deepest) into one activation cache per hook
(``OUT_DIR/activations/<hook>``); then every SAE (each hook x each ``--saes`` entry) is trained and evaluated with
:func:`~chatsae.workflows.train_run` from that cache in its own folder: ``OUT_DIR/<hook>`` for several hooks,
``OUT_DIR/<name>`` for several SAEs on one hook, ``OUT_DIR/<hook>/<name>`` for both. Each SAE is exactly the one a
single run on the same data would give (same cache contents, same seed); what is shared is the model forward.

Under torchrun the ranks harvest the shared caches together; then, by default, every SAE is trained data-parallel
on all ranks in turn, or with ``--distribute-saes`` each rank trains its own SAEs alone (SAE ``i`` on rank
``i mod W``; sparsify's ``distribute_modules``).

With ``--cache none`` (one process) there is no cache: the SAEs train together, each in its own thread, from one
streamed harvest (:class:`~chatsae.activations.streaming.SharedStream`); each is again the SAE a single streaming run
with the same options gives.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..activations.pipeline import (
    harvest_hooks,
    load_data_and_model,
    resolve_hooks,
    resolved_model_dtype,
    sequences_for,
)
from ..activations.streaming import SharedStream
from ..core import distributed
from ..core.locking import DirLock, claim_dir
from ..models import HookPoint
from ..sae import SAEConfig
from .sae_variants import SAEVariant, parse_saes
from .train_run import RunResult, RunSpec, default_out_dir, evaluate_run, harvest_kwargs, train_run


def hook_list(spec: RunSpec) -> list[HookPoint]:
    """The hooks of ``--hooks`` (duplicates dropped), or [] when the run is not a several-hook run."""
    if spec.run.activations or not spec.data.hooks:
        return []
    return list(dict.fromkeys(HookPoint.parse(t) for t in spec.data.hooks.split(",") if t.strip()))


def _variant_spec(spec: RunSpec, v: SAEVariant | None, out_dir: Path, **data: Any) -> RunSpec:
    run = dataclasses.replace(spec.run, out_dir=str(out_dir), saes="", distribute_saes=False)
    if v is None:
        return dataclasses.replace(spec, run=run, data=dataclasses.replace(spec.data, **data))
    opts = {k: val for k, val in v.sae.items() if k != "d_sae"}
    old = SAEConfig(architecture=spec.sae.architecture)  # its architecture's defaults, resolved
    for key in ("apply_b_dec_to_input", "decoder_unit_norm"):  # left at --arch's default: the entry's default
        if key not in opts and getattr(spec.sae, key) == getattr(old, key):
            opts[key] = None
    return dataclasses.replace(
        spec,
        run=run,
        sae=dataclasses.replace(spec.sae, **opts),
        train=dataclasses.replace(spec.train, **v.train),
        d_sae=v.sae.get("d_sae", spec.d_sae),
        data=dataclasses.replace(spec.data, **data),
    )


def train_runs(spec: RunSpec) -> list[RunResult]:
    """Run ``spec``: one :func:`train_run`, or with several ``--hooks`` / ``--saes`` one harvest and one SAE per
    hook x entry (hooks outer), each in its own folder. Under ``--distribute-saes`` a rank returns only its own."""

    hooks, variants = hook_list(spec), parse_saes(spec.run.saes)
    if len(hooks) <= 1 and len(variants) <= 1:
        if hooks:  # a single hook given as --hooks: the ordinary run
            spec = dataclasses.replace(spec, data=dataclasses.replace(spec.data, hook=str(hooks[0]), hooks=None))
        if variants:
            spec = _variant_spec(spec, variants[0], default_out_dir(spec))
        return [train_run(spec)]
    run, data = spec.run, spec.data
    out_dir = default_out_dir(spec)
    streamed = data.cache == "none" and not run.activations
    if streamed and distributed.world_size() > 1:
        raise ValueError(
            "several SAEs with --cache none train in one process; under torchrun they share the disk "
            "cache of one harvest (drop --cache none)"
        )

    def claim() -> DirLock:
        claim_dir(out_dir, "run", overwrite=run.overwrite)
        return DirLock(out_dir, "chatsae train (several SAEs)")

    with distributed.session(), distributed.main_lock(claim):  # under torchrun: rank 0 locks for all ranks
        units: list[tuple[Path, dict[str, Any], SAEVariant | None]] = []
        if streamed:
            return _stream_units(spec, out_dir, hooks, variants)
        if run.activations:  # saved activations: nothing to harvest
            units = [(out_dir / v.name, {}, v) for v in variants]
        else:
            label = ", ".join(map(str, hooks)) if hooks else data.hook or "the default hook"
            spec.report(
                f"chatsae train: model {data.model} ({resolved_model_dtype(data)}), data {data.data_path}, "
                f"hooks {label} (one forward pass), {len(variants) or 1} SAE(s) per hook -> "
                f"{out_dir}"
            )

            dirs, _, stats, context = harvest_hooks(data, spec.harvest, out_dir, **harvest_kwargs(spec))
            if stats.sequences:
                spec.report(
                    f"harvested {stats.tokens_kept:,} vectors per hook at {len(dirs)} hook(s) in "
                    f"{stats.seconds:.0f}s ({stats.as_dict()['tokens_per_s']:,.0f} tok/s)"
                )
            spec = dataclasses.replace(spec, model_and_tokenizer=(context.model, context.tokenizer))
            units = [
                (path, {"hook": str(hook), "hooks": None, "cache_dir": str(dirs[hook])}, v)
                for path, hook, v in _folders(out_dir, list(dirs), variants)
            ]
        return _train_units(spec, units)


def _folders(
    out_dir: Path,
    hooks: list[HookPoint],
    variants: list[SAEVariant],
) -> list[tuple[Path, HookPoint, SAEVariant | None]]:
    """(folder, hook, entry) of every SAE: ``OUT_DIR/<hook>/<name>``, without the hook level for one hook and without
    the name level when there are no ``--saes`` entries."""
    entries: list[SAEVariant | None] = list(variants) or [None]
    return [
        ((out_dir / str(hook) if len(hooks) > 1 else out_dir) / (v.name if v else ""), hook, v)
        for hook in hooks
        for v in entries
    ]


def _train_units(spec: RunSpec, units: list[tuple[Path, dict[str, Any], SAEVariant | None]]) -> list[RunResult]:
    """Train each unit (folder, data fields, variant): all ranks on each in turn, or with ``--distribute-saes`` unit
    ``i`` on rank ``i mod W`` alone."""

    w = distributed.world_size()
    if not spec.run.distribute_saes or w == 1:
        return [train_run(_variant_spec(spec, v, path, **where)) for path, where, v in units]
    r = distributed.rank()
    mine = units[r::w]
    spec.report(f"--distribute-saes: {len(units)} SAEs over {w} ranks (SAE i on rank i mod {w})")
    results = []
    with distributed.alone():  # each rank trains, saves and evaluates its SAEs by itself
        for path, where, v in mine:
            sub = _variant_spec(spec, v, path, **where)
            sub.report = _prefixed(spec.report, f"[rank {r}] [{path.name}]")
            results.append(train_run(sub))
    distributed.barrier()  # every SAE is saved before any rank moves on
    return results


def _stream_units(
    spec: RunSpec,
    out_dir: Path,
    hooks: list[HookPoint],
    variants: list[SAEVariant],
) -> list[RunResult]:
    """``--cache none``: every SAE trains in its own thread, all reading one streamed harvest (a
    :class:`~chatsae.activations.streaming.SharedStream`: one model pass per data window for every hook); then each
    is evaluated in turn."""

    data = spec.data
    train, _, _, model, tokenizer = load_data_and_model(data, spec.model_and_tokenizer)
    hooks = hooks or resolve_hooks(data, model)
    stream = SharedStream(model, tokenizer, hooks, lambda: sequences_for(data, train, tokenizer), spec.harvest)
    spec.report(
        f"chatsae train: model {data.model} ({resolved_model_dtype(data)}), data {data.data_path}, "
        f"{len(hooks) * (len(variants) or 1)} SAEs "
        f"streamed together (--cache none: one forward pass per window for hooks "
        f"{', '.join(map(str, hooks))}) -> {out_dir}"
    )
    specs = []
    for path, hook, v in _folders(out_dir, hooks, variants):
        sub = _variant_spec(spec, v, path, hook=str(hook), hooks=None)
        specs.append(
            dataclasses.replace(
                sub,
                run=dataclasses.replace(sub.run, evaluate=False),
                train=dataclasses.replace(sub.train, progress=False),
                model_and_tokenizer=(model, tokenizer),
                shared_stream=stream,
                report=_prefixed(spec.report, f"[{path.relative_to(out_dir)}]"),
            )
        )
    results: list[RunResult | BaseException | None] = [None] * len(specs)

    def work(i: int) -> None:
        try:
            results[i] = train_run(specs[i])
            specs[i].report(f"trained ({results[i].summary.get('tokens_per_s', 0):,.0f} tok/s)")  # type: ignore[union-attr]
        except BaseException as e:  # noqa: BLE001 -- re-raised in the calling thread
            results[i] = e

    threads = [threading.Thread(target=work, args=(i,), daemon=True, name=f"sae-{i}") for i in range(len(specs))]
    for t in threads:
        t.start()
    for t in threads:
        while t.is_alive():
            t.join(0.5)  # a short wait keeps Ctrl-C responsive
    failed = [r for r in results if isinstance(r, BaseException)]
    if failed:
        raise failed[0]
    spec.report(
        f"{len(specs)} SAEs trained from {stream.windows_run} window passes ({stream.stats.tokens_kept:,} "
        f"vectors per hook)"
    )
    done = [r for r in results if isinstance(r, RunResult)]
    if not spec.run.evaluate:
        return done
    return [evaluate_run(dataclasses.replace(s, report=spec.report), r) for s, r in zip(specs, done, strict=True)]


def _prefixed(report: Callable[[str], None], prefix: str) -> Callable[[str], None]:
    return lambda msg: report(f"{prefix} {msg}")
