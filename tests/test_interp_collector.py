"""Streaming per-latent statistics (chatsae.interp.collector / statelog) against brute-force computations."""

from __future__ import annotations

import math

import pytest
import torch

from chatsae.interp.collector import N_CLASSES, TEMPLATE_CLASS, BatchView, CollectorConfig, FeatureCollector
from chatsae.interp.statelog import StateLog, apply_diff, diff_state

pytestmark = pytest.mark.usefixtures("single_thread")


def make_batches(n_batches=6, B=5, T=12, d=16, seed=0, density=0.15, vocab=50):
    """Random sparse activations with padding; returns (list of BatchView, list of per-sample dicts)."""
    g = torch.Generator().manual_seed(seed)
    views, samples = [], []
    sid = 0
    for _ in range(n_batches):
        lengths = torch.randint(2, T + 1, (B,), generator=g)
        lengths[0] = T
        mask = torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)
        acts = torch.rand(B, T, d, generator=g) * 10 * (torch.rand(B, T, d, generator=g) < density)
        ids = torch.randint(0, vocab, (B, T), generator=g)
        cls = torch.randint(0, N_CLASSES, (B, T), generator=g)
        ids[cls == TEMPLATE_CLASS] = ids[cls == TEMPLATE_CLASS] % 4 + 100  # a few template ids
        valid = mask & (torch.arange(T) > 0)  # skip position 0 as the pipeline does
        sids = torch.arange(sid, sid + B)
        sid += B
        views.append(BatchView(acts, ids, valid, lengths, cls, sids))
        for b in range(B):
            n = int(lengths[b])
            a = acts[b, :n] * valid[b, :n].unsqueeze(-1)
            samples.append({"id": int(sids[b]), "acts": a, "ids": ids[b, :n], "cls": cls[b, :n], "valid": valid[b, :n]})
    return views, samples


def window(sample, pos, spec, latent=None):
    toks, acts = [], []
    for p in range(pos - spec.window_before, pos + spec.window_after + 1):
        inside = 0 <= p < len(sample["ids"])
        toks.append(int(sample["ids"][p]) if inside else -1)
        acts.append(float(sample["acts"][p, latent]) if inside and latent is not None else 0.0)
    return toks, acts


def run(views, spec, seed=0):
    col = FeatureCollector(spec)
    for i, v in enumerate(views):
        col.update(v, torch.Generator().manual_seed(seed + i))
    return col


SPEC = CollectorConfig(d_sae=16, top_k=3, n_quantile=4, n_random=3, window_before=3, window_after=2, template_slots=8)


def test_streaming_topk_equals_brute_force():
    views, samples = make_batches()
    s = run(views, SPEC).state
    for j in range(SPEC.d_sae):
        maxes = [(float(x["acts"][:, j].max()), x) for x in samples]
        ranked = sorted([m for m in maxes if m[0] > 0], key=lambda m: -m[0])[: SPEC.top_k]
        assert s["top_act"][j, : len(ranked)].tolist() == pytest.approx([m[0] for m in ranked])
        assert s["top_sample"][j, : len(ranked)].tolist() == [m[1]["id"] for m in ranked]
        assert (s["top_sample"][j, len(ranked) :] == -1).all()
        for slot, (value, x) in enumerate(ranked):
            pos = int(x["acts"][:, j].argmax())
            assert int(s["top_pos"][j, slot]) == pos
            toks, acts = window(x, pos, SPEC, j)
            assert s["top_tokens"][j, slot].tolist() == toks
            assert s["top_token_act"][j, slot].tolist() == pytest.approx(acts)
            assert acts[SPEC.window_before] == pytest.approx(value)


def test_counts_histogram_and_template_table_match_brute_force():
    views, samples = make_batches(seed=1)
    s = run(views, SPEC).state
    fire = torch.zeros(N_CLASSES, SPEC.d_sae, dtype=torch.long)
    act_sum = torch.zeros(N_CLASSES, SPEC.d_sae, dtype=torch.float64)
    tokens = torch.zeros(N_CLASSES, dtype=torch.long)
    hist = torch.zeros(SPEC.d_sae, SPEC.n_bins, dtype=torch.long)
    edges = SPEC.hist_edges()
    tmpl: dict[int, list] = {}
    for x in samples:
        for t in range(len(x["ids"])):
            if not x["valid"][t]:
                continue
            c, a = int(x["cls"][t]), x["acts"][t]
            tokens[c] += 1
            fire[c] += (a > 0).long()
            act_sum[c] += a.double()
            for j in (a > 0).nonzero().flatten().tolist():
                b = int(torch.searchsorted(edges, torch.tensor([float(a[j])], dtype=torch.float64), right=True)) - 1
                hist[j, min(max(b, 0), SPEC.n_bins - 1)] += 1
            if c == TEMPLATE_CLASS:
                entry = tmpl.setdefault(int(x["ids"][t]), [0, torch.zeros(SPEC.d_sae), torch.zeros(SPEC.d_sae)])
                entry[0] += 1
                entry[1] += (a > 0).float()
                entry[2] += a
    assert torch.equal(s["fire_count"], fire) and torch.equal(s["class_tokens"], tokens)
    assert torch.allclose(s["act_sum"], act_sum)
    assert torch.equal(s["hist"], hist)
    assert sorted(i for i in s["tmpl_ids"].tolist() if i >= 0) == sorted(tmpl)
    for slot, tid in enumerate(s["tmpl_ids"].tolist()):
        if tid >= 0:
            assert int(s["tmpl_count"][slot]) == tmpl[tid][0]
            assert s["tmpl_fire"][slot].tolist() == tmpl[tid][1].long().tolist()
            assert torch.allclose(s["tmpl_act_sum"][slot].float(), tmpl[tid][2], atol=1e-5)


