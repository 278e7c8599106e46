"""The `chatsae` command: help, config files and flags, training on synthetic data and on a saved tensor file."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from chatsae.cli import build_parser, main
from chatsae.sae import load_sae


def test_train_help_lists_options(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for flag in (
        "--arch",
        "--width",
        "--model",
        "--data",
        "--method",
        "--layer",
        "--hook",
        "--total-tokens",
        "--lr",
        "--sparsity-coef",
        "--resume",
        "--activations",
        "--exclude-first-position",
        "--config",
    ):
        assert flag in out, flag
    assert "FAST" in out  # docstrings became help text


def test_every_command_has_help(capsys):
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert {"train", "harvest"} <= set(commands)
    for name in commands:
        with pytest.raises(SystemExit) as e:
            main([name, "--help"])
        assert e.value.code == 0, name


def test_train_synthetic_with_config_file_and_flag_override(tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        "sae:\n  architecture: topk\n  k: 4\n  d_in: 16\ntrain:\n  total_tokens: 4096\n  batch_size: 256\n"
        "  lr: 0.01\n  progress: false\n"
    )
    rc = main(
        [
            "train",
            "--config",
            str(cfg),
            "--activations",
            "synthetic",
            "--k",
            "3",
            "--width",
            "48",
            "--out-dir",
            str(tmp_path / "run"),
            "--init-sample-tokens",
            "256",
        ]
    )
    assert rc == 0
    sae = load_sae(tmp_path / "run" / "sae")
    assert sae.cfg.architecture == "topk" and sae.cfg.k == 3 and sae.cfg.d_sae == 48 and sae.cfg.d_in == 16
    saved = json.loads((tmp_path / "run" / "sae" / "config.json").read_text())
    assert saved["train"]["total_tokens"] == 4096 and saved["sae"]["k"] == 3
    assert (tmp_path / "run" / "sae" / "sparsity.safetensors").is_file()


def test_train_on_tensor_file_uses_expansion_factor(tmp_path):
    path = tmp_path / "acts.safetensors"
    save_file({"acts": torch.randn(2048, 12) * 5}, str(path))
    rc = main(
        [
            "train",
            "--activations",
            str(path),
            "--total-tokens",
            "2048",
            "--batch-size",
            "128",
            "--expansion-factor",
            "4",
            "--out-dir",
            str(tmp_path / "run"),
            "--no-progress",
            "--init-sample-tokens",
            "512",
        ]
    )
    assert rc == 0
    sae = load_sae(tmp_path / "run" / "sae")
    assert (sae.cfg.d_in, sae.cfg.d_sae) == (12, 48)


def test_bad_inputs_give_clear_errors(tmp_path, capsys):
    assert main(["train", "--activations", str(tmp_path / "missing.pt"), "--no-progress"]) == 1
    assert "missing.pt" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  not_a_field: 1\n")
    assert main(["train", "--config", str(bad), "--activations", "synthetic"]) == 1
    assert "not_a_field" in capsys.readouterr().err
    assert main(["train", "--method", "nope", "--activations", "synthetic"]) == 1
    assert "method" in capsys.readouterr().err
