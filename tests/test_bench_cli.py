"""``chatsae bench``: end to end on a tiny random model and tiny files (text and token tasks, absorption, SAEBench
JSON layout), its refusals, and one slow run on the embedded model."""

from __future__ import annotations

import json

import pytest
import torch

from chatsae.cli import main
from chatsae.sae import SAEConfig, create_sae, save_sae

SAEBENCH_FIELDS = {
    "eval_type_id",
    "eval_config",
    "eval_id",
    "datetime_epoch_millis",
    "eval_result_metrics",
    "eval_result_details",
    "sae_bench_commit_hash",
    "sae_lens_id",
    "sae_lens_release_id",
    "sae_lens_version",
    "sae_cfg_dict",
    "eval_result_unstructured",
}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def setup(tiny_llama, tmp_path_factory):
    model, tok = tiny_llama
    root = tmp_path_factory.mktemp("bench")
    model.save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    torch.manual_seed(0)
    meta = {"model_name": str(root / "model"), "hook_name": "resid_post.1", "method": "fast"}
    save_sae(create_sae(SAEConfig("standard", d_in=64, d_sae=96, metadata=meta)), root / "sae")
    chat = _jsonl(
        root / "chat.jsonl",
        [
            {
                "messages": [
                    {"role": "system", "content": f"You are bot number {i}."},
                    {"role": "user", "content": f"Tell me about the number {i} please."},
                    {"role": "assistant", "content": f"The number {i} is a fine number."},
                ]
            }
            for i in range(10)
        ],
    )
    maths = _jsonl(root / "maths.jsonl", [{"question": f"What is {i} + {i}?", "answer": f"{2 * i}"} for i in range(8)])
    words = ["news report", "story of love", "science paper"]
    brown = _jsonl(
        root / "brown.jsonl",
        [{"id": f"c{g}{i:02d}", "text": f"{words[n]} {i} " * 30} for n, g in enumerate("abj") for i in range(1, 5)],
    )
    return root, chat, maths, brown


