"""Safety of training runs: the out-dir lock (live and stale), foreign directories, a fresh run over an earlier run,
--resume with other settings, and checkpoint integrity (checksums, fallback, garbage files)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from chatsae.activations import SyntheticSource
from chatsae.cli import main
from chatsae.core.config import may_change_on_resume
from chatsae.core.locking import LOCK, MARKER, DirLock, OutputDirError, claim_dir
from chatsae.sae import SAEConfig, create_sae, load_sae
from chatsae.train import TrainConfig, Trainer
from chatsae.train.checkpoints import CheckpointError, config_diffs

pytestmark = pytest.mark.usefixtures("single_thread")

BATCH = 32


def trainer(out: Path, steps: int = 12, **kw) -> Trainer:
    settings = dict(
        total_tokens=steps * BATCH,
        batch_size=BATCH,
        init_sample_tokens=64,
        checkpoint_every=4,
        keep_checkpoints=3,
        log_every=2,
        progress=False,
        device="cpu",
        seed=0,
    )
    cfg = TrainConfig(**{**settings, **kw})
    source = SyntheticSource(d_in=8, n_features=16, batch_size=BATCH, mean_active=2, seed=1)
    return Trainer(create_sae(SAEConfig(d_in=8, d_sae=24), seed=cfg.seed), cfg, source, out)


def steps_of(out: Path) -> list[int]:
    return sorted(int(p.name.split("_")[1]) for p in (out / "checkpoints").glob("step_*"))


def cli(out: Path, *extra: str) -> int:
    return main(
        [
            "train",
            "--activations",
            "synthetic",
            "--d-in",
            "8",
            "--width",
            "24",
            "--total-tokens",
            "256",
            "--batch-size",
            "32",
            "--init-sample-tokens",
            "64",
            "--no-progress",
            "--out-dir",
            str(out),
            "--checkpoint-every",
            "4",
            *extra,
        ]
    )


# ---- lock --------------------------------------------------------------------------------------------------------
def test_second_process_is_refused_while_the_first_runs(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    code = (
        f"import time; from chatsae.core.locking import DirLock, claim_dir\nclaim_dir({str(out)!r}, 'run')\n"
        f"with DirLock({str(out)!r}, 'chatsae train'):\n    print('locked', flush=True)\n    time.sleep(60)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        assert cli(out) == 1
        err = capsys.readouterr().err
        assert f"pid {holder.pid}" in err and "in use" in err and len(err.strip().splitlines()) == 1
        assert not (out / "sae").exists() and not (out / "metrics.jsonl").exists()
    finally:
        holder.kill()
        holder.wait()
    # the holder died without releasing: its lock is stale and the next run takes over
    assert (out / LOCK).is_file()
    assert cli(out) == 0 and (out / "sae" / "cfg.json").is_file() and not (out / LOCK).exists()


def test_lock_is_held_during_training(tmp_path: Path) -> None:
    t = trainer(tmp_path / "run")
    seen = []
    step = t.train_step

    def spy(batch):  # a step sees the lock file with this process's pid
        seen.append(json.loads((tmp_path / "run" / LOCK).read_text())["pid"])
        return step(batch)

    t.train_step = spy  # type: ignore[method-assign]
    t.fit()
    assert seen and set(seen) == {os.getpid()} and not (tmp_path / "run" / LOCK).exists()


# ---- foreign dirs and earlier runs -------------------------------------------------------------------------------
def test_foreign_non_empty_dir_is_refused_unless_overwrite(tmp_path: Path, capsys) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    assert cli(out) == 1
    assert "did not write" in capsys.readouterr().err and not (out / MARKER).exists()
    assert cli(out, "--overwrite") == 0
    assert (out / "thesis.tex").read_text() == "precious" and (out / "sae" / "cfg.json").is_file()


def test_fresh_run_over_earlier_run_is_refused_then_overwritten(tmp_path: Path) -> None:
    out = tmp_path / "run"
    trainer(out, steps=24).fit()
    (out / "notes.txt").write_text("keep me")
    assert steps_of(out) == [16, 20, 24]
    with pytest.raises(OutputDirError, match="--resume.*--overwrite"):
        trainer(out, steps=8).fit()
    assert steps_of(out) == [16, 20, 24]  # nothing was touched
    res = trainer(out, steps=8, lr=1e-3).fit(overwrite=True)
    # the new run's checkpoints survive (the old run's higher step numbers no longer win the pruning)
    assert steps_of(out) == [4, 8] and res.summary["steps"] == 8
    assert [json.loads(r)["step"] for r in (out / "metrics.jsonl").read_text().splitlines()] == [2, 4, 6, 8]
    assert (out / "notes.txt").read_text() == "keep me"
    assert load_sae(out / "sae").cfg.metadata["trained_tokens"] == 8 * BATCH


def test_resume_without_checkpoints_over_a_finished_run_is_refused(tmp_path: Path) -> None:
    trainer(tmp_path, steps=4, checkpoint_every=0).fit()
    with pytest.raises(OutputDirError, match="earlier run"):
        trainer(tmp_path, steps=4, checkpoint_every=0).fit(resume=True)


# ---- resume config -----------------------------------------------------------------------------------------------
def test_resume_with_other_settings_names_each_option(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    assert cli(out, "--lr", "0.003") == 0
    assert (
        cli(out, "--lr", "0.001", "--seed", "7", "--total-tokens", "512", "--arch", "topk", "--k", "3", "--resume") == 1
    )
    err = capsys.readouterr().err
    for part in ("lr: 0.003 -> 0.001", "seed: 42 -> 7", "total_tokens: 256 -> 512", "'jumprelu' -> 'topk'"):
        assert part in err, part
    assert len(err.strip().splitlines()) == 1
    # volatile options may change on resume
    assert cli(out, "--lr", "0.003", "--log-every", "3", "--device", "cpu", "--keep-checkpoints", "5", "--resume") == 0


def test_config_diffs_ignores_volatile_and_compares_nested() -> None:
    from chatsae.workflows.run_spec import RunConfig  # the "run" section: its class marks what may change

    assert "resume" in may_change_on_resume(RunConfig) and "progress" in may_change_on_resume(TrainConfig)
    old = {"train": {"lr": 1.0, "progress": True}, "sae": {"metadata": {"data": "a", "x": 1}}, "run": {"resume": False}}
    new = {
        "train": {"lr": 2.0, "progress": False},
        "sae": {"metadata": {"data": "b", "x": 1}},
        "run": {"resume": True},
        "study": {"k": 3},
    }
    assert config_diffs(old, new) == ["metadata.data: 'a' -> 'b'", "k: None -> 3", "lr: 1.0 -> 2.0"]
    assert config_diffs(old, old) == []


# ---- checkpoint integrity ----------------------------------------------------------------------------------------
def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_damaged_checkpoint_falls_back_to_the_previous_one_exactly(tmp_path: Path, capsys) -> None:
    full = trainer(tmp_path / "full")
    full.fit()
    trainer(tmp_path / "cut").fit(stop_after_steps=10)  # checkpoints at 4 and 8
    _flip_byte(tmp_path / "cut" / "checkpoints" / "step_0000000008" / "sae.safetensors")
    second = trainer(tmp_path / "cut")
    second.fit(resume=True)
    err = capsys.readouterr().err
    assert "step_0000000008/sae.safetensors: damaged" in err and "previous checkpoint" in err
    for name, t in full.sae.state_dict().items():  # resumed from step 4, still bit-identical to the full run
        assert torch.equal(second.sae.state_dict()[name], t), name


def test_all_checkpoints_damaged_is_a_clear_error(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    trainer(out).fit(stop_after_steps=5)  # one checkpoint (step 4)
    _flip_byte(out / "checkpoints" / "step_0000000004" / "optimizer.pt")
    with pytest.raises(CheckpointError, match=r"step_0000000004/optimizer\.pt: damaged"):
        trainer(out).fit(resume=True)


def test_garbage_optimizer_without_checksums_is_one_clear_line(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    assert cli(out, "--total-tokens", "160") == 0  # 5 steps: checkpoint at step 4
    ckpt = out / "checkpoints" / "step_0000000004"
    (ckpt / "checksums.json").unlink()  # as if written before checksums existed
    (ckpt / "optimizer.pt").write_bytes(b"this is not a torch file")
    capsys.readouterr()
    assert cli(out, "--total-tokens", "160", "--resume") == 1
    err = capsys.readouterr().err.strip()
    assert "optimizer.pt: cannot resume from this checkpoint" in err and len(err.splitlines()) == 2  # warn + error
    assert err.splitlines()[-1].startswith("chatsae train: error:")


def test_checksums_cover_every_checkpoint_file(tmp_path: Path) -> None:
    trainer(tmp_path, steps=4).fit()
    ckpt = tmp_path / "checkpoints" / "step_0000000004"
    sums = json.loads((ckpt / "checksums.json").read_text())
    assert set(sums) == {p.name for p in ckpt.iterdir()} - {"checksums.json", MARKER}
    assert sums["state.pt"] == hashlib.blake2b((ckpt / "state.pt").read_bytes(), digest_size=16).hexdigest()
    assert json.loads((ckpt / "run_config.json").read_text())["train"]["total_tokens"] == 4 * BATCH


def test_lock_is_reentrant_in_one_process(tmp_path: Path) -> None:
    claim_dir(tmp_path, "run")
    with DirLock(tmp_path, "outer"):  # as train_run holds it; the trainer re-takes it
        trainer(tmp_path, steps=2, checkpoint_every=0).fit()
        assert (tmp_path / LOCK).is_file()  # still held by the outer lock
    assert not (tmp_path / LOCK).exists()
