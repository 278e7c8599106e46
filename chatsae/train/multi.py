"""Several SAEs from one harvest: ``--hooks resid_post.8,resid_post.15,resid_post.22``.

One forward pass per model batch captures every hook (stopping after the deepest) into one activation cache per hook
(``OUT_DIR/activations/<hook>``); then one SAE per hook is trained and evaluated with :func:`~chatsae.train.train_run`
in its own folder ``OUT_DIR/<hook>`` (SAE, config, checkpoints, metrics log, eval.json). Each SAE is exactly the one a
single-hook run on the same data would give (same cache contents, same seed); what is shared is the model forward.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..locking import DirLock, claim_dir
from ..models import HookPoint
from .run import RunResult, RunSpec, default_out_dir, harvest_kwargs, train_run


def hook_list(spec: RunSpec) -> list[HookPoint]:
    """The hooks of ``--hooks`` (duplicates dropped), or [] when the run is not a several-hook run."""
    if spec.run.activations or not spec.data.hooks:
        return []
    return list(dict.fromkeys(HookPoint.parse(t) for t in spec.data.hooks.split(",") if t.strip()))


def train_runs(spec: RunSpec) -> list[RunResult]:
    """Run ``spec``: one :func:`train_run`, or with several ``--hooks`` one harvest and one SAE per hook (in hook
    order), each in ``OUT_DIR/<hook>``."""
    hooks = hook_list(spec)
    if len(hooks) <= 1:
        if hooks:  # a single hook given as --hooks: the ordinary run
            spec = dataclasses.replace(spec, data=dataclasses.replace(spec.data, hook=str(hooks[0]), hooks=None))
        return [train_run(spec)]
    if spec.data.cache == "none":
        raise ValueError(f"--hooks {spec.data.hooks}: several hooks are harvested into the disk cache; drop "
                         "--cache none (or stream one hook per run)")  # fmt: skip
    from ..activations.pipeline import harvest_hooks
    from . import distributed

    run, data = spec.run, spec.data
    out_dir = default_out_dir(spec)

    def claim() -> DirLock:
        claim_dir(out_dir, "run", overwrite=run.overwrite)
        return DirLock(out_dir, "chatsae train --hooks")

    with distributed.session(), distributed.main_lock(claim):  # under torchrun: rank 0 locks for all ranks
        spec.report(f"chatsae train: model {data.model}, data {data.data_path}, hooks {', '.join(map(str, hooks))} "
                    f"(one forward pass) -> {out_dir}")  # fmt: skip
        dirs, _, stats, context = harvest_hooks(data, spec.harvest, out_dir, **harvest_kwargs(spec))
        if stats.sequences:
            spec.report(f"harvested {stats.tokens_kept:,} vectors per hook at {len(hooks)} hooks in "
                        f"{stats.seconds:.0f}s ({stats.as_dict()['tokens_per_s']:,.0f} tok/s)")  # fmt: skip
        model = (context["model"], context["tokenizer"])
        results = []
        for hook in hooks:
            sub_out = Path(out_dir) / str(hook)
            sub = dataclasses.replace(
                spec, run=dataclasses.replace(run, out_dir=str(sub_out)), model_and_tokenizer=model,
                data=dataclasses.replace(data, hook=str(hook), hooks=None, cache_dir=str(dirs[hook])),
            )  # fmt: skip
            results.append(train_run(sub))
    return results
