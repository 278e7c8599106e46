"""``chatsae special-tokens`` (latents of chat-template special tokens) and ``chatsae steer`` (steering reports)."""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.config import check, validate
from ..core.locking import check_claim
from ..core.ownership import check_replace
from ..data.methods import FAST_MAX_LENGTH
from .common import add_command, configs_from_args

MAX_ALPHA = 10_000.0
"""Largest steering strength (or clamp value) accepted: beyond it a generation is noise, most likely a typo."""


@dataclass
class ModelConfig:
    """The model to run (default: the one named in the SAE's metadata)."""

    model: str | None = None
    """Model: 'embedded', a local directory, a .gguf file or a hub id (default: the SAE's metadata model_name)."""
    dtype: str = "float32"
    """Model dtype: float32, bfloat16 or float16."""
    device: str = "cpu"
    """Device: cpu, cuda, cuda:N or auto."""
    hook: str | None = None
    """Hook point of the SAE, e.g. resid_post.15 (default: the SAE's metadata hook_name; needed for foreign SAEs whose
    format does not say it)."""

    def __post_init__(self) -> None:
        validate(self, dtypes=("dtype",), devices=("device",))


@dataclass
class SpecialTokensConfig:
    """Ranking latents by their average max activation on each chat-template token."""

    data: str = ""
    """Chat data (any format read_records reads: JSON/JSONL/Parquet/HF dataset; messages, ShareGPT, Alpaca, Q/A);
    'default' = chatsae's own bundled chat data."""
    n_samples: int = 1000
    """Number of samples (conversations, each fed on its own) to analyse."""
    top_k: int = 10
    """Latents reported per token."""
    max_tokens: int = 4096
    """Tokens per forward batch (length-bucketed)."""
    max_length: int = FAST_MAX_LENGTH
    """Truncate samples to this many tokens."""
    dedup_n: int | None = 20
    """n-gram deduplication of samples (None: off)."""
    out: str = "runs/special_tokens"
    """Output directory for special_tokens.md and special_tokens.json."""
    overwrite: bool = False
    """Write into a non-empty --out chatsae did not write (its files are kept: none is replaced or removed)."""

    def __post_init__(self) -> None:
        if not self.data:
            raise ValueError("--data is required (a chat dataset)")
        validate(
            self,
            positive=("n_samples", "top_k", "max_tokens", "max_length"),
            non_negative=("dedup_n",),
            paths=("data", "out"),
        )


