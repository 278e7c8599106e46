"""The one ownership rule (chatsae.core.ownership): chatsae replaces or removes only files it wrote, never a folder
wholesale, never writes an output into another output's SAE/cache/features/run directory or into its inputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chatsae.cli import main
from chatsae.core.locking import MARKER, OutputDirError, claim_dir
from chatsae.core.ownership import check_output_place, check_replace, owns, record, remove_owned

pytestmark = pytest.mark.usefixtures("single_thread")


def train(out: Path, *extra: str) -> int:
    args = ["train", "--activations", "synthetic", "--d-in", "8", "--width", "24", "--total-tokens", "256"]
    args += ["--batch-size", "32", "--init-sample-tokens", "64", "--no-progress", "--checkpoint-every", "4"]
    return main([*args, "--out-dir", str(out), *extra])


def test_train_overwrite_keeps_user_files_inside_sae_and_checkpoint_folders(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert train(out) == 0
    step = sorted((out / "checkpoints").glob("step_*"))[-1]
    (out / "sae" / "notes.md").write_text("my notes on this SAE")
    (step / "why.txt").write_text("I keep this checkpoint")
    assert train(out, "--overwrite", "--lr", "0.001") == 0
    assert (out / "sae" / "notes.md").read_text() == "my notes on this SAE"
    assert (step / "why.txt").read_text() == "I keep this checkpoint"
    assert (out / "sae" / "cfg.json").is_file() and (out / "metrics.jsonl").read_text()


def test_a_folder_with_chatsae_file_names_is_not_taken_for_chatsae_own(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    assert train(out) == 0
    # a user replaces the SAE folder by one of their own that merely holds a cfg.json
    for f in (out / "sae").iterdir():
        f.unlink()
    (out / "sae").rmdir()
    (out / "sae").mkdir()
    (out / "sae" / "cfg.json").write_text("{}")
    (out / "sae" / "mine.bin").write_bytes(b"\x00" * 10)
    capsys.readouterr()
    assert train(out, "--overwrite") == 1
    err = capsys.readouterr().err
    assert f"{out / 'sae'}: chatsae did not write it" in err and "--overwrite" not in err
    assert sorted(p.name for p in (out / "sae").iterdir()) == ["cfg.json", "mine.bin"]
    # a foreign directory holding a file named like chatsae's: --overwrite keeps every user file
    user = tmp_path / "user"
    (user / "sae").mkdir(parents=True)
    (user / "sae" / "cfg.json").write_text("{}")
    (user / "metrics.jsonl").write_text("mine\n")
    assert train(user) == 1 and train(user, "--overwrite") == 1
    assert (user / "sae" / "cfg.json").read_text() == "{}" and (user / "metrics.jsonl").read_text() == "mine\n"


def test_remove_owned_removes_only_recorded_unchanged_files(tmp_path: Path) -> None:
    d = tmp_path / "d"
    claim_dir(d, "run")
    (d / "a.json").write_text("a")
    (d / "b.json").write_text("b")
    (d / "user.txt").write_text("u")
    record(d, "a.json", "b.json")
    (d / "b.json").write_text("edited by a user")
    assert owns(d, "a.json") and not owns(d, "b.json") and not owns(d, "user.txt")
    assert remove_owned(d) == ["b.json", "user.txt"]
    assert not (d / "a.json").exists() and (d / MARKER).is_file()
    (d / "b.json").unlink()
    (d / "user.txt").unlink()
    assert remove_owned(d) == [] and not d.exists()


def test_output_place_refuses_inputs_other_outputs_and_dangling_links(tmp_path: Path) -> None:
    sae = tmp_path / "sae"
    claim_dir(sae, "sae")
    with pytest.raises(ValueError, match=r"--output lies inside .*a sae directory of chatsae"):
        check_output_place(sae / "x.json", "--output")
    with pytest.raises(ValueError, match="--out lies inside the input"):
        check_output_place(tmp_path / "data" / "o", "--out", [tmp_path / "data"])
    with pytest.raises(ValueError, match="--out is the input"):
        check_output_place(tmp_path / "data", "--out", [tmp_path / "data"])
    (tmp_path / "link").symlink_to(tmp_path / "gone")
    with pytest.raises(ValueError, match="is a symbolic link to .*gone, which does not exist"):
        check_output_place(tmp_path / "link", "--out-dir")
    with pytest.raises(OutputDirError, match="which does not exist"):
        claim_dir(tmp_path / "link", "run")
    (tmp_path / "mine.md").write_text("user")
    with pytest.raises(ValueError, match="chatsae did not write it"):
        check_replace(tmp_path / "mine.md", "--out")
    assert json.loads((sae / MARKER).read_text())["kind"] == "sae"


def test_compare_and_sweep_refuse_a_user_directory_and_never_replace_its_files(tmp_path: Path) -> None:
    from chatsae.activations.harvest import HarvestConfig
    from chatsae.activations.pipeline import DataConfig
    from chatsae.train.config import TrainConfig
    from chatsae.workflows.study import Study, StudyEvalConfig, write_texts

    def study(out: Path, overwrite: bool = False) -> Study:
        cfgs = (DataConfig(model="m"), HarvestConfig(), TrainConfig(total_tokens=4096), StudyEvalConfig())
        return Study(out, *cfgs, overwrite=overwrite)

    user = tmp_path / "mine"
    user.mkdir()
    (user / "report.md").write_text("my report")
    with pytest.raises(OutputDirError, match=rf"{user}: --out-dir is a non-empty directory that chatsae did not"):
        study(user).check_plan({})
    assert sorted(p.name for p in user.iterdir()) == ["report.md"]
    study(user, overwrite=True).check_plan({})  # --overwrite: chatsae's files are added, the user's kept
    with pytest.raises(ValueError, match=r"report.md: exists and chatsae did not write it"):
        write_texts({user / "report.json": "{}", user / "report.md": "chatsae's"})
    assert (user / "report.md").read_text() == "my report" and not (user / "report.json").exists()
    write_texts({user / "report.json": "{}"})
    write_texts({user / "report.json": "{ }"})  # chatsae's own file: replaced
    assert (user / "report.json").read_text() == "{ }"


def saved_sae(path: Path) -> Path:
    from chatsae.sae import SAEConfig, create_sae, save_sae

    return save_sae(create_sae(SAEConfig(d_in=8, d_sae=16), seed=0), path)


def test_output_options_never_write_into_an_sae_folder_or_replace_a_user_file(tmp_path: Path, capsys) -> None:
    from chatsae.core.utils import atomic_dir
    from chatsae.sae import load_sae

    sae = saved_sae(tmp_path / "sae")
    before = {p.name: p.read_bytes() for p in sae.iterdir()}
    data = tmp_path / "d.jsonl"
    data.write_text('{"text": "hi"}\n')
    for target in ("cfg.json", "sae_weights.safetensors"):
        assert (
            main(["eval", str(sae), "--output", str(sae / target), "--data", str(data), "--hook", "resid_post.1"]) == 1
        )
        assert "--output lies inside the input" in capsys.readouterr().err
    with (
        pytest.raises(OutputDirError, match="--out is chatsae's sae directory"),
        atomic_dir(sae, True, "dashboard", "--out") as t,
    ):
        (t / "index.html").write_text("x")
    user = tmp_path / "steering"
    user.mkdir()
    (user / "steering.md").write_text("my own notes")
    prompts = tmp_path / "p.txt"
    prompts.write_text("hello\n")
    for extra in ([], ["--overwrite"]):
        assert main(["steer", str(sae), "--latent", "0", "--prompts", str(prompts), "--out", str(user), *extra]) == 1
        err = capsys.readouterr().err
        assert str(user) in err and ("chatsae did not write it" in err or "--overwrite" in err)
    assert main(["steer", str(sae), "--latent", "0", "--prompts", str(prompts), "--out", str(sae)]) == 1
    assert "--out is the input" in capsys.readouterr().err
    assert (user / "steering.md").read_text() == "my own notes"
    assert {p.name: p.read_bytes() for p in sae.iterdir()} == before and load_sae(sae).cfg.d_sae == 16


def test_an_output_directory_may_be_a_new_sub_directory_of_an_sae_directory(tmp_path):
    """SAE/neuronpedia (the export's default) replaces none of the SAE's files: allowed; a sub-directory named like one
    of the SAE's own files, the SAE directory itself, or a new directory inside a cache are refused."""
    from chatsae.core.ownership import check_output_place
    from chatsae.sae import SAEConfig, create_sae, save_sae

    sae_dir = save_sae(create_sae(SAEConfig(d_in=8, d_sae=16), seed=0), tmp_path / "sae")
    assert check_output_place(sae_dir / "neuronpedia", "--out", subdir=True) == sae_dir / "neuronpedia"
    for bad in (sae_dir, sae_dir / "cfg.json"):
        with pytest.raises(ValueError, match="a sae directory of chatsae"):
            check_output_place(bad, "--out", subdir=True)
    with pytest.raises(ValueError, match="a sae directory of chatsae"):
        check_output_place(sae_dir / "neuronpedia", "--out")  # a file output is never allowed there
