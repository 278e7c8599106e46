"""The interp commands end to end (features -> autointerp -> dashboard -> export-neuronpedia) on a saved tiny Llama,
the Neuronpedia export's content, and one run on the embedded model (position-0 attention sink)."""

from __future__ import annotations

import gzip
import json

import pytest
import torch
from conftest import INTERP_CHATS

from chatsae.cli import main
from chatsae.interp.features import FeaturesConfig, collect_features
from chatsae.interp.neuronpedia import NeuronpediaConfig, export_neuronpedia
from chatsae.interp.store import FeatureData
from chatsae.sae import SAEConfig, create_sae, save_sae

pytestmark = pytest.mark.usefixtures("single_thread")


def read_gz(path):
    with gzip.open(path, "rt") as fh:
        return [json.loads(line) for line in fh]


def test_cli_features_autointerp_dashboard_export(tiny_llama, tmp_path, capsys):
    model, tokenizer = tiny_llama
    model.save_pretrained(tmp_path / "tiny")
    tokenizer.save_pretrained(tmp_path / "tiny")
    data = tmp_path / "chats.jsonl"
    data.write_text("".join(json.dumps({"messages": m}) + "\n" for m in INTERP_CHATS))
    torch.manual_seed(0)
    meta = {"model_name": str(tmp_path / "tiny"), "hook_name": "resid_post.2"}
    sae = create_sae(SAEConfig(architecture="topk", d_in=64, d_sae=24, k=2, metadata=meta))
    save_sae(sae, tmp_path / "sae")
    args = [
        "features",
        str(tmp_path / "sae"),
        "--data",
        str(data),
        "--n-samples",
        "8",
        "--top-k",
        "2",
        "--n-quantile",
        "4",
        "--n-random",
        "3",
        "--window-before",
        "4",
        "--window-after",
        "2",
    ]
    assert main(args) == 0
    assert "8 samples" in capsys.readouterr().out
    fdir = tmp_path / "sae" / "features"
    res = FeatureData(fdir)
    assert res.meta["hook_name"] == "resid_post.2" and res.meta["config"]["data"] == str(data)
    assert main(args) == 0  # complete: returns the stored results without recomputing
    assert main(args[:-2] + ["--window-after", "3"]) == 1  # other settings on the same directory: a clear error
    assert "other settings" in capsys.readouterr().err

    assert (
        main(
            [
                "autointerp",
                str(tmp_path / "sae"),
                "--judge",
                "local",
                "--judge-model",
                str(tmp_path / "tiny"),
                "--n-latents",
                "2",
                "--max-tokens",
                "4",
                "--attempts",
                "1",
                "--protocol",
                "fast",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "FAST protocol:" in out and "top range (4-5)" in out
    doc = json.loads((fdir / "autointerp.json").read_text())
    assert len(doc["latents"]) == 2 and doc["runs"][0]["judge"] == f"local:{tmp_path / 'tiny'}"
    assert any((fdir / "judge_cache").rglob("*.json"))

    assert main(["dashboard", str(tmp_path / "sae")]) == 0
    assert (tmp_path / "sae" / "dashboard" / "index.html").is_file()
    assert "file://" in capsys.readouterr().out
    assert main(["export-neuronpedia", str(fdir), "--model-id", "tiny-chat"]) == 0
    export = tmp_path / "sae" / "neuronpedia" / "tiny-chat" / "2-chatsae-res-24"
    assert (export / "features" / "batch-0.jsonl.gz").is_file()
    assert main(["dashboard", str(tmp_path / "nowhere")]) == 1
    assert "run `chatsae features SAE_DIR` first" in capsys.readouterr().err


def test_neuronpedia_export_content(interp_features, tmp_path):
    data = interp_features[0]
    named = data.fired().tolist()[:2]
    auto = {
        "latents": {
            str(j): {"fast": {"score": 4, "name": f"name {j}"}, "explanation": {"text": f"expl {j}"}} for j in named
        },
        "runs": [{"judge": "scripted"}],
    }
    (tmp_path / "auto.json").write_text(json.dumps(auto))
    cfg = NeuronpediaConfig(model_id="tiny-chat", batch_size=10, n_quantile=3)
    src = export_neuronpedia(data, cfg, tmp_path / "np", autointerp=tmp_path / "auto.json")
    assert src == tmp_path / "np" / "tiny-chat" / f"1-chatsae-res-{data.d_sae}"
    for name in ("model.jsonl", "source.jsonl", "sourceset.jsonl", "release.jsonl"):
        assert json.loads((src / name).read_text())
    assert json.loads((src / "source.jsonl").read_text())["id"] == src.name
    features = [f for p in sorted((src / "features").iterdir()) for f in read_gz(p)]
    assert len(list((src / "features").iterdir())) == 4  # 32 latents in batches of 10
    assert [int(f["index"]) for f in features] == list(range(data.d_sae))
    f3 = features[3]
    assert f3["layer"] == src.name and f3["modelId"] == "tiny-chat" and f3["hookName"] == "blocks.1.hook_resid_post"
    assert f3["maxActApprox"] == pytest.approx(float(data.max_act[3]))
    assert f3["frac_nonzero"] == pytest.approx(float(data.frequency[3]))
    top, bottom = data.logits(3)
    assert f3["pos_str"] == [data.token(t) for t, _ in top]
    assert f3["neg_values"] == pytest.approx([v for _, v in bottom])
    assert sum(f3["freq_hist_data_bar_heights"]) == int(data.fire_count[3])
    acts = [a for p in sorted((src / "activations").iterdir()) for a in read_gz(p)]
    a3 = [a for a in acts if a["index"] == "3"]
    n_top = len(data.contexts(3, "top"))
    assert len(a3) == n_top + min(3, len(data.contexts(3, "quantile")))
    first = a3[0]
    ctx = data.contexts(3, "top")[0]
    assert first["tokens"] == [data.token(t) for t in ctx.tokens]
    assert first["values"] == pytest.approx(ctx.acts) and first["maxValue"] == pytest.approx(ctx.max_act)
    assert first["maxValueTokenIndex"] == ctx.center and first["dataIndex"] == str(ctx.sample)
    assert len({a["id"] for a in acts}) == len(acts)
    expl = [e for p in sorted((src / "explanations").iterdir()) for e in read_gz(p)]
    assert sorted(e["description"] for e in expl) == sorted([f"name {j}" for j in named] + [f"expl {j}" for j in named])
    assert all(e["explanationModelName"] == "scripted" for e in expl)


@pytest.mark.slow
def test_embedded_model_position_zero_sink(embedded, tmp_path):
    """On SmolLM2 layer 15 position 0 is an attention sink (norm ~25,000): unless skipped it takes over the top
    contexts of a random SAE; skipped (the default), no context is centred on it."""
    from chatsae.data import fast_sequences
    from chatsae.models import capture

    model, tokenizer = embedded
    seqs = list(fast_sequences(INTERP_CHATS[:6], tokenizer))
    x = capture(model, "resid_post.15", torch.tensor([seqs[0].input_ids]))[0]
    norms = x.norm(dim=-1)
    assert norms[0] > 20 * norms[1:].median()
    torch.manual_seed(0)
    sae = create_sae(SAEConfig(architecture="standard", d_in=576, d_sae=256, metadata={"hook_name": "resid_post.15"}))
    base = dict(n_samples=6, top_k=2, n_quantile=2, n_random=2, window_before=3, window_after=1, n_logits=3)
    skipped = collect_features(sae, model, tokenizer, seqs, FeaturesConfig(**base), tmp_path / "a")
    kept = collect_features(
        sae, model, tokenizer, seqs, FeaturesConfig(**base, skip_first_position=False), tmp_path / "b"
    )
    assert skipped.n_tokens == kept.n_tokens - len(seqs)
    top_pos = lambda d: [c.pos for j in d.fired().tolist() for c in d.contexts(j, "top")]  # noqa: E731
    assert top_pos(skipped) and min(top_pos(skipped)) > 0
    assert sum(p == 0 for p in top_pos(kept)) > 0.3 * len(top_pos(kept))
    tokens = set(skipped.token_strings.values())
    assert "<|im_start|>" in tokens  # special tokens decode to their template strings
