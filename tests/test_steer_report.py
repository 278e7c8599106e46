"""Steering reports: measures against hand/naive values, the report driver, prompt files and the CLI commands."""

from __future__ import annotations

import json
import math

import pytest
import torch

from chatsae.cli import main
from chatsae.models import capture
from chatsae.steer import (
    answer_nll,
    conditions_for,
    load_prompts,
    non_ascii_share,
    repetition_rate,
    run_steering,
    write_report,
)
from chatsae.steer.report import encode_prompt, generate

pytestmark = pytest.mark.usefixtures("single_thread")  # tiny tensors

HOOK = "resid_post.1"


def test_repetition_rate_by_hand():
    assert repetition_rate([1, 2, 1, 2], 1) == 0.5
    assert repetition_rate([1, 2, 1, 2], 2) == pytest.approx(1 - 2 / 3)
    assert repetition_rate([1, 2, 3], 3) == 0.0
    assert repetition_rate([7, 7, 7, 7, 7], 2) == pytest.approx(0.75)
    assert repetition_rate([1], 2) == 0.0


def test_non_ascii_share_by_hand():
    assert non_ascii_share("Hello, world 123!") == 0.0
    assert non_ascii_share("héllo") == pytest.approx(1 / 5)
    assert non_ascii_share("你好 ok") == pytest.approx(0.5)
    assert non_ascii_share("ab\ufffd\ufffd") == pytest.approx(0.5)
    assert non_ascii_share("1 2 3") == 0.0


def test_answer_nll_matches_unbatched_log_softmax(tiny_llama):
    model, _ = tiny_llama
    prompts, answers = [[1, 50, 60], [1, 70]], [[80, 90, 2], [100]]
    got = answer_nll(model, prompts, answers, pad_id=2)
    for (nll, n), p, a in zip(got, prompts, answers, strict=True):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([p + a])).logits[0]
        logp = torch.log_softmax(logits, -1)
        expected = -sum(float(logp[len(p) - 1 + i, t]) for i, t in enumerate(a))
        assert n == len(a)
        assert nll == pytest.approx(expected, rel=1e-4)


def test_conditions():
    assert [c.label for c in conditions_for([3], "add", [0, 15, 2.5])] == ["alpha=0", "alpha=15", "alpha=2.5"]
    clamp = conditions_for([3, 4], "clamp", [5])
    assert [c.label for c in clamp] == ["clean", "clamp=5"] and clamp[0].edits is None
    assert [(e.latent, e.mode, e.value) for e in clamp[1].edits] == [(3, "clamp", 5.0), (4, "clamp", 5.0)]
    assert [c.label for c in conditions_for([3], "ablate", [1, 2])] == ["clean", "ablate"]


def test_load_prompts(tmp_path):
    txt = tmp_path / "p.txt"
    txt.write_text("First prompt\n\nSecond prompt\n")
    assert load_prompts(txt) == [
        [{"role": "user", "content": "First prompt"}],
        [{"role": "user", "content": "Second prompt"}],
    ]
    js = tmp_path / "p.jsonl"
    rows = [
        {
            "messages": [
                {"role": "user", "content": "Q1"},
                {"role": "assistant", "content": "A1"},
                {"role": "user", "content": "Q2"},
                {"role": "assistant", "content": "A2"},
            ]
        },
        {"messages": [{"role": "assistant", "content": "only an answer"}]},
    ]
    js.write_text("\n".join(json.dumps(r) for r in rows))
    assert load_prompts(js, limit=1)[0][-1] == {"role": "user", "content": "Q2"}
    with pytest.raises(ValueError, match=r"p\.jsonl: record 1: .*no user message"):
        load_prompts(js)


@pytest.fixture(scope="module")
def sae():
    from chatsae.sae import SAEConfig, create_sae

    torch.manual_seed(4)
    return create_sae(SAEConfig(architecture="topk", d_in=64, d_sae=48, k=4, metadata={"hook_name": HOOK}))


PROMPTS = [[{"role": "user", "content": "Hi"}], [{"role": "user", "content": "Name three red fruits, please."}]]


