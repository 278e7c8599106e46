"""Experiment tracking (--tracking): TensorBoard event files and W&B (offline) runs carry the rows of metrics.jsonl.

Each backend's test skips when its optional package is absent (extras chatsae[tensorboard], chatsae[wandb])."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
import torch

from chatsae.activations import TensorSource
from chatsae.core.config import ConfigError
from chatsae.sae import SAEConfig, create_sae
from chatsae.train import TrainConfig, Trainer
from chatsae.train.tracking import parse_backends

pytestmark = pytest.mark.usefixtures("single_thread")


def _fit(out: Path, tracking: str) -> list[dict]:
    cfg = TrainConfig(
        total_tokens=12 * 32,
        batch_size=32,
        log_every=4,
        checkpoint_every=0,
        init_sample_tokens=64,
        progress=False,
        device="cpu",
        seed=1,
        tracking=tracking,
    )
    acts = torch.randn(300, 8, generator=torch.Generator().manual_seed(0))
    Trainer(
        create_sae(SAEConfig(architecture="topk", d_in=8, d_sae=16, k=3), seed=1),
        cfg,
        TensorSource(acts, 32, seed=1),
        out,
    ).fit()
    return [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]


def test_tensorboard_event_file_holds_the_metrics_log(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    rows = _fit(tmp_path / "run", "tensorboard")
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    assert [r["step"] for r in rows] == [4, 8, 12]
    for key in ("loss", "fvu", "l0", "dead_frac", "lr", "tokens", "tokens_per_s"):
        got = events.Scalars(f"train/{key}")
        assert [e.step for e in got] == [r["step"] for r in rows], key
        assert [e.value for e in got] == pytest.approx([r[key] for r in rows], rel=1e-6), key


def test_wandb_offline_run_is_written(tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    _fit(tmp_path / "run", "wandb")
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))


def test_wandb_receives_the_metrics_rows(tmp_path: Path, monkeypatch) -> None:
    """The calls to the wandb API (a stand-in module records them): init with the run config, one log per row of
    metrics.jsonl at its step, the summary, finish."""
    calls: dict[str, list] = {"init": [], "log": [], "summary": [], "finish": []}

    class Run:
        summary = types.SimpleNamespace(update=lambda d: calls["summary"].append(d))

        def log(self, data, step):
            calls["log"].append((step, data))

        def finish(self):
            calls["finish"].append(True)

    fake = types.ModuleType("wandb")
    fake.init = lambda **kw: calls["init"].append(kw) or Run()  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.setattr("chatsae.train.tracking.check_installed", lambda backends: None)
    rows = _fit(tmp_path / "run", "wandb")
    (init,) = calls["init"]
    assert init["project"] == "chatsae" and init["config"]["train"]["tracking"] == "wandb"
    assert [s for s, _ in calls["log"]] == [r["step"] for r in rows]
    for (_, data), row in zip(calls["log"], rows, strict=True):
        assert data["train/fvu"] == pytest.approx(row["fvu"]) and data["train/loss"] == pytest.approx(row["loss"])
    assert calls["summary"][0]["steps"] == 12 and calls["finish"] == [True]


def test_backend_names_are_checked() -> None:
    assert parse_backends("none") == [] and parse_backends("tensorboard, wandb") == ["tensorboard", "wandb"]
    with pytest.raises(ConfigError, match="--tracking: unknown backend 'tb'"):
        TrainConfig(tracking="tb")
