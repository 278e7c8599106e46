"""What one training run is given: :class:`RunConfig` (where the run goes and what it reads) and :class:`RunSpec`
(every config of the run in one bundle), what it returns (:class:`RunResult`), and what follows from a spec alone
before anything runs (the output directory, the hook asked for, the SAE's config, the harvest's keywords)."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from ..activations.harvest import HarvestConfig
from ..activations.pipeline import DataConfig, HarvestContext
from ..core.config import RESUME_MAY_CHANGE, run_config_section, validate
from ..sae import SAEConfig
from ..train.config import TrainConfig
from .sae_variants import parse_saes


@run_config_section("run")
@dataclass
class RunConfig:
    """Where the run goes and what it reads."""

    out_dir: str | None = field(default=None, metadata=RESUME_MAY_CHANGE)
    """Output directory; default runs/<model>_<hook>_<method>_<arch>."""
    activations: str | None = None
    """Train on saved activations instead of a model: an activation cache directory, a tensor file
    (.safetensors/.pt/.npy, [N, d_in]) or 'synthetic' (ground-truth sparse features; see --synthetic-*)."""
    expansion_factor: int = 8
    """d_sae = expansion_factor x d_in when --d-sae/--width is not given (FAST: 8 or 16)."""
    resume: bool = field(default=False, metadata=RESUME_MAY_CHANGE)
    """Continue the run in --out-dir from its last checkpoint (and an unfinished harvest) exactly where it stopped."""
    overwrite: bool = field(default=False, metadata=RESUME_MAY_CHANGE)
    """Start afresh in an --out-dir that holds an earlier run (its checkpoints, metrics log and SAE are removed; other
    files are kept), or write into a non-empty directory chatsae did not make."""
    evaluate: bool = field(default=True, metadata=RESUME_MAY_CHANGE)
    """After training on a model, evaluate on the held-out records and print the metrics table."""
    eval_max_samples: int = field(default=50, metadata=RESUME_MAY_CHANGE)
    """Held-out samples used by that evaluation."""
    synthetic_features: int = 0
    """--activations synthetic: number of true features (0 = 2 x d_in)."""
    synthetic_active: float = 4.0
    """--activations synthetic: mean number of active features per vector."""
    saes: str = ""
    """Several SAEs from the same activations in one command, comma-separated, each ARCH[:FIELD=VALUE...] with SAE or
    training options, e.g. 'jumprelu:sparsity_coef=0.001,jumprelu:sparsity_coef=0.004,topk:k=32'; each trains in
    OUT_DIR/<name> (OUT_DIR/<hook>/<name> with --hooks), name = the architecture and options, or name=...; other
    options apply to every entry, and options left at --arch's defaults take the entry architecture's."""
    distribute_saes: bool = False
    """Under torchrun with several SAEs (--hooks / --saes): after the shared harvest each rank trains its own SAEs
    alone (SAE i on rank i mod the number of ranks), instead of every SAE data-parallel on all ranks in turn."""

    def __post_init__(self) -> None:
        validate(
            self,
            positive=("expansion_factor", "eval_max_samples", "synthetic_active"),
            non_negative=("synthetic_features",),
            paths=("out_dir", "activations"),
        )
        if self.saes:
            parse_saes(self.saes)  # a bad entry is an error before anything runs


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class RunSpec:
    """Everything one training run needs: a bundle of the run's configs and what it is given beyond them."""

    run: RunConfig = field(default_factory=RunConfig)
    sae: SAEConfig = field(default_factory=SAEConfig)
    """Architecture and options; ``d_in`` is taken from the activations."""
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    """Model, data and method; matters only when harvesting from a model (``run.activations`` None)."""
    harvest: HarvestConfig = field(default_factory=HarvestConfig)
    """Which tokens become vectors and how the model is batched; as ``data``, only for a harvest."""
    d_sae: int | None = None
    """Number of latents; None = ``run.expansion_factor x d_in``."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """Provenance added to the SAE's metadata (over what the source tells)."""
    extra_config: dict[str, Any] = field(default_factory=dict)
    """Extra sections saved in the run config (config.json, checkpoints), e.g. a study's settings."""
    model_and_tokenizer: tuple[Any, Any] | None = None
    """An already loaded model for the harvest (default: load ``data.model``)."""
    shared_stream: Any = None
    """``--cache none``: a :class:`~chatsae.activations.streaming.SharedStream` (of that model) to read the hook's
    vectors from, shared with other SAEs, instead of streaming a harvest of this run's own."""
    report: Callable[[str], None] = _stderr

    def __post_init__(self) -> None:
        # None (accepted before these fields were typed) still means the defaults
        self.data = DataConfig() if self.data is None else self.data
        self.harvest = HarvestConfig() if self.harvest is None else self.harvest
        check_ignored(self.run, self.data)


