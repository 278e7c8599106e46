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
