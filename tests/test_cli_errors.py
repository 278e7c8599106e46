"""Every failure of the ``chatsae`` command is one line naming the option or file at fault, no traceback; ``--debug``
keeps the traceback. Also: secrets never reach autointerp files; BOM files, OpenAI content parts, small files
(issue 12, items 10-12)."""

from __future__ import annotations

import json
import pickle
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from chatsae.cli import main
from chatsae.cli.common import error_message
from chatsae.core.redact import MASK, redact, register_secret
from chatsae.data import read_records
from chatsae.data.formats import DataFormatError

SYN = ["train", "--activations", "synthetic", "--d-in", "16", "--no-progress"]


def run(capsys, *argv: str) -> tuple[int, str]:
    rc = main(list(argv))
    return rc, capsys.readouterr().err


def chats(n: int) -> list[dict]:
    return [
        {"messages": [{"role": "user", "content": f"question {i}?"}, {"role": "assistant", "content": f"a{i}"}]}
        for i in range(n)
    ]


def write_jsonl(path: Path, rows: list, bom: bool = False) -> Path:
    path.write_text(("\ufeff" if bom else "") + "".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# ---------------------------------------------------------------- options checked before any work


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--batch-size", "0"], "--batch-size must be a positive integer, got 0"),
        (["--log-every", "0"], "--log-every must be a positive integer, got 0"),
        (["--jumprelu-bandwidth", "0"], "--jumprelu-bandwidth must be a positive number, got 0.0"),
        (["--dtype", "float64x"], "--dtype: unknown dtype 'float64x'; use float32, float16 or bfloat16"),
        (["--beta1", "1"], "--beta1 must be in [0, 1), got 1.0"),
        (["--sparsity-coef", "-1"], "--sparsity-coef must be >= 0, got -1.0"),
        (["--lr-warmup-steps", "-5"], "--lr-warmup-steps must be >= 0, got -5.0"),
        (["--grad-clip-norm", "-1"], "--grad-clip-norm must be >= 0, got -1.0"),
        (["--device", "foo"], "--device: unknown device 'foo'; use auto, cpu, cuda, cuda:N or mps"),
        (["--expansion-factor", "0"], "--expansion-factor must be a positive integer, got 0"),
        (["--model-dtype", "int8"], "--model-dtype: unknown dtype 'int8'; use float32, float16 or bfloat16"),
        (["--batch-tokens", "0"], "--batch-tokens must be a positive integer, got 0"),
    ],
)
def test_bad_train_option_is_one_line(flags, message, capsys):
    rc, err = run(capsys, *SYN, *flags)
    assert (rc, err) == (1, f"chatsae train: error: {message}\n")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_device_cuda_without_cuda(capsys):
    rc, err = run(capsys, *SYN, "--device", "cuda")
    assert rc == 1 and err.count("\n") == 1
    assert err.startswith("chatsae train: error: --device cuda: CUDA is not available on this machine")


