"""Faults named as what they are: a full disk (simulated: the write raises ENOSPC, as OSError or as safetensors'
own error) is "disk full while writing FILE (N MiB needed, M MiB free)", the run stays resumable."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from chatsae.cli import main
from chatsae.cli.common import error_message
from chatsae.core.faults import DiskFullError
from chatsae.train import checkpoints

pytestmark = pytest.mark.usefixtures("single_thread")

ARGS = ["train", "--activations", "synthetic", "--d-in", "8", "--width", "24", "--total-tokens", "256"]
ARGS += ["--batch-size", "32", "--init-sample-tokens", "64", "--no-progress", "--checkpoint-every", "4"]


class SafetensorError(Exception):
    """Stands for safetensors_rust.SafetensorError (not an OSError), as save_file raises it on a full disk."""


def full_disk_after(n_ok: int, exc: Exception):
    real = checkpoints.save_file
    calls = []

    def save_file(tensors, filename, *a, **kw):
        calls.append(filename)
        if len(calls) > n_ok:
            raise exc
        return real(tensors, filename, *a, **kw)

    return save_file


@pytest.mark.parametrize(
    "exc",
    [
        OSError(errno.ENOSPC, "No space left on device"),
        SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space" })'),
    ],
)
def test_full_disk_during_a_checkpoint_is_named_and_the_run_resumes(tmp_path: Path, monkeypatch, capsys, exc) -> None:
    out = tmp_path / "run"
    monkeypatch.setattr(checkpoints, "save_file", full_disk_after(1, exc))  # step 4 is written, step 8 fails
    assert main([*ARGS, "--out-dir", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "safetensors file" not in err
    assert f"disk full while writing {out / 'checkpoints' / 'step_0000000008'} (" in err
    assert "MiB needed" in err and "MiB free" in err and "--resume from" in err and "step_0000000004" in err
    monkeypatch.undo()
    assert main([*ARGS, "--out-dir", str(out), "--resume"]) == 0
    assert "resumed from" in capsys.readouterr().out


def test_a_library_full_disk_error_is_named_on_the_command_line() -> None:
    def write(path: str) -> None:
        raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull })")

    with pytest.raises(SafetensorError) as info:
        write("/data/x.safetensors")
    assert error_message(info.value).startswith("disk full while writing /data/x.safetensors (")


def test_gguf_copy_on_a_full_disk_falls_back_to_the_gguf_file(tiny_llama, tmp_path: Path, monkeypatch, capsys) -> None:
    from chatsae.models import gguf_cache

    model, tok = tiny_llama

    def full(*a, **kw):
        raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull })")

    monkeypatch.setattr(gguf_cache, "save_model", full)
    assert gguf_cache.save(model.float(), tok, tmp_path / "copy", tmp_path / "m.gguf") is False
    assert "could not keep a converted copy" in capsys.readouterr().err
    assert not (tmp_path / "copy").exists() and not list(tmp_path.glob(".copy.tmp-*"))


def test_disk_full_error_type() -> None:
    from chatsae.core.faults import disk_full

    e = disk_full("/nowhere/file.bin", 3 * 2**20)
    assert isinstance(e, DiskFullError) and e.errno == errno.ENOSPC
    assert str(e).startswith("disk full while writing /nowhere/file.bin (3.0 MiB needed, ")


def test_commands_failing_on_their_inputs_leave_no_output_directory(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.npy").write_bytes(b"garbage, not an array")
    commands = [
        ["train", "--activations", "missing.pt", "--no-progress"],
        ["train", "--activations", "bad.npy", "--no-progress"],
        ["train", "--activations", "bad.npy", "--no-progress", "--out-dir", "runs/deep/x"],
        ["train", "--data", "missing.jsonl", "--model", "embedded", "--no-progress"],
        ["eval", "no_such_sae"],
        ["steer", "no_such_sae", "--latent", "0", "--prompts", "missing.txt"],
    ]
    for cmd in commands:
        assert main(cmd) != 0, cmd
        assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.npy"], (cmd, capsys.readouterr().err)


def torch_like_save(real):
    """torch.save as it behaves on a full disk: given a path, its C++ writer fails with a RuntimeError that names
    neither the file nor ENOSPC; given a Python file, the file's write raises OSError(ENOSPC)."""

    def save(obj, f, *a, **kw):
        if isinstance(f, (str, Path)):
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
        raise OSError(errno.ENOSPC, "No space left on device")

    return save


def test_a_full_disk_under_torch_save_is_named(tmp_path: Path, monkeypatch, capsys) -> None:
    import torch

    from chatsae.core.utils import torch_save

    if Path("/dev/full").exists():  # a real ENOSPC: every write to /dev/full fails with it
        with pytest.raises(DiskFullError, match=r"^disk full while writing /dev/full \(.* MiB needed, .* free\)"):
            torch_save({"w": torch.zeros(300_000)}, "/dev/full")
    out = tmp_path / "run"
    monkeypatch.setattr(torch, "save", torch_like_save(torch.save))
    assert main([*ARGS, "--out-dir", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unexpected" not in err, err
    assert f"disk full while writing {out / 'checkpoints' / 'step_0000000004'} (" in err and "MiB free" in err
    assert not list(out.glob("checkpoints/step_*"))  # nothing half-written is left as a checkpoint


def test_a_full_disk_while_appending_the_metrics_log_is_named(tmp_path: Path, monkeypatch, capsys) -> None:
    import builtins

    real_open = builtins.open

    class Full:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def write(self, text):
            raise OSError(errno.ENOSPC, "No space left on device")

    def full_open(file, mode="r", *a, **kw):
        if str(file).endswith("metrics.jsonl") and "a" in mode:
            return Full()
        return real_open(file, mode, *a, **kw)

    out = tmp_path / "run"
    monkeypatch.setattr(builtins, "open", full_open)
    assert main([*ARGS, "--out-dir", str(out), "--log-every", "1"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"chatsae train: error: disk full while writing {out / 'metrics.jsonl'} ("), err
