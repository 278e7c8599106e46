"""`chatsae features` on a tiny random Llama: results against per-sample direct computation, resume, logit lens."""

from __future__ import annotations

import json

import pytest
import torch

from chatsae.core.utils import atomic_file
from chatsae.interp.features import FeaturesConfig, collect_features, final_norm, logit_lens
from chatsae.interp.store import FeatureData
from chatsae.models import capture

pytestmark = pytest.mark.usefixtures("single_thread")


def direct_acts(sae, model, seq, skip_first=True):
    """Latent activations [T, d_sae] of one sample run alone (no padding), position 0 zeroed when skipped."""
    ids = torch.tensor([seq.input_ids])
    acts = sae.encode(capture(model, "resid_post.1", ids, torch.ones_like(ids)))[0].detach()
    if skip_first:
        acts[0] = 0
    return acts


def test_features_match_direct_per_sample_computation(interp_features):
    data, sae, model, _, seqs = interp_features
    per_sample = [direct_acts(sae, model, s) for s in seqs]
    assert data.meta["complete"] and data.meta["n_samples"] == len(seqs)
    assert data.n_tokens == sum(len(s.input_ids) - 1 for s in seqs)  # position 0 of every sample skipped
    fired = torch.stack([(a > 0).sum(0) for a in per_sample]).sum(0)
    assert torch.equal(data.fire_count, fired)
    for j in range(data.d_sae):
        maxes = sorted(((float(a[:, j].max()), i) for i, a in enumerate(per_sample)), reverse=True)
        expected = [m for m in maxes if m[0] > 0][:3]
        top = data.contexts(j, "top")
        assert [c.max_act for c in top] == pytest.approx([m[0] for m in expected], rel=1e-4, abs=1e-6)
        # samples share the system prompt, so maxima can tie across samples: check each context against its sample
        assert len({c.sample for c in top}) == len(top)
        for c in top:
            i = seqs_index(seqs, c.sample)
            a = per_sample[i][:, j]
            assert float(a.max()) == pytest.approx(c.max_act, rel=1e-4)
            assert float(a[c.pos]) == pytest.approx(c.max_act, rel=1e-4)
            lo = c.pos - c.center
            assert c.tokens == seqs[i].input_ids[lo : lo + len(c.tokens)]
            assert c.acts == pytest.approx(a[lo : lo + len(c.tokens)].tolist(), rel=1e-4, abs=1e-6)
            assert c.acts[c.center] == pytest.approx(c.max_act, rel=1e-4)
        for c in data.contexts(j, "random"):  # non-activating windows: the latent is 0 on every token shown
            i = seqs_index(seqs, c.sample)
            lo = c.pos - c.center
            assert c.tokens == seqs[i].input_ids[lo : lo + len(c.tokens)] and c.max_act == 0.0
            assert float(per_sample[i][lo : lo + len(c.tokens), j].max()) == 0.0


def seqs_index(seqs, sample_id):
    return next(i for i, s in enumerate(seqs) if s.sample_ids[0] == sample_id)


def test_outputs_on_disk_are_complete(interp_features):
    data = interp_features[0]
    names = {p.name for p in data.root.iterdir()}
    assert {"meta.json", "state.safetensors", "logit_lens.safetensors", "tokens.json"} <= names
    assert "log" not in names  # diffs are folded into the final checkpoint
    tokens = json.loads((data.root / "tokens.json").read_text())
    assert tokens["1"] == "<|im_start|>"
    template = {data.token(t.token_id) for t in data.template_stats(0)}
    assert {"<|im_start|>", "<|im_end|>", "user", "system"} <= template
    edges, counts = data.histogram(0)
    assert len(edges) == len(counts) + 1 and sum(counts) == int(data.fire_count[0])


def test_logit_lens_matches_naive(interp_features):
    data, sae, model, _, _ = interp_features
    gamma = final_norm(model).weight
    W_U = model.get_output_embeddings().weight
    for j in (0, 7, 31):
        logits = W_U @ (gamma * sae.W_dec[j])
        top, bottom = data.logits(j)
        assert [t for t, _ in top] == logits.topk(5).indices.tolist()
        assert [t for t, _ in bottom] == logits.topk(5, largest=False).indices.tolist()
        assert [v for _, v in top] == pytest.approx(logits.topk(5).values.tolist(), rel=1e-4)
    lens = logit_lens(model, sae.W_dec.detach(), 3, chunk=5)  # chunking does not change results
    assert torch.equal(lens["top_ids"], data.lens["top_ids"][:, :3])


def test_resume_after_interruption_equals_uninterrupted_run(interp_features, tmp_path):
    data, sae, model, tokenizer, seqs = interp_features
    cfg = FeaturesConfig(**{**data.meta["config"], "out": None})
    out = tmp_path / "f"
    partial = collect_features(sae, model, tokenizer, seqs, cfg, out, stop_after=3)
    assert not partial.meta["complete"] and int(partial.progress["step"]) == 3
    assert (out / "log").is_dir()  # step 3 is a logged diff (checkpoint_every=2)
    # a crash while writing the next diff leaves only a temporary file, which is ignored
    (out / "log" / ".step_00000004.safetensors.tmp-x").write_bytes(b"garbage")
    resumed = collect_features(sae, model, tokenizer, seqs, cfg, out)
    assert resumed.meta["complete"]
    for key, value in data.state.items():
        assert torch.equal(resumed.state[key], value), key
    # other settings on the same directory: refused unless --overwrite
    with pytest.raises(ValueError, match="other settings"):
        collect_features(sae, model, tokenizer, seqs, FeaturesConfig(**{**data.meta["config"], "top_k": 2}), out)
    (out / "my_notes.txt").write_text("keep me")  # a user's file and a later command's output in the directory
    with atomic_file(out / "autointerp.json", "w") as fh:  # written (and recorded) by chatsae: autointerp's output
        fh.write("{}")
    again = collect_features(
        sae, model, tokenizer, seqs, FeaturesConfig(**{**data.meta["config"], "top_k": 2, "overwrite": True}), out
    )
    assert again.state["top_act"].shape[1] == 2
    assert (out / "my_notes.txt").read_text() == "keep me"  # --overwrite removes only what the collector wrote
    assert not (out / "autointerp.json").exists()  # chatsae's explanations of the replaced features go with them
    assert FeatureData(out).meta["config"]["top_k"] == 2


def test_position_zero_counts_when_not_skipped(interp_features, tmp_path):
    data, sae, model, tokenizer, seqs = interp_features
    cfg = FeaturesConfig(**{**data.meta["config"], "skip_first_position": False, "n_samples": 4})
    res = collect_features(sae, model, tokenizer, seqs, cfg, tmp_path / "p0")
    assert res.n_tokens == sum(len(s.input_ids) for s in seqs[:4])
    direct = [direct_acts(sae, model, s, skip_first=False) for s in seqs[:4]]
    assert torch.allclose(res.max_act, torch.stack([a.max(0).values for a in direct]).max(0).values, rtol=1e-4)


def test_bad_output_directory_is_refused(interp_features, tmp_path):
    data, sae, model, tokenizer, seqs = interp_features
    (tmp_path / "precious.txt").write_text("user data")
    with pytest.raises(ValueError, match="not empty"):
        collect_features(sae, model, tokenizer, seqs, FeaturesConfig(**data.meta["config"]), tmp_path)
    assert (tmp_path / "precious.txt").exists()
