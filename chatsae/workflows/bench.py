"""``chatsae bench``: SAEBench-style sparse probing and first-letter absorption of a saved SAE, offline on CPU.

Reads the tasks' files, harvests activations at the SAE's hook (chatsae.workflows.bench_data), fits the probes
(chatsae.eval.probing) and the absorption evaluation (chatsae.eval.absorption), and writes into ``out_dir``:
``bench.json`` (everything, chatsae's layout), ``saebench_sparse_probing.json`` and
``saebench_absorption_first_letter.json`` (SAEBench's result layout) and ``report.txt`` (the printed table).
"""

from __future__ import annotations

import dataclasses
import json
import random
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..core.config import validate
from ..core.devices import resolve_device
from ..core.locking import DirLock, check_claim, claim_dir
from ..core.ownership import check_replace
from ..core.utils import atomic_file
from ..eval.absorption import PROMPT_TEMPLATE, AbsorptionConfig, absorption_eval, alpha_tokens, first_letter_prompts
from ..eval.probing import probe_task
from ..models import HookPoint, load_model
from ..models.hooks import capture, check_sae_width
from ..sae import load_sae
from ..sae.io import saelens_cfg
from .bench_data import BenchTask, Harvester, harvest_text_task, harvest_token_tasks
from .bench_report import format_table, sae_label, saebench_absorption, saebench_sparse_probing


@dataclass
class BenchConfig:
    """What ``chatsae bench`` measures and on how much data."""

    model: str | None = None
    """Model: 'embedded', a hub id, a local directory or a .gguf file. None = the SAE's metadata model_name."""
    hook: str | None = None
    """Hook point, e.g. resid_post.15. None = the SAE's metadata hook_name."""
    per_class: int = 200
    """Text-level tasks: texts per class at most (reservoir-sampled from each file); 80/20 train/test."""
    context_length: int = 128
    """Text-level tasks: tokens per text (SAEBench: 128)."""
    chunks_per_text: int = 4
    """genre: windows of context_length tokens taken from each document."""
    records: int = 200
    """Token-level tasks: chat records read at most (reservoir-sampled)."""
    tokens_per_class: int = 1000
    """Token-level tasks: token vectors kept per class (reservoir), train and test together."""
    max_length: int = 1024
    """Token-level tasks: FAST sequences cut at this many tokens."""
    test_fraction: float = 0.2
    """Share of records (documents) held out for testing the probes."""
    ks: list[int] = field(default_factory=lambda: [1, 2, 5, 10, 20])
    """k of the k-sparse probes."""
    probe_c: float = 1.0
    """Inverse L2 strength of every logistic probe (sklearn's C; SAEBench uses the default 1.0)."""
    dense_sae_probe: bool = True
    """Also fit a probe on all SAE latents (SAEBench's sae_test_accuracy)."""
    absorption: bool = True
    """Run the first-letter absorption evaluation."""
    absorption_words: int = 1000
    """Vocabulary words (single tokens) sampled for absorption; 80/20 train/test (SAEBench: the whole vocabulary)."""
    absorption_icl: int = 10
    """In-context examples per absorption prompt (SAEBench: 10)."""
    absorption_template: str = PROMPT_TEMPLATE
    """Absorption prompt template with {word} (SAEBench's)."""
    absorption_min_letters: int = 20
    """Report absorption only when at least this many letters have probe F1 > 0.6 (SAEBench: 20)."""
    absorption_max_k: int = 10
    """Largest k of the k-sparse probes that find each letter's main latents (SAEBench: 10)."""
    batch_tokens: int = 4096
    """Padded tokens per model forward."""
    max_batch_size: int = 64
    """Sequences per model forward at most."""
    seed: int = 42
    """Seed of every sample and split."""
    device: str = "auto"
    """Device: auto | cpu | cuda | cuda:N | mps."""
    dtype: str = "float32"
    """Model dtype: float32 | bfloat16 | float16."""
    out_dir: str | None = None
    """Output directory. None = runs/bench/<SAE name> (the SAE directory's name; RUN_sae for a chatsae train run's
    RUN/sae)."""
    overwrite: bool = False
    """Write into a non-empty directory chatsae did not make."""

    def __post_init__(self) -> None:
        validate(
            self,
            positive=(
                "per_class",
                "context_length",
                "chunks_per_text",
                "records",
                "tokens_per_class",
                "max_length",
                "probe_c",
                "absorption_words",
                "absorption_icl",
                "absorption_min_letters",
                "absorption_max_k",
                "batch_tokens",
                "max_batch_size",
            ),
            ranges={"test_fraction": "(0,1)"},
            dtypes=("dtype",),
            devices=("device",),
            seeds=("seed",),
            paths=("out_dir",),
        )
        if not self.ks or any(k < 1 for k in self.ks):
            raise ValueError(f"--ks must be positive integers, got {self.ks}")


