"""chatsae's own JSON files (checkpoint checksums and run config, judge-cache entries, features files, the files the
Neuronpedia export and the dashboard read) that are corrupt or nested 100,000 levels deep: an error naming the file
and what was expected, raised where the file is read (not the CLI's generic RecursionError line)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("single_thread")

DEEP = "[" * 100_000
BAD = {"corrupt": ('{"a": 1,', "not valid JSON"), "deep": (DEEP, "JSON nested too deeply to read")}


def test_read_json_file_names_the_file_and_what_was_expected(tmp_path: Path) -> None:
    from chatsae.core.utils import read_json_file

    f = tmp_path / "x.json"
    for text, why in BAD.values():
        f.write_text(text)
        with pytest.raises(ValueError, match=rf"^{f}: {why}.*; expected the thing$"):
            read_json_file(f, "the thing")
    f.write_text("[1]")
    with pytest.raises(ValueError, match=rf"^{f}: expected the thing \(a JSON object\), got list$"):
        read_json_file(f, "the thing")
    assert read_json_file(f, "a list", list) == [1]


@pytest.mark.parametrize("case", sorted(BAD))
def test_checkpoint_json_files_name_the_file(tmp_path: Path, case: str) -> None:
    from chatsae.train.checkpoints import CheckpointError, check_run_config, verify_checkpoint

    text, why = BAD[case]
    step = tmp_path / "step_00000004"
    step.mkdir()
    (step / "checksums.json").write_text(text)
    with pytest.raises(CheckpointError, match=rf"^{step / 'checksums.json'}: {why}.*expected the checkpoint's"):
        verify_checkpoint(step)
    (step / "run_config.json").write_text(text)
    with pytest.raises(CheckpointError, match=rf"^{step / 'run_config.json'}: {why}.*expected the run settings"):
        check_run_config(step, {"lr": 0.001})


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_damaged_judge_cache_entry_is_named_and_recomputed(tmp_path: Path, capsys, case: str) -> None:
    from chatsae.interp.judges import CachedJudge

    class Echo:
        name, prefills, calls = "echo", False, 0

        def complete(self, messages, temperature=0.0, max_tokens=512, seed=None):
            self.calls += 1
            return "fresh answer"

    judge = CachedJudge(Echo(), tmp_path / "cache")
    messages = [{"role": "user", "content": "hi"}]
    assert judge.complete(messages) == "fresh answer" and judge.judge.calls == 1
    key = judge.key(messages, 0.0, 512, None)
    entry = tmp_path / "cache" / key[:2] / f"{key}.json"
    entry.write_text(BAD[case][0])
    capsys.readouterr()
    assert judge.complete(messages) == "fresh answer" and judge.judge.calls == 2
    err = capsys.readouterr().err
    assert f"{entry}: {BAD[case][1]}" in err and "a judge-cache entry" in err and "asking the judge again" in err
    assert json.loads(entry.read_text())["answer"] == "fresh answer"


@pytest.mark.parametrize("case", sorted(BAD))
def test_features_files_name_the_file(interp_features, tmp_path: Path, case: str) -> None:
    from chatsae.interp.autointerp import AutointerpConfig, run_autointerp
    from chatsae.interp.dashboard import build_dashboard
    from chatsae.interp.features import FeaturesConfig, collect_features
    from chatsae.interp.neuronpedia import NeuronpediaConfig, export_neuronpedia
    from chatsae.interp.store import FeatureData

    data, sae, model, tokenizer, seqs = interp_features
    text, why = BAD[case]
    root = Path(shutil.copytree(data.root, tmp_path / "features"))
    auto = root / "autointerp.json"
    auto.write_text(text)
    copy = FeatureData(root)
    expected = rf"^{auto}: {why}.*; expected chatsae's auto-interpretation results"
    with pytest.raises(ValueError, match=expected):
        copy.autointerp()
    with pytest.raises(ValueError, match=expected):
        export_neuronpedia(copy, NeuronpediaConfig(), tmp_path / "np")
    assert not (tmp_path / "np").exists()
    with pytest.raises(ValueError, match=expected):
        build_dashboard(root, tmp_path / "dash")
    with pytest.raises(ValueError, match=expected):
        run_autointerp(copy, object(), AutointerpConfig(n_latents=1))  # type: ignore[arg-type]  # read before judging
    meta = root / "meta.json"
    meta.write_text(text)
    expected = rf"^{meta}: {why}.*; expected chatsae's features metadata"
    with pytest.raises(ValueError, match=expected):
        FeatureData(root)
    with pytest.raises(ValueError, match=expected):
        collect_features(sae, model, tokenizer, seqs, FeaturesConfig(n_samples=2), root)
