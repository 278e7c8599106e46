"""scripts/results/proxies_seeds.py: the per-method means with t-intervals over seeds, the paired differences (same
seed index) with t-intervals over seeds and per-seed latent-bootstrap intervals, and the verdict rule, checked against
hand computations."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "results" / "proxies_seeds.py"
T975_2 = 4.302652729911275  # Student's t, 97.5% quantile, 2 degrees of freedom (3 seeds)
T975_1 = 12.706204736174707


def load_script():
    spec = importlib.util.spec_from_file_location("proxies_seeds", SCRIPT)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


P = load_script()


def sae(content, template):
    lat = {str(i): {"auc": v, "class": "content"} for i, v in enumerate(content)}
    lat |= {str(len(content) + i): {"auc": v, "class": "template"} for i, v in enumerate(template)}
    live = len(lat)
    return {
        "d_sae": 64,
        "n_tokens": 1000,
        "l0": 20.0,
        "live": live,
        "dead_fraction": 0.1,
        "template_selective": len(template) // 2,
        "by_class": {
            "content": {"live": len(content), "scored_latents": len(content)},
            "template": {"live": len(template), "scored_latents": len(template)},
        },
        "latents": lat,
    }


def named(seeds=(42, 43, 44)):
    """FAST content AUCs 0.70 + 0.01 s, BT(P) 0.60 + 0.02 s (s = seed index), 400 latents each, small spread; the
    template AUCs of both are 0.9 +/- noise (no difference); a random baseline at 0.5."""
    rng = np.random.default_rng(0)
    out = {}
    for i, s in enumerate(seeds):
        for m, base, step in (("FAST", 0.70, 0.01), ("BT(P)", 0.60, 0.02)):
            c = base + step * i + rng.normal(0, 0.01, 400)
            c = c - c.mean() + base + step * i  # exact means
            t = 0.9 + rng.normal(0, 0.05, 50)
            out[f"{m}:{s}"] = sae(c, t)
    out["random"] = sae(0.5 + rng.normal(0, 0.01, 400), 0.5 + rng.normal(0, 0.01, 10))
    return out


def test_method_means_and_seed_intervals_by_hand(tmp_path):
    path = tmp_path / "proxies.json"
    path.write_text(json.dumps({"proxies": named()}))
    s = P.summarise(P.read_proxies([path]))
    assert list(s["methods"]) == ["FAST", "BT(P)"] and s["baselines"] == ["random"]
    fast = s["methods"]["FAST"]["explanation_auc_content"]
    vals = [0.70, 0.71, 0.72]
    half = T975_2 * np.std(vals, ddof=1) / math.sqrt(3)
    assert fast["value"] == pytest.approx(0.71) and fast["n"] == 3
    assert fast["interval"] == pytest.approx([0.71 - half, 0.71 + half])
    assert s["methods"]["FAST"]["seeds"] == ["42", "43", "44"]
    # paired differences FAST - BT(P) of the content AUC: 0.10, 0.09, 0.08
    pair = next(p for p in s["pairs"] if p["proxy"] == "explanation_auc_content")
    d = [0.10, 0.09, 0.08]
    assert pair["per_seed"] == pytest.approx(d)
    half = T975_2 * np.std(d, ddof=1) / math.sqrt(3)
    assert pair["difference"] == pytest.approx(0.09) and pair["seeds"] == pytest.approx([0.09 - half, 0.09 + half])
    assert len(pair["latents"]) == 3 and all(lo < di < hi for (lo, hi), di in zip(pair["latents"], d, strict=True))
    assert pair["verdict"] == "FAST higher token-explanation AUC of content latents than BT(P)" and pair["why"] is None
    # the template AUCs do not differ: no verdict, and why
    tmpl = next(p for p in s["pairs"] if p["proxy"] == "explanation_auc_template")
    assert tmpl["verdict"].endswith("no verdict at this budget") and tmpl["why"] == "an interval includes 0"
    # the baseline is one SAE with its latent interval, never paired
    assert s["saes"]["random"]["proxies"]["explanation_auc_content"]["value"] == pytest.approx(0.5, abs=0.01)
    assert all("random" not in (p["a"], p["b"]) for p in s["pairs"])
    text = P.tables(s)
    assert "| FAST | 3 | 0.700" not in text and "| FAST | 3 | " in text
    assert "| random (baseline, 1 SAE) | 1 |" in text
    assert "FAST − BT(P) | token-explanation AUC of content latents | +0.090" in text


def test_two_seeds_never_give_a_verdict(tmp_path):
    path = tmp_path / "proxies.json"
    path.write_text(json.dumps({"proxies": named(seeds=(42, 43))}))
    s = P.summarise(P.read_proxies([path]))
    pair = next(p for p in s["pairs"] if p["proxy"] == "explanation_auc_content")
    d = [0.10, 0.09]
    half = T975_1 * np.std(d, ddof=1) / math.sqrt(2)
    assert pair["seeds"] == pytest.approx([0.095 - half, 0.095 + half])
    assert pair["why"] == "2 seeds; a finding needs 3 or more" and pair["verdict"].endswith("no verdict at this budget")


def test_latent_intervals_must_agree_with_the_seed_interval(tmp_path):
    # seed differences all positive, but one seed's latent interval includes 0 (a noisy SAE): no verdict
    data = named()
    rng = np.random.default_rng(5)
    noisy = rng.normal(0, 0.3, 20)
    noisy = noisy - noisy.mean() + 0.725  # FAST:44 - BT(P):44 = 0.725 - 0.64, over 20 latents of a wide spread
    data["FAST:44"] = sae(noisy, [0.9] * 50)
    path = tmp_path / "proxies.json"
    path.write_text(json.dumps({"proxies": data}))
    s = P.summarise(P.read_proxies([path]))
    pair = next(p for p in s["pairs"] if p["proxy"] == "explanation_auc_content")
    assert pair["per_seed"] == pytest.approx([0.10, 0.09, 0.085])
    assert pair["seeds"][0] > 0 and all(iv[0] > 0 for iv in pair["latents"][:2])
    lo, hi = pair["latents"][2]
    assert lo < 0 < hi and pair["why"] == "an interval includes 0"
    with pytest.raises(ValueError, match="twice"):
        P.read_proxies([path, path])
