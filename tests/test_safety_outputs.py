"""Output directories: a directory chatsae did not write is refused (or merged into with --overwrite, never emptied);
rewriting chatsae's own directory keeps what others put there; user-given names never leave the output root."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from chatsae.activations.cache import Manifest
from chatsae.cli import main
from chatsae.core.locking import MARKER, OutputDirError, mark_dir
from chatsae.core.utils import atomic_dir, check_inside, safe_name
from chatsae.interp.neuronpedia import NeuronpediaConfig, export_neuronpedia
from chatsae.sae import SAEConfig, create_sae, load_sae, save_sae


def _tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (relative path -> bytes)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _user_dir(path: Path) -> dict[str, bytes]:
    path.mkdir(parents=True)
    (path / "thesis.tex").write_text("my only copy")
    (path / "figs").mkdir()
    (path / "figs" / "a.png").write_bytes(b"\x89PNG")
    return _tree(path)


def test_atomic_dir_refuses_a_foreign_dir_and_overwrite_keeps_its_files(tmp_path):
    before = _user_dir(tmp_path / "out")
    foreign = rf"{tmp_path / 'out'}: output directory is a non-empty directory"
    with pytest.raises(OutputDirError, match=foreign), atomic_dir(tmp_path / "out") as tmp:
        (tmp / "index.html").write_text("x")
    assert _tree(tmp_path / "out") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary directory left behind
    with atomic_dir(tmp_path / "out", overwrite=True, kind="dashboard") as tmp:
        (tmp / "index.html").write_text("x")
    after = _tree(tmp_path / "out")
    assert {k: after[k] for k in before} == before and after["index.html"] == b"x"
    assert json.loads(after[MARKER])["files"] == ["index.html"]
    # --overwrite merges directories but never replaces a user's file of the same name: refused before anything moves
    (tmp_path / "other" / "data").mkdir(parents=True)
    (tmp_path / "other" / "data" / "mine.csv").write_text("keep")
    (tmp_path / "other" / "index.html").write_text("old")
    mine = rf"{tmp_path / 'other' / 'index.html'}: a file chatsae did not write"
    with pytest.raises(OutputDirError, match=mine), atomic_dir(tmp_path / "other", overwrite=True) as tmp:
        (tmp / "data").mkdir()
        (tmp / "data" / "index.js").write_text("js")
        (tmp / "index.html").write_text("new")
    assert _tree(tmp_path / "other") == {"data/mine.csv": b"keep", "index.html": b"old"}
    (tmp_path / "other" / "index.html").unlink()
    with atomic_dir(tmp_path / "other", overwrite=True) as tmp:
        (tmp / "data").mkdir()
        (tmp / "data" / "index.js").write_text("js")
        (tmp / "index.html").write_text("new")
    got = _tree(tmp_path / "other")
    assert {k: got[k] for k in ("data/mine.csv", "data/index.js", "index.html")} == {
        "data/mine.csv": b"keep",
        "data/index.js": b"js",
        "index.html": b"new",
    }
    # chatsae's own files (recorded with their digests) are replaced by a later --overwrite; a user's edit is not
    with atomic_dir(tmp_path / "other", overwrite=True) as tmp:
        (tmp / "index.html").write_text("newer")
    assert (tmp_path / "other" / "index.html").read_text() == "newer"
    # a file where chatsae needs a directory: refused before anything moves
    (tmp_path / "third").mkdir()
    (tmp_path / "third" / "data").write_text("a file")
    kind = f"{tmp_path / 'third' / 'data'}: --overwrite cannot write chatsae's directory here"
    with pytest.raises(OutputDirError, match=kind), atomic_dir(tmp_path / "third", overwrite=True) as tmp:
        (tmp / "index.html").write_text("x")
        (tmp / "data").mkdir()
        (tmp / "data" / "index.js").write_text("js")
    assert _tree(tmp_path / "third") == {"data": b"a file"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other", "out", "third"]


def test_rewriting_chatsae_dir_keeps_entries_chatsae_did_not_write(tmp_path, monkeypatch):
    out = tmp_path / "site"
    with atomic_dir(out) as tmp:
        (tmp / "old.js").write_text("1")
        (tmp / "index.html").write_text("1")
    (out / "notes.md").write_text("user")
    (out / "features").mkdir()
    (out / "features" / "meta.json").write_text("{}")
    with atomic_dir(out) as tmp:
        (tmp / "index.html").write_text("2")
    after = _tree(out)
    assert after == {
        MARKER: (out / MARKER).read_bytes(),
        "features/meta.json": b"{}",
        "index.html": b"2",
        "notes.md": b"user",
    }  # old.js: chatsae's own, no longer written -> removed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site"]
    real_replace = os.replace

    def failing(src, dst):  # the final rename fails (disk error, interrupt): nothing may be lost
        if Path(src).name.startswith(".site.tmp-"):
            raise OSError("simulated failure")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing)
    with pytest.raises(OSError, match="simulated"), atomic_dir(out) as tmp:
        (tmp / "index.html").write_text("3")
    monkeypatch.undo()
    assert _tree(out) == after and sorted(p.name for p in tmp_path.iterdir()) == ["site"]
    (tmp_path / "link").symlink_to(out)  # a link is refused: replacing it would move the target's files around
    link = f"{tmp_path / 'link'}: output directory is a symbolic link"
    with pytest.raises(OutputDirError, match=link), atomic_dir(tmp_path / "link") as tmp:
        (tmp / "index.html").write_text("3")
    assert (out / "index.html").read_text() == "2" and (out / "notes.md").read_text() == "user"


def test_save_sae_refuses_foreign_dir_and_keeps_features_when_resaved(tmp_path):
    sae = create_sae(SAEConfig("standard", d_in=8, d_sae=16))
    before = _user_dir(tmp_path / "sae")
    with pytest.raises(OutputDirError, match="SAE directory is a non-empty directory that chatsae did not write"):
        save_sae(sae, tmp_path / "sae")
    assert _tree(tmp_path / "sae") == before
    save_sae(sae, tmp_path / "sae", overwrite=True)
    assert {k: v for k, v in _tree(tmp_path / "sae").items() if k in before} == before
    torch.testing.assert_close(load_sae(tmp_path / "sae").W_dec, sae.W_dec)
    own = save_sae(sae, tmp_path / "own")
    (own / "features").mkdir()
    (own / "features" / "meta.json").write_text("{}")
    save_sae(create_sae(SAEConfig("standard", d_in=8, d_sae=32)), own)  # an SAE dir rewritten: features/ stays
    assert (own / "features" / "meta.json").read_text() == "{}" and load_sae(own).cfg.d_sae == 32


def test_cli_dashboard_out_foreign_dir(interp_features, tmp_path, capsys):
    fdir = interp_features[0].root
    before = _user_dir(tmp_path / "docs")
    assert main(["dashboard", str(fdir), "--out", str(tmp_path / "docs")]) == 1
    err = capsys.readouterr().err
    assert f"{tmp_path / 'docs'}: --out is a non-empty directory that chatsae did not write" in err
    assert "--overwrite" in err and _tree(tmp_path / "docs") == before
    assert main(["dashboard", str(fdir), "--out", str(tmp_path / "docs"), "--overwrite"]) == 0
    after = _tree(tmp_path / "docs")
    assert {k: after[k] for k in before} == before and "index.html" in after and "data/index.js" in after
    assert main(["dashboard", str(fdir), "--out", str(tmp_path / "docs")]) == 0  # now chatsae's: rewritten
    assert {k: v for k, v in _tree(tmp_path / "docs").items() if k in before} == before


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--source-set", "x/../../../victim"),
        ("--model-id", "../../victim"),
        ("--model-id", "/tmp/abs"),
        ("--model-id", ".."),
        ("--source-set", "a\nb"),
        ("--source-set", "a\\..\\b"),
    ],
)
def test_cli_export_rejects_names_that_leave_the_output_root(interp_features, tmp_path, capsys, option, value):
    fdir = interp_features[0].root
    (tmp_path / "victim").mkdir()
    (tmp_path / "victim" / "keep.txt").write_text("keep")
    before = _tree(tmp_path)
    out = tmp_path / "deep" / "er" / "export"
    assert main(["export-neuronpedia", str(fdir), "--out", str(out), option, value]) == 1
    assert f"{option}: {value!r} is not a plain name" in capsys.readouterr().err
    assert _tree(tmp_path) == before and not (tmp_path / "deep").exists()


def test_export_checks_the_target_stays_inside_out_and_refuses_foreign_out(interp_features, tmp_path):
    data = interp_features[0]
    out = tmp_path / "export"
    mark_dir(out, "neuronpedia")  # an export root of chatsae's
    (tmp_path / "elsewhere").mkdir()
    (out / "tiny").symlink_to(tmp_path / "elsewhere")  # model_id dir is a link out of the root
    with pytest.raises(ValueError, match="outside the output root"):
        export_neuronpedia(data, NeuronpediaConfig(model_id="tiny"), out)
    assert list((tmp_path / "elsewhere").iterdir()) == []
    foreign = tmp_path / "mine"
    before = _user_dir(foreign)
    with pytest.raises(OutputDirError, match=f"{foreign}: --out is a non-empty directory"):
        export_neuronpedia(data, NeuronpediaConfig(model_id="m"), foreign)
    assert _tree(foreign) == before
    target = export_neuronpedia(data, NeuronpediaConfig(model_id="m", overwrite=True), foreign)
    assert target == foreign / "m" / "1-chatsae-res-32" and (target / "features" / "batch-0.jsonl.gz").is_file()
    assert {k: v for k, v in _tree(foreign).items() if k in before} == before


def test_safe_name_and_check_inside(tmp_path):
    assert safe_name("gemma-2-2b_it.v1 (copy)", "--x") == "gemma-2-2b_it.v1 (copy)"
    for bad in ("", " ", ".", "..", "a/b", "/abs", "a\\b", "~user", "a\x00b", "a\tb"):
        with pytest.raises(ValueError, match="--x: .* is not a plain name"):
            safe_name(bad, "--x")
    assert check_inside(tmp_path, tmp_path / "a" / "b", "--o") == tmp_path / "a" / "b"
    with pytest.raises(ValueError, match="--o: .* outside the output root"):
        check_inside(tmp_path / "root", tmp_path / "root" / ".." / "x", "--o")


@pytest.mark.parametrize("name", ["../x.npy", "/etc/passwd", "..", "sub/shard.npy"])
def test_manifest_shard_outside_the_cache_is_rejected(tmp_path, name):
    mark_dir(tmp_path, "cache")  # chatsae's cache (a manifest is written only there), with a bad shard name
    Manifest(
        d_in=2,
        n_tokens=1,
        complete=True,
        shards=[
            {"acts": "shard_00000.acts.npy", "meta": "shard_00000.meta.npz", "n": 1},
            {"acts": name, "meta": "m.npz", "n": 1},
        ],
    ).write(tmp_path)
    with pytest.raises(ValueError, match=rf"{tmp_path / 'manifest.json'}: shard 1 acts file: .* is not a plain name"):
        Manifest.read(tmp_path)