def test_config_file_errors_name_the_file_and_key(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    for text, message in [
        ("sae:\n  dtype: foo\n", f"{cfg}: sae.dtype: unknown dtype 'foo'; use float32, float16 or bfloat16"),
        ("sae:\n  d_in: abc\n", f"{cfg}: sae.d_in must be an integer, got str 'abc'"),
        ("train:\n  batch_size: 0\n", f"{cfg}: train.batch_size must be a positive integer, got 0"),
        (
            "trian:\n  lr: 1.0e-3\n",
            f"{cfg}: unknown section or option 'trian'; valid sections: run, sae, train, data, harvest",
        ),
        ("sae: [1, 2]\n", f"{cfg}: section 'sae' must be a mapping of options, got list [1, 2]"),
        ("train: {lr: [oops\n", None),
    ]:
        cfg.write_text(text)
        rc, err = run(capsys, *SYN, "--config", str(cfg))
        assert rc == 1 and err.count("\n") == 1, text
        if message is None:
            assert err.startswith(f"chatsae train: error: {cfg}: cannot parse config ("), err
        else:
            assert err == f"chatsae train: error: {message}\n", text


def test_a_bad_flag_overriding_a_config_file_names_the_flag(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train:\n  batch_size: 64\n")
    rc, err = run(capsys, *SYN, "--config", str(cfg), "--batch-size", "0")
    assert (rc, err) == (1, "chatsae train: error: --batch-size must be a positive integer, got 0\n")


def test_yaml_string_numbers_and_bom_config_are_accepted(tmp_path):
    cfg = tmp_path / "c.yaml"  # YAML 1.1 reads 7e-5 as the string "7e-5"; the file starts with a BOM
    cfg.write_text("\ufefftrain:\n  lr: 7e-5\n  total_tokens: 512\n  batch_size: 256\n", encoding="utf-8")
    out = tmp_path / "run"
    assert (
        main(
            [
                *SYN,
                "--width",
                "32",
                "--config",
                str(cfg),
                "--out-dir",
                str(out),
                "--init-sample-tokens",
                "256",
                "--checkpoint-every",
                "0",
            ]
        )
        == 0
    )
    saved = json.loads((out / "sae" / "config.json").read_text())
    assert saved["train"]["lr"] == pytest.approx(7e-5) and isinstance(saved["train"]["lr"], float)


def test_usage_errors_are_one_line_with_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        main([*SYN, "--batch-size", "1.5"])  # never truncated to 1
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert (
        err == "chatsae train: error: argument --batch-size: expected an integer, got '1.5' "
        "(see chatsae train --help)\n"
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["eval", "no_such_sae", "--max-samples", "0"], "--max-samples must be a positive integer, got 0"),
        (["eval", "no_such_sae", "--dense-threshold", "2"], "--dense-threshold must be in [0, 1], got 2.0"),
        (["features", "no_such_sae", "--top-k", "0"], "--top-k must be a positive integer, got 0"),
        (
            ["autointerp", "no_such_dir", "--protocol", "vibes"],
            "--protocol: unknown protocol(s) ['vibes']; use fast, detection, fuzzing or all",
        ),
        (["autointerp", "no_such_dir", "--concurrency", "0"], "--concurrency must be a positive integer, got 0"),
        (["dashboard", "no_such_dir", "--chunk-size", "0"], "--chunk-size must be a positive integer, got 0"),
        (["serve-judge", "--port", "70000"], "--port must be in [0, 65535], got 70000"),
        (
            ["steer", "no_such_sae", "--latent", "1", "--prompts", "p.txt", "--batch-size", "0"],
            "--batch-size must be a positive integer, got 0",
        ),
        (
            ["special-tokens", "no_such_sae", "--data", "d.jsonl", "--dtype", "foo"],
            "--dtype: unknown dtype 'foo'; use float32, float16 or bfloat16",
        ),
    ],
)
def test_other_commands_check_options_first(argv, message, capsys):
    rc, err = run(capsys, *argv)
    assert (rc, err) == (1, f"chatsae {argv[0]}: error: {message}\n")


def test_debug_keeps_the_traceback():
    with pytest.raises(ValueError, match="--batch-size must be a positive integer"):
        main([*SYN, "--batch-size", "0", "--debug"])


# ---------------------------------------------------------------- damaged inputs name the file


