"""The tables of docs/results/*/README.md that come from committed JSON files are rendered by
scripts/results/render_tables.py: the committed READMEs must equal their rendering (run the script to update them)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "results" / "render_tables.py"


def load_script():
    spec = importlib.util.spec_from_file_location("render_tables", SCRIPT)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


R = load_script()


@pytest.mark.parametrize("readme", sorted(R.TABLES))
def test_readme_tables_equal_their_rendering_from_the_json(readme):
    text = (R.ROOT / readme).read_text()
    assert R.render(text, R.TABLES[readme]) == text, f"stale tables in {readme}: run python {SCRIPT.name}"


def test_a_changed_figure_is_caught():
    readme = "compare/README.md"
    text = (R.ROOT / readme).read_text()
    assert "| FAST | JumpReLU | 17.9 | 2.259 [2.209, 2.309]" in text  # seeds/report.json, mean over 3 seeds
    tampered = text.replace("| FAST | JumpReLU | 17.9 | 2.259", "| FAST | JumpReLU | 17.9 | 2.250")
    assert R.render(tampered, R.TABLES[readme]) != tampered
    with pytest.raises(ValueError, match="no <!-- table:compare_beta1_0 -->"):
        R.render(text.replace("<!-- /table:compare_beta1_0 -->", ""), R.TABLES[readme])


def test_verdict_cells_follow_the_current_rule():
    v = {"a": "fast", "b": "bt-f", "difference": 1.0454, "sequences": [1.04544, 1.04545], "seeds": [-4.9, 7.0]}
    assert "no verdict (the interval over sequences has zero width)" in R.verdict_cell(v, 3)
    ok = {"a": "fast", "b": "bt-f", "difference": -0.37, "sequences": [-0.4, -0.35], "seeds": [-0.38, -0.36]}
    assert R.verdict_cell(ok, 3).endswith(": FAST lower") and "no verdict (1 seed" in R.verdict_cell(ok, 1)


def test_interp_matched_tables_come_from_proxies_seeds_json():
    readme = "interp_matched/README.md"
    text = (R.ROOT / readme).read_text()
    summary = R.load("interp_matched/proxies_seeds.json")
    fast = summary["methods"]["FAST"]["explanation_auc_content"]
    lo, hi = fast["interval"]
    row = f"| FAST | 3 | {summary['methods']['FAST']['explanation_auc']['value']:.3f}"
    assert row in text and f"{fast['value']:.3f} [{lo:.3f}, {hi:.3f}]" in text
    verdicts = [p["verdict"] for p in summary["pairs"] if not p["why"]]
    assert verdicts and all(v in text for v in verdicts)  # each stated verdict passed the 3-seed gate
    tampered = text.replace(row, row[:-1] + ("0" if row[-1] != "0" else "1"))
    assert R.render(tampered, R.TABLES[readme]) != tampered
