"""No silent acceptance: option values and combinations that would be ignored, misread or meaningless are refused at
parse time with one line; config files with repeated keys are refused; `~` and `$VAR` in config-file paths are
expanded; `harvest` reports what the data lost and fails on 0 vectors; features files are checksummed."""

from __future__ import annotations

import json
import random
import string

import pytest
import torch

from chatsae.cli import main
from chatsae.core.config import ConfigError, build, load_config_file
from chatsae.workflows.train_run import RunConfig

pytestmark = pytest.mark.usefixtures("single_thread")


def run(capsys, *argv: str) -> tuple[int, str]:
    try:
        rc = main(list(argv))
    except SystemExit as e:  # usage errors (argparse)
        rc = int(e.code or 0)
    err = capsys.readouterr().err.strip()
    return rc, err


def one_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, err
    return lines[0]


# ---------------------------------------------------------------- config files


def test_a_key_given_twice_in_a_config_file_is_refused(tmp_path, capsys):
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("train:\n  lr: 0.001\nsae:\n  k: 8\ntrain:\n  batch_size: 64\n")
    with pytest.raises(ValueError, match=r"c.yaml: cannot parse config \(key 'train' is given twice .* lines 1 and 5"):
        load_config_file(yaml_file)
    yaml_file.write_text("train:\n  lr: 0.001\n  lr: 0.003\n")  # inside a section too
    with pytest.raises(ValueError, match="key 'lr' is given twice"):
        load_config_file(yaml_file)
    json_file = tmp_path / "c.json"
    json_file.write_text('{"train": {"lr": 0.1}, "train": {"seed": 1}}')
    with pytest.raises(ValueError, match="c.json: cannot parse config .*'train' is given twice"):
        load_config_file(json_file)
    yaml_file.write_text("train:\n  lr: 0.001\ntrain:\n  batch_size: 64\n")
    rc, err = run(capsys, "train", "--config", str(yaml_file), "--activations", "synthetic")
    assert rc == 1 and one_line(err).startswith("chatsae train: error: ") and "given twice" in err


def test_home_and_variables_in_config_file_paths_are_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CHATSAE_TEST_RUNS", str(tmp_path / "runs"))
    cfg = build(RunConfig, {"run": {"out_dir": "~/sae", "activations": "${CHATSAE_TEST_RUNS}/acts.npy"}}, section="run")
    assert cfg.out_dir == str(tmp_path / "home" / "sae") and cfg.activations == str(tmp_path / "runs" / "acts.npy")
    with pytest.raises(ConfigError, match=r"c.yaml: run.out_dir '\$CHATSAE_NO_SUCH_VAR/x': environment variable"):
        build(RunConfig, {"run": {"out_dir": "$CHATSAE_NO_SUCH_VAR/x"}}, section="run", source="c.yaml")


def test_an_empty_out_dir_is_an_error(tmp_path, capsys):
    rc, err = run(capsys, "train", "--activations", "synthetic", "--out-dir", "")
    assert rc == 1 and one_line(err) == (
        "chatsae train: error: --out-dir must not be empty (leave the option out for its default)"
    )
    for argv in (
        ["steer", "sae", "--latent", "1", "--prompts", "p.txt", "--out", " "],
        ["autointerp", "x", "--out", ""],
    ):
        rc, err = run(capsys, *argv)
        assert rc == 1 and "--out must not be empty" in one_line(err)


# ---------------------------------------------------------------- numbers


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e999"])
def test_non_finite_numbers_are_usage_errors(value, capsys):
    rc, err = run(capsys, "train", "--activations", "synthetic", f"--lr={value}")
    assert rc == 2 and "expected a finite number" in one_line(err) and "--lr" in err


def test_non_finite_numbers_in_a_config_file_name_file_and_key(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train:\n  lr: .inf\n")
    rc, err = run(capsys, "train", "--config", str(cfg), "--activations", "synthetic")
    assert rc == 1 and one_line(err) == f"chatsae train: error: {cfg}: train.lr must be a finite number, got inf"


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--alphas", "0,1e9"], "--alphas must be finite with |alpha| <= 10,000"),
        (["--alphas", "0,nan"], "expected a finite number"),
        (["--alphas", "0,15,15"], "--alphas lists 15.0 more than once"),
        (["--latent", "3,4,3"], "--latent lists 3 more than once"),
    ],
)
def test_steering_values_are_checked(argv, expected, tmp_path, capsys):
    base = ["steer", str(tmp_path), "--prompts", "p.txt"]
    rc, err = run(capsys, *base, *(["--latent", "1"] if "--latent" not in argv else []), *argv)
    assert rc in (1, 2) and expected in one_line(err), err


def test_latent_lists_and_token_counts(tmp_path, capsys):
    rc, err = run(capsys, "autointerp", str(tmp_path), "--latents", "5,7,5")
    assert rc == 1 and one_line(err) == "chatsae autointerp: error: --latents lists 5 more than once"
    for n in ("0", "-3", "1.5"):
        rc, err = run(capsys, "proxies", str(tmp_path), "--n-tokens", n)
        assert rc == 2 and "--n-tokens" in one_line(err), err
    from chatsae.interp.proxies import proxies

    with pytest.raises(ValueError, match="n_tokens must be a positive integer"):
        proxies(None, n_tokens=0)  # type: ignore[arg-type]