def default_out_dir(sae_dir: str | Path) -> Path:
    """Where ``chatsae bench`` writes without ``--out-dir``: ``runs/bench/<SAE name>``."""
    return Path("runs") / "bench" / sae_label(sae_dir)


BENCH_FILES = ("bench.json", "saebench_sparse_probing.json", "saebench_absorption_first_letter.json", "report.txt")
"""The files ``chatsae bench`` writes into ``--out-dir``."""


def check_output(out: Path, inputs: list[Path], overwrite: bool = False) -> None:
    """Before anything loads (:mod:`chatsae.core.ownership`): refuse an output directory that is, or lies inside, an
    input or an SAE/cache/features/run/checkpoint directory of chatsae, a user's non-empty directory unless
    ``overwrite``, and a user's file of one of :data:`BENCH_FILES` in it always."""
    check_claim(out, "bench", overwrite, "--out-dir", inputs=tuple(inputs))
    for name in BENCH_FILES:
        check_replace(out / name, "--out-dir")


def _absorption(h: Harvester, cfg: BenchConfig, rng: random.Random) -> tuple[dict[str, Any], dict[str, Any]]:
    """(chatsae's absorption result, setup) on ``absorption_words`` sampled vocabulary tokens."""
    vocab = alpha_tokens(h.tokenizer)
    words = rng.sample(vocab, min(cfg.absorption_words, len(vocab)))
    n_train = int(len(words) * 0.8)  # SAEBench's train_test_fraction
    acts, letters = {}, {}
    position = 0
    for split, part in (("train", words[:n_train]), ("test", words[n_train:])):
        prompts = first_letter_prompts(part, part, h.tokenizer, rng, cfg.absorption_template, cfg.absorption_icl)
        position = prompts.position
        rows = []
        for i in range(0, len(prompts.ids), cfg.max_batch_size):
            ids = prompts.ids[i : i + cfg.max_batch_size].to(next(h.model.parameters()).device)
            rows.append(capture(h.model, h.hook, ids, torch.ones_like(ids))[:, position].float().cpu())
        acts[split], letters[split] = torch.cat(rows), prompts.letters
    _say(f"absorption: {len(words)} words of {len(vocab)} harvested; fitting probes")
    acfg = AbsorptionConfig(min_letters=cfg.absorption_min_letters, max_k=cfg.absorption_max_k, probe_c=cfg.probe_c)
    res = absorption_eval(acts["train"], letters["train"], acts["test"], letters["test"], h.sae, acfg)
    setup = {
        "vocabulary_words": len(vocab),
        "words": len(words),
        "train_words": n_train,
        "test_words": len(words) - n_train,
        "prompt_length": int(prompts.ids.shape[1]),
        "word_position": position,
        "config": dataclasses.asdict(acfg),
    }
    out = {
        "metrics": res.metrics,
        "reason": res.reason,
        "evaluated_letters": res.evaluated,
        "letters": [r.as_dict() for r in res.letters],
    }
    return out, setup


def _say(text: str) -> None:
    print(f"chatsae bench: {text}", file=sys.stderr, flush=True)