def test_truncated_or_garbage_tensor_files(tmp_path, capsys):
    full = tmp_path / "acts.safetensors"
    save_file({"acts": torch.randn(64, 16)}, str(full))
    data = full.read_bytes()
    trunc = tmp_path / "trunc.safetensors"
    trunc.write_bytes(data[: len(data) // 2])
    rc, err = run(capsys, "train", "--activations", str(trunc))
    assert (rc, err) == (1, f"chatsae train: error: {trunc}: not a valid safetensors file (truncated?)\n")
    garbage = tmp_path / "acts.pt"
    garbage.write_bytes(b"\x80\x02garbage" * 8)
    rc, err = run(capsys, "train", "--activations", str(garbage))
    assert (rc, err) == (
        1,
        f"chatsae train: error: {garbage}: not a valid PyTorch file (truncated, or not written by torch.save?)\n",
    )


def test_error_message_names_the_file_for_library_format_errors(tmp_path):
    npz = tmp_path / "shard.meta.npz"
    np.savez(npz, a=np.arange(10))
    npz.write_bytes(npz.read_bytes()[:20])

    def read_meta(path: Path) -> None:
        with np.load(path) as z:
            z["a"]

    with pytest.raises(zipfile.BadZipFile) as e:
        read_meta(npz)
    assert error_message(e.value) == f"{npz}: not a valid .npz/zip file (truncated?)"
    pt = tmp_path / "optimizer.pt"
    torch.save({"a": torch.arange(1000)}, pt)
    pt.write_bytes(pt.read_bytes()[:300])  # a truncated torch.save zip
    with pytest.raises(RuntimeError) as e2:
        torch.load(pt, weights_only=True)
    assert error_message(e2.value) == f"{pt}: not a valid PyTorch file (truncated, or not written by torch.save?)"
    pt.write_bytes(b"garbage")
    with pytest.raises(pickle.UnpicklingError) as e3:
        torch.load(pt, weights_only=True)
    assert error_message(e3.value) == f"{pt}: not a valid PyTorch file (truncated, or not written by torch.save?)"


def test_error_message_of_unexpected_and_key_errors():
    def lookup(d: dict) -> int:
        return d["index"]

    with pytest.raises(KeyError) as e:
        lookup({})
    text = error_message(e.value)
    assert text == "missing entry 'index' (a damaged or foreign file?); rerun with --debug for the traceback"
    with pytest.raises(ZeroDivisionError) as z:
        _ = 1 / 0
    assert (
        error_message(z.value) == "unexpected ZeroDivisionError: division by zero; rerun with --debug for the traceback"
    )
    multi = RuntimeError("shapes cannot be multiplied\nmore detail\nand more")
    assert (
        error_message(multi) == "shapes cannot be multiplied (rerun with --debug for the traceback and the full "
        "message)"
    )
    missing = ImportError("No module named 'datasets'", name="datasets")
    assert error_message(missing) == (
        "reading Hugging Face dataset names needs the datasets package: pip install 'chatsae[datasets]'"
    )


def test_bare_dataset_name_without_datasets_fails_before_the_model_loads(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "datasets", None)
    rc, err = run(capsys, "train", "--data", "no_such_dataset_name", "--model", "/no/such/model", "--no-progress")
    assert rc == 1
    assert err.splitlines()[-1] == (
        "chatsae train: error: no_such_dataset_name: no such file; reading it as a Hugging "
        "Face dataset name needs the datasets package: pip install 'chatsae[datasets]' "
        "(or pip install datasets)"
    )


def test_small_file_and_default_holdout_says_how_to_fix_it(tmp_path, capsys):
    data = write_jsonl(tmp_path / "small.jsonl", chats(12))
    rc, err = run(capsys, "harvest", "--data", str(data), "--model", "/no/such/model")
    assert rc == 1
    assert err.splitlines()[-1] == (
        f"chatsae harvest: error: {data}: only 12 records, too few to hold out --holdout "
        "50 for evaluation and train on the rest; pass e.g. --holdout 1 (or --holdout 0: "
        "no held-out evaluation)"
    )


def test_features_checks_the_sae_width_against_the_model(tiny_llama, tmp_path, capsys):
    from chatsae.sae import SAEConfig, create_sae, save_sae

    model, tok = tiny_llama
    model.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    meta = {"model_name": str(tmp_path / "model"), "hook_name": "resid_post.1"}
    save_sae(create_sae(SAEConfig("topk", d_in=16, d_sae=24, k=2, metadata=meta)), tmp_path / "sae")
    data = write_jsonl(tmp_path / "d.jsonl", chats(4))
    rc, err = run(capsys, "features", str(tmp_path / "sae"), "--data", str(data), "--n-samples", "4")
    assert rc == 1
    assert err.splitlines()[-1] == (
        "chatsae features: error: the SAE takes d_in=16 but the model's activations at "
        "'resid_post.1' have width 64: wrong --model or --hook for this SAE?"
    )
    assert not (tmp_path / "sae" / "features").exists()  # nothing written


# ---------------------------------------------------------------- data files users have


def test_utf8_bom_files_are_read(tmp_path):
    jsonl = write_jsonl(tmp_path / "bom.jsonl", chats(3), bom=True)
    assert [r.messages[1]["content"] for r in read_records(jsonl)] == ["a0", "a1", "a2"]
    js = tmp_path / "bom.json"
    js.write_text("\ufeff" + json.dumps(chats(2)), encoding="utf-8")
    assert len(list(read_records(js))) == 2
    txt = tmp_path / "bom.txt"
    txt.write_text("\ufefffirst line\nsecond line\n", encoding="utf-8")
    assert [r.text for r in read_records(txt)] == ["first line", "second line"]
    assert [r.text for r in read_records(txt, text_split="whole")] == ["first line\nsecond line"]


def test_openai_content_parts_are_joined(tmp_path):
    rec = {
        "messages": [
            {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
            {"role": "user", "content": [{"type": "text", "text": "Part one."}, {"type": "text", "text": "Part two."}]},
            {"role": "assistant", "content": "Done."},
        ]
    }
    path = write_jsonl(tmp_path / "parts.jsonl", [rec])
    (r,) = list(read_records(path))
    assert r.messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Part one.\nPart two."},
        {"role": "assistant", "content": "Done."},
    ]


def test_non_text_content_parts_are_a_clear_error_or_skipped(tmp_path):
    image = {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image_url", "image_url": {"url": "x.png"}},
                ],
            },
            {"role": "assistant", "content": "A cat."},
        ]
    }
    path = write_jsonl(tmp_path / "img.jsonl", [*chats(1), image, *chats(1)])
    with pytest.raises(DataFormatError) as e:
        list(read_records(path))
    assert str(e.value) == (
        "img.jsonl: record 1 (line 2): field 'messages[0].content[1]' is a non-text content part "
        "(type 'image_url'); only text parts can be read"
    )
    reader = read_records(path, skip_bad=True)
    assert len(list(reader)) == 2 and reader.n_skipped == 1


# ---------------------------------------------------------------- secrets


