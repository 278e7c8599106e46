"""``chatsae compare`` / ``chatsae sweep``: the "which is best" and frontier logic on hand-made numbers, the plotting
helpers, and both commands end to end on a saved tiny Llama (resume included)."""

from __future__ import annotations

import csv
import json
import math
import random

import pytest
import torch

from chatsae.cli import main
from chatsae.eval.plots import BarPanel, LinePanel, bar_chart, line_chart
from chatsae.sae import load_sae
from chatsae.workflows.compare import parse_coefs
from chatsae.workflows.compare_report import best_lines, best_methods, paper_table
from chatsae.workflows.study import check_names, names
from chatsae.workflows.sweep import COLUMNS, Setting, SweepConfig, frontier_gap, frontier_gaps, settings

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ---- hand-made numbers ---------------------------------------------------------------------------------------------
RESULTS = {  # results[method][arch][metric], as report.json holds them
    "bt-p": {
        "standard": {"log2_mse": 2.0024, "log2_mse_st": 5.1985},
        "jumprelu": {"log2_mse": 1.0, "log2_mse_st": 3.0},
    },
    "bt-f": {
        "standard": {"log2_mse": 1.4749, "log2_mse_st": 1.5093},
        "jumprelu": {"log2_mse": 0.9, "log2_mse_st": None},
    },
    "fast": {
        "standard": {"log2_mse": 1.3892, "log2_mse_st": 0.6468},
        "jumprelu": {"log2_mse": 0.9, "log2_mse_st": 2.5},
    },
}


def test_best_methods_on_hand_made_numbers():
    # the FAST paper's headline (Qwen2.5-7B, standard SAE): FAST best on both
    assert best_methods(RESULTS, "log2_mse_st") == {"standard": "fast", "jumprelu": "fast"}
    # a tie goes to the method listed first; a missing value is skipped
    assert best_methods(RESULTS, "log2_mse") == {"standard": "fast", "jumprelu": "bt-f"}
    nan_results = {"bt-p": {"topk": {"m": float("nan")}}, "fast": {"topk": {"m": 3.0}}, "bt-f": {"topk": {}}}
    assert best_methods(nan_results, "m") == {"topk": "fast"}
    assert best_methods({"fast": {"topk": {"m": None}}}, "m") == {"topk": None}
    lines = best_lines(RESULTS, {"log2_mse_st": "MSE_st", "log2_mse": "MSE"})
    assert lines[0].startswith("- Standard: lowest on MSE_st: **FAST** (log2 MSE_st 0.6468; BT(P) 5.199, BT(F) 1.509)")
    assert "lowest on MSE_st: **FAST** (log2 MSE_st 2.5; BT(P) 3, BT(F) -)" in lines[1]  # missing value: a dash
    assert "lowest on MSE: **BT(F)** (log2 MSE 0.9; BT(P) 1, FAST 0.9)" in lines[1]


def test_paper_table_layout():
    table = paper_table(RESULTS, ("log2_mse", "log2_mse_st")).splitlines()
    assert table[0] == (
        "| Method | Standard: log2 MSE | Standard: log2 MSE_st | JumpReLU: log2 MSE | JumpReLU: log2 MSE_st |"
    )
    assert [row.split(" | ")[0] for row in table[2:]] == ["| BT(P)", "| BT(F)", "| FAST"]
    assert table[4] == "| FAST | **1.389** | **0.6468** | 0.9 | **2.5** |"
    assert table[3] == "| BT(F) | 1.475 | 1.509 | **0.9** | - |"


