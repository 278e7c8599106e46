"""Judge-free interpretability proxies: AUC against a brute-force pair count, the token-explanation score on
hand-made contexts with known answers, unpaired bootstrap differences, and the whole chain on a real features run."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch

from chatsae.cli import main
from chatsae.interp.proxies import (
    auc,
    class_summary,
    compare_proxies,
    explanation_score,
    explanation_tokens,
    heldout_contexts,
    latent_classes,
    per_latent,
    proxies,
    proxy_lines,
    unpaired_difference,
)
from chatsae.interp.store import Context


def naive_auc(scores, labels):
    pos = [s for s, y in zip(scores, labels, strict=True) if y]
    neg = [s for s, y in zip(scores, labels, strict=True) if not y]
    wins = sum((p > n) + 0.5 * (p == n) for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_auc_equals_pair_count():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 4, size=40).astype(float)  # many ties
    labels = rng.random(40) < 0.4
    assert auc(scores, labels) == pytest.approx(naive_auc(scores, labels))
    assert auc([0, 1, 1, 0], [False, True, True, False]) == 1.0
    assert auc([1, 1], [True, False]) == 0.5
    assert math.isnan(auc([1, 2], [True, True]))


def ctx(tokens, acts, sample=0):
    return Context(tokens, acts, sample, 0, 0, max(acts))


def test_token_explanation_on_known_latents():
    # a latent that fires exactly on token 7 (and once on 9): explained by [7, 9], perfect on held-out windows
    top = [ctx([1, 7, 2], [0, 3.0, 0]), ctx([7, 9, 3], [2.0, 0.5, 0]), ctx([4, 7], [0, 1.0])]
    assert explanation_tokens(top, n_tokens=1) == [7]
    assert explanation_tokens(top) == [7, 9]
    held = [ctx([5, 7, 7, 1], [0, 2.0, 1.0, 0], sample=5), ctx([2, 3, 4], [0, 0, 0], sample=6)]
    s = explanation_score([7], held)
    assert s["auc"] == 1.0 and s["corr"] > 0.8 and s["tokens"] == 7
    # a contextual latent (fires on token 7 only after token 5): the token set over-predicts, the AUC falls
    held2 = [ctx([5, 7], [0, 2.0], 1), ctx([1, 7], [0, 0.0], 2), ctx([2, 3], [0, 0.0], 3)]
    s2 = explanation_score([7], held2)
    labels = [False, True, False, False, False, False]
    assert s2["auc"] == pytest.approx(naive_auc([0, 1, 0, 1, 0, 0], labels)) == 0.9
    held3 = [ctx([5, 7], [0, 2.0], 1), ctx([1, 7], [0, 0.0], 2)]
    assert explanation_score([7], held3)["auc"] == pytest.approx(2.5 / 3)  # beats 2 of 3 negatives, ties 1


def test_unpaired_difference_and_verdicts():
    rng = np.random.default_rng(1)
    a, b = rng.normal(0.8, 0.1, 200), rng.normal(0.6, 0.1, 150)
    d = unpaired_difference(a, b)
    assert d.value == pytest.approx(a.mean() - b.mean())
    se = math.sqrt(a.var(ddof=1) / 200 + b.var(ddof=1) / 150)  # normal approximation of the same interval
    assert d.low == pytest.approx(d.value - 1.96 * se, abs=0.01) and d.high == pytest.approx(
        d.value + 1.96 * se, abs=0.01
    )
    same = unpaired_difference(a[:100], a[100:])
    assert same.low < 0 < same.high
    named = {
        "FAST": {"latents": {str(i): {"auc": v} for i, v in enumerate(a)}, "live": 10, "template_selective": 5},
        "BT(P)": {"latents": {str(i): {"auc": v} for i, v in enumerate(b)}, "live": 10, "template_selective": 4},
    }
    comp = compare_proxies(named)
    verdicts = {p["proxy"]: p["verdict"] for p in comp["pairs"]}
    assert verdicts["explanation_auc"] == "FAST higher token-explanation AUC than BT(P)"
    assert verdicts["template_selective_share"].endswith("no verdict at this budget")  # 5/10 vs 4/10
    assert comp["saes"]["FAST"]["template_selective_share"]["value"] == pytest.approx(0.5)
    assert any(line.startswith("FAST: token-explanation AUC") for line in proxy_lines(comp))


def test_proxies_of_a_features_run_and_the_command(interp_features, tmp_path, capsys):
    data = interp_features[0]
    p = proxies(data, n_tokens=3, min_fires=1)
    assert p["d_sae"] == 32 and 0 < p["live"] <= 32
    assert sum(p["firing_histogram"]["counts"]) == p["live"]  # dead latents are not in the spectrum
    assert p["scored_latents"] > 0 and 0 <= p["explanation_auc"] <= 1
    j = int(next(iter(p["latents"])))
    held = heldout_contexts(data, j)
    top_samples = {c.sample for c in data.contexts(j, "top")}
    assert held and not any(c.sample in top_samples for c in held if c.max_act > 0)  # no leak from the top contexts
    expected = explanation_score(explanation_tokens(data.contexts(j, "top"), 3), held)
    assert p["latents"][str(j)]["auc"] == pytest.approx(expected["auc"], nan_ok=True)
    share = (data.special_share >= 0.9) & (data.fire_count >= 1)
    assert p["template_selective"] == int(share.sum())
    out = tmp_path / "proxies.json"
    args = ["proxies", str(data.root), str(data.root), "--labels", "A,B", "--n-tokens", "3", "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "A: " in printed and "no verdict at this budget" in printed  # the same SAE twice
    by_class = p["by_class"]
    for cls in ("template", "content"):  # the per-class figures and L0 are printed, not only written
        assert f"  {cls} latents: {by_class[cls]['live']} (" in printed
    assert f"L0 {p['l0']:.1f}" in printed
    assert set(json.loads(out.read_text())["proxies"]) == {"A", "B"}
    assert main(["proxies", str(data.root), "--labels", "A,B"]) == 1


# ---- by token class ----------------------------------------------------------------------------------------------
class FakeData:
    """The two per-latent statistics :func:`latent_classes` reads."""

    def __init__(self, special_share, fire_count):
        self.special_share = torch.tensor(special_share, dtype=torch.float64)
        self.fire_count = torch.tensor(fire_count)


def test_latent_classes_split_at_half_the_firings_on_template_tokens():
    data = FakeData([0.0, 0.49, 0.5, 1.0, 1.0], [10, 10, 10, 3, 0])
    assert latent_classes(data) == ["content", "content", "template", "template", "content"]  # never fired: content
    scores = {0: {"auc": 0.6}, 1: {"auc": 0.7}, 2: {"auc": 0.9}, 3: {"auc": float("nan")}}
    by = class_summary(scores, latent_classes(data), [True, True, True, True, False])
    assert by["content"] == {
        "live": 2,
        "share_of_live": 0.5,
        "explanation_auc": pytest.approx(0.65),
        "scored_latents": 2,
    }
    assert by["template"] == {"live": 2, "share_of_live": 0.5, "explanation_auc": 0.9, "scored_latents": 1}


def fake_proxies(content, template, live=None):
    """A ``proxies(...)`` result with the given per-latent AUCs of content and template latents."""
    lat = {str(i): {"auc": v, "class": "content"} for i, v in enumerate(content)}
    lat |= {str(len(content) + i): {"auc": v, "class": "template"} for i, v in enumerate(template)}
    live = live or len(lat)
    by = {"content": {"live": live - len(template)}, "template": {"live": len(template)}}
    return {"latents": lat, "live": live, "template_selective": 0, "by_class": by}


def test_class_aucs_remove_the_composition_confound():
    # the same content and template latents, but A has three times as many template latents: its overall AUC is
    # higher, its AUC within each class is not
    rng = np.random.default_rng(3)
    content, template = rng.normal(0.6, 0.05, 300), rng.normal(0.95, 0.02, 150)
    a = fake_proxies(content, np.concatenate([template, template, template]))
    b = fake_proxies(content, template)
    values = per_latent(a)
    assert values["explanation_auc_content"] == pytest.approx(list(content))
    assert values["template_latent_share"] == [1.0] * 450 + [0.0] * 300
    comp = compare_proxies({"A": a, "B": b})
    verdicts = {p["proxy"]: p["verdict"] for p in comp["pairs"]}
    assert verdicts["explanation_auc"] == "A higher token-explanation AUC than B"
    assert verdicts["template_latent_share"] == "A higher template-latent share than B"
    assert verdicts["explanation_auc_content"].endswith("no verdict at this budget")
    assert verdicts["explanation_auc_template"].endswith("no verdict at this budget")
    assert comp["saes"]["B"]["explanation_auc_template"]["value"] == pytest.approx(template.mean())
    lines = proxy_lines(comp)
    assert any("token-explanation AUC of content latents" in line for line in lines)
    # a result written before the split: the class keys are empty, nothing breaks
    old = {"latents": {"0": {"auc": 0.7}, "1": {"auc": 0.8}}, "live": 2, "template_selective": 1}
    assert per_latent(old)["explanation_auc_content"] == [] and per_latent(old)["template_latent_share"] == []
    assert math.isnan(compare_proxies({"old": old})["saes"]["old"]["explanation_auc_template"]["value"])


def test_proxies_by_class_of_a_features_run(interp_features):
    data = interp_features[0]
    p = proxies(data, n_tokens=3, min_fires=1)
    live = data.fire_count > 0
    tmpl = (data.special_share >= 0.5) & live
    by = p["by_class"]
    assert by["template"]["live"] == int(tmpl.sum()) and by["content"]["live"] == int((live & ~tmpl).sum())
    for cls in ("content", "template"):
        aucs = [v["auc"] for v in p["latents"].values() if v["class"] == cls and math.isfinite(v["auc"])]
        assert by[cls]["scored_latents"] == len(aucs)
        assert by[cls]["explanation_auc"] == (pytest.approx(np.mean(aucs)) if aucs else None)
    assert all(v["class"] == ("template" if tmpl[int(j)] else "content") for j, v in p["latents"].items())
    assert p["l0"] == pytest.approx(float(data.fire_count.sum()) / data.n_tokens)
