"""``chatsae features | autointerp | dashboard | export-neuronpedia | serve-judge`` (docs/interp.md)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.config import validate
from ..core.constants import SAE_CFG_FILE
from ..core.redact import redact
from .common import add_command, configs_from_args


@dataclass
class DashboardConfig:
    """Static HTML dashboard (``chatsae dashboard``)."""

    features: str | None = None
    """Features directory. None = SAE_DIR/features (SAE_DIR may also be the features directory itself)."""
    out: str | None = None
    """Output directory. None = SAE_DIR/dashboard."""
    title: str | None = None
    """Page title. None = 'chatsae - MODEL - HOOK'."""
    autointerp: str | None = None
    """Auto-interp results file. None = FEATURES/autointerp.json if present."""
    chunk_size: int = 64
    """Latents per data file."""
    show_quantile: int = 10
    """Quantile contexts shown per latent."""
    show_random: int = 5
    """Non-activating contexts shown per latent."""
    overwrite: bool = False
    """Write into an existing --out directory chatsae did not write (same-named files replaced, others kept)."""

    def __post_init__(self) -> None:
        validate(
            self,
            positive=("chunk_size",),
            non_negative=("show_quantile", "show_random"),
            paths=("features", "out", "autointerp"),
        )


@dataclass
class ServeConfig:
    """OpenAI-compatible chat server over a local transformers model (``chatsae serve-judge``)."""

    serve_model: str = "embedded"
    """Model to serve: HF name, local directory, GGUF or 'embedded'."""
    host: str = "127.0.0.1"
    """Address to bind."""
    port: int = 8000
    """Port (0 = any free port)."""
    serve_device: str = "cpu"
    """Device."""
    serve_dtype: str = "float32"
    """dtype."""

    def __post_init__(self) -> None:
        validate(self, ranges={"port": "[0,65535]"}, dtypes=("serve_dtype",), devices=("serve_device",))


def register(sub: argparse._SubParsersAction) -> None:
    from ..interp.autointerp import AutointerpConfig
    from ..interp.features import FeaturesConfig
    from ..interp.judges import JudgeConfig
    from ..interp.neuronpedia import NeuronpediaConfig

    p = add_command(
        sub,
        "features",
        "Stream samples (FAST style: each conversation on its own) through the model and an SAE; keep for "
        "every latent its top-k contexts (by max activation), quantile and non-activating contexts, "
        "firing statistics, an activation histogram, special-token statistics and its logit lens. "
        "Resumable; writes SAE_DIR/features.",
        _features,
        {"features": FeaturesConfig},
    )
    p.add_argument("sae_dir", metavar="SAE_DIR", help="directory of a saved SAE")
    p = add_command(
        sub,
        "autointerp",
        "Judge-LLM interpretability of sampled latents: the FAST paper's 1-5 protocol, detection and "
        "fuzzing scores. Judges: a local transformers model (default: the embedded SmolLM2, offline) or "
        "any OpenAI-compatible endpoint. Answers are cached on disk.",
        _autointerp,
        {"autointerp": AutointerpConfig, "judge": JudgeConfig},
    )
    p.add_argument(
        "path", metavar="SAE_DIR|FEATURES_DIR", help="an SAE directory (uses its features/) or a features directory"
    )
    p = add_command(
        sub,
        "dashboard",
        "Write a static, self-contained HTML dashboard (opens from file://).",
        _dashboard,
        {"dashboard": DashboardConfig},
    )
    p.add_argument("path", metavar="SAE_DIR|FEATURES_DIR", help="an SAE directory or a features directory")
    p = add_command(
        sub,
        "export-neuronpedia",
        "Export features and activations in Neuronpedia's JSONL layout.",
        _neuronpedia,
        {"neuronpedia": NeuronpediaConfig},
    )
    p.add_argument("path", metavar="SAE_DIR|FEATURES_DIR", help="an SAE directory or a features directory")
    add_command(
        sub,
        "serve-judge",
        "Serve a local chat model over an OpenAI-compatible API (/v1/chat/completions).",
        _serve,
        {"serve": ServeConfig},
    )


def features_dir(path: str | Path, explicit: str | None = None) -> Path:
    """The features directory of ``path`` (an SAE directory or the features directory itself)."""
    if explicit:
        return Path(explicit)
    path = Path(path)
    if (path / "meta.json").is_file():
        return path
    if (path / "features" / "meta.json").is_file():
        return path / "features"
    raise FileNotFoundError(
        f"{path}: no features here (no meta.json in it or in {path / 'features'}); run `chatsae features SAE_DIR` first"
    )


def _base_dir(path: str | Path) -> Path:
    """The SAE directory for default outputs: the parent of a features directory."""
    path = Path(path)
    return path.parent if (path / "meta.json").is_file() and not (path / SAE_CFG_FILE).is_file() else path


def _features(args: argparse.Namespace) -> int:
    from ..data import fast_sequences, read_records
    from ..interp.features import collect_features
    from ..models import load_model
    from ..sae import load_sae

    cfg = configs_from_args(args)["features"]
    sae_dir = Path(args.sae_dir)
    sae = load_sae(sae_dir)
    meta = sae.cfg.metadata
    model_name = cfg.model or meta.get("model_name") or "embedded"
    data = cfg.data or meta.get("eval_data") or meta.get("data") or "default"
    if data == "default":
        from ..activations.pipeline import default_data_path

        data = str(default_data_path())
    hook = cfg.hook or meta.get("hook_name")
    if not hook:
        raise ValueError("--hook is required: the SAE's metadata has no hook_name (e.g. --hook resid_post.15)")
    cfg = dataclasses.replace(cfg, model=model_name, data=data, hook=hook)
    out = Path(cfg.out) if cfg.out else sae_dir / "features"
    print(f"chatsae features: model {model_name}, hook {hook}, data {data} -> {out}", file=sys.stderr)
    model, tokenizer = load_model(model_name, dtype=cfg.dtype, device=cfg.device)
    records = read_records(data, fmt=cfg.data_format)
    seqs = fast_sequences(records, tokenizer, max_length=cfg.max_length, dedup_n=cfg.dedup_n or None)
    res = collect_features(sae, model, tokenizer, seqs, cfg, out, provenance={"sae_dir": str(sae_dir)})
    fired = int((res.max_act > 0).sum())
    print(
        f"{res.meta['n_samples']:,} samples, {res.n_tokens:,} tokens; {fired:,} of {res.d_sae:,} latents fired; "
        f"{res.meta.get('seconds', 0):.0f}s; wrote {out}"
    )
    return 0


def _autointerp(args: argparse.Namespace) -> int:
    from ..interp.autointerp import failure_summary, run_autointerp
    from ..interp.judges import make_judge
    from ..interp.store import FeatureData

    cfgs = configs_from_args(args)
    acfg, jcfg = cfgs["autointerp"], cfgs["judge"]
    fdir = features_dir(args.path)
    data = FeatureData(fdir)
    judge = make_judge(jcfg, default_cache=fdir / "judge_cache")
    concurrency = jcfg.concurrency if jcfg.judge == "openai" else 1
    doc = run_autointerp(data, judge, acfg, concurrency=concurrency)
    _print_summary(doc["summary"])
    print(f"wrote {acfg.out or fdir / 'autointerp.json'}")
    failed = failure_summary(doc)
    if failed:
        print(f"chatsae autointerp: FAILED: {redact(failed)}", file=sys.stderr, flush=True)
        return 1
    return 0


def _print_summary(summary: dict[str, Any]) -> None:
    fast = summary.get("fast")
    if fast:
        dist = "  ".join(f"{s}: {n}" for s, n in fast["counts"].items())
        share = "-" if fast["top_range_share"] is None else f"{100 * fast['top_range_share']:.1f}%"
        print(
            f"FAST protocol: {fast['n_scored']}/{fast['n_latents']} latents scored ({fast['n_unparseable']} "
            f"unparseable, {fast['n_errors']} errors)\n  scores  {dist}\n  mean "
            f"{_f(fast['mean_score'])}  top range (4-5): {share}"
        )
    for name in ("detection", "fuzzing"):
        s = summary.get(name)
        if s:
            print(
                f"{name}: {s['n_scored']}/{s['n_latents']} latents scored; balanced accuracy "
                f"{_f(s['mean_balanced_accuracy'])}, precision {_f(s['mean_precision'])}, recall "
                f"{_f(s['mean_recall'])}"
            )


def _f(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def _dashboard(args: argparse.Namespace) -> int:
    from ..interp.dashboard import build_dashboard

    cfg = configs_from_args(args)["dashboard"]
    fdir = features_dir(args.path, cfg.features)
    out = Path(cfg.out) if cfg.out else _base_dir(args.path) / "dashboard"
    index = build_dashboard(
        fdir,
        out,
        title=cfg.title,
        chunk_size=cfg.chunk_size,
        n_quantile=cfg.show_quantile,
        n_random=cfg.show_random,
        autointerp=cfg.autointerp,
        overwrite=cfg.overwrite,
    )
    print(f"wrote {out}; open {index.resolve().as_uri()}")
    return 0


def _neuronpedia(args: argparse.Namespace) -> int:
    from ..interp.neuronpedia import export_neuronpedia

    cfg = configs_from_args(args)["neuronpedia"]
    fdir = features_dir(args.path)
    out = Path(cfg.out) if cfg.out else _base_dir(args.path) / "neuronpedia"
    target = export_neuronpedia(fdir, cfg, out)
    print(f"wrote {target}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from ..interp.judges import LocalJudge
    from ..interp.server import JudgeServer

    cfg = configs_from_args(args)["serve"]
    judge = LocalJudge(cfg.serve_model, cfg.serve_device, cfg.serve_dtype)
    judge.complete([{"role": "user", "content": "hi"}], max_tokens=1)  # load the model before announcing the URL
    server = JudgeServer(judge, cfg.host, cfg.port, model_name=cfg.serve_model)
    print(f"serving {cfg.serve_model} at {server.url} (OpenAI chat API; Ctrl-C stops)", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    finally:
        server.httpd.server_close()
    return 0
