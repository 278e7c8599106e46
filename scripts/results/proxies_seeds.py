"""Interpretability proxies over training seeds: FAST vs BT(F) vs BT(P) from ``chatsae proxies --out`` JSON files.

    python scripts/results/proxies_seeds.py PROXIES_JSON [...] [--eval-dir runs/compare_k --arch batchtopk] \\
        [--json summary.json] > tables.md

Each SAE in the files' ``proxies`` is labelled ``METHOD:SEED`` (e.g. ``FAST:42``; the order of the seeds of a method
gives the seed index that pairs methods); a label without ``:`` (e.g. ``random``) is a baseline, reported beside the
methods and never compared. Per method: the mean over seeds of each proxy with a 95% t-interval over seeds. Per pair
of methods (A − B, the same seed index): the mean of the per-seed differences with its t-interval over seeds, and for
each seed index the difference's 95% bootstrap interval over latents (``chatsae.interp.proxies.unpaired_difference``;
the latents of two SAEs are independent samples). A verdict only with 3 or more seeds and when the seed interval and
every latent interval exclude 0 on the same side (``chatsae.eval.stats.verdict_gate`` for each latent interval with
the seed interval, then ``stats.verdict``); otherwise "no verdict at this budget" and why.

``--json`` writes the summary (no per-latent lists); :func:`tables` renders the README's tables from it (and
``scripts/results/render_tables.py`` uses it for docs/results/interp_matched/README.md). With ``--eval-dir`` the
held-out L0 (position 0 left out) of each SAE is read from ``EVAL_DIR/<method>_<arch>[_seedN]/eval_heldout.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from chatsae.eval import stats as S
from chatsae.interp.proxies import COMPARED, mean_interval, per_latent, unpaired_difference

METHODS = {"FAST": "fast", "BT(F)": "bt-f", "BT(P)": "bt-p"}
"""Method label -> the name `chatsae compare` gives its runs."""
KEYS = tuple(COMPARED)
SHARES = {"template_selective_share", "template_latent_share"}


def split_label(label: str) -> tuple[str, str | None]:
    """``"FAST:42"`` -> ("FAST", "42"); a label without a seed -> (label, None)."""
    method, sep, seed = label.partition(":")
    return (method, seed) if sep else (label, None)


def read_proxies(paths: list[Path]) -> dict[str, dict[str, Any]]:
    """Every SAE's ``proxies(...)`` result in the files, by label (a label twice is an error)."""
    out: dict[str, dict[str, Any]] = {}
    for path in paths:
        for label, p in json.loads(Path(path).read_text())["proxies"].items():
            if label in out:
                raise ValueError(f"{path}: label {label!r} appears twice")
            out[label] = p
    return out


def _iv(iv: S.Interval) -> dict[str, Any]:
    nan = math.isnan(iv.low) or math.isnan(iv.high)
    return {
        "value": None if math.isnan(iv.value) else iv.value,
        "interval": None if nan else [iv.low, iv.high],
        "n": iv.n,
    }


def _interval(d: dict[str, Any]) -> S.Interval:
    lo, hi = d["interval"] or (math.nan, math.nan)
    return S.Interval(math.nan if d["value"] is None else d["value"], lo, hi, d["n"])


def sae_entry(p: dict[str, Any], values: dict[str, list[float]], seed: int) -> dict[str, Any]:
    """One SAE: its counts and, per proxy, the mean with its bootstrap interval over latents."""
    return {
        "d_sae": p["d_sae"],
        "tokens": p["n_tokens"],
        "l0": p.get("l0"),
        "live": p["live"],
        "dead_fraction": p["dead_fraction"],
        "by_class": p.get("by_class"),
        "proxies": {k: _iv(mean_interval(values[k], seed)) for k in KEYS},
    }