def test_reservoirs_hold_valid_samples():
    views, samples = make_batches(seed=2)
    s = run(views, SPEC).state
    by_id = {x["id"]: x for x in samples}
    for j in range(SPEC.d_sae):
        active = [x for x in samples if x["acts"][:, j].max() > 0]
        assert int(s["qnt_seen"][j]) == len(active)
        # every sample where the latent never fires offers a non-activating window; others may (by chance)
        assert len(samples) - len(active) <= int(s["neg_seen"][j]) <= len(samples)
        kept = [int(i) for i in s["qnt_sample"][j] if i >= 0]
        assert len(kept) == min(len(active), SPEC.n_quantile) and len(set(kept)) == len(kept)
        for slot, sid in enumerate(s["qnt_sample"][j].tolist()):
            if sid < 0:
                continue
            x = by_id[sid]
            assert float(s["qnt_act"][j, slot]) == pytest.approx(float(x["acts"][:, j].max()))
            toks, acts = window(x, int(s["qnt_pos"][j, slot]), SPEC, j)
            assert s["qnt_tokens"][j, slot].tolist() == toks
            assert s["qnt_token_act"][j, slot].tolist() == pytest.approx(acts)
        for slot, sid in enumerate(s["neg_sample"][j].tolist()):
            if sid < 0:
                continue
            x = by_id[sid]
            pos = int(s["neg_pos"][j, slot])
            assert bool(x["valid"][pos])
            toks, acts = window(x, pos, SPEC, j)
            assert s["neg_tokens"][j, slot].tolist() == toks
            assert max(acts) == 0.0  # non-activating over the whole window
        assert int((s["neg_sample"][j] >= 0).sum()) == min(int(s["neg_seen"][j]), SPEC.n_random)


def test_latent_firing_in_every_sample_still_gets_non_activating_windows():
    """A latent on the first template token fires in every chat sample; windows elsewhere are its negatives."""
    spec = CollectorConfig(d_sae=2, top_k=1, n_quantile=2, n_random=4, window_before=2, window_after=1)
    col = FeatureCollector(spec)
    g = torch.Generator().manual_seed(0)
    for b in range(8):
        acts = torch.zeros(1, 40, 2)
        acts[0, 1, 0] = 3.0  # latent 0: position 1 of every sample
        valid = torch.ones(1, 40, dtype=torch.bool)
        col.update(
            BatchView(
                acts,
                torch.arange(40)[None],
                valid,
                torch.tensor([40]),
                torch.zeros(1, 40, dtype=torch.long),
                torch.tensor([b]),
            ),
            g,
        )
    s = col.state
    assert int(s["qnt_seen"][0]) == 8 and int(s["neg_seen"][0]) >= 4 and int(s["neg_seen"][1]) == 8
    kept = s["neg_pos"][0][s["neg_sample"][0] >= 0]
    assert len(kept) == 4 and bool((kept - spec.window_before > 1).all())  # windows that miss position 1


def test_reservoir_is_uniform():
    """Every latent fires on all 10 samples; with 2 slots each sample must be kept with probability 2/10."""
    d, n = 3000, 10
    spec = CollectorConfig(d_sae=d, top_k=1, n_quantile=2, n_random=1, window_before=0, window_after=0)
    col = FeatureCollector(spec)
    g = torch.Generator().manual_seed(0)
    for b in range(n // 2):
        acts = torch.rand(2, 3, d, generator=g) + 0.1
        valid = torch.ones(2, 3, dtype=torch.bool)
        col.update(
            BatchView(
                acts,
                torch.zeros(2, 3, dtype=torch.long),
                valid,
                torch.tensor([3, 3]),
                torch.zeros(2, 3, dtype=torch.long),
                torch.tensor([2 * b, 2 * b + 1]),
            ),
            g,
        )
    counts = torch.bincount(col.state["qnt_sample"].flatten(), minlength=n).double()
    expected, sd = d * 2 / n, math.sqrt(d * 0.2 * 0.8)
    assert ((counts - expected).abs() < 5 * sd).all(), counts


def test_statelog_diffs_replay_to_the_same_state(tmp_path):
    views, _ = make_batches(seed=3)
    col = FeatureCollector(SPEC)
    log = StateLog(tmp_path)
    log.checkpoint(col.state, {"step": 0})
    for i, v in enumerate(views, start=1):
        before = {k: t.clone() for k, t in col.state.items()}
        col.update(v, torch.Generator().manual_seed(i))
        diff = diff_state(before, col.state)
        again = {k: t.clone() for k, t in before.items()}
        apply_diff(again, diff)
        assert all(torch.equal(again[k], col.state[k]) for k in again)
        if i == 3:
            log.checkpoint(col.state, {"step": i})
        else:
            log.append(diff, {"step": i, "samples": i * 5})
    state, progress = log.load()
    assert progress["step"] == str(len(views)) and progress["samples"] == str(len(views) * 5)
    assert all(torch.equal(state[k], col.state[k]) for k in state)
    assert len(list((tmp_path / "log").iterdir())) == len(views) - 3  # diffs up to the checkpoint were dropped
    # a torn (unreadable) last diff is ignored: the state of the step before comes back
    last = sorted((tmp_path / "log").iterdir())[-1]
    last.write_bytes(last.read_bytes()[:20])
    _, progress = log.load()
    assert progress["step"] == str(len(views) - 1)


def test_collector_spec_is_a_deprecated_alias_of_collector_config():
    from chatsae.interp import CollectorSpec as FromPackage
    from chatsae.interp.collector import CollectorSpec

    assert CollectorSpec is FromPackage is CollectorConfig
