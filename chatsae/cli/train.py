"""``chatsae train`` and ``chatsae harvest``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import load_config_file, to_dict
from ..sae import SAEConfig
from ..train.config import TrainConfig
from .common import add_command, configs_from_args

ALIASES = {"architecture": ["arch"], "d_sae": ["width"]}


@dataclass
class RunConfig:
    """Where the run goes and what it reads."""

    out_dir: str | None = None
    """Output directory; default runs/<model>_<hook>_<method>_<arch>."""
    activations: str | None = None
    """Train on saved activations instead of a model: an activation cache directory, a tensor file
    (.safetensors/.pt/.npy, [N, d_in]) or 'synthetic' (ground-truth sparse features; see --synthetic-*)."""
    expansion_factor: int = 8
    """d_sae = expansion_factor x d_in when --d-sae/--width is not given (FAST: 8 or 16)."""
    resume: bool = False
    """Continue the run in --out-dir from its last checkpoint (and an unfinished harvest) exactly where it stopped."""
    evaluate: bool = True
    """After training on a model, evaluate on the held-out records and print the metrics table."""
    eval_max_samples: int = 50
    """Held-out samples used by that evaluation."""
    synthetic_features: int = 0
    """--activations synthetic: number of true features (0 = 2 x d_in)."""
    synthetic_active: float = 4.0
    """--activations synthetic: mean number of active features per vector."""


def _harvest_options_cls() -> type:
    from ..activations.harvest import HarvestOptions

    return HarvestOptions


def _data_cls() -> type:
    from ..activations.pipeline import DataConfig

    return DataConfig


def register(sub: Any) -> None:
    train_cfgs = {"run": RunConfig, "sae": SAEConfig, "train": TrainConfig, "data": _data_cls(),
                  "harvest": _harvest_options_cls()}  # fmt: skip
    add_command(
        sub, "train",
        "Train an SAE: harvest activations of a model on chat/text data (FAST, BT(F) or BT(P)) into a cache and "
        "train on them, or train on saved activations (--activations). With no options: the main job (FAST JumpReLU "
        "8x SAE on the middle residual stream of the embedded SmolLM2-135M-Instruct, on chatsae's own chat data).",
        _train, train_cfgs, aliases=ALIASES,
    )  # fmt: skip
    add_command(
        sub, "harvest",
        "Harvest activations of a model on data into an on-disk cache (sharded, resumable) for `train --activations`.",
        _harvest, {"run": RunConfig, "data": _data_cls(), "harvest": _harvest_options_cls()},
        aliases=ALIASES,
    )  # fmt: skip


def _out_dir(run: RunConfig, data: Any, sae: SAEConfig, hook: str) -> Path:
    if run.out_dir:
        return Path(run.out_dir)
    model = Path(data.model).name.replace(".gguf", "") or "model"
    return Path("runs") / f"{model}_{hook}_{data.method}_{sae.architecture}"


def _sae_config(args: argparse.Namespace, cfgs: dict[str, Any], d_in: int, meta: dict[str, Any]) -> SAEConfig:
    fields = {f.name: getattr(cfgs["sae"], f.name) for f in dataclasses.fields(SAEConfig)}
    fields["d_in"] = d_in
    from_file = load_config_file(args.config).get("sae") or {} if args.config else {}
    if not hasattr(args, "d_sae") and "d_sae" not in from_file:
        fields["d_sae"] = cfgs["run"].expansion_factor * d_in
    fields["metadata"] = {**cfgs["sae"].metadata, **meta}
    return SAEConfig(**fields)


def _train(args: argparse.Namespace) -> int:
    from ..activations import SyntheticSource, TensorSource
    from ..activations.cache import CacheSource
    from ..sae import create_sae
    from ..train import Trainer

    cfgs = configs_from_args(args)
    run, tc, data = cfgs["run"], cfgs["train"], cfgs["data"]
    t0 = time.perf_counter()
    context: dict[str, Any] = {}
    meta: dict[str, Any] = {}
    if run.activations == "synthetic":
        d_in = cfgs["sae"].d_in
        n_feat = run.synthetic_features or 2 * d_in
        source: Any = SyntheticSource(d_in=d_in, n_features=n_feat, batch_size=tc.batch_size,
                                      mean_active=run.synthetic_active, seed=tc.seed)  # fmt: skip
        meta = {"data": "synthetic", "hook_name": "synthetic"}
        out_dir = _out_dir(run, argparse.Namespace(model="synthetic", method="synthetic"), cfgs["sae"], "synthetic")
    elif run.activations:
        path = Path(run.activations)
        if path.is_dir():
            source = CacheSource(path, tc.batch_size, buffer_tokens=data.buffer_tokens, seed=tc.seed)
            man = source.cache.manifest
            meta = {"model_name": man.model, "hook_name": man.hook, "method": man.method, "activations": str(path)}
        else:
            source = TensorSource.from_file(path, tc.batch_size, seed=tc.seed)
            meta = {"activations": str(path)}
        d_in = source.d_in
        out_dir = Path(run.out_dir) if run.out_dir else Path("runs") / f"{path.stem}_{cfgs['sae'].architecture}"
    else:
        from ..activations.pipeline import harvest

        hook_hint = data.hook or (f"resid_post.{data.layer}" if data.layer is not None else "mid")
        out_dir = _out_dir(run, data, cfgs["sae"], hook_hint)
        print(f"chatsae train: model {data.model}, data {data.data_path}, method {data.method} -> {out_dir}",
              file=sys.stderr)  # fmt: skip
        cache_dir, manifest, stats, context = harvest(data, cfgs["harvest"], out_dir,
                                                      max_tokens=cfgs["harvest"].max_tokens or tc.total_tokens,
                                                      resume=run.resume, progress=tc.progress)  # fmt: skip
        if stats.sequences:
            print(f"harvested {stats.tokens_kept:,} vectors from {stats.sequences:,} sequences in {stats.seconds:.0f}s"
                  f" ({stats.as_dict()['tokens_per_s']:,.0f} tok/s, padding {100 * stats.padding_fraction:.1f}%)",
                  file=sys.stderr)  # fmt: skip
        source = CacheSource(cache_dir, tc.batch_size, buffer_tokens=data.buffer_tokens, seed=tc.seed)
        d_in = source.d_in
        held_out_file = _write_held_out(context["held_out"], out_dir)
        hook = context["hook"]
        meta = {
            "model_name": data.model, "hook_name": str(hook), "method": data.method,
            "context_size": data.context_size, "max_length": data.max_length, "data": data.data_path,
            "eval_data": held_out_file, "holdout": data.holdout, "holdout_seed": 0, "cache_tokens": manifest.n_tokens,
            **{k: v for k, v in to_dict(cfgs["harvest"]).items() if k.startswith("exclude")},
        }  # fmt: skip
    sae_cfg = _sae_config(args, cfgs, d_in, meta)
    sae = create_sae(sae_cfg)
    run_config = {"run": to_dict(run), "sae": to_dict(sae_cfg), "train": to_dict(tc), "data": to_dict(data),
                  "harvest": to_dict(cfgs["harvest"])}  # fmt: skip
    trainer = Trainer(sae, tc, source, out_dir, run_config=run_config)
    result = trainer.fit(resume=run.resume)
    if result.sae_dir is None:
        return 0
    rows: dict[str, Any] = {"tokens trained": f"{result.summary['tokens']:,}",
                            "train L0": f"{result.summary.get('train_l0', float('nan')):.1f}",
                            "train FVU": f"{result.summary.get('train_fvu', float('nan')):.4f}",
                            "dead %": f"{100 * result.summary.get('train_dead_frac', 0):.2f}"}  # fmt: skip
    if run.activations == "synthetic":
        from ..activations import feature_recovery
        from ..sae import load_sae

        rec = feature_recovery(load_sae(result.sae_dir).W_dec.detach(), source.features)
        rows["true features recovered (cos > 0.9)"] = f"{100 * (rec > 0.9).float().mean().item():.1f}%"
    if context and run.evaluate and context["held_out"]:
        rows.update(_evaluate(result.sae_dir, context, run.eval_max_samples, out_dir))
    rows["SAE"] = str(result.sae_dir)
    rows["config"] = str(result.sae_dir / "config.json")
    rows["metrics log"] = str(out_dir / "metrics.jsonl")
    rows["wall time"] = f"{time.perf_counter() - t0:.0f}s"
    _print_table("chatsae train: result", rows)
    return 0


def _write_held_out(records: list[Any], out_dir: Path) -> str | None:
    """Write the held-out records as JSONL (messages or text) so `chatsae eval SAE_DIR` finds them by itself."""
    if not records:
        return None
    from ..utils import atomic_file

    path = out_dir / "heldout.jsonl"
    with atomic_file(path, "w") as fh:
        for r in records:
            fh.write(json.dumps({"messages": r.messages} if r.messages is not None else {"text": r.text}) + "\n")
    return str(path)


def _evaluate(sae_dir: Path, context: dict[str, Any], max_samples: int, out_dir: Path) -> dict[str, str]:
    """Held-out evaluation (paper metrics) of the freshly trained SAE; returns table rows."""
    try:
        from ..eval import EvalConfig, evaluate
    except ImportError:  # evaluation package not available in this build
        return {}
    from ..sae import load_sae

    sae = load_sae(sae_dir)
    cfg = EvalConfig(max_samples=max_samples, lm_loss=True, output=str(out_dir / "eval.json"))
    res = evaluate(sae, context["model"], context["tokenizer"], context["held_out"], cfg)
    return res.table_rows()


def _print_table(title: str, rows: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_header=False)
    table.add_column("metric", style="bold")
    table.add_column("value")
    for k, v in rows.items():
        table.add_row(k, str(v))
    Console().print(table)


def _harvest(args: argparse.Namespace) -> int:
    from ..activations.pipeline import harvest

    cfgs = configs_from_args(args)
    run, data, opts = cfgs["run"], cfgs["data"], cfgs["harvest"]
    hook_hint = data.hook or (f"resid_post.{data.layer}" if data.layer is not None else "mid")
    out_dir = Path(run.out_dir) if run.out_dir else Path("runs") / f"harvest_{Path(data.model).name}_{hook_hint}"
    cache_dir, manifest, stats, _ = harvest(data, opts, out_dir, max_tokens=opts.max_tokens, resume=run.resume)
    _print_table("chatsae harvest", {"cache": str(cache_dir), "model": manifest.model, "hook": manifest.hook,
                                     "method": manifest.method, "tokens": f"{manifest.n_tokens:,}",
                                     "shards": len(manifest.shards), **stats.as_dict()})  # fmt: skip
    return 0
