"""Reliability, second pass (issue 24), the remaining items: ``features --overwrite`` removes only files chatsae
recorded, and the path options of eval, export-neuronpedia, bench, compare and sweep are expanded and checked by the
one ownership rule (chatsae.core.ownership)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from chatsae.core.locking import MARKER

pytestmark = pytest.mark.usefixtures("single_thread")


def test_features_overwrite_removes_only_files_chatsae_recorded(interp_features, tmp_path: Path) -> None:
    from chatsae.interp.features import FeaturesConfig, collect_features
    from chatsae.interp.statelog import LOG_DIR

    data, sae, model, tokenizer, seqs = interp_features
    out = Path(shutil.copytree(data.root, tmp_path / "features"))
    (out / "autointerp.json").write_text('{"latents": {}, "mine": true}')  # a user's file, named like chatsae's
    (out / LOG_DIR).mkdir()
    (out / LOG_DIR / "notes.txt").write_text("a user's file in log/")
    cfg = {**data.meta["config"], "out": None, "top_k": 2, "overwrite": True}
    new = collect_features(sae, model, tokenizer, seqs, FeaturesConfig(**cfg), out)
    assert new.meta["config"]["top_k"] == 2 and new.meta["complete"]
    assert json.loads((out / "autointerp.json").read_text())["mine"] is True
    assert (out / LOG_DIR / "notes.txt").read_text() == "a user's file in log/"
    # a file chatsae would write, put there by a user: refused before anything is removed
    (out / "tokens.json").write_text('{"0": "my tokens"}')
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(ValueError, match=rf"{out / 'tokens.json'}: exists and chatsae did not write it"):
        collect_features(sae, model, tokenizer, seqs, FeaturesConfig(**{**cfg, "top_k": 3}), out)
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_an_interrupted_features_run_records_its_diffs_and_overwrite_removes_them(interp_features, tmp_path) -> None:
    from chatsae.core.ownership import written
    from chatsae.interp.features import FeaturesConfig, collect_features
    from chatsae.interp.statelog import LOG_DIR

    data, sae, model, tokenizer, seqs = interp_features
    out = tmp_path / "features"
    cfg = {**data.meta["config"], "out": None, "checkpoint_every": 50}
    collect_features(sae, model, tokenizer, seqs, FeaturesConfig(**cfg), out, stop_after=2)
    diffs = sorted(p.name for p in (out / LOG_DIR).iterdir())
    assert diffs and {f"{LOG_DIR}/{d}" for d in diffs} <= set(written(out))
    collect_features(sae, model, tokenizer, seqs, FeaturesConfig(**{**cfg, "overwrite": True}), out, stop_after=1)
    assert sorted(p.name for p in (out / LOG_DIR).iterdir()) == ["step_00000001.safetensors"]  # no stale diff
    done = collect_features(sae, model, tokenizer, seqs, FeaturesConfig(**{**cfg, "resume": True}), out)
    assert done.meta["complete"] and not (out / LOG_DIR).exists() and (out / MARKER).is_file()
    assert all(not k.startswith(f"{LOG_DIR}/") for k in written(out))


def test_forget_drops_every_entry_it_is_given(tmp_path: Path) -> None:
    from chatsae.core.locking import claim_dir
    from chatsae.core.ownership import forget, record, written

    d = claim_dir(tmp_path / "d", "run")
    for name in ("a", "b", "c"):
        (d / name).write_text(name)
    record(d, "a", "b", "c")
    forget(d, ["a", "b"])  # before: only "a" was dropped (any() over a generator stopped at the first)
    assert set(written(d)) == {"c"}


# ---------------------------------------------------------------- path options of eval, export, bench, compare, sweep


def run(capsys, *argv: str) -> tuple[int, str]:
    from chatsae.cli import main

    capsys.readouterr()
    rc = main(list(argv))
    return rc, capsys.readouterr().err.strip()


def user_dir(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "notes.md").write_text("my notes")
    return path


def test_eval_path_options_are_expanded_and_checked(tmp_path: Path, monkeypatch, capsys) -> None:
    from chatsae.eval.config import EvalConfig

    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("CHATSAE_TEST_DATA", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    cfg = EvalConfig(data="${CHATSAE_TEST_DATA}/d.jsonl", output="~/eval.json")
    assert cfg.data == str(tmp_path / "data" / "d.jsonl") and cfg.output == str(home / "eval.json")
    user_dir(home)
    (home / "eval.json").write_text("my own results")
    rc, err = run(capsys, "eval", "no_such_sae", "--output", "~/eval.json")
    assert rc == 1 and f"{home / 'eval.json'}: exists and chatsae did not write it" in err, err
    rc, err = run(capsys, "eval", "no_such_sae", "--output", "$CHATSAE_NO_SUCH_VAR/e.json")
    assert rc == 1 and "--output '$CHATSAE_NO_SUCH_VAR/e.json': environment variable" in err, err
    (tmp_path / "gone").symlink_to(tmp_path / "nowhere.json")
    rc, err = run(capsys, "eval", "no_such_sae", "--output", "gone")
    assert rc == 1 and "gone: --output is a symbolic link to" in err and "which does not exist" in err, err
    assert (home / "eval.json").read_text() == "my own results" and not (tmp_path / "~").exists()


def test_export_neuronpedia_out_is_expanded_and_checked(interp_features, tmp_path: Path, monkeypatch, capsys):
    from chatsae.interp.neuronpedia import NeuronpediaConfig, export_neuronpedia

    features = Path(shutil.copytree(interp_features[0].root, tmp_path / "sae" / "features"))
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    user_dir(home / "np")
    rc, err = run(capsys, "export-neuronpedia", str(features), "--out", "~/np")
    assert rc == 1 and f"{home / 'np'}: --out is a non-empty directory that chatsae did not write" in err, err
    assert sorted(p.name for p in (home / "np").iterdir()) == ["notes.md"] and not (tmp_path / "~").exists()
    rc, err = run(capsys, "export-neuronpedia", str(features), "--out", "$CHATSAE_NO_SUCH_VAR")
    assert rc == 1 and "--out '$CHATSAE_NO_SUCH_VAR': environment variable" in err, err
    auto = tmp_path / "auto"
    auto.mkdir()
    (auto / "autointerp.json").write_text('{"latents": {}, "runs": []}')
    with pytest.raises(
        ValueError, match=rf"{auto / 'autointerp.json' / 'np'}: --out lies inside the input {auto / 'autointerp.json'}"
    ):
        export_neuronpedia(features, NeuronpediaConfig(), auto / "autointerp.json" / "np", auto / "autointerp.json")
    assert sorted(p.name for p in auto.iterdir()) == ["autointerp.json"]


def test_bench_out_dir_is_expanded(tmp_path: Path, monkeypatch, capsys) -> None:
    from chatsae.workflows.bench import BenchConfig

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert BenchConfig(out_dir="~/bench").out_dir == str(tmp_path / "home" / "bench")
    rc, err = run(capsys, "bench", "sae", "--out-dir", "$CHATSAE_NO_SUCH_VAR/b", "--no-tasks", "--no-absorption")
    assert rc == 1 and "--out-dir '$CHATSAE_NO_SUCH_VAR/b': environment variable" in err, err


@pytest.mark.parametrize("command", ["compare", "sweep"])
def test_compare_and_sweep_out_dir_is_expanded_and_checked_first(command, tmp_path: Path, monkeypatch, capsys):
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    user_dir(home / "study")
    bad = ["--archs", "no-such-arch"]  # an error the command would report next: the output is checked before it
    rc, err = run(capsys, command, "--out-dir", "~/study", *bad)
    assert rc == 1 and f"{home / 'study'}: --out-dir is a non-empty directory that chatsae did not write" in err, err
    rc, err = run(capsys, command, "--out-dir", "${CHATSAE_NO_SUCH_VAR}/s", *bad)
    assert rc == 1 and "--out-dir '${CHATSAE_NO_SUCH_VAR}/s': environment variable" in err, err
    data = tmp_path / "chats"
    data.mkdir()
    flag = "--instruct-data" if command == "compare" else "--data"
    rc, err = run(capsys, command, "--out-dir", str(data / "study"), flag, str(data), *bad)
    assert rc == 1 and f"{data / 'study'}: --out-dir lies inside the input {data}" in err, err
    (tmp_path / "gone").symlink_to(tmp_path / "nowhere")
    rc, err = run(capsys, command, "--out-dir", "gone", *bad)
    assert rc == 1 and "gone: --out-dir is a symbolic link to" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chats", "gone", "home"]
    assert sorted(p.name for p in (home / "study").iterdir()) == ["notes.md"]