def pair_entry(
    a: str, b: str, key: str, va: list[dict[str, list[float]]], vb: list[dict[str, list[float]]], seed: int
) -> dict[str, Any]:
    """A − B on proxy ``key``: per-seed differences of the SAE means, their t-interval over seeds, the latent
    bootstrap interval of each seed's difference, and the verdict."""
    n = min(len(va), len(vb))
    per_seed, latents = [], []
    for i in range(n):
        xa, xb = va[i][key], vb[i][key]
        d = unpaired_difference(xa, xb, seed=seed)
        latents.append(d)
        per_seed.append(d.value)
    over_seeds = S.t_interval(per_seed)
    why = ""
    gated: list[S.Interval | None] = [*latents] or [None]
    for iv in gated:
        why = S.verdict_gate(n, iv, over_seeds)
        if why:
            break
    text = COMPARED[key]
    verdict = f"{a} vs {b} on {text}: {S.NO_VERDICT}" if why else S.verdict(a, b, text, [over_seeds, *latents])
    if not why and S.NO_VERDICT in verdict:
        why = "the latent intervals exclude 0 on different sides"
    return {
        "a": a,
        "b": b,
        "proxy": key,
        "difference": None if math.isnan(over_seeds.value) else over_seeds.value,
        "per_seed": per_seed,
        "seeds": None if math.isnan(over_seeds.low) else [over_seeds.low, over_seeds.high],
        "latents": [_iv(iv)["interval"] for iv in latents],
        "n_seeds": n,
        "verdict": verdict,
        "why": why or None,
    }


def summarise(named: dict[str, dict[str, Any]], seed: int = S.SEED) -> dict[str, Any]:
    """The summary (see the module docstring) of ``named[label] = proxies(...)``."""
    values = {label: per_latent(p) for label, p in named.items()}
    saes: dict[str, dict[str, Any]] = {}
    for label in named:
        method, run_seed = split_label(label)
        saes[label] = {"method": method, "seed": run_seed}
    for label, p in named.items():
        saes[label].update(sae_entry(p, values[label], seed))
    order = [m for m in METHODS if any(s["method"] == m and s["seed"] for s in saes.values())]
    order += sorted({s["method"] for s in saes.values() if s["seed"] and s["method"] not in order})
    runs = {m: [label for label, s in saes.items() if s["method"] == m and s["seed"]] for m in order}
    methods: dict[str, dict[str, Any]] = {}
    for m, labels in runs.items():
        methods[m] = {"seeds": [saes[x]["seed"] for x in labels]}
        for k in KEYS:
            iv = S.t_interval([v for x in labels if (v := saes[x]["proxies"][k]["value"]) is not None])
            methods[m][k] = _iv(iv)
    pairs = [
        pair_entry(a, b, k, [values[x] for x in runs[a]], [values[x] for x in runs[b]], seed)
        for i, a in enumerate(order)
        for b in order[i + 1 :]
        for k in KEYS
    ]
    baselines = [label for label, s in saes.items() if not s["seed"]]
    return {"saes": saes, "methods": methods, "pairs": pairs, "baselines": baselines, "min_seeds": S.MIN_SEEDS}


def eval_l0(eval_dir: Path, arch: str, summary: dict[str, Any]) -> None:
    """Add each seeded SAE's held-out L0 (no position 0) from its run folder's eval_heldout.json, when present."""
    for s in summary["saes"].values():
        name = METHODS.get(s["method"])
        if name is None or not s["seed"]:
            continue
        first = summary["methods"][s["method"]]["seeds"][0]  # the first seed's run has no suffix
        run = eval_dir / (f"{name}_{arch}" + ("" if s["seed"] == first else f"_seed{s['seed']}"))
        path = run / "eval_heldout.json"
        if path.is_file():
            s["eval_l0"] = json.loads(path.read_text())["metrics"]["all_no_pos0"]["l0"]


# ---- tables ---------------------------------------------------------------------------------------------------------
def fmt(v: float | None, key: str = "") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{100 * v:.2f}%" if key in SHARES else f"{v:.3f}"


def cell(d: dict[str, Any], key: str = "") -> str:
    """``value [low, high]`` (shares in per cent)."""
    iv = d.get("interval")
    return fmt(d["value"], key) + ("" if not iv else f" [{fmt(iv[0], key)}, {fmt(iv[1], key)}]")