def test_redact_patterns_and_registered_secrets():
    register_secret("prov-key-0123456789")
    text = (
        "401: key prov-key-0123456789 rejected; sk-proj-abcDEF123456789xyz; Authorization: Bearer abc.def-123456; "
        'url?api_key=zzzz9999&x=1; {"api-key": "qqqq8888"}'
    )
    out = redact(text)
    for secret in ("prov-key-0123456789", "sk-proj-abcDEF123456789xyz", "abc.def-123456", "zzzz9999", "qqqq8888"):
        assert secret not in out, secret
    assert out.count(MASK) == 5 and out.startswith("401: key [REDACTED] rejected") and "&x=1" in out
    assert redact("nothing secret here: sk-ab, bearer x") == "nothing secret here: sk-ab, bearer x"


class _Echo:
    """Stand-in for the openai client: every request fails with an error that echoes the API key."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.chat = self
        self.completions = self

    def create(self, **kwargs):
        raise RuntimeError(f"Error code: 401 - Incorrect API key provided: {self.key}. Header was 'Bearer {self.key}'")


def test_autointerp_never_writes_the_api_key(interp_features, tmp_path):
    from chatsae.interp.autointerp import AutointerpConfig, run_autointerp
    from chatsae.interp.judges import CachedJudge, OpenAIJudge

    data = interp_features[0]
    key = "custom-provider-key-7f3a9c2e5b"  # not sk- shaped: only its registration can hide it
    judge = OpenAIJudge("m", base_url="http://127.0.0.1:9/v1", api_key=key, max_retries=0)
    judge.client = _Echo(key)  # type: ignore[assignment]
    cfg = AutointerpConfig(n_latents=2, attempts=1, out=str(tmp_path / "autointerp.json"))
    doc = run_autointerp(data, CachedJudge(judge, tmp_path / "cache"), cfg, progress=False)
    written = (tmp_path / "autointerp.json").read_text()
    raws = [raw for lat in doc["latents"].values() for raw in lat["fast"]["raw"]]
    assert raws and all(r.startswith("error: RuntimeError: Error code: 401") for r in raws)
    assert key not in written and key not in json.dumps(doc) and MASK in written


@pytest.mark.parametrize("command", ["compare", "sweep", "eval", "features"])
def test_single_process_commands_refuse_torchrun(command, monkeypatch, capsys, tmp_path):
    """Under torchrun every rank would run the whole study and write the same files: refused, one line."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    argv = {
        "compare": ["--out-dir", str(tmp_path)],
        "sweep": ["--out-dir", str(tmp_path)],
        "eval": [str(tmp_path)],
        "features": [str(tmp_path)],
    }[command]
    rc = main([command, *argv])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1
    assert err.startswith(f"chatsae {command}: error: `chatsae {command}` runs in one process")
    assert "--distribute-saes" in err and not list(tmp_path.iterdir())  # nothing written


def test_train_is_not_refused_under_torchrun_env(monkeypatch):
    from chatsae.cli import check_world

    monkeypatch.setenv("WORLD_SIZE", "2")
    check_world("train")
    check_world("harvest")
    monkeypatch.setenv("WORLD_SIZE", "1")
    check_world("compare")


class _Exited(Exception):
    pass


def test_entry_point_leaves_a_torchrun_process_without_interpreter_teardown(monkeypatch, capsys, tmp_path):
    """``chatsae`` / ``python -m chatsae`` end a process of a multi-process world with ``os._exit`` (after flushing):
    torch's C++ teardown occasionally aborts a rank after its work (docs/scaling.md); a single process exits
    normally (SystemExit, atexit handlers run)."""
    import os

    from chatsae import cli

    codes: list[int] = []

    def fake_exit(code: int) -> None:
        codes.append(code)
        raise _Exited

    monkeypatch.setattr(os, "_exit", fake_exit)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(_Exited):
        cli.run(["eval", str(tmp_path)])  # refused under torchrun: status 1
    assert codes == [1] and capsys.readouterr().err.startswith("chatsae eval: error:")
    with pytest.raises(_Exited):
        cli.run(["--version"])  # argparse's own exit goes the same way
    assert codes == [1, 0] and "chatsae" in capsys.readouterr().out
    monkeypatch.delenv("WORLD_SIZE")
    with pytest.raises(SystemExit) as e:
        cli.run(["eval", str(tmp_path)])
    assert e.value.code == 1 and codes == [1, 0]


def test_python_m_chatsae_under_torchrun_env_exits_with_its_status_and_message(tmp_path):
    import os
    import subprocess

    env = {**os.environ, "WORLD_SIZE": "2"}
    done = subprocess.run(
        [sys.executable, "-m", "chatsae", "eval", str(tmp_path)], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 1
    assert done.stderr.startswith("chatsae eval: error: `chatsae eval` runs in one process")  # flushed before exit