def test_frontier_gap_matches_hand_computation():
    # ref: y = 1 - log10(L0/10) on [10, 100]; other = ref + 1 -> ref lower everywhere by exactly 1
    ref = [(100, 0.0), (10, 1.0)]  # any order
    gap = frontier_gap(ref, [(10, 2.0), (100, 1.0)])
    assert gap is not None and gap.pattern == "lower at every point" and gap.wins == gap.n_points == 9
    assert gap.mean_diff == pytest.approx(-1.0) and (gap.l0_low, gap.l0_high) == (10, 100)
    # a flat other at 0.5 crosses the reference at L0 = 10^1.5: lower on 4 of 8 log-spaced points, mean 0
    crossing = frontier_gap(ref, [(10, 0.5), (100, 0.5)], n_points=8)
    assert crossing.pattern == "mixed" and crossing.wins == 4 and crossing.mean_diff == pytest.approx(0.0, abs=1e-12)
    behind = frontier_gap([(10, 3.0), (100, 2.0)], [(5, 1.0), (50, 1.0)])  # overlap [10, 50] only
    assert (
        behind.pattern == "higher at every point" and behind.wins == 0 and (behind.l0_low, behind.l0_high) == (10, 50)
    )
    grid = [10 * 5 ** (i / 8) for i in range(9)]  # naive: interpolate by hand at the log-spaced points
    naive = [(3 - math.log10(x / 10)) - 1.0 for x in grid]
    assert behind.mean_diff == pytest.approx(sum(naive) / 9)
    assert frontier_gap(ref, [(200, 1.0), (400, 0.5)]) is None  # no shared L0 range
    assert frontier_gap(ref, [(20, 1.0), (20, None), (float("nan"), 1)]) is None  # one usable point
    rows = [
        {"arch": a, "l0_no_pos0": x, "fvu_no_pos0": y, "delta_lm_loss": None}
        for a, pts in (("jumprelu", ref), ("topk", [(10, 2.0), (100, 1.0)]))
        for x, y in pts
    ]
    gaps = frontier_gaps(rows)
    assert set(gaps) == {"fvu_no_pos0"} and gaps["fvu_no_pos0"]["topk"].pattern == "lower at every point"  # no LM loss
    assert gaps["fvu_no_pos0"]["topk"].verdict == "no verdict at this budget"  # point values only: no finding
    assert frontier_gaps([r for r in rows if r["arch"] == "topk"]) == {}


def test_settings_and_option_errors():
    cfg = SweepConfig(archs="topk,jumprelu", topk_ks="8,16", jumprelu_coefs=["0.001"])
    got = settings(cfg)
    assert got == [Setting("topk", k=8), Setting("topk", k=16), Setting("jumprelu", coef=0.001)]
    assert [s.run for s in got] == ["topk_k8", "topk_k16", "jumprelu_coef0.001"]
    assert got[2].label == "lambda=0.001"
    with pytest.raises(ValueError, match="--topk-ks: 'x' is not a number"):
        settings(SweepConfig(archs="topk", topk_ks="4,x"))
    with pytest.raises(ValueError, match="--archs"):
        settings(SweepConfig(archs="relu"))
    assert names(" a, b ,,") == ["a", "b"] and names(["x"]) == ["x"]
    with pytest.raises(ValueError, match="--methods: nothing given"):
        check_names("methods", [], ("fast",))
    assert parse_coefs("standard=0.3, jumprelu=2e-3", ["standard", "jumprelu"]) == {"standard": 0.3, "jumprelu": 0.002}
    with pytest.raises(ValueError, match="not ARCH=VALUE"):
        parse_coefs("standard:0.3", ["standard"])
    with pytest.raises(ValueError, match="not a number"):
        parse_coefs("standard=big", ["standard"])
    with pytest.raises(ValueError, match="not among --archs"):
        parse_coefs("gated=0.1", ["standard"])


def test_plotting_helpers_write_pngs(tmp_path):
    from matplotlib.image import imread

    bars = [
        BarPanel(
            "log2 MSE",
            "log2 MSE (units)",
            {"BT(P)": {"Standard": 2.0, "JumpReLU": None}, "FAST": {"Standard": 1.4, "JumpReLU": 1.1}},
            from_zero=False,
        ),
        BarPanel("empty", "y", {"BT(P)": {"Standard": None}}),
    ]
    lines = [
        LinePanel(
            "FVU vs L0", "L0", "FVU", {"TopK": [(10, 0.3), (40, 0.1), (None, 0.2)], "Gated": [(0, 1.0)]}, log_x=True
        )
    ]
    for path in (bar_chart(bars, tmp_path / "b.png", "bars", "SAE"), line_chart(lines, tmp_path / "l.png", "lines")):
        assert path.read_bytes()[:8] == PNG and path.stat().st_size > 5000
        img = imread(path)
        assert img.shape[0] > 200 and img.shape[1] > 200 and img[..., :3].std() > 0.05  # not a blank canvas
    assert not list(tmp_path.glob(".*tmp*"))  # written atomically, no leftovers
    # error bars (intervals) change the picture; missing / non-finite bounds are simply not drawn
    plain = bar_chart(bars[:1], tmp_path / "p.png", "bars")
    err = {"BT(P)": {"Standard": (1.5, 2.6)}, "FAST": {"Standard": None, "JumpReLU": (1.0, 1.3)}}
    barred = bar_chart([bars[0]._replace(errors=err)], tmp_path / "e.png", "bars")
    assert (imread(plain).shape != imread(barred).shape) or (imread(plain) != imread(barred)).any()
    line_err = lines[0]._replace(errors={"TopK": [(8, 12, 0.25, 0.35), None, None], "Gated": [None]})
    dots = line_chart([lines[0]], tmp_path / "d.png", "lines")
    whiskers = line_chart([line_err], tmp_path / "w.png", "lines")
    assert (imread(dots) != imread(whiskers)).any()