def check_ignored(run: RunConfig, data: DataConfig) -> None:
    """Refuse model options that saved or synthetic activations (``--activations``) would silently ignore."""
    if not run.activations:
        return
    what = "synthetic activations" if run.activations == "synthetic" else f"saved activations ({run.activations})"
    if data.hooks:
        raise ValueError(
            f"--hooks does not apply to --activations: {what} come from no model hook; drop --hooks, or drop "
            "--activations to harvest those hooks from a model"
        )
    if data.cache == "none":
        raise ValueError(
            f"--cache none does not apply to --activations: {what} are read, not harvested; drop --cache none"
        )


class RunResult(NamedTuple):
    sae_dir: Path | None
    """The trained SAE (None on ranks other than 0)."""
    summary: dict[str, Any]
    """The trainer's summary (final metrics and run facts)."""
    out_dir: Path
    rows: dict[str, str]
    """Result rows beyond training: true-feature recovery (synthetic) and the held-out evaluation metrics."""
    context: HarvestContext | None
    """From a harvest: model, tokenizer, hook, held-out records (None for saved or synthetic activations)."""


def hook_hint(data: DataConfig) -> str:
    """The hook a data config asks for, before the model is loaded (``mid`` = the default middle layer)."""
    if data.hooks:
        return "+".join(t.strip() for t in data.hooks.split(",") if t.strip())
    return data.hook or (f"resid_post.{data.layer}" if data.layer is not None else "mid")


def default_out_dir(spec: RunSpec) -> Path:
    """``--out-dir`` if given, else ``runs/<model>_<hook>_<method>_<arch>`` (or ``runs/<file>_<arch>``)."""
    run, arch = spec.run, spec.sae.architecture
    if run.out_dir:
        return Path(run.out_dir)
    if run.activations == "synthetic":
        return Path("runs") / f"synthetic_synthetic_synthetic_{arch}"
    if run.activations:
        return Path("runs") / f"{Path(run.activations).stem}_{arch}"
    model = Path(spec.data.model).name.replace(".gguf", "") or "model"
    return Path("runs") / f"{model}_{hook_hint(spec.data)}_{spec.data.method}_{arch}"


def harvest_kwargs(spec: RunSpec) -> dict[str, Any]:
    """Budget, resume, progress and model of a run's harvest (``pipeline.harvest`` / ``harvest_hooks`` keywords)."""
    return {
        "max_tokens": spec.harvest.max_tokens or spec.train.total_tokens,
        "resume": spec.run.resume,
        "progress": spec.train.progress,
        "model_and_tokenizer": spec.model_and_tokenizer,
    }


def sae_config(spec: RunSpec, d_in: int, source_meta: dict[str, Any]) -> SAEConfig:
    """``spec.sae`` with ``d_in`` of the activations, ``d_sae`` resolved and the provenance merged in."""
    d_sae = spec.d_sae or spec.run.expansion_factor * d_in
    meta = {**spec.sae.metadata, **source_meta, **spec.metadata}
    return dataclasses.replace(spec.sae, d_in=d_in, d_sae=d_sae, metadata=meta)
