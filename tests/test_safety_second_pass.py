"""Reliability, second pass: seed ranges, unreadable input files named, cache d_in mismatches, the ownership record
deciding what a cache / study / features directory is, and output checks of ``proxies --out`` / ``bench --out-dir``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from chatsae.activations.cache import ActivationCache, CacheWriter, Manifest, check_cache_dir
from chatsae.activations.source import TensorSource
from chatsae.cli import main
from chatsae.cli.common import error_message
from chatsae.core.config import SEED_MAX, ConfigError
from chatsae.core.locking import MARKER, OutputDirError, mark_dir
from chatsae.core.ownership import produced_outputs
from chatsae.data.formats import DataFormatError, read_records
from chatsae.sae import SAEConfig, create_sae, save_sae
from chatsae.sae.io import read_raw_cfg
from chatsae.train.config import TrainConfig
from chatsae.train.trainer import Trainer
from chatsae.workflows.bench import BenchConfig, check_output
from chatsae.workflows.compare import seed_list

pytestmark = pytest.mark.usefixtures("single_thread")
DEEP = "[" * 100_000 + "]" * 100_000


def test_a_seed_out_of_range_names_seed_and_the_range(capsys: pytest.CaptureFixture[str]) -> None:
    for seed in (str(10**30), "-1"):
        assert main(["train", "--activations", "synthetic", "--seed", seed, "--out-dir", "never"]) == 1
        err = capsys.readouterr().err
        assert err == f"chatsae train: error: --seed must be an integer in [0, {SEED_MAX}], got {seed}\n", err
    assert not Path("never").exists()
    with pytest.raises(ConfigError, match=rf"--seed must be an integer in \[0, {SEED_MAX}\]"):
        BenchConfig(seed=2**64)
    with pytest.raises(ConfigError, match=r"--seed must be an integer in \[0, 4294967293\] \(with 3 seeds"):
        seed_list(3, SEED_MAX - 1)
    with pytest.raises(ValueError, match=r"--seeds: .*give an integer in \[1, 1000\]"):
        seed_list(10**30, 0)
    assert TrainConfig(seed=SEED_MAX).seed == SEED_MAX and seed_list(2, 7) == [7, 8]


def test_unreadable_input_files_name_the_file_and_what_was_expected(tmp_path: Path) -> None:
    garbage = tmp_path / "acts.npy"
    garbage.write_bytes(b"not numpy at all" * 8)
    with pytest.raises(ValueError, match=rf"^{garbage}: not a valid \.npy file \(expected a float \[N, d_in\]"):
        TensorSource.from_file(garbage, 4)
    pickled = tmp_path / "objects.npy"
    np.save(pickled, np.array([{"a": 1}] * 8, dtype=object))
    with pytest.raises(ValueError, match=rf"^{pickled}: not a valid \.npy file"):
        TensorSource.from_file(pickled, 4)
    ints = tmp_path / "ints.pt"
    torch.save(torch.arange(64).reshape(8, 8), ints)
    with pytest.raises(ValueError, match=rf"^{ints}: expected a float \[N, d_in\] activation array, got Tensor"):
        TensorSource.from_file(ints, 4)
    parquet = tmp_path / "data.parquet"
    parquet.write_bytes(b"PAR1" + b"\0" * 64)
    with pytest.raises(DataFormatError, match=r"data.parquet: not a valid Parquet file after 0 records"):
        list(read_records(parquet))
    deep = tmp_path / "deep.json"
    deep.write_text(DEEP)
    with pytest.raises(DataFormatError, match=r"deep.json: JSON nested too deeply to read; expected a list"):
        list(read_records(deep))
    lines = tmp_path / "deep.jsonl"
    lines.write_text('{"text": "hi"}\n' + DEEP + "\n")
    with pytest.raises(DataFormatError, match=r"deep.jsonl: record 1 \(line 2\): JSON nested too deeply"):
        list(read_records(lines))
    (tmp_path / "sae").mkdir()
    (tmp_path / "sae" / "cfg.json").write_text(DEEP)
    with pytest.raises(ValueError, match=r"sae/cfg.json: invalid JSON \(maximum recursion depth"):
        read_raw_cfg(tmp_path / "sae")
    config = tmp_path / "c.json"
    config.write_text('{"train": ' + DEEP + "}")
    assert main(["train", "--config", str(config), "--activations", "synthetic"]) == 1

    def read(path: Path) -> object:
        return json.loads(path.read_text())

    with pytest.raises(RecursionError) as e:
        read(deep)
    assert error_message(e.value).startswith(f"{deep}: nested too deeply to read")


def small_cache(directory: Path, d_in: int = 16) -> Path:
    writer = CacheWriter.open(directory, Manifest(d_in=d_in, model="m", hook="resid_post.1"), resume=False)
    meta = {k: torch.zeros(32, dtype=torch.int64) for k in ("token_ids", "positions", "sample_ids")}
    writer.write_shard(torch.randn(32, d_in), meta, windows_done=1)
    writer.finish()
    return directory


def test_a_manifest_whose_d_in_disagrees_is_a_d_in_mismatch_naming_the_file(tmp_path: Path) -> None:
    cache = small_cache(tmp_path / "cache")
    manifest = Manifest.read(cache)
    manifest.d_in = 8
    manifest.write(cache)
    with pytest.raises(ValueError, match=rf"^{cache / 'manifest.json'}: d_in mismatch: the manifest says d_in 8, its "):
        ActivationCache(cache).gather(torch.arange(4))
    acts = tmp_path / "acts.pt"
    torch.save(torch.randn(64, 16), acts)
    sae = create_sae(SAEConfig(d_in=8, d_sae=16), seed=0)
    with pytest.raises(ValueError, match=rf"^{acts}: d_in mismatch: the activations have d_in 16, the SAE's d_in is 8"):
        Trainer(sae, TrainConfig(batch_size=8, progress=False), TensorSource.from_file(acts, 8), tmp_path / "run")


def test_a_user_folder_with_a_manifest_json_is_not_taken_for_a_cache(tmp_path: Path) -> None:
    real = small_cache(tmp_path / "real")
    check_cache_dir(real)  # chatsae's cache (marker of kind cache): accepted
    user = tmp_path / "mine"
    user.mkdir()
    mine = json.dumps({"d_in": 16, "model": "m", "hook": "resid_post.1", "shards": [], "complete": False})
    (user / "manifest.json").write_text(mine)
    with pytest.raises(OutputDirError, match=rf"{user}: a non-empty directory that is not a chatsae activation cache"):
        small_cache(user)
    assert sorted(p.name for p in user.iterdir()) == ["manifest.json"]
    assert (user / "manifest.json").read_text() == mine
    other = tmp_path / "run"
    mark_dir(other, "run")
    (other / "manifest.json").write_text(mine)
    with pytest.raises(OutputDirError, match=rf"{other}: a chatsae run directory, not an activation cache"):
        check_cache_dir(other)


def test_study_decides_already_produced_from_the_ownership_record(tmp_path: Path) -> None:
    from chatsae.activations.harvest import HarvestConfig
    from chatsae.activations.pipeline import DataConfig
    from chatsae.workflows.study import Study, StudyEvalConfig

    def study(lr: float) -> Study:
        cfgs = (DataConfig(model="m"), HarvestConfig(), TrainConfig(total_tokens=4096, lr=lr), StudyEvalConfig())
        return Study(tmp_path / "study", *cfgs)

    study(0.001).check_plan({})
    fake = tmp_path / "study" / "fast_jumprelu" / "sae"
    fake.mkdir(parents=True)
    (fake / "cfg.json").write_text("{}")  # chatsae's file names, written by a user: nothing produced yet
    assert produced_outputs(tmp_path / "study", ("sae",)) == []
    assert study(0.002).check_plan({})["train"]["lr"] == 0.002  # a plan that produced nothing may be replaced
    sae = save_sae(create_sae(SAEConfig(d_in=8, d_sae=16), seed=0), tmp_path / "study" / "fast_topk" / "sae")
    assert produced_outputs(tmp_path / "study", ("sae",)) == [sae]
    with pytest.raises(ValueError, match=r"plan.json: this directory holds a study with other settings \(train: "):
        study(0.003).check_plan({})
    for file in sae.iterdir():  # every file chatsae wrote there was changed by a user: not chatsae's output any more
        if file.name != MARKER:
            file.write_bytes(b"edited")
    assert produced_outputs(tmp_path / "study", ("sae",)) == []


def test_bench_and_proxies_outputs_go_through_the_ownership_checks(tmp_path: Path, capsys) -> None:
    sae = save_sae(create_sae(SAEConfig(d_in=8, d_sae=16), seed=0), tmp_path / "sae")
    cache = small_cache(tmp_path / "cache")
    with pytest.raises(OutputDirError, match=rf"{cache / 'b'}: --out-dir lies inside {cache}, a cache directory"):
        check_output(cache / "b", [sae])
    user = tmp_path / "mine"
    user.mkdir()
    (user / "report.txt").write_text("my report")
    with pytest.raises(OutputDirError, match=rf"{user}: --out-dir is a non-empty directory that chatsae did not"):
        check_output(user, [sae])
    with pytest.raises(ValueError, match=r"report.txt: exists and chatsae did not write it"):
        check_output(user, [sae], overwrite=True)
    assert sorted(p.name for p in user.iterdir()) == ["report.txt"]
    assert main(["bench", str(sae), "--out-dir", str(user), "--overwrite", "--no-absorption"]) == 1
    assert "report.txt: exists and chatsae did not write it" in capsys.readouterr().err
    feats = tmp_path / "features"
    feats.mkdir()
    for out, why in ((feats / "p.json", "--out lies inside the input"), (user / "report.txt", "chatsae did not write")):
        assert main(["proxies", str(feats), "--out", str(out)]) == 1
        assert why in capsys.readouterr().err
    assert (user / "report.txt").read_text() == "my report" and not (feats / "p.json").exists()


def test_features_directories_carry_the_marker(interp_features, tmp_path: Path) -> None:
    from chatsae.interp.features import FeaturesConfig, check_features_dir, collect_features

    data, sae, model, tokenizer, seqs = interp_features
    assert json.loads((data.root / MARKER).read_text())["kind"] == "features"
    user = tmp_path / "mine"
    user.mkdir()
    (user / "meta.json").write_text('{"complete": true}')  # a user's meta.json: not read as chatsae's results
    with pytest.raises(ValueError, match=rf"{user}: not a chatsae features directory \(its meta.json was not written"):
        collect_features(sae, model, tokenizer, seqs, FeaturesConfig(n_samples=2, overwrite=True), user)
    assert sorted(p.name for p in user.iterdir()) == ["meta.json"]
    run = tmp_path / "run"
    mark_dir(run, "run")
    with pytest.raises(ValueError, match=rf"{run}: not a chatsae features directory \(a chatsae run directory\)"):
        check_features_dir(run, {"format_version": 1, "fingerprint": "x"})


def test_a_cache_folder_without_the_marker_is_read_but_never_written(tmp_path: Path) -> None:
    """A copy of a cache without chatsae's marker (e.g. copied by hand) is read as before; nothing writes into it."""
    cache = small_cache(tmp_path / "cache")
    (cache / MARKER).unlink()
    before = {p.name: p.read_bytes() for p in cache.iterdir()}
    assert ActivationCache(cache).gather(torch.arange(4)).acts.shape == (4, 16)  # reading is allowed
    manifest = Manifest.read(cache)
    with pytest.raises(OutputDirError, match=rf"^{cache}: not a chatsae activation cache"):
        manifest.write(cache)
    with pytest.raises(OutputDirError, match=rf"{cache}: a non-empty directory that is not a chatsae activation cache"):
        CacheWriter.open(cache, manifest, resume=True)
    (cache / "shard_notes.txt").write_text("mine")
    assert {p.name: p.read_bytes() for p in cache.iterdir() if p.name != "shard_notes.txt"} == before
    # in chatsae's own cache, the orphan clean-up removes only shard files chatsae wrote
    own = small_cache(tmp_path / "own")
    (own / "shard_notes.txt").write_text("mine")
    CacheWriter.open(own, Manifest.read(own), resume=True)
    assert (own / "shard_notes.txt").read_text() == "mine"