def test_run_steering_report(tiny_llama, sae, tmp_path):
    model, tok = tiny_llama
    report = run_steering(model, tok, sae, PROMPTS, [5], [0, 8], max_new_tokens=5, batch_size=2)
    assert report.conditions == ["alpha=0", "alpha=8"]
    clean = generate(model, tok, [encode_prompt(tok, m) for m in PROMPTS], max_new_tokens=5, batch_size=1)
    by = {(g.prompt, g.condition): g for g in report.generations}
    for i in range(2):
        assert by[(i, "alpha=0")].ids == clean[i]  # alpha 0 is the clean model (batched = unbatched)
        assert by[(i, "alpha=0")].measures["length"] == len([t for t in clean[i] if t != tok.eos_token_id])
    assert any(by[(i, "alpha=8")].ids != clean[i] for i in range(2))  # steering changed something
    s = report.summary["alpha=0"]
    assert s["edited_positions"] > 0 and math.isfinite(s["perplexity"]) and s["perplexity"] > 1
    md, js = write_report(report, tmp_path / "rep")
    data = json.loads(js.read_text())
    assert data["conditions"] == report.conditions and len(data["generations"]) == 4
    assert data["settings"]["hook"] == HOOK
    acts = [capture(model, HOOK, torch.tensor([encode_prompt(tok, m)]))[0, 1:] for m in PROMPTS]  # unbatched
    norms = torch.cat([a.norm(dim=-1) for a in acts])
    assert data["settings"]["hook_norm_median"] == pytest.approx(float(norms.median()), rel=1e-5)
    assert "| alpha=8 |" in md.read_text()


def test_ablate_report_has_clean_baseline(tiny_llama, sae):
    model, tok = tiny_llama
    report = run_steering(model, tok, sae, PROMPTS[:1], [5, 6], mode="ablate", positions="special", max_new_tokens=3)
    assert report.conditions == ["clean", "ablate"]
    assert report.summary["clean"]["edited_positions"] == 0 and report.summary["ablate"]["edited_positions"] > 0


@pytest.mark.parametrize("command", ["steer", "special-tokens"])
def test_cli_help(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "SAE_DIR" in out and "--model" in out
    assert ("--latent" in out and "--alphas" in out) if command == "steer" else "--n-samples" in out


@pytest.fixture(scope="module")
def saved(tiny_llama, sae, tmp_path_factory):
    """The tiny model saved as a local model directory and the SAE saved with that model name."""
    from chatsae.sae import save_sae

    model, tok = tiny_llama
    root = tmp_path_factory.mktemp("steer_cli")
    model.save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    sae.cfg.metadata["model_name"] = str(root / "model")
    save_sae(sae, root / "sae")
    return root


def test_cli_steer_end_to_end(saved, capsys):
    prompts = saved / "prompts.txt"
    prompts.write_text("Hi\nName a colour.\n")
    out = saved / "steer_out"
    code = main(
        [
            "steer",
            str(saved / "sae"),
            "--latent",
            "5",
            "--latent",
            "7,9",
            "--alphas",
            "0,4",
            "--prompts",
            str(prompts),
            "--max-new-tokens",
            "3",
            "--positions",
            "prompt",
            "--out",
            str(out),
        ]
    )
    assert code == 0, capsys.readouterr().err
    data = json.loads((out / "steering.json").read_text())
    assert data["settings"]["latents"] == [5, 7, 9] and data["settings"]["positions"] == "prompt"
    assert data["conditions"] == ["alpha=0", "alpha=4"] and len(data["generations"]) == 4
    assert (out / "steering.md").is_file()


def test_cli_special_tokens_end_to_end(saved, tmp_path, capsys):
    data_file = tmp_path / "chats.jsonl"
    data_file.write_text("\n".join(json.dumps({"messages": m}) for m in PROMPTS))
    out = saved / "st_out"
    code = main(
        [
            "special-tokens",
            str(saved / "sae"),
            "--data",
            str(data_file),
            "--n-samples",
            "5",
            "--top-k",
            "2",
            "--out",
            str(out),
        ]
    )
    assert code == 0, capsys.readouterr().err
    data = json.loads((out / "special_tokens.json").read_text())
    assert data["n_samples"] == 2 and "<|im_start|> @ position 0" in data["tokens"]


def test_cli_bad_input(saved, capsys):
    assert main(["steer", str(saved / "sae"), "--prompts", "p.txt"]) == 1
    assert "--latent is required" in capsys.readouterr().err
    assert main(["steer", str(saved / "sae"), "--latent", "1", "--prompts", "p.txt", "--mode", "boost"]) == 1
    assert "--mode must be one of" in capsys.readouterr().err
    assert main(["steer", str(saved / "sae"), "--latent", "1", "--prompts", str(saved / "missing.txt")]) == 1
    assert "missing.txt" in capsys.readouterr().err


def test_cli_special_tokens_reads_the_bundled_data_as_default(saved, capsys):
    """`--data default` (as in the README's quick start) is chatsae's own chat data, not a file or dataset name."""
    out = saved / "st_default"
    code = main(["special-tokens", str(saved / "sae"), "--data", "default", "--n-samples", "3", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    data = json.loads((out / "special_tokens.json").read_text())
    assert data["n_samples"] == 3 and data["settings"]["data"].endswith("default_chat.jsonl")