# ---- end to end on the tiny model ----------------------------------------------------------------------------------
WORDS = (
    "apple",
    "river",
    "stone",
    "cloud",
    "music",
    "paper",
    "garden",
    "window",
    "silver",
    "engine",
    "candle",
    "forest",
    "bridge",
    "ocean",
    "yellow",
)


@pytest.fixture(scope="module")
def study_files(tiny_llama, tmp_path_factory):
    """(root, model dir, chat data (40 records), plain text (80 lines), extra eval data (6 Q/A records))."""
    model, tok = tiny_llama
    root = tmp_path_factory.mktemp("study")
    model.save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    rng = random.Random(0)

    def words(n: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(n))

    chats = [
        {
            "messages": [
                {"role": "user", "content": f"Question {i}: {words(3 + i % 5)}?"},
                {"role": "assistant", "content": f"Answer {i}: {words(4 + i % 7)}."},
            ]
        }
        for i in range(40)
    ]
    (root / "chat.jsonl").write_text("".join(json.dumps(c) + "\n" for c in chats))
    (root / "text.txt").write_text("".join(f"{words(15 + i % 20)} line {i}.\n" for i in range(80)))
    (root / "qa.jsonl").write_text(
        "".join(json.dumps({"question": f"Q{i} {words(4)}?", "answer": words(5)}) + "\n" for i in range(6))
    )
    return root


COMMON = [
    "--width",
    "96",
    "--layer",
    "1",
    "--total-tokens",
    "1536",
    "--batch-size",
    "256",
    "--init-sample-tokens",
    "512",
    "--shard-tokens",
    "1024",
    "--holdout",
    "6",
    "--eval-max-samples",
    "4",
    "--eval-batch-tokens",
    "256",
    "--no-progress",
    "--device",
    "cpu",
    "--model-device",
    "cpu",
]


