"""The SAE trainer: Adam, schedules, decoder-norm constraint, dead-latent tracking, JSONL log, atomic checkpoints
and exact resume.

Rank-aware: only rank 0 (env ``RANK``) writes logs, checkpoints and the final SAE; data sharding by rank belongs to
the activation source.
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from ..activations.source import ActivationBatch, ActivationSource
from ..progress import Progress
from ..sae import SAE, save_sae
from ..utils import atomic_dir
from .config import DEFAULT_BETA1, DEFAULT_SPARSITY_COEF, TrainConfig
from .init import geometric_median, input_scale
from .schedule import lr_at, sparsity_coef_at, steps_from

FIRE_THRESHOLD = 1e-8


class StepMetrics(NamedTuple):
    """Metrics of one optimizer step (normalised units when normalisation is on)."""

    loss: float
    mse: float
    fvu: float
    l0: float
    sparsity: float
    aux: float
    dead_frac: float


class TrainResult(NamedTuple):
    sae_dir: Path | None
    """Where the final (scale-folded) SAE was written; None on ranks other than 0."""
    summary: dict[str, Any]
    """Final metrics (averaged over the last log window) and run facts."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class Trainer:
    """Train ``sae`` on ``source`` according to ``cfg``, writing everything under ``out_dir``.

    ``out_dir/metrics.jsonl`` (one JSON object per ``log_every`` steps), ``out_dir/checkpoints/step_N/`` and the
    final ``out_dir/sae/`` (SAELens format, normalisation folded in, ``run_config`` saved beside it as config.json).
    """

    def __init__(
        self,
        sae: SAE,
        cfg: TrainConfig,
        source: ActivationSource,
        out_dir: str | Path,
        run_config: dict[str, Any] | None = None,
    ) -> None:
        if source.d_in != sae.cfg.d_in:
            raise ValueError(f"activation width {source.d_in} does not match the SAE's d_in {sae.cfg.d_in}")
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        self.sae = sae.to(self.device)
        self.source = source
        self.out_dir = Path(out_dir)
        self.run_config = run_config or {}
        self.rank = int(os.environ.get("RANK", "0"))
        self.is_main = self.rank == 0
        self.total_steps = cfg.total_steps
        self.lr_warmup = steps_from(cfg.lr_warmup_steps, self.total_steps)
        self.coef_warmup = steps_from(cfg.sparsity_warmup_steps, self.total_steps)
        coef = cfg.sparsity_coef
        self.sparsity_coef = DEFAULT_SPARSITY_COEF[sae.cfg.architecture] if coef is None else coef
        self.lr_end = cfg.lr / 10 if cfg.lr_end is None else cfg.lr_end
        self.beta1 = DEFAULT_BETA1[sae.cfg.architecture] if cfg.beta1 is None else cfg.beta1
        self.optimizer = torch.optim.Adam(
            self.sae.parameters(), lr=cfg.lr, betas=(self.beta1, cfg.beta2), eps=cfg.adam_eps
        )
        d_sae = sae.cfg.d_sae
        self.step = 0
        self.tokens = 0
        self.scale = 1.0
        self.since_fired = torch.zeros(d_sae, dtype=torch.long, device=self.device)
        self.fire_counts = torch.zeros(d_sae, dtype=torch.long, device=self.device)
        self.window: list[StepMetrics] = []  # metrics of the steps since the last log line
        self.last_window: list[StepMetrics] = []

    # ---- paths -----------------------------------------------------------------------------------------------
    @property
    def checkpoint_dir(self) -> Path:
        return self.out_dir / "checkpoints"

    @property
    def metrics_path(self) -> Path:
        return self.out_dir / "metrics.jsonl"

    def latest_checkpoint(self) -> Path | None:
        if not self.checkpoint_dir.is_dir():
            return None
        ckpts = sorted(p for p in self.checkpoint_dir.glob("step_*") if (p / "state.pt").is_file())
        return ckpts[-1] if ckpts else None

    # ---- initialisation --------------------------------------------------------------------------------------
    @torch.no_grad()
    def initialise(self) -> None:
        """Estimate the input scale and b_dec from the first ``init_sample_tokens`` of the stream, then rewind."""
        torch.manual_seed(self.cfg.seed)
        start = copy.deepcopy(self.source.state_dict())
        chunks, n = [], 0
        for batch in self.source:
            chunks.append(batch.acts.float())
            n += batch.acts.shape[0]
            if n >= self.cfg.init_sample_tokens:
                break
        self.source.load_state_dict(start)
        sample = torch.cat(chunks)[: self.cfg.init_sample_tokens]
        self.scale = input_scale(sample) if self.cfg.normalize_activations else 1.0
        sample = sample / self.scale
        if self.cfg.b_dec_init == "geometric_median":
            self.sae.b_dec.copy_(geometric_median(sample).to(self.device))
        elif self.cfg.b_dec_init == "mean":
            self.sae.b_dec.copy_(sample.mean(dim=0).to(self.device))

    # ---- one step --------------------------------------------------------------------------------------------
    def train_step(self, batch: ActivationBatch) -> StepMetrics:
        x = batch.acts.to(self.device, torch.float32, non_blocking=True) / self.scale
        lr = lr_at(
            self.step, self.total_steps, self.cfg.lr, self.lr_end, self.lr_warmup,
            self.cfg.lr_warmup_start_factor, self.cfg.lr_decay,
        )  # fmt: skip
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        coef = sparsity_coef_at(self.step, self.sparsity_coef, self.coef_warmup)
        dead = self.dead_mask()
        with self._autocast():
            out = self.sae.loss(x, coef, dead)
        self.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        self.sae.remove_parallel_decoder_grad()
        if self.cfg.grad_clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.sae.parameters(), self.cfg.grad_clip_norm)
        self.optimizer.step()
        self.sae.normalize_decoder()
        if hasattr(self.sae, "clamp_threshold"):
            self.sae.clamp_threshold()

        with torch.no_grad():
            f = out.feature_acts.float()
            fired = f > FIRE_THRESHOLD
            self.fire_counts += fired.sum(dim=0)
            any_fired = fired.any(dim=0)
            self.since_fired += x.shape[0]
            self.since_fired[any_fired] = 0
            self.step += 1
            self.tokens += x.shape[0]
            resid = (x - out.x_hat.float()).pow(2).sum()
            total = (x - x.mean(dim=0)).pow(2).sum().clamp_min(1e-12)
            return StepMetrics(
                loss=out.loss.item(),
                mse=out.mse.item(),
                fvu=(resid / total).item(),
                l0=fired.sum(dim=-1).float().mean().item(),
                sparsity=out.sparsity.item(),
                aux=out.aux.item(),
                dead_frac=self.dead_mask().float().mean().item(),
            )

    def dead_mask(self) -> Tensor:
        """``[d_sae]`` bool: not fired in the last ``min(dead_window_tokens, tokens seen)`` tokens."""
        if self.tokens == 0:
            return torch.zeros_like(self.since_fired, dtype=torch.bool)
        return self.since_fired >= min(self.cfg.dead_window_tokens, self.tokens)

    def _autocast(self) -> Any:
        if self.cfg.autocast == "none" or self.device.type != "cuda":
            return torch.autocast(self.device.type, enabled=False)
        dtype = torch.bfloat16 if self.cfg.autocast == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    # ---- the loop --------------------------------------------------------------------------------------------
    def fit(self, resume: bool = False, stop_after_steps: int | None = None) -> TrainResult:
        """Train to ``total_tokens``. ``resume`` continues from the latest checkpoint in ``out_dir`` (bit-for-bit);
        ``stop_after_steps`` stops early without saving the final SAE (used to test interruption)."""
        ckpt = self.latest_checkpoint() if resume else None
        if ckpt is not None:
            self.load_checkpoint(ckpt)
        else:
            if resume and self.is_main:
                print(f"no checkpoint in {self.checkpoint_dir}; starting from scratch")
            self.initialise()
            if self.is_main:
                self.out_dir.mkdir(parents=True, exist_ok=True)
                self.metrics_path.write_text("")
        t0, tokens0 = time.perf_counter(), self.tokens
        stream: Iterator[ActivationBatch] = iter(self.source)
        with Progress(self.total_steps, "train", enabled=self.cfg.progress and self.is_main) as bar:
            bar.advance(self.step)
            while self.step < self.total_steps:
                m = self.train_step(next(stream))
                if not all(math.isfinite(v) for v in m):
                    raise RuntimeError(f"non-finite loss/metrics at step {self.step}: {m}; lower --lr or check inputs")
                self.window.append(m)
                self.last_window = self.window
                tok_s = (self.tokens - tokens0) / max(time.perf_counter() - t0, 1e-9)
                bar.advance(1, **self._bar_fields(m, tok_s))
                if self.step % self.cfg.log_every == 0 or self.step == self.total_steps:
                    self._log(self.window, tok_s)
                    self.window = []
                if self.cfg.checkpoint_every and self.step % self.cfg.checkpoint_every == 0:
                    self.save_checkpoint()
                if stop_after_steps is not None and self.step >= stop_after_steps:
                    return TrainResult(None, {"stopped_at_step": self.step})
        tok_s = (self.tokens - tokens0) / max(time.perf_counter() - t0, 1e-9)
        summary = self._summary(self.window or self.last_window, tok_s)
        sae_dir = self.save_final(summary) if self.is_main else None
        return TrainResult(sae_dir, summary)

    @staticmethod
    def _bar_fields(m: StepMetrics, tok_s: float) -> dict[str, str]:
        return {
            "tok/s": f"{tok_s:,.0f}", "loss": f"{m.loss:.4f}", "mse": f"{m.mse:.4f}",
            "fvu": f"{m.fvu:.3f}", "L0": f"{m.l0:.1f}", "dead": f"{100 * m.dead_frac:.1f}%",
        }  # fmt: skip

    def _mean(self, window: list[StepMetrics]) -> dict[str, float]:
        return {k: sum(getattr(m, k) for m in window) / len(window) for k in StepMetrics._fields}

    def _log(self, window: list[StepMetrics], tok_s: float) -> None:
        if not self.is_main:
            return
        row = {"step": self.step, "tokens": self.tokens, **self._mean(window), "tokens_per_s": tok_s}
        row["lr"] = self.optimizer.param_groups[0]["lr"]
        row["sparsity_coef"] = sparsity_coef_at(self.step, self.sparsity_coef, self.coef_warmup)
        with open(self.metrics_path, "a") as fh:
            fh.write(json.dumps(row) + "\n")

    def _summary(self, window: list[StepMetrics], tok_s: float) -> dict[str, Any]:
        means = self._mean(window) if window else {}
        return {
            "steps": self.step, "tokens": self.tokens, "input_scale": self.scale, "sparsity_coef": self.sparsity_coef,
            "beta1": self.beta1, "tokens_per_s": tok_s, **{f"train_{k}": v for k, v in means.items()},
        }  # fmt: skip

    def log10_firing_frequency(self) -> Tensor:
        """``[d_sae]`` log10 of each latent's firing frequency over the run (SAELens ``sparsity``)."""
        return (self.fire_counts.double() / max(self.tokens, 1)).clamp_min(1e-10).log10().float().cpu()

    def folded_sae(self) -> SAE:
        """A copy of the SAE that takes raw activations (input scale folded into the weights)."""
        sae = copy.deepcopy(self.sae).cpu()
        sae.fold_input_scale(self.scale)
        return sae

    def save_final(self, summary: dict[str, Any]) -> Path:
        sae = self.folded_sae()
        sae.cfg.metadata = {
            **sae.cfg.metadata,
            "input_scale_folded": self.scale,
            "trained_tokens": self.tokens,
        }
        extra = {"config.json": self.run_config, "training_summary.json": summary}
        return save_sae(sae, self.out_dir / "sae", sparsity=self.log10_firing_frequency(), extra=extra)

    # ---- checkpoints -----------------------------------------------------------------------------------------
    def save_checkpoint(self) -> Path | None:
        if not self.is_main:
            return None
        path = self.checkpoint_dir / f"step_{self.step:010d}"
        with atomic_dir(path) as tmp:
            save_file({k: v.detach().cpu().contiguous() for k, v in self.sae.state_dict().items()},
                      str(tmp / "sae.safetensors"))  # fmt: skip
            torch.save(self.optimizer.state_dict(), tmp / "optimizer.pt")
            state = {
                "step": self.step, "tokens": self.tokens, "scale": self.scale,
                "since_fired": self.since_fired.cpu(), "fire_counts": self.fire_counts.cpu(),
                "torch_rng": torch.get_rng_state(), "source": self.source.state_dict(),
                "window": [list(m) for m in self.window],
            }  # fmt: skip
            torch.save(state, tmp / "state.pt")
            (tmp / "sae_config.json").write_text(json.dumps(self.sae.cfg.to_dict(), indent=2))
        for old in sorted(self.checkpoint_dir.glob("step_*"))[: -max(self.cfg.keep_checkpoints, 1)]:
            shutil.rmtree(old, ignore_errors=True)
        return path

    def load_checkpoint(self, path: Path) -> None:
        try:
            self.sae.load_state_dict(load_file(str(path / "sae.safetensors"), device=str(self.device)))
            self.optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
            state = torch.load(path / "state.pt", weights_only=True)
        except (OSError, RuntimeError, KeyError) as e:
            raise RuntimeError(f"{path}: cannot resume from this checkpoint ({e})") from e
        self.step, self.tokens, self.scale = int(state["step"]), int(state["tokens"]), float(state["scale"])
        self.since_fired = state["since_fired"].to(self.device)
        self.fire_counts = state["fire_counts"].to(self.device)
        torch.set_rng_state(state["torch_rng"])
        self.window = [StepMetrics(*m) for m in state.get("window", [])]
        self.source.load_state_dict(state["source"])
        if self.is_main and self.metrics_path.is_file():  # drop log lines written after the checkpoint
            rows = [r for r in self.metrics_path.read_text().splitlines() if r.strip()]
            kept = [r for r in rows if json.loads(r)["step"] <= self.step]
            self.metrics_path.write_text("".join(r + "\n" for r in kept))
        if self.is_main:
            print(f"resumed from {path} at step {self.step} ({self.tokens:,} tokens)")