def test_bench_end_to_end(setup, tmp_path, capsys):
    root, chat, maths, brown = setup
    out = tmp_path / "out"
    args = ["bench", str(root / "sae"), "--out-dir", str(out), "--device", "cpu", "--ks", "1,2"]
    args += ["--task", f"role={chat}", "--task", f"template={chat}", "--task", f"source={chat},{maths}"]
    args += ["--task", f"genre={brown}", "--per-class", "8", "--chunks-per-text", "2", "--context-length", "24"]
    args += ["--tokens-per-class", "30", "--absorption-words", "100", "--absorption-icl", "3"]
    args += ["--absorption-min-letters", "1", "--absorption-max-k", "2"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "sparse probing" in printed and "dense raw" in printed and "sae k=2" in printed and "absorption" in printed
    result = json.loads((out / "bench.json").read_text())
    tasks = result["tasks"]
    assert set(tasks) == {"role", "template", "source", "genre"}
    assert tasks["role"]["positives"] == ["system", "user", "assistant"]
    assert tasks["template"]["positives"] == ["template"]  # two classes: one probe
    assert tasks["source"]["positives"] == ["chat"]
    assert tasks["genre"]["positives"] == ["genre_a", "genre_b", "genre_j"]
    # genre: 4 documents per genre (per_class 8 / 2 chunks), 1 held out, 2 windows each
    assert tasks["genre"]["counts"]["test"] == {"genre_a": 2, "genre_b": 2, "genre_j": 2}
    assert tasks["genre"]["counts"]["train"] == {"genre_a": 6, "genre_b": 6, "genre_j": 6}
    assert sum(tasks["role"]["counts"]["train"].values()) + sum(tasks["role"]["counts"]["test"].values()) == 90
    # source: 8 of the 10 chat records (reservoir) and all 8 maths records, 20% held out per class
    assert tasks["source"]["counts"] == {"train": {"chat": 6, "maths": 6}, "test": {"chat": 2, "maths": 2}}
    for res in tasks.values():
        for scores in res["classes"].values():
            assert set(scores) == {"llm", "llm_top_1", "llm_top_2", "sae", "sae_top_1", "sae_top_2"}
            assert len(scores["sae_top_2"]["features"]) == 2
            lo, hi = scores["llm"]["interval"]
            assert lo <= scores["llm"]["accuracy"] <= hi
    # distinct texts per genre: even the random model's dense probe beats chance
    assert tasks["genre"]["mean"]["llm"]["accuracy"] > 0.6
    sp = json.loads((out / "saebench_sparse_probing.json").read_text())
    assert set(sp) == SAEBENCH_FIELDS and sp["eval_type_id"] == "sparse_probing"
    assert {d["dataset_name"] for d in sp["eval_result_details"]} == set(tasks)
    assert set(sp["eval_result_metrics"]["sae"]) == {
        "sae_test_accuracy",
        "sae_top_1_test_accuracy",
        "sae_top_2_test_accuracy",
    }
    expected = sum(tasks[t]["mean"]["sae_top_1"]["accuracy"] for t in tasks) / 4
    assert sp["eval_result_metrics"]["sae"]["sae_top_1_test_accuracy"] == pytest.approx(expected)
    assert sp["sae_bench_commit_hash"] is None and sp["sae_lens_id"] == "custom_sae"
    assert sp["sae_cfg_dict"]["d_sae"] == 96
    ab = result["absorption"]
    assert result["absorption_setup"]["test_words"] == 20 and len(ab["letters"]) > 5
    if ab["metrics"] is not None:
        doc = json.loads((out / "saebench_absorption_first_letter.json").read_text())
        assert set(doc) == SAEBENCH_FIELDS and doc["eval_type_id"] == "absorption_first_letter"
        assert {d["first_letter"] for d in doc["eval_result_details"]} == set(ab["evaluated_letters"])
    assert (out / ".chatsae").is_file() and "sparse probing" in (out / "report.txt").read_text()


def test_bench_refusals(setup, tmp_path, capsys):
    root, chat, _, _ = setup
    sae = str(root / "sae")
    assert main(["bench", sae, "--out-dir", str(root / "sae" / "inside"), "--no-absorption"]) == 1
    assert "--out-dir lies inside the input" in capsys.readouterr().err
    assert main(["bench", sae, "--task", f"colour={chat}"]) == 1
    assert "NAME one of genre, source, role, template" in capsys.readouterr().err
    assert main(["bench", sae, "--task", f"source={chat}"]) == 1
    assert "two or more files" in capsys.readouterr().err
    bad = _jsonl(tmp_path / "bad.jsonl", [{"id": "x1", "text": "hello"}])
    out = tmp_path / "o"
    assert (
        main(["bench", sae, "--task", f"genre={bad}", "--out-dir", str(out), "--no-absorption", "--device", "cpu"]) == 1
    )
    err = capsys.readouterr().err
    assert f"{bad}: line 1: field 'id' 'x1' is not a Brown corpus id" in err
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert main(["bench", sae, "--out-dir", str(foreign), "--no-absorption"]) == 1
    assert "chatsae did not write" in capsys.readouterr().err


@pytest.mark.slow
def test_bench_embedded_small(embedded, tmp_path, capsys):
    """The embedded SmolLM2 at its middle layer with a random SAE: a handful of records, absorption on 150 words."""
    model, _ = embedded
    meta = {"model_name": "embedded", "hook_name": "resid_post.15", "method": "fast"}
    torch.manual_seed(0)
    save_sae(create_sae(SAEConfig("jumprelu", d_in=576, d_sae=1152, metadata=meta)), tmp_path / "sae")
    out = tmp_path / "out"
    rc = main(
        ["bench", str(tmp_path / "sae"), "--out-dir", str(out), "--device", "cpu", "--records", "12"]
        + ["--tokens-per-class", "60", "--ks", "1,5", "--absorption-words", "150", "--absorption-min-letters", "1"]
        + ["--max-length", "256"]
    )
    assert rc == 0
    result = json.loads((out / "bench.json").read_text())
    # the template-vs-content task is easy for the real model's raw activations
    assert result["tasks"]["template"]["mean"]["llm"]["accuracy"] > 0.8
    assert result["absorption"]["letters"]


def test_sae_label(tmp_path):
    from chatsae.workflows.bench_report import sae_label

    assert sae_label(tmp_path / "run7" / "sae") == "run7_sae"
    assert sae_label(tmp_path / "my_sae") == "my_sae"


def test_saebench_absorption_layout():
    from types import SimpleNamespace

    from chatsae.workflows.bench_report import saebench_absorption

    letter = {"mean_absorption_fraction": 0.25, "full_absorption_rate": 0.1, "num_full_absorption": 1}
    letters = [
        {"letter": "a", **letter, "num_probe_true_positives": 10, "num_split_features": 2},
        {"letter": "b", **letter, "num_probe_true_positives": 0, "num_split_features": 1},
    ]
    setup = {"word_position": 81, "prompt_length": 87, "train_words": 800, "test_words": 200}
    setup["config"] = {"f1_jump_threshold": 0.03, "max_k": 10, "l1_decay": 0.01, "l1_steps": 300}
    setup["config"].update(min_probe_f1=0.6, min_letters=1)
    metrics = {"mean_absorption_fraction_score": 0.25}
    result = {"absorption": {"metrics": metrics, "evaluated_letters": ["a"], "letters": letters}}
    result["absorption_setup"] = setup
    cfg = SimpleNamespace(seed=1, absorption_template="{word}:", max_batch_size=8, dtype="float32")
    doc = saebench_absorption(result, cfg, "embedded", "run_sae", {"d_sae": 4}, "id", 5)
    assert doc is not None and set(doc) == SAEBENCH_FIELDS
    assert doc["eval_config"]["prompt_token_pos"] == -6  # SAEBench's position for its template
    assert [d["first_letter"] for d in doc["eval_result_details"]] == ["a"]
    assert doc["eval_result_metrics"] == {"mean": metrics} and doc["eval_result_unstructured"] is None
    result["absorption"]["metrics"] = None
    assert saebench_absorption(result, cfg, "embedded", "run_sae", {}, "id", 5) is None


def test_bench_default_output_is_under_runs_and_is_what_it_prints(setup, tmp_path, monkeypatch, capsys):
    """Without --out-dir the files go to runs/bench/<SAE name> (git-ignored), the place the command prints."""
    from chatsae.workflows.bench_report import sae_label

    root, chat, _, _ = setup
    monkeypatch.chdir(tmp_path)
    args = ["bench", str(root / "sae"), "--device", "cpu", "--ks", "1", "--no-absorption"]
    assert main([*args, "--task", f"template={chat}", "--tokens-per-class", "20"]) == 0
    printed = capsys.readouterr().out
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("bench.json"))
    expected = f"runs/bench/{sae_label(root / 'sae')}/bench.json"
    assert written == [expected] and f"wrote {expected}" in printed