@pytest.mark.slow
def test_compare_end_to_end_then_resume(study_files, capsys):
    root, out = study_files, study_files / "compare"
    args = [
        "compare",
        "--model",
        str(root / "model"),
        "--instruct-data",
        str(root / "chat.jsonl"),
        "--pretrain-data",
        str(root / "text.txt"),
        "--archs",
        "standard,jumprelu",
        "--context-size",
        "64",
        "--out-dir",
        str(out),
        "--sparsity-coefs",
        "jumprelu=0.01",
        *COMMON,
    ]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "| Method | Standard: log2 MSE | Standard: log2 MSE_st | JumpReLU: log2 MSE |" in captured.out
    assert "[FAST] harvested" in captured.err and "training JumpReLU d_sae=96 on 1,536 tokens" in captured.err
    report = json.loads((out / "report.json").read_text())
    res = report["results"]["heldout"]
    assert list(res) == ["bt-p", "bt-f", "fast"] and all(list(res[m]) == ["standard", "jumprelu"] for m in res)
    for method, per_arch in res.items():
        for arch, row in per_arch.items():
            run = out / f"{method}_{arch}"
            sae = load_sae(run / "sae")
            assert (sae.cfg.architecture, sae.cfg.d_sae, sae.cfg.metadata["method"]) == (arch, 96, method)
            assert json.loads((run / "sae" / "training_summary.json").read_text())["tokens"] == 1536  # same budget
            ev = json.loads((run / "eval_heldout.json").read_text())
            # every SAE evaluated FAST-style on the same 4 held-out chat records, whatever its training method
            assert ev["setup"]["method"] == "fast" and ev["setup"]["sequences"] == 4
            assert ev["setup"]["data"] == str(out / "heldout.jsonl")
            assert row["log2_mse_st"] == ev["metrics"]["special"]["log2_mse"]
            assert math.isfinite(row["log2_mse"]) and row["delta_lm_loss"] is not None  # LM loss computed
            assert row["ce_recovered_no_pos0"] == ev["metrics"]["all_no_pos0"]["ce_recovered"]
            assert row["kl_user"] == ev["metrics"]["user"]["kl"]
            assert row["kl_no_pos0"] == ev["metrics"]["all_no_pos0"]["kl"]
            assert row["fvu_special"] == ev["metrics"]["special_no_pos0"]["fvu"]
            assert row["delta_lm_loss_assistant"] == ev["metrics"]["assistant"]["delta_ce"]
    assert json.loads((out / "fast_jumprelu" / "sae" / "config.json").read_text())["train"]["sparsity_coef"] == 0.01
    btp = json.loads((out / "bt-p_standard" / "sae" / "config.json").read_text())["data"]
    assert (btp["data"], btp["method"], btp["holdout"]) == (str(root / "text.txt"), "bt-p", 0)
    assert {m: json.loads((out / "cache" / m / "manifest.json").read_text())["method"] for m in res} == {
        "bt-p": "bt-p",
        "bt-f": "bt-f",
        "fast": "fast",
    }
    heldout = [json.loads(line) for line in (out / "heldout.jsonl").read_text().splitlines()]
    assert len(heldout) == 6 and all("messages" in r for r in heldout)
    for arch in ("standard", "jumprelu"):  # the report's verdict is the minimum of the table
        best = min(res, key=lambda m: res[m][arch]["log2_mse_st"])
        assert report["best"]["heldout"][arch]["log2_mse_st"] == best
    md = (out / "report.md").read_text()
    # the three paper tables (with / without position 0, template parts), the caches, two rows each of fidelity,
    # token classes and intervals
    assert md.count("\n| BT(P) | ") == 10
    assert "### MSE_st by template part" in md and "MSE_st, system block" in md
    assert "### Verdicts (paired differences, A − B)" in md and "FAST vs BT(F)" in md or "FAST lower" in md
    iv = res["fast"]["jumprelu"]["intervals"]["log2_mse_st"]
    assert iv["seeds"] is None and iv["n_seeds"] == 1  # one seed: no interval over seeds
    assert iv["sequences"][0] < res["fast"]["jumprelu"]["log2_mse_st"] < iv["sequences"][1]
    pairs = {(v["arch"], v["a"], v["b"]) for v in report["verdicts"]["heldout"]}
    assert ("jumprelu", "fast", "bt-f") in pairs and ("standard", "bt-f", "bt-p") in pairs and len(pairs) == 6
    assert "### By token class" in md and "| Method | SAE | special: FVU | special: KL | special: ΔLM loss |" in md
    assert "lowest on MSE_st: **" in md and "![mse](mse.png)" in md
    assert report["setup"]["command"].startswith("chatsae compare --model") and report["setup"]["total_tokens"] == 1536
    for name in ("mse.png", "metrics.png"):
        assert (out / name).read_bytes()[:8] == PNG

    # rerun: every cache, SAE and evaluation is reused, the report rewritten
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/sae/sae_weights.safetensors")}
    assert len(stamps) == 6
    assert main(args) == 0
    err = capsys.readouterr().err
    assert err.count("skipping training") == 6 and err.count("reusing eval_heldout.json") == 6
    assert err.count("reusing the complete cache") == 3
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    again = json.loads((out / "report.json").read_text())["results"]["heldout"]
    assert again["fast"]["jumprelu"] == res["fast"]["jumprelu"]
    # a rerun asking for another budget is refused, naming the difference
    assert main([*args, "--total-tokens", "2048"]) == 1
    assert "total_tokens" in capsys.readouterr().err