def diff_cell(v: float | None, iv: list[float] | None, key: str) -> str:
    scale, unit = (100, " pts") if key in SHARES else (1, "")
    if v is None:
        return "-"
    text = f"{scale * v:+.3f}{unit}"
    return text if not iv else f"{text} [{scale * iv[0]:+.3f}, {scale * iv[1]:+.3f}]"


def table(headers: list[str], rows: list[list[str]], left: int = 1) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * left + "---:|" * (len(headers) - left)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


SHORT = {
    "explanation_auc": "AUC (all)",
    "explanation_auc_content": "AUC content latents",
    "explanation_auc_template": "AUC template latents",
    "template_selective_share": "template-selective share",
    "template_latent_share": "template-latent share",
}
HEAD = [SHORT[k] for k in KEYS]


def methods_table(summary: dict[str, Any]) -> str:
    """Per method: mean over seeds [95% t-interval over seeds]; the baselines: the one SAE [latent interval]."""
    rows = []
    for m, d in summary["methods"].items():
        rows.append([m, str(len(d["seeds"])), *(cell(d[k], k) for k in KEYS)])
    for label in summary["baselines"]:
        p = summary["saes"][label]["proxies"]
        rows.append([f"{label} (baseline, 1 SAE)", "1", *(cell(p[k], k) for k in KEYS)])
    return table(["method", "seeds", *HEAD], rows)


def saes_table(summary: dict[str, Any]) -> str:
    """Each SAE: L0, live latents, latents per class, and each proxy [95% bootstrap interval over latents]."""
    rows = []
    for label, s in summary["saes"].items():
        bc = s.get("by_class") or {}
        counts = "/".join(str(bc.get(c, {}).get("scored_latents", "-")) for c in ("content", "template"))
        l0 = "-" if s.get("eval_l0") is None else f"{s['eval_l0']:.1f}"
        rows.append([label, l0, f"{s['l0']:.1f}", f"{s['live']:,}", counts, *(cell(s["proxies"][k], k) for k in KEYS)])
    headers = ["SAE", "L0 eval", "L0 here", "live", "scored content/template", *HEAD]
    return table(headers, rows)


def pairs_table(summary: dict[str, Any]) -> str:
    """Each pair x proxy: mean paired difference [t-interval over seeds], the latent intervals, the verdict."""
    rows = []
    for p in summary["pairs"]:
        k = p["proxy"]
        scale = 100 if k in SHARES else 1
        lat = "; ".join(f"[{scale * iv[0]:+.3f}, {scale * iv[1]:+.3f}]" if iv else "-" for iv in p["latents"])
        verdict = p["verdict"] if not p["why"] else f"{S.NO_VERDICT} ({p['why']})"
        rows.append([f"{p['a']} − {p['b']}", COMPARED[k], diff_cell(p["difference"], p["seeds"], k), lat, verdict])
    return table(["pair", "proxy", "difference [seeds]", "latent intervals, per seed", "verdict"], rows, left=2)


def tables(summary: dict[str, Any]) -> str:
    return "\n\n".join((methods_table(summary), saes_table(summary), pairs_table(summary)))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("proxies", nargs="+", type=Path, help="`chatsae proxies --out` files (labels METHOD:SEED)")
    ap.add_argument("--eval-dir", type=Path, default=None, help="the `chatsae compare` folder (held-out L0)")
    ap.add_argument("--arch", default="batchtopk", help="architecture of the runs in --eval-dir")
    ap.add_argument("--json", type=Path, default=None, help="write the summary here")
    a = ap.parse_args(argv)
    summary = summarise(read_proxies(a.proxies))
    summary["inputs"] = [str(path) for path in a.proxies]
    if a.eval_dir is not None:
        eval_l0(a.eval_dir, a.arch, summary)
    if a.json is not None:
        a.json.write_text(json.dumps(summary, indent=1) + "\n")
    sys.stdout.write(tables(summary) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
