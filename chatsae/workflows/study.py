"""Machinery shared by ``chatsae compare`` and ``chatsae sweep``: a :class:`Study` holds one loaded model and an
output directory; it harvests each data configuration once into a cache, trains SAEs on the caches and evaluates
every SAE the same way on the same records. Every step skips what an earlier run finished (complete caches, trained
SAEs, evaluations made with the same settings), and ``plan.json`` makes a rerun with other settings an error.

The numbers kept per SAE are in :mod:`.study_summary`, the labels, tables and files of the reports in
:mod:`.study_report`; their names are re-exported here (``compare`` and ``sweep`` import them from this module).
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from ..activations.cache import ActivationCache
from ..activations.harvest import HarvestConfig
from ..activations.pipeline import DataConfig, harvest, read_split, resolved_model_dtype
from ..core.config import may_change_on_resume, to_dict
from ..core.constants import CHECKPOINT_STATE_FILE, CHECKPOINTS_DIR, RUN_CONFIG_FILE, SAE_CFG_FILE, SAE_DIR
from ..core.locking import claim_dir
from ..core.ownership import check_replace, produced_outputs
from ..core.utils import atomic_file
from ..data.formats import Record, read_records, split_records
from ..eval.config import EvalConfig, resolve_config
from ..eval.evaluate import evaluate_many
from ..eval.result import EvalResult, read_result
from ..models import load_model
from ..sae import SAEConfig, load_sae
from ..train.config import TrainConfig
from .run_spec import RunConfig, RunSpec
from .study_report import ARCH_LABELS, METHOD_LABELS, cell, label, md_table, now, unit, write_texts
from .study_summary import (
    CLASS_METRICS,
    CLASS_SUBSETS,
    SUMMARY,
    SUMMARY_KEYS,
    high_frequency_shares,
    summarize,
)
from .train_run import train_run

__all__ = [
    "ARCH_LABELS",
    "CLASS_METRICS",
    "CLASS_SUBSETS",
    "METHOD_LABELS",
    "SUMMARY",
    "SUMMARY_KEYS",
    "EvalSet",
    "Study",
    "StudyEvalConfig",
    "cell",
    "check_names",
    "high_frequency_shares",
    "label",
    "log",
    "md_table",
    "names",
    "now",
    "summarize",
    "unit",
    "write_texts",
]


VOLATILE_TRAIN = may_change_on_resume(TrainConfig)
"""TrainConfig fields a rerun may change (they do not change the trained SAE)."""


def names(value: str | list[str] | tuple[str, ...] | None) -> list[str]:
    """``"a,b"`` or ``["a", "b"]`` -> ``["a", "b"]`` (blanks dropped)."""
    items = value.split(",") if isinstance(value, str) else list(value or [])
    return [str(s).strip() for s in items if str(s).strip()]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class StudyEvalConfig:
    """How every SAE of the study is evaluated: the same records, the same way (docs/metrics.md)."""

    eval_data: str | list[str] = ""
    """Extra evaluation files (comma-separated), e.g. gsm8k, besides the held-out records of the training data."""
    eval_format: str = "auto"
    """Record format of --eval-data: auto | messages | sharegpt | alpaca | qa | text."""
    eval_max_samples: int | None = 200
    """Records evaluated per evaluation set at most (a fixed-seed sample of an --eval-data file). None = all."""
    eval_max_tokens: int | None = None
    """Token budget per evaluation set (the last sequence truncated). None = no limit."""
    eval_batch_tokens: int = 2048
    """Tokens per evaluation forward pass (the logits take eval_batch_tokens x vocab floats)."""
    lm_loss: bool = True
    """Compute delta LM loss, KL and CE recovered (a clean, a spliced and a zero-ablated pass per batch)."""
    eval_together: int = 24
    """SAEs evaluated on one clean forward pass at most (each adds one spliced pass from the hook layer on)."""


class EvalSet(NamedTuple):
    """Records every SAE is evaluated on: ``name`` (file-safe), ``label`` (for reports), ``path`` of the records."""

    name: str
    label: str
    path: str
    records: list[Record]


class Study:
    """Shared machinery of compare and sweep: one loaded model, caches, trained SAEs and evaluations under
    ``out_dir``; every step skips what a previous run finished."""

    def __init__(
        self,
        out_dir: str | Path,
        data: DataConfig,
        harvest: HarvestConfig,
        train: TrainConfig,
        ev: StudyEvalConfig,
        sae_options: dict[str, Any] | None = None,
        expansion_factor: int = 8,
        report: Callable[[str], None] = log,
        overwrite: bool = False,
    ) -> None:
        """``sae_options``: SAEConfig fields set for every SAE (e.g. ``d_sae``, ``k``); the others keep each
        architecture's defaults, and ``d_sae`` defaults to ``expansion_factor x d_in``. ``overwrite``: write into a
        non-empty directory chatsae did not write (its files are kept; none is replaced)."""
        self.overwrite = overwrite
        self.out_dir, self.data, self.harvest_opts, self.train_cfg = Path(out_dir), data, harvest, train
        self.ev, self.sae_options, self.expansion_factor = ev, dict(sae_options or {}), expansion_factor
        self.report = report
        self._model: tuple[Any, Any] | None = None
        self._zero_ablation: dict[tuple[Any, ...], Any] = {}
        """Zero-ablated losses per evaluation batch, shared by all SAEs of the study (they do not depend on the SAE)."""
        self.hook = ""

    @property
    def model_and_tokenizer(self) -> tuple[Any, Any]:
        if self._model is None:
            d = self.data
            self.report(f"loading model {d.model} ...")
            self._model = load_model(
                d.model,
                dtype=resolved_model_dtype(d),
                device=d.model_device,
                gguf_file=d.gguf_file,
                trust_remote_code=d.trust_remote_code,
            )
        return self._model

    def check_plan(self, extra: dict[str, Any]) -> dict[str, Any]:
        """Write ``plan.json`` (the settings every cache and SAE of this directory depends on), or, once a cache or
        an SAE exists, check that a rerun asks for the same ones (a ValueError names each difference)."""
        train = {k: v for k, v in to_dict(self.train_cfg).items() if k not in VOLATILE_TRAIN}
        data = {k: v for k, v in to_dict(self.data).items() if k not in ("model_device", "skip_bad")}
        plan = json.loads(
            json.dumps(
                {
                    "data": data,
                    "harvest": to_dict(self.harvest_opts),
                    "train": train,
                    "sae": self.sae_options,
                    "expansion_factor": self.expansion_factor,
                    **extra,
                },
                default=str,
            )
        )
        path = self.out_dir / "plan.json"
        claim_dir(self.out_dir, "study", self.overwrite, "--out-dir", inputs=(self.data.data, self.data.cache_dir))
        # a plan that produced nothing yet (e.g. a typo) may be replaced; what was produced is read from chatsae's
        # record (a cache, checkpoint or SAE folder holding a file chatsae wrote, unchanged), not from file names
        produced = bool(produced_outputs(self.out_dir, ("cache", "checkpoint", "sae")))
        if path.is_file() and produced:
            old = json.loads(path.read_text())
            diffs = [
                f"{k}: {old.get(k)!r} -> {plan.get(k)!r}"
                for k in sorted(set(old) | set(plan))
                if old.get(k) != plan.get(k)
            ]
            if diffs:
                raise ValueError(
                    f"{path}: this directory holds a study with other settings ({'; '.join(diffs)}); "
                    "use another --out-dir, or remove it to start over"
                )
        else:
            check_replace(path, "--out-dir")
            with atomic_file(path, "w") as fh:
                json.dump(plan, fh, indent=2)
        return plan

    # ---- data --------------------------------------------------------------------------------------------------
    def harvest(self, data: DataConfig, tag: str) -> tuple[Path, Any]:
        """Harvest the training split of ``data`` into its cache (once: a complete cache is reused)."""

        budget = self.harvest_opts.max_tokens or self.train_cfg.total_tokens
        self.report(
            f"[{tag}] activations of {data.data_path} ({data.method}) -> "
            f"{data.cache_dir or self.out_dir / 'activations'}"
        )
        cache_dir, manifest, stats, ctx = harvest(
            data,
            self.harvest_opts,
            self.out_dir,
            max_tokens=budget,
            resume=True,
            progress=self.train_cfg.progress,
            model_and_tokenizer=self.model_and_tokenizer,
        )
        self.hook = str(ctx.hook)
        if stats.sequences:
            self.report(
                f"[{tag}] harvested {stats.tokens_kept:,} vectors from {stats.sequences:,} sequences in "
                f"{stats.seconds:.0f}s"
            )
        else:
            self.report(f"[{tag}] reusing the complete cache ({manifest.n_tokens:,} vectors)")
        if manifest.n_tokens < self.train_cfg.total_tokens:
            self.report(
                f"[{tag}] warning: the data gives only {manifest.n_tokens:,} vectors for a budget of "
                f"{self.train_cfg.total_tokens:,}: training repeats them "
                f"({self.train_cfg.total_tokens / max(manifest.n_tokens, 1):.1f} passes)"
            )
        return cache_dir, manifest

    def eval_sets(self) -> list[EvalSet]:
        """The held-out records of ``self.data`` (fixed seed, ``--holdout``) and each ``--eval-data`` file."""
        sets = []
        if self.data.holdout:
            _, held, info = read_split(self.data)
            path = self.out_dir / "heldout.jsonl"
            rows = ({"messages": r.messages} if r.messages is not None else {"text": r.text} for r in held)
            write_texts({path: "".join(json.dumps(row) + "\n" for row in rows)})
            used = held[: self.ev.eval_max_samples] if self.ev.eval_max_samples else held
            desc = f"{len(used)} of {len(held)} records held out of {Path(info.data).name} (seed 0)"
            sets.append(EvalSet("heldout", desc, str(path), used))
        for file in names(self.ev.eval_data):
            records = list(read_records(file, fmt=self.ev.eval_format))
            n = len(records) if self.ev.eval_max_samples is None else min(self.ev.eval_max_samples, len(records))
            picked = split_records(records, n, seed=0).heldout
            name = re.sub(r"[^A-Za-z0-9_.-]", "_", Path(file).stem)
            sets.append(EvalSet(name, f"{len(picked)} records of {Path(file).name} (seed 0)", file, picked))
        if not sets:
            raise ValueError("nothing to evaluate on: --holdout is 0 and no --eval-data was given")
        return sets

    # ---- SAEs --------------------------------------------------------------------------------------------------
    def train(
        self,
        cache_dir: Path,
        run: str,
        arch: str,
        coef: float | None = None,
        k: int | None = None,
        meta: dict[str, Any] | None = None,
        data: DataConfig | None = None,
    ) -> Path:
        """Train one SAE on the cache (harvested with ``data``, default ``self.data``) into ``out_dir/run``: skipped
        if ``run/sae`` exists, resumed from its last checkpoint if interrupted; returns the SAE directory."""

        out = self.out_dir / run
        wanted = {"architecture": arch, "sparsity_coef": coef, "k": k}
        if (out / SAE_DIR / SAE_CFG_FILE).is_file():
            saved = json.loads((out / SAE_DIR / RUN_CONFIG_FILE).read_text()).get("study", {})
            if saved and saved != wanted:
                raise ValueError(f"{out}: trained with {saved}, this run wants {wanted}; use another --out-dir")
            self.report(f"[{run}] trained SAE found, skipping training")
            return out / SAE_DIR
        tc = self.train_cfg if coef is None else dataclasses.replace(self.train_cfg, sparsity_coef=coef)
        d_in = ActivationCache(cache_dir).d_in
        opts = {key: v for key, v in self.sae_options.items() if key not in ("architecture", "d_in")}
        opts.update({"k": k} if k is not None else {})
        d_sae = opts.pop("d_sae", None) or self.expansion_factor * d_in
        sae_cfg = SAEConfig(architecture=arch, d_in=d_in, d_sae=d_sae, **opts)
        resume = any((out / CHECKPOINTS_DIR).glob(f"step_*/{CHECKPOINT_STATE_FILE}"))
        self.report(
            f"[{run}] training {ARCH_LABELS.get(arch, arch)} d_sae={d_sae} on {tc.total_tokens:,} tokens"
            + (" (resuming)" if resume else "")
            + f" -> {out}"
        )
        run_cfg = RunConfig(
            out_dir=str(out),
            activations=str(cache_dir),
            expansion_factor=self.expansion_factor,
            resume=resume,
            evaluate=False,
        )
        result = train_run(
            RunSpec(
                run=run_cfg,
                sae=sae_cfg,
                train=tc,
                data=data or self.data,
                harvest=self.harvest_opts,
                d_sae=d_sae,
                metadata=meta or {},
                extra_config={"study": wanted},
                report=self.report,
            )
        )
        assert result.sae_dir is not None
        return result.sae_dir

    def sae_metadata(self, data: DataConfig, manifest: Any, eval_data: str | None) -> dict[str, Any]:
        """Provenance saved with each SAE (as ``chatsae train`` writes it)."""
        return {
            "model_name": data.model,
            "hook_name": manifest.hook,
            "method": data.method,
            "data": data.data_path,
            "context_size": data.context_size,
            "max_length": data.max_length,
            "eval_data": eval_data,
            "holdout": data.holdout,
            "holdout_seed": 0,
            "cache_tokens": manifest.n_tokens,
            **{k: v for k, v in to_dict(self.harvest_opts).items() if k.startswith("exclude")},
        }

    def evaluate(self, sae_dir: Path, es: EvalSet, method: str | None = None) -> EvalResult:
        """Evaluate the SAE on ``es`` (``method`` None = the SAE's own); see :meth:`evaluate_all`."""
        return self.evaluate_all([sae_dir], es, method)[0]

    def evaluate_all(self, sae_dirs: list[Path], es: EvalSet, method: str | None = None) -> list[EvalResult]:
        """Evaluate every SAE on ``es`` (``method`` None = each SAE's own), in order. An ``eval_<set>.json`` newer
        than its SAE and made with the same settings is reused; the others are evaluated together, up to
        ``eval_together`` SAEs per clean forward pass (:func:`~chatsae.eval.evaluate.evaluate_many`)."""

        ev, d = self.ev, self.data
        out: dict[int, EvalResult] = {}
        todo: dict[str, list[tuple[int, Any, EvalConfig]]] = {}  # the same settings -> evaluated together
        for i, sae_dir in enumerate(sae_dirs):
            path = sae_dir.parent / f"eval_{es.name}.json"
            cfg = EvalConfig(
                model=d.model,
                data=es.path,
                method=method,
                max_samples=ev.eval_max_samples,
                max_tokens=ev.eval_max_tokens,
                max_length=d.max_length,
                context_size=d.context_size,
                batch_tokens=ev.eval_batch_tokens,
                max_batch_size=self.harvest_opts.max_batch_size,
                lm_loss=ev.lm_loss,
                share_prefix=self.harvest_opts.share_prefix,
                output=str(path),
                progress=self.train_cfg.progress,
            )
            sae = load_sae(sae_dir)
            want = {
                "data": es.path,
                "method": method or sae.cfg.metadata.get("method") or "fast",
                "max_samples": ev.eval_max_samples,
                "max_tokens": ev.eval_max_tokens,
                "lm_loss": ev.lm_loss,
            }
            if path.is_file() and path.stat().st_mtime >= (sae_dir / SAE_CFG_FILE).stat().st_mtime:
                old = read_result(path)
                if all(old.setup.get(k) == v for k, v in want.items()) and old.is_current():
                    self.report(f"[{sae_dir.parent.name}] reusing {path.name}")
                    out[i] = old
                    continue
            cfg = resolve_config(cfg, sae.cfg.metadata)
            key = json.dumps({k: v for k, v in dataclasses.asdict(cfg).items() if k != "output"}, default=str)
            todo.setdefault(key, []).append((i, sae, cfg))
        step = max(1, ev.eval_together)
        for group in todo.values():
            model, tokenizer = self.model_and_tokenizer
            for at in range(0, len(group), step):
                part = group[at : at + step]
                runs = ", ".join(sae_dirs[i].parent.name for i, _, _ in part)
                self.report(f"[{runs}] evaluating on {es.label}")
                results = evaluate_many(
                    [sae for _, sae, _ in part],
                    model,
                    tokenizer,
                    es.records,
                    [cfg for _, _, cfg in part],
                    [str(sae_dirs[i]) for i, _, _ in part],
                    zero_ablation_cache=self._zero_ablation,
                )
                out.update({i: r for (i, _, _), r in zip(part, results, strict=True)})
        return [out[i] for i in range(len(sae_dirs))]


def check_names(option: str, given: list[str], allowed: Any) -> list[str]:
    """``given`` if every name is in ``allowed`` (and there is one), else a ValueError naming ``--option``."""
    bad = [g for g in given if g not in allowed]
    if bad or not given:
        raise ValueError(f"--{option}: {bad or 'nothing given'}; choose from {', '.join(allowed)}")
    return given