def run_bench(sae_dir: str | Path, tasks: list[BenchTask], cfg: BenchConfig) -> dict[str, Any]:
    """Run the suite; writes the outputs (see module docstring) and returns chatsae's result dictionary."""
    sae_dir = Path(sae_dir)
    out = Path(cfg.out_dir) if cfg.out_dir else default_out_dir(sae_dir)
    inputs = [sae_dir] + [Path(f) for t in tasks for f in t.files]
    if cfg.model and Path(cfg.model).exists():
        inputs.append(Path(cfg.model))
    check_output(out, inputs, cfg.overwrite)
    sae = load_sae(sae_dir)
    meta = sae.cfg.metadata or {}
    hook_name = cfg.hook or meta.get("hook_name")
    if not hook_name:
        raise ValueError(f"{sae_dir}: the SAE's metadata has no hook_name; pass --hook (e.g. resid_post.15)")
    model_name = cfg.model or meta.get("model_name") or "embedded"
    claim_dir(out, "bench", cfg.overwrite, "--out-dir")
    with DirLock(out, "chatsae bench"):
        t0 = time.perf_counter()
        device = resolve_device(cfg.device)
        model, tokenizer = load_model(model_name, dtype=cfg.dtype, device=str(device))
        hook = HookPoint.parse(hook_name)
        check_sae_width(sae.cfg.d_in, model, hook)
        sae = sae.to(device)
        h = Harvester(model, tokenizer, hook, sae, cfg.batch_tokens, cfg.max_batch_size)
        rng = random.Random(cfg.seed)
        timings: dict[str, float] = {"load": time.perf_counter() - t0}
        task_results: dict[str, Any] = {}
        datasets = []
        text_tasks = [t for t in tasks if t.kind == "text"]
        by_file: dict[str, list[BenchTask]] = {}
        for t in tasks:
            if t.kind == "token":
                by_file.setdefault(t.files[0], []).append(t)
        with torch.no_grad():
            for spec in text_tasks:
                t1 = time.perf_counter()
                datasets.append((spec, harvest_text_task(spec, h, cfg, rng)))
                timings[f"harvest_{spec.name}"] = time.perf_counter() - t1
                _say(f"{spec.name}: harvested {datasets[-1][1].counts()} in {timings[f'harvest_{spec.name}']:.0f}s")
            for specs in by_file.values():
                t1 = time.perf_counter()
                datasets.extend(zip(specs, harvest_token_tasks(specs, h, cfg, rng), strict=True))
                timings["harvest_" + "+".join(s.name for s in specs)] = time.perf_counter() - t1
                _say(f"{'+'.join(s.name for s in specs)}: harvested in {time.perf_counter() - t1:.0f}s")
        for spec, data in datasets:
            t1 = time.perf_counter()
            res = probe_task(data.raw, data.latents, cfg.ks, cfg.probe_c, cfg.seed, cfg.dense_sae_probe)
            res["classes"] = {
                cls: {k: s.as_dict() for k, s in scores.items()} for cls, scores in res["classes"].items()
            }
            res["counts"] = data.counts()
            res["files"] = spec.files
            res["kind"] = data.kind
            task_results[spec.name] = res
            timings[f"probe_{spec.name}"] = time.perf_counter() - t1
            _say(f"{spec.name}: probes fitted in {timings[f'probe_{spec.name}']:.0f}s")
        absorption = absorption_setup = None
        if cfg.absorption:
            t1 = time.perf_counter()
            with torch.no_grad():
                absorption, absorption_setup = _absorption(h, cfg, rng)
            timings["absorption"] = time.perf_counter() - t1
        timings["total"] = time.perf_counter() - t0
        result = {
            "sae": str(sae_dir),
            "model": model_name,
            "hook": str(hook),
            "config": dataclasses.asdict(cfg),
            "tasks": task_results,
            "absorption": absorption,
            "absorption_setup": absorption_setup,
            "seconds": {k: round(v, 2) for k, v in timings.items()},
        }
        _write(out, result, sae, cfg, model_name)
    return result


def _write(out: Path, result: dict[str, Any], sae: Any, cfg: BenchConfig, model_name: str) -> None:
    name = sae_label(result["sae"])
    now = int(time.time() * 1000)
    sae_cfg = saelens_cfg(sae)
    docs: dict[str, Any] = {"bench.json": result}
    if result["tasks"]:
        docs["saebench_sparse_probing.json"] = saebench_sparse_probing(
            result, cfg, model_name, name, sae_cfg, str(uuid.uuid4()), now
        )
    absorption = saebench_absorption(result, cfg, model_name, name, sae_cfg, str(uuid.uuid4()), now)
    if absorption is not None:
        docs["saebench_absorption_first_letter.json"] = absorption
    for file, doc in docs.items():
        check_replace(out / file, "--out-dir")
        with atomic_file(out / file, "w") as fh:
            json.dump(doc, fh, indent=2, default=str)
            fh.write("\n")
    check_replace(out / "report.txt", "--out-dir")
    with atomic_file(out / "report.txt", "w") as fh:
        fh.write(format_table(result) + "\n")
