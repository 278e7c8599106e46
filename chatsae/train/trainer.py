"""The SAE trainer: Adam, schedules, decoder-norm constraint, dead-latent tracking, JSONL log, atomic checkpoints
and exact resume.

Data-parallel under torchrun (:mod:`chatsae.train.distributed`): every rank reads the same global stream and steps
on its slice of each batch, gradients and step statistics are reduced over the ranks, rank 0 alone writes logs,
checkpoints (holding every rank's data-stream state) and the final SAE. In one process all of that is a no-op.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor

from ..activations.source import ActivationBatch, ActivationSource
from ..activations.streaming import Prefetcher
from ..core import distributed as pg
from ..core.config import to_dict
from ..core.constants import CHECKPOINTS_DIR, METRICS_LOG_FILE
from ..core.devices import resolve_device
from ..core.faults import named_disk_full
from ..core.locking import DirLock, claim_dir
from ..core.ownership import record
from ..core.progress import Progress
from ..sae import SAE
from ..sae.base import FIRE_THRESHOLD
from . import checkpoints as checkpoint_io
from . import distributed, final_outputs
from .checkpoints import check_fresh_run
from .config import DEFAULT_BETA1, DEFAULT_SPARSITY_COEF, TrainConfig
from .init import initialise_from_sample, screen_batch
from .optimizer import adam, autocast_context, grad_scaler
from .schedule import lr_at, sparsity_coef_at, steps_from
from .state import TrainState
from .steplog import StepMetrics, bar_fields, host_rows, mean_metrics
from .tracking import Tracker, parse_backends

FINAL_SAMPLE_TOKENS = 16_384
"""Vectors of the last training batches kept for :attr:`Trainer.final_measures` (measures of the final SAE on the
training data; held only during the last steps)."""

__all__ = ["FINAL_SAMPLE_TOKENS", "TrainResult", "Trainer", "adam"]


class TrainResult(NamedTuple):
    sae_dir: Path | None
    """Where the final (scale-folded) SAE was written; None on ranks other than 0."""
    summary: dict[str, Any]
    """Final metrics (averaged over the last log window) and run facts."""


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
            where = source.where() if callable(getattr(source, "where", None)) else "the activations"  # type: ignore[attr-defined]
            raise ValueError(
                f"{where}: d_in mismatch: the activations have d_in {source.d_in}, the SAE's d_in is {sae.cfg.d_in}"
            )
        self.cfg = cfg
        distributed.check_batch_size(cfg.batch_size)
        self.device = resolve_device(pg.device_name(cfg.device))  # cuda:LOCAL_RANK under torchrun
        self.sae = sae.to(self.device)
        self.source = source
        self.rank_sharded = bool(getattr(source, "rank_sharded", False))
        """Under torchrun the source yields this rank's own rows (else every rank slices the same global batch)."""
        if self.device.type == "cuda" and cfg.prefetch:  # read ahead into pinned memory: overlaps the SAE step
            self.source = Prefetcher(source, cfg.prefetch, pin=True)
        self.out_dir = Path(out_dir)
        self.run_config = run_config or {"train": to_dict(cfg), "sae": sae.cfg.to_dict()}
        """Settings saved beside the SAE (config.json) and in each checkpoint; a resume must match them."""
        self.rank, self.world = pg.rank(), pg.world_size()
        self.is_main = self.rank == 0
        self.total_steps = cfg.total_steps
        self.lr_warmup = steps_from(cfg.lr_warmup_steps, self.total_steps)
        self.coef_warmup = steps_from(cfg.sparsity_warmup_steps, self.total_steps)
        coef = cfg.sparsity_coef
        self.sparsity_coef = DEFAULT_SPARSITY_COEF[sae.cfg.architecture] if coef is None else coef
        self.lr_end = cfg.lr / 10 if cfg.lr_end is None else cfg.lr_end
        self.beta1 = DEFAULT_BETA1[sae.cfg.architecture] if cfg.beta1 is None else cfg.beta1
        self.optimizer = adam(self.sae, lr=cfg.lr, betas=(self.beta1, cfg.beta2), eps=cfg.adam_eps)
        self.scaler = grad_scaler(self.device, cfg.autocast)
        self.loss_fn = torch.compile(self.sae.loss) if cfg.compile else self.sae.loss
        self.state = TrainState.fresh(sae.cfg.d_sae, self.device)
        """Counters, firing history, dead mask, input scale: written only here and by checkpoint loading."""
        self.summary_extra: dict[str, Any] = {}
        """Run facts merged into the summary (e.g. the data counts of :func:`chatsae.workflows.train_run.train_run`)."""
        self.final_measures: Callable[[SAE, list[Tensor]], dict[str, Any]] | None = None
        """Measures of the final SAE on the last :data:`FINAL_SAMPLE_TOKENS` vectors it trained on (batches of inputs
        divided by the input scale, as the SAE trains on them), merged into the summary (rank 0; the robust
        reconstruction measures of :func:`chatsae.workflows.train_run.train_run`). Nothing when a resumed run has
        no step left to train."""
        self.final_batches: list[Tensor] = []
        self.tracker: Any = None  # a tracking.Tracker while fit() runs with --tracking (rank 0)
        self.last_window: list[Tensor] = []

    # ---- read-only views of the state ----------------------------------------------------------------------
    @property
    def step(self) -> int:
        return self.state.step

    @property
    def tokens(self) -> int:
        return self.state.tokens

    @property
    def scale(self) -> float:
        return self.state.scale

    @property
    def input_limit(self) -> float:
        return self.state.input_limit

    @property
    def outliers_dropped(self) -> int:
        return self.state.outliers_dropped

    @property
    def since_fired(self) -> Tensor:
        return self.state.since_fired

    @property
    def fire_counts(self) -> Tensor:
        return self.state.fire_counts

    # ---- paths -----------------------------------------------------------------------------------------------
    @property
    def checkpoint_dir(self) -> Path:
        return self.out_dir / CHECKPOINTS_DIR

    @property
    def metrics_path(self) -> Path:
        return self.out_dir / METRICS_LOG_FILE

    def checkpoints(self) -> list[Path]:
        """Complete checkpoints, oldest first."""
        return checkpoint_io.list_checkpoints(self.checkpoint_dir)

    def latest_checkpoint(self) -> Path | None:
        ckpts = self.checkpoints()
        return ckpts[-1] if ckpts else None

    def resume_from_checkpoint(self) -> Path | None:
        """Load the latest intact checkpoint (a damaged one is skipped with a warning, falling back to the one before);
        None if there is none. Refuses (ValueError naming each option) a checkpoint of a run with other settings."""

        def load(path: Path) -> None:
            self.check_run_config(path)
            self.load_checkpoint(path)

        return checkpoint_io.resume_latest(self.checkpoint_dir, load)

    def check_run_config(self, path: Path) -> None:
        """ValueError if checkpoint ``path`` was written by a run with other settings (each differing option named)."""
        checkpoint_io.check_run_config(path, self._run_config_json())

    def _run_config_json(self) -> dict[str, Any]:
        return json.loads(json.dumps(self.run_config, default=str))

    # ---- initialisation --------------------------------------------------------------------------------------
    def initialise(self) -> None:
        """Estimate the input scale and b_dec from the first ``init_sample_tokens`` of the stream, then rewind
        (:func:`chatsae.train.init.initialise_from_sample`)."""
        self.state.scale, self.state.input_limit = initialise_from_sample(self.sae, self.source, self.cfg)

    # ---- input checks ----------------------------------------------------------------------------------------
    def screen(self, batch: ActivationBatch) -> Tensor:
        """The raw vectors of ``batch`` to train on: absurd ones dropped, NaN/Inf a :class:`BadInputError`
        (:func:`chatsae.train.init.screen_batch`)."""
        acts, dropped = screen_batch(batch, self.state, self.source, self.cfg.init_sample_tokens)
        self.state.outliers_dropped += dropped
        return acts

    # ---- one step --------------------------------------------------------------------------------------------
    def train_step(self, batch: ActivationBatch) -> Tensor:
        """One optimizer step; returns the step's :class:`StepMetrics` as a ``[7]`` tensor on the device (read
        by the host only once per ``log_every`` steps)."""
        if not self.rank_sharded:  # a global batch: this rank's slice
            batch = distributed.rank_batch(batch)
        x = self.screen(batch).to(self.device, non_blocking=True).float() / self.scale
        if self.final_measures is not None and self.is_main:
            last = math.ceil(FINAL_SAMPLE_TOKENS / max(x.shape[0], 1))  # steps whose batches the measures use
            if self.total_steps - self.step <= last:
                self.final_batches.append(x.detach())
        lr = lr_at(
            self.step,
            self.total_steps,
            self.cfg.lr,
            self.lr_end,
            self.lr_warmup,
            self.cfg.lr_warmup_start_factor,
            self.cfg.lr_decay,
        )
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        coef = sparsity_coef_at(self.step, self.sparsity_coef, self.coef_warmup)
        with autocast_context(self.device, self.cfg.autocast):
            out = self.loss_fn(x, coef, self.state.dead)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(out.loss).backward()
        distributed.average_gradients(self.sae.parameters(), x.shape[0])  # before unscale_: one inf check for all
        self.scaler.unscale_(self.optimizer)  # no-op unless fp16 autocast on CUDA
        self.sae.remove_parallel_decoder_grad()
        if self.cfg.grad_clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.sae.parameters(), self.cfg.grad_clip_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.sae.normalize_decoder()
        if hasattr(self.sae, "clamp_threshold"):
            self.sae.clamp_threshold()  # type: ignore[operator]  # JumpReLU only (hasattr checked)

        with torch.no_grad():
            f = out.feature_acts.float()
            fired = out.fire_counts  # from the fused kernels, else one float pass (4x faster than a bool sum)
            if fired is None:
                fired = (f > FIRE_THRESHOLD).float().sum(0)
            means = torch.stack([p.detach().float() for p in (out.loss, out.mse, out.sparsity, out.aux)])
            counts, n, fvu, l0, means = distributed.global_batch(x, out.x_hat.float(), fired, means)  # all ranks' rows
            self.state.record_step(counts, n)
            self.state.dead = self.dead_mask()
            loss, mse, sparsity, aux = means
            parts = (loss, mse, fvu, l0, sparsity, aux, self.silent_mask().float().mean())
            return torch.stack([p.detach().float() for p in parts])

    def dead_mask(self) -> Tensor:
        """``[d_sae]`` bool, AuxK's dead latents: not fired in the last ``dead_window_tokens`` tokens (none before a
        full window has passed), or with ``dead_window_cap`` in ``min(dead_window_tokens, tokens seen)``."""
        return self.state.dead_mask(self.cfg.dead_window_tokens, self.cfg.dead_window_cap)

    def silent_mask(self) -> Tensor:
        """``[d_sae]`` bool: not fired in the last ``min(dead_window_tokens, tokens seen)`` tokens (the logged dead
        share; all False before the first step)."""
        return self.state.silent_mask(self.cfg.dead_window_tokens)

    def window_rows(self, window: list[Tensor]) -> list[list[float]]:
        """The window's step metrics on the host (one sync); RuntimeError naming the step of a non-finite value."""
        return host_rows(window, self.step)

    # ---- the loop --------------------------------------------------------------------------------------------
    def fit(self, resume: bool = False, stop_after_steps: int | None = None, overwrite: bool = False) -> TrainResult:
        """Train to ``total_tokens``. ``resume`` continues from the latest intact checkpoint in ``out_dir``
        (bit-for-bit; the run config must match); ``stop_after_steps`` stops early without saving the final SAE
        (used to test interruption). ``out_dir`` is claimed and locked for the run; a fresh run over an earlier one is
        refused unless ``overwrite``."""

        def claim() -> DirLock:
            claim_dir(self.out_dir, "run", overwrite=overwrite)
            return DirLock(self.out_dir, "chatsae training")

        with pg.main_lock(claim), self._tracking():  # rank 0 claims and locks for all ranks
            return self._fit(resume, stop_after_steps, overwrite)

    @contextlib.contextmanager
    def _tracking(self) -> Iterator[None]:
        """``self.tracker`` (TensorBoard / W&B, ``--tracking``) on rank 0 for the block; closed after it."""

        backends = parse_backends(self.cfg.tracking) if self.is_main else []
        self.tracker = (
            Tracker(backends, self.out_dir, self._run_config_json(), self.cfg.wandb_project) if backends else None
        )
        try:
            yield
        finally:
            if self.tracker is not None:
                self.tracker.close()
                self.tracker = None

    def _fit(self, resume: bool, stop_after_steps: int | None, overwrite: bool) -> TrainResult:
        ckpt = self.resume_from_checkpoint() if resume else None
        if len(set(pg.all_gather_objects(str(ckpt)))) > 1:
            raise RuntimeError(
                f"{self.checkpoint_dir}: the ranks resumed from different checkpoints (a file system "
                "not shared by all nodes?)"
            )
        if ckpt is None:
            pg.from_rank0(lambda: check_fresh_run(self.out_dir, overwrite))
            if resume and self.is_main:
                print(f"no checkpoint in {self.checkpoint_dir}; starting from scratch")
            self.initialise()
            pg.broadcast_module(self.sae)  # every rank starts from rank 0's weights and scale
            self.state.scale, self.state.input_limit = pg.broadcast_object((self.scale, self.input_limit))
            if self.is_main:
                self.out_dir.mkdir(parents=True, exist_ok=True)
                self.metrics_path.write_text("")
                record(self.out_dir, METRICS_LOG_FILE, log=True)  # chatsae's log: a later --overwrite may remove it
        t0, tokens0 = time.perf_counter(), self.tokens
        stream: Iterator[ActivationBatch] = iter(self.source)
        with Progress(self.total_steps, "train", enabled=self.cfg.progress and self.is_main) as bar:
            bar.advance(self.step)
            while self.step < self.total_steps:
                self.state.window.append(self.train_step(next(stream)))
                self.last_window = self.state.window
                if self.step % self.cfg.log_every == 0 or self.step == self.total_steps:
                    rows = self.window_rows(self.state.window)  # the one host sync of the window
                    tok_s = (self.tokens - tokens0) / max(time.perf_counter() - t0, 1e-9)
                    self._log(rows, tok_s)
                    bar.advance(1, **bar_fields(StepMetrics(*rows[-1]), tok_s))
                    self.state.window = []
                else:
                    bar.advance(1)
                if self.cfg.checkpoint_every and self.step % self.cfg.checkpoint_every == 0:
                    self.save_checkpoint()
                if stop_after_steps is not None and self.step >= stop_after_steps:
                    return TrainResult(None, {"stopped_at_step": self.step})
        tok_s = (self.tokens - tokens0) / max(time.perf_counter() - t0, 1e-9)
        summary = self._summary(self.window_rows(self.state.window or self.last_window), tok_s)
        sae_dir = self.save_final(summary) if self.is_main else None
        if self.tracker is not None:
            self.tracker.summary(summary)
        return TrainResult(sae_dir, summary)

    def _log(self, rows: list[list[float]], tok_s: float) -> None:
        if not self.is_main:
            return
        row = {"step": self.step, "tokens": self.tokens, **mean_metrics(rows), "tokens_per_s": tok_s}
        row["lr"] = self.optimizer.param_groups[0]["lr"]
        row["sparsity_coef"] = sparsity_coef_at(self.step, self.sparsity_coef, self.coef_warmup)
        line = json.dumps(row) + "\n"
        with named_disk_full(self.metrics_path, len(line)), open(self.metrics_path, "a") as fh:
            fh.write(line)
        if self.tracker is not None:
            self.tracker.log(row, self.step)

    # ---- what the run leaves (:mod:`chatsae.train.final_outputs`) ----------------------------------------------
    def _summary(self, rows: list[list[float]], tok_s: float) -> dict[str, Any]:
        return final_outputs.training_summary(
            rows,
            tok_s,
            steps=self.step,
            tokens=self.tokens,
            scale=self.scale,
            sparsity_coef=self.sparsity_coef,
            beta1=self.beta1,
            outliers_dropped=self.outliers_dropped,
            final=self._final_measures(),
            extra=self.summary_extra,
        )

    def _final_measures(self) -> dict[str, Any]:
        """:attr:`final_measures` of the SAE on the last vectors trained on ({} without it or without them)."""
        batches, self.final_batches = self.final_batches, []
        if self.final_measures is None or not batches:
            return {}
        batches = final_outputs.last_rows(batches, FINAL_SAMPLE_TOKENS)
        with torch.no_grad(), torch.autocast(self.device.type, enabled=False):
            return self.final_measures(self.sae, batches)

    def log10_firing_frequency(self) -> Tensor:
        """``[d_sae]`` log10 of each latent's firing frequency over the run (SAELens ``sparsity``)."""
        return final_outputs.log10_firing_frequency(self.fire_counts, self.tokens)

    def folded_sae(self) -> SAE:
        """A copy of the SAE that takes raw activations (input scale folded into the weights)."""
        return final_outputs.folded_sae(self.sae, self.scale)

    def save_final(self, summary: dict[str, Any]) -> Path:
        return final_outputs.save_final_sae(
            self.sae, self.scale, self.tokens, self.fire_counts, self.out_dir, self.run_config, summary
        )

    # ---- checkpoints (:mod:`chatsae.train.checkpoints`) -----------------------------------------------------
    def save_checkpoint(self) -> Path | None:
        """Write ``checkpoints/step_N/`` (rank 0; returns its path, None on other ranks) and prune old ones."""
        path = self.checkpoint_dir / f"step_{self.step:010d}"
        rows = self.window_rows(self.state.window)
        saved = checkpoint_io.save_checkpoint(path, self.state, self._checkpointed(), rows, self.world)
        if saved is not None:
            checkpoint_io.prune_checkpoints(self.checkpoint_dir, self.cfg.keep_checkpoints)
        return saved

    def _checkpointed(self) -> checkpoint_io.Checkpointed:
        scaler = self.scaler if self.scaler.is_enabled() else None
        return checkpoint_io.Checkpointed(self.sae, self.optimizer, self.source, self._run_config_json(), scaler)

    def load_checkpoint(self, path: Path) -> None:
        """Restore the run's state from checkpoint ``path`` (:class:`CheckpointError` naming an unreadable file)."""
        checkpoint_io.load_checkpoint(path, self.state, self._checkpointed(), self.world)
        self.state.dead = self.dead_mask()
        metrics = self.metrics_path
        if self.is_main and metrics.is_file():  # drop log lines written after the checkpoint
            rows = [r for r in metrics.read_text().splitlines() if r.strip()]
            kept = [r for r in rows if json.loads(r)["step"] <= self.step]
            metrics.write_text("".join(r + "\n" for r in kept))
        if self.is_main:
            print(f"resumed from {path} at step {self.step} ({self.tokens:,} tokens)")
