"""``chatsae eval``: help, an end-to-end run on a saved tiny model, clear errors."""

from __future__ import annotations

import json

import pytest
import torch

from chatsae.cli import main
from chatsae.eval import SUBSETS
from chatsae.sae import SAEConfig, create_sae, save_sae


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_eval_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["eval", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for flag in (
        "SAE_DIR",
        "--model",
        "--data",
        "--method",
        "--hook",
        "--max-samples",
        "--holdout",
        "--output",
        "--no-lm-loss",
        "--max-tokens",
    ):
        assert flag in out, flag


@pytest.fixture(scope="module")
def saved(tiny_llama, tmp_path_factory):
    """(model dir, SAE dir, data file): the tiny Llama saved to disk, a random SAE naming it, 4 chat records."""
    model, tok = tiny_llama
    root = tmp_path_factory.mktemp("evalcli")
    model.save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    torch.manual_seed(0)
    meta = {
        "model_name": str(root / "model"),
        "hook_name": "mlp_out.2",
        "method": "fast",
        "exclude_first_position": True,
    }
    save_sae(create_sae(SAEConfig("jumprelu", d_in=64, d_sae=128, metadata=meta)), root / "sae")
    data = root / "chat.jsonl"
    rows = [
        {"messages": [{"role": "user", "content": f"Say {i}."}, {"role": "assistant", "content": f"{i}!"}]}
        for i in range(4)
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root / "model", root / "sae", data


def test_eval_end_to_end(saved, capsys):
    _, sae_dir, data = saved
    rc = main(["eval", str(sae_dir), "--data", str(data), "--max-samples", "3", "--no-progress", "--device", "cpu"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "log2 MSE" in out and "assistant" in out and "eval.json" in out
    result = json.loads((sae_dir / "eval.json").read_text())
    assert set(result["metrics"]) == set(SUBSETS)
    assert result["setup"]["hook"] == "mlp_out.2" and result["setup"]["sequences"] == 3
    assert result["setup"]["splice_first_position"] is False  # the SAE was trained without position 0
    assert result["metrics"]["all"]["ce_spliced"] is not None


def test_eval_options_and_errors(saved, tmp_path, capsys):
    _, sae_dir, data = saved
    out = tmp_path / "r.json"
    rc = main(
        [
            "eval",
            str(sae_dir),
            "--data",
            str(data),
            "--no-lm-loss",
            "--hook",
            "resid_pre.1",
            "--method",
            "bt-f",
            "--context-size",
            "16",
            "--output",
            str(out),
            "--no-progress",
            "--device",
            "cpu",
        ]
    )
    assert rc == 0
    result = json.loads(out.read_text())
    assert result["setup"]["hook"] == "resid_pre.1" and result["setup"]["method"] == "bt-f"
    assert result["setup"]["lm_loss"] is False and result["headline"]["delta_ce"] is None
    capsys.readouterr()
    assert main(["eval", str(sae_dir), "--device", "cpu"]) == 1  # no data
    assert "--data is required" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "nothing"), "--data", str(data)]) == 1
    assert "cfg.json" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n{"oops": 1}\n')
    assert main(["eval", str(sae_dir), "--data", str(bad), "--no-progress", "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert "bad.jsonl" in err and "record 1" in err
    assert main(["eval", str(sae_dir), "--method", "nonsense"]) == 1  # rejected by EvalConfig
    assert "--method must be one of fast, bt-f, bt-p; got 'nonsense'" in capsys.readouterr().err