@pytest.mark.parametrize("option", ["--lr-warmup-steps", "--sparsity-warmup-steps"])
def test_step_counts_are_whole_numbers(option, capsys):
    rc, err = run(capsys, "train", "--activations", "synthetic", option, "2.5")
    assert rc == 1 and one_line(err) == (
        f"chatsae train: error: {option} must be a whole number of steps (>= 1) or a fraction of the run (< 1), got 2.5"
    )


# ---------------------------------------------------------------- combinations that would be ignored


@pytest.mark.skipif(torch.cuda.is_available(), reason="autocast is meaningful with CUDA")
def test_autocast_on_cpu_is_refused(capsys):
    rc, err = run(capsys, "train", "--activations", "synthetic", "--autocast", "bf16")
    assert rc == 1 and one_line(err) == (
        "chatsae train: error: --autocast bf16 has no effect on --device auto (autocast runs on CUDA only); drop it"
    )


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--hooks", "resid_post.1,resid_post.2"], "--hooks does not apply to --activations: synthetic activations"),
        (["--cache", "none"], "--cache none does not apply to --activations: synthetic activations are read"),
    ],
)
def test_model_options_with_synthetic_activations_are_refused(extra, expected, tmp_path, capsys):
    rc, err = run(capsys, "train", "--activations", "synthetic", "--out-dir", str(tmp_path / "r"), *extra)
    assert rc == 1 and expected in one_line(err) and not (tmp_path / "r").exists()


def test_harvest_cache_none_is_refused(tmp_path, capsys):
    rc, err = run(capsys, "harvest", "--cache", "none", "--out-dir", str(tmp_path / "h"))
    assert rc == 1 and "--cache none does not apply to chatsae harvest" in one_line(err)
    assert not (tmp_path / "h").exists()


# ---------------------------------------------------------------- harvest counts


@pytest.fixture(scope="module")
def tiny_model_dir(tiny_llama, tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_model")
    model, tok = tiny_llama
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _words(rng: random.Random, n: int) -> str:
    return " ".join("".join(rng.choice(string.ascii_lowercase) for _ in range(5)) for _ in range(n))


def test_harvest_reports_dedup_and_skipped_records(tiny_model_dir, tmp_path, capsys):
    rng = random.Random(0)
    same = {"messages": [{"role": "user", "content": "hello there"}, {"role": "assistant", "content": "hi"}]}
    distinct = [
        {"messages": [{"role": "user", "content": _words(rng, 6)}, {"role": "assistant", "content": _words(rng, 8)}]}
        for _ in range(5)
    ]
    lines = [json.dumps(same)] * 20 + [json.dumps(r) for r in distinct] + ["{not json"]
    data = tmp_path / "chat.jsonl"
    data.write_text("\n".join(lines) + "\n")
    argv = ["harvest", "--model", str(tiny_model_dir), "--data", str(data), "--holdout", "0", "--skip-bad"]
    rc = main([*argv, "--layer", "1", "--out-dir", str(tmp_path / "h")])
    out, err = capsys.readouterr()
    assert rc == 0
    assert "samples dropped by dedup" in out and "19 of 26" in out and "records skipped (--skip-bad)" in out
    (warning,) = [x for x in err.splitlines() if x.startswith("WARNING:")]
    assert warning.startswith("WARNING: 20 of 26 records (76.9%) were dropped before training: 19 by the n-gram dedup")
    assert "1 malformed, skipped (--skip-bad)" in warning


def test_harvest_of_zero_vectors_fails(tiny_model_dir, tmp_path, capsys):
    empty = {"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": ""}]}
    data = tmp_path / "empty.jsonl"
    data.write_text(json.dumps(empty) + "\n" + json.dumps(empty) + "\n")
    argv = ["harvest", "--model", str(tiny_model_dir), "--data", str(data), "--holdout", "0", "--layer", "1"]
    rc, err = run(capsys, *argv, "--out-dir", str(tmp_path / "h"))
    (line,) = [x for x in err.splitlines() if "FAILED" in x]
    assert rc == 1 and line.startswith("chatsae harvest: FAILED: 0 vectors harvested at resid_post.1")
    assert "empty samples dropped: 2 of 2" in line


# ---------------------------------------------------------------- features checksums


def test_a_flipped_bit_in_a_features_file_is_refused(interp_features, tmp_path):
    import shutil

    from chatsae.interp.store import FeatureData

    src = interp_features[0].root
    for name in ("state.safetensors", "logit_lens.safetensors", "tokens.json", "meta.json"):
        copy = tmp_path / name.replace(".", "_")
        shutil.copytree(src, copy)
        FeatureData(copy)  # intact: reads
        path = copy / name
        blob = bytearray(path.read_bytes())
        at = len(blob) - 3 if name.endswith("safetensors") else blob.index(b"1")  # a tensor byte / a JSON digit
        blob[at] ^= 0x01
        path.write_bytes(bytes(blob))
        with pytest.raises(ValueError, match=f"{name}: its (bytes|content) changed"):
            FeatureData(copy)