@pytest.mark.slow
def test_sweep_writes_frontier(study_files, capsys):
    root, out = study_files, study_files / "sweep"
    args = [
        "sweep",
        "--model",
        str(root / "model"),
        "--data",
        str(root / "chat.jsonl"),
        "--archs",
        "jumprelu,topk,gated",
        "--jumprelu-coefs",
        "0.001,0.05",
        "--topk-ks",
        "8,64",
        "--gated-coefs",
        "0.3",
        "--no-lm-loss",
        "--eval-data",
        str(root / "qa.jsonl"),
        "--out-dir",
        str(out),
        *COMMON,
    ]
    assert main(args) == 0
    with open(out / "frontier.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == list(COLUMNS)
    assert [(r["arch"], r["setting"]) for r in rows] == [
        ("jumprelu", "lambda=0.001"),
        ("jumprelu", "lambda=0.05"),
        ("topk", "k=8"),
        ("topk", "k=64"),
        ("gated", "lambda=0.3"),
    ]
    assert all(r["eval_set"] == "heldout" and r["delta_lm_loss"] == "" for r in rows)  # --no-lm-loss
    for r in rows:  # error bars of the frontier: the bootstrap over the held-out sequences (one seed)
        assert float(r["l0_no_pos0_low"]) <= float(r["l0_no_pos0"]) <= float(r["l0_no_pos0_high"])
        assert float(r["fvu_no_pos0_low"]) < float(r["fvu_no_pos0"]) < float(r["fvu_no_pos0_high"])
        assert r["delta_lm_loss_low"] == "" and r["seeds"] == "1"
    for r in rows:
        ev = json.loads((out / r["sae"].split("/")[-2] / "eval_heldout.json").read_text())
        assert float(r["l0_no_pos0"]) == pytest.approx(ev["metrics"]["all_no_pos0"]["l0"])
    l0 = {r["setting"]: float(r["l0_no_pos0"]) for r in rows if r["arch"] == "topk"}
    assert 0 < l0["k=8"] <= 8 < l0["k=64"] <= 64  # a TopK SAE never fires more than k latents
    assert len((out / "frontier_qa.csv").read_text().splitlines()) == 6  # the extra evaluation set
    for name in ("frontier.png", "frontier_qa.png"):
        assert (out / name).read_bytes()[:8] == PNG
    md = (out / "report.md").read_text()
    assert "FVU (no pos 0) vs TopK: over L0" in md and "JumpReLU's frontier is ahead of" in md  # L0 ranges overlap
    assert "FVU (no pos 0) vs Gated: not comparable" in md  # a single gated point
    assert "ΔLM loss vs" not in md  # not computed, not compared
    assert len(list(out.glob("*/sae/cfg.json"))) == 5 and (out / "activations" / "manifest.json").is_file()
    capsys.readouterr()
    assert main(args) == 0  # resumes: nothing trained again
    assert capsys.readouterr().err.count("skipping training") == 5


def test_help_and_early_errors(study_files, capsys):
    with pytest.raises(SystemExit):
        main(["compare", "--help"])
    out = capsys.readouterr().out
    for flag in (
        "--instruct-data",
        "--pretrain-data",
        "--archs",
        "--methods",
        "--width",
        "--total-tokens",
        "--layer",
        "--eval-data",
        "--holdout",
        "--sparsity-coefs",
        "--out-dir",
        "--no-lm-loss",
        "--config",
    ):
        assert flag in out, flag
    assert "--method " not in out and "--arch " not in out and "--cache-dir" not in out  # set by the command
    with pytest.raises(SystemExit):
        main(["sweep", "--help"])
    out = capsys.readouterr().out
    for flag in ("--data", "--jumprelu-coefs", "--standard-coefs", "--gated-coefs", "--topk-ks", "--archs"):
        assert flag in out, flag
    assert "--sparsity-coef " not in out and "--k " not in out
    model = str(study_files / "model")
    assert main(["compare", "--model", model, "--out-dir", str(study_files / "x")]) == 1
    assert "--pretrain-data is required" in capsys.readouterr().err
    assert main(["compare", "--method", "fast"]) == 1
    assert "--method does not apply to chatsae compare; use --methods" in capsys.readouterr().err
    assert main(["compare", "--archs", "relu", "--pretrain-data", "p.txt"]) == 1
    assert "--archs: ['relu']" in capsys.readouterr().err
    assert main(["sweep", "--k", "3"]) == 1
    assert "--topk-ks" in capsys.readouterr().err


def test_plan_guards_a_study_once_it_produced_something(tmp_path):
    from chatsae.activations.harvest import HarvestConfig
    from chatsae.activations.pipeline import DataConfig
    from chatsae.sae import SAEConfig, create_sae, save_sae
    from chatsae.train.config import TrainConfig
    from chatsae.workflows.study import Study, StudyEvalConfig

    def study(tokens: int, width: int = 64) -> Study:
        return Study(
            tmp_path,
            DataConfig(model="m"),
            HarvestConfig(),
            TrainConfig(total_tokens=tokens),
            StudyEvalConfig(),
            sae_options={"d_sae": width},
        )

    study(4096).check_plan({"x": 1})
    assert json.loads((tmp_path / "plan.json").read_text())["train"]["total_tokens"] == 4096
    study(8192).check_plan({"x": 1})  # nothing produced yet (say the first try had a typo): replaced
    assert json.loads((tmp_path / "plan.json").read_text())["train"]["total_tokens"] == 8192
    save_sae(create_sae(SAEConfig(d_in=8, d_sae=16), seed=0), tmp_path / "run" / "sae")  # chatsae's SAE: produced
    study(8192).check_plan({"x": 1})  # the same settings: fine
    with pytest.raises(ValueError, match=r"plan.json: .*sae: \{'d_sae': 64\} -> \{'d_sae': 128\}.*x: 1 -> 2"):
        study(8192, width=128).check_plan({"x": 2})


@pytest.mark.slow
def test_compare_with_seeds_gives_intervals_and_verdicts(study_files, capsys):
    root, out = study_files, study_files / "compare_seeds"
    args = [
        "compare",
        "--model",
        str(root / "model"),
        "--instruct-data",
        str(root / "chat.jsonl"),
        "--methods",
        "bt-f,fast",
        "--archs",
        "jumprelu",
        "--context-size",
        "64",
        "--out-dir",
        str(out),
        "--seeds",
        "2",
        "--seed",
        "5",
        *COMMON,
    ]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "Verdicts (95% intervals" in printed and "FAST" in printed
    report = json.loads((out / "report.json").read_text())
    assert report["setup"]["seeds"] == [5, 6]
    for method in ("bt-f", "fast"):  # seed 0 keeps the plain run name, seed 1 is named with its seed
        seeds = [
            json.loads((out / run / "sae" / "config.json").read_text())["train"]["seed"]
            for run in (f"{method}_jumprelu", f"{method}_jumprelu_seed6")
        ]
        assert seeds == [5, 6]
        evs = [
            json.loads((out / run / "eval_heldout.json").read_text())
            for run in (f"{method}_jumprelu", f"{method}_jumprelu_seed6")
        ]
        row = report["results"]["heldout"][method]["jumprelu"]
        values = [ev["metrics"]["special"]["log2_mse"] for ev in evs]
        assert values[0] != values[1]  # different seeds, different SAEs
        assert row["seeds"] == 2 and row["log2_mse_st"] == pytest.approx(sum(values) / 2)
        iv = row["intervals"]["log2_mse_st"]
        half = 12.7062 * abs(values[0] - values[1]) / 2  # t(0.975, 1) * s / sqrt(2), s = |a - b| / sqrt(2)
        assert iv["seeds"] == pytest.approx([row["log2_mse_st"] - half, row["log2_mse_st"] + half], rel=1e-4)
        assert iv["sequences"][0] < row["log2_mse_st"] < iv["sequences"][1]
    verdicts = [v for v in report["verdicts"]["heldout"] if v["metric"] == "log2_mse_st"]
    assert len(verdicts) == 1 and (verdicts[0]["a"], verdicts[0]["b"]) == ("fast", "bt-f")
    v = verdicts[0]
    assert v["seeds"] is not None and v["sequences"] is not None
    assert v["verdict"].endswith("no verdict at this budget")  # 2 seeds: never a finding, whatever the intervals
    assert v["n_seeds"] == 2 and v["why"] == "2 seeds; a finding needs 3 or more"
    assert "seeds [" in (out / "report.md").read_text()


def test_high_frequency_shares_from_the_firing_histogram() -> None:
    """Shares of latents firing on >= 10% / >= 1% of tokens, against a direct count of known frequencies."""
    from chatsae.eval import metrics as M
    from chatsae.workflows.study import high_frequency_shares

    freq = torch.tensor([0.5, 0.2, 0.1, 0.05, 0.011, 0.0099, 1e-4, 0.0, 0.0, 0.3])
    latents = {
        "d_sae": 10,
        "firing_histogram": {"log10_bin_edges": list(M.HISTOGRAM_EDGES), "counts": M.firing_histogram(freq)},
    }
    got = high_frequency_shares(latents)
    assert got == {"freq_gt_10pct": pytest.approx(4 / 10), "freq_gt_1pct": pytest.approx(6 / 10)}
    assert high_frequency_shares({}) == {"freq_gt_10pct": None, "freq_gt_1pct": None}