@dataclass
class SteerConfig:
    """Greedy chat generations under steering, side by side for several alphas, with automatic measures."""

    latent: list[int] = field(default_factory=list)
    """Latent(s) to steer: repeat the flag or separate with commas (all get the same mode and value)."""
    alphas: list[float] = field(default_factory=lambda: [0.0, 15.0, 25.0, 50.0, 100.0, 150.0, 200.0])
    """add: the alphas of x + alpha*d_k (default 0,15,25,50,100,150,200 as in the FAST paper); clamp: the target
    latent values; ablate: ignored (clean vs ablated)."""
    prompts: str = ""
    """Prompts: a .txt file (one per line) or JSON/JSONL chat records (cut after the last user message)."""
    mode: str = "add"
    """add (x + alpha*d_k), clamp (set the latent to the value, keep the SAE error) or ablate (remove the latent)."""
    positions: str = "all"
    """Where to steer: all (every token), special (chat-template/special token ids only) or prompt (not the
    generated tokens)."""
    normalize: bool = False
    """add mode: use the unit-norm decoder direction d_k/|d_k|."""
    max_new_tokens: int = 128
    """Tokens generated per answer (greedy)."""
    batch_size: int = 8
    """Prompts generated together (left-padded)."""
    n_prompts: int | None = None
    """Use only the first N prompts."""
    out: str = "runs/steering"
    """Output directory for steering.md and steering.json."""
    overwrite: bool = False
    """Write into a non-empty --out chatsae did not write (its files are kept: none is replaced or removed)."""

    def __post_init__(self) -> None:
        from ..steer.interventions import MODES, POSITIONS

        if not self.latent:
            raise ValueError("--latent is required (one or more latent indices)")
        if not self.prompts:
            raise ValueError("--prompts is required (a .txt, .json or .jsonl file)")
        if self.mode not in MODES:
            raise ValueError(f"--mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.positions not in POSITIONS:
            raise ValueError(f"--positions must be one of {', '.join(POSITIONS)}, got {self.positions!r}")
        if self.mode != "ablate" and not self.alphas:
            raise ValueError("--alphas needs at least one value")
        validate(
            self,
            positive=("max_new_tokens", "batch_size", "n_prompts"),
            paths=("prompts", "out"),
            unique=("latent", "alphas"),
        )
        check(all(i >= 0 for i in self.latent), "latent", f"must be latent ids >= 0, got {self.latent}")
        absurd = [a for a in self.alphas if not math.isfinite(a) or abs(a) > MAX_ALPHA]
        check(
            not absurd,
            "alphas",
            f"must be finite with |alpha| <= {MAX_ALPHA:,.0f} (the FAST paper steers with up to 200), got {absurd}",
        )


@dataclass
class SteerStudyConfig:
    """The FAST steering claim judged blind and pairwise: special-token latents' unit decoder rows added at the
    special-token positions (alpha = r x the hook's median token norm) against a null of random directions."""

    prompts: str = "runs/compare_k/heldout.jsonl"
    """Held-out prompts: a .txt file (one per line) or chat records (the last user message is the question)."""
    n_prompts: int = 24
    """Use the first N prompts."""
    ratios: list[float] = field(default_factory=lambda: [0.25, 0.5, 1.0])
    """Strengths r: alpha = r x the median token norm at the hook (position 0 excluded)."""
    n_null: int = 20
    """Random directions of the null distribution."""
    null: str = "unit"
    """unit (random unit vectors of residual space, shared by the SAEs) or latents (random live latents' rows)."""
    token: str = "<|im_start|>"
    """Template token whose top latent (average max activation) is steered, per SAE."""
    selection_data: str = "default"
    """Chat data to pick the latents on ('default' = chatsae's bundled chat data)."""
    selection_samples: int = 100
    """Samples of --selection-data to pick the latents on."""
    max_new_tokens: int = 64
    """Greedy tokens per answer."""
    batch_size: int = 16
    """Rows (prompt x direction) generated together; also the judge's batch."""
    seed: int = 0
    """Seed of the null directions and of the A/B coins."""
    out: str = "runs/steer_study"
    """Output directory for study.json and study.md."""
    overwrite: bool = False
    """Write into a non-empty --out chatsae did not write (its files are kept: none is replaced or removed)."""

    def __post_init__(self) -> None:
        check(self.null in ("unit", "latents"), "null", f"must be unit or latents, got {self.null!r}")
        validate(self, positive=("n_prompts", "n_null", "selection_samples", "max_new_tokens", "batch_size"))
        check(
            bool(self.ratios) and all(0 < r <= 10 for r in self.ratios),
            "ratios",
            f"must be in (0, 10], got {self.ratios}",
        )


class _Extend(argparse.Action):
    """Repeated ``--latent`` flags accumulate (each may itself be a comma list)."""

    def __call__(self, parser: Any, namespace: argparse.Namespace, values: Any, option_string: Any = None) -> None:
        setattr(namespace, self.dest, [*getattr(namespace, self.dest, []), *values])


def check_outputs(out: str, kind: str, overwrite: bool, inputs: tuple[str, ...], stem: str) -> None:
    """Before anything loads: ``--out`` may be claimed (not an input, not another output's directory, not a user's
    non-empty directory without --overwrite) and its two files are not a user's."""
    check_claim(out, kind, overwrite, "--out", inputs)
    for ext in ("md", "json"):
        check_replace(Path(out) / f"{stem}.{ext}", "--out")


def _load(sae_dir: str, opts: ModelConfig) -> tuple[Any, Any, Any, str]:
    """(sae, model, tokenizer, model name) for a command."""
    from ..models import load_model
    from ..sae import load_sae

    sae = load_sae(sae_dir, hook=opts.hook)
    name = opts.model or sae.cfg.metadata.get("model_name")
    if not name:
        raise ValueError(f"{sae_dir}: the SAE's metadata has no model_name; pass --model")
    if not sae.cfg.metadata.get("hook_name"):
        raise ValueError(f"{sae_dir}: the SAE's metadata has no hook_name; pass --hook (e.g. --hook resid_post.15)")
    print(f"loading model {name} ...", file=sys.stderr)
    model, tokenizer = load_model(name, dtype=opts.dtype, device=opts.device)
    return sae.eval(), model, tokenizer, str(name)


def _special_tokens(args: argparse.Namespace) -> int:
    from ..activations.pipeline import DEFAULT_DATA, default_data_path
    from ..data import read_records
    from ..steer.special_tokens import special_token_table, write_table

    cfg = configs_from_args(args)
    opts: SpecialTokensConfig = cfg["special_tokens"]
    if opts.data == DEFAULT_DATA:
        opts.data = str(default_data_path())
    check_outputs(opts.out, "special-tokens", opts.overwrite, (args.sae_dir, opts.data), "special_tokens")
    sae, model, tokenizer, name = _load(args.sae_dir, cfg["model"])
    settings = {"sae": str(args.sae_dir), "model": name, "data": opts.data}
    table = special_token_table(
        model,
        tokenizer,
        sae,
        read_records(opts.data),
        n_samples=opts.n_samples,
        top_k=opts.top_k,
        max_tokens=opts.max_tokens,
        max_length=opts.max_length,
        dedup_n=opts.dedup_n,
        settings=settings,
    )
    md, js = write_table(table, opts.out, opts.overwrite)
    print(f"{table.n_samples} samples, {len(table.tokens)} template tokens -> {md}, {js}")
    return 0


def _steer(args: argparse.Namespace) -> int:
    from ..steer.report import load_prompts, run_steering, write_report

    cfg = configs_from_args(args)
    opts: SteerConfig = cfg["steer"]
    check_outputs(opts.out, "steering", opts.overwrite, (args.sae_dir, opts.prompts), "steering")
    prompts = load_prompts(opts.prompts, limit=opts.n_prompts)
    sae, model, tokenizer, name = _load(args.sae_dir, cfg["model"])
    settings = {"sae": str(args.sae_dir), "model": name, "prompts_file": opts.prompts}
    report = run_steering(
        model,
        tokenizer,
        sae,
        prompts,
        opts.latent,
        opts.alphas,
        mode=opts.mode,
        positions=opts.positions,
        normalize=opts.normalize,
        max_new_tokens=opts.max_new_tokens,
        batch_size=opts.batch_size,
        settings=settings,
    )
    md, js = write_report(report, opts.out, opts.overwrite)
    print(f"{len(prompts)} prompts x {len(report.conditions)} conditions -> {md}, {js}")
    return 0


def _steer_study(args: argparse.Namespace) -> int:
    import json

    from ..activations.pipeline import DEFAULT_DATA, default_data_path
    from ..core.locking import claim_dir
    from ..core.utils import write_output_file
    from ..data import read_records
    from ..interp.judges import make_judge
    from ..models import load_model
    from ..sae import load_sae
    from ..steer.report import load_prompts
    from ..workflows import steering_judged as J

    cfg = configs_from_args(args)
    opts: SteerStudyConfig = cfg["steer_study"]
    data = str(default_data_path()) if opts.selection_data == DEFAULT_DATA else opts.selection_data
    check_outputs(opts.out, "steer-study", opts.overwrite, (*args.sae_dirs, opts.prompts), "study")
    questions = [m[-1]["content"] for m in load_prompts(opts.prompts, limit=opts.n_prompts)]
    saes = {}
    for d in args.sae_dirs:
        p = Path(d)
        saes[p.parent.name if p.name == "sae" else p.name] = load_sae(d, hook=cfg["model"].hook).eval()
    sae, model, tokenizer, name = _load(args.sae_dirs[0], cfg["model"])
    jc = cfg["judge"]
    if jc.judge == "local":
        same = (
            jc.judge_model == name and jc.judge_device == cfg["model"].device and jc.judge_dtype == cfg["model"].dtype
        )
        jm, jt = (
            (model, tokenizer) if same else load_model(jc.judge_model, dtype=jc.judge_dtype, device=jc.judge_device)
        )
        pair_judge, judge_name = J.logprob_pair_judge(jm, jt, opts.batch_size), f"local:{jc.judge_model} (logprobs)"
    else:
        judge = make_judge(jc, Path(opts.out) / "judge_cache")
        pair_judge, judge_name = J.text_pair_judge(judge), f"{judge.name} (answer text)"
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    result = J.run_study(
        model, tokenizer, saes, questions, read_records(data), pair_judge, opts.ratios, opts.n_null, opts.null,
        opts.token, opts.selection_samples, opts.max_new_tokens, opts.batch_size, opts.seed, log,
    )  # fmt: skip
    result = {"settings": {"sae_dirs": args.sae_dirs, "model": name, **vars(opts), "selection_data": data},
              "judge": judge_name, **result}  # fmt: skip
    out = claim_dir(opts.out, "steer-study", opts.overwrite, "--out")
    write_output_file(out / "study.json", json.dumps(result, indent=1, ensure_ascii=False), "--out")
    write_output_file(out / "study.md", J.study_markdown(result), "--out")
    print(J.study_markdown(result))
    return 0


def register(sub: Any) -> None:
    """Add ``special-tokens``, ``steer`` and ``steer-study``."""
    sae_help = "directory of a saved SAE (cfg.json + sae_weights.safetensors)"
    configs = {"special_tokens": SpecialTokensConfig, "model": ModelConfig}
    p = add_command(
        sub,
        "special-tokens",
        "Rank SAE latents by average max activation on each chat-template token.",
        _special_tokens,
        configs=configs,
    )
    p.add_argument("sae_dir", metavar="SAE_DIR", help=sae_help)
    p = add_command(
        sub,
        "steer",
        "Generate chat answers under SAE-latent steering for several alphas, with measures.",
        _steer,
        configs={"steer": SteerConfig, "model": ModelConfig},
    )
    p.add_argument("sae_dir", metavar="SAE_DIR", help=sae_help)
    for action in p._actions:
        if action.dest == "latent":
            action.__class__ = _Extend
    from ..interp.judges import JudgeConfig

    p = add_command(
        sub,
        "steer-study",
        "Judge special-token steering pairwise (steered vs unsteered) against random directions, over several SAEs.",
        _steer_study,
        configs={"steer_study": SteerStudyConfig, "judge": JudgeConfig, "model": ModelConfig},
    )
    p.add_argument("sae_dirs", metavar="SAE_DIR", nargs="+", help=sae_help + "; several: one result per SAE")
