"""``chatsae bench`` outputs: the printed table and SAEBench's JSON result layout (sae_bench/evals/*/eval_output.py).

SAEBench fields filled: eval_type_id, eval_config (SAEBench's field names, chatsae's values), eval_id (a UUID),
datetime_epoch_millis, eval_result_metrics, eval_result_details, eval_result_unstructured (sparse probing: per-class
accuracies, as SAEBench; absorption: null, as SAEBench), sae_lens_id ("custom_sae") and sae_lens_release_id (the SAE
directory's name; SAEBench's convention for SAEs not in the SAELens registry), sae_cfg_dict (the SAE's cfg.json).
Null: sae_bench_commit_hash (SAEBench did not run; the commit whose definitions were followed is in
eval_result_unstructured / eval_config notes) and sae_lens_version (SAELens is not used).
"""

from __future__ import annotations

from pathlib import Path
from statistics import mean
from typing import Any

SAEBENCH_DEFINITIONS = (
    "adamkarvonen/SAEBench 8042bb3828c6340da8d12062324e92b2077c571c (sae_bench/evals/sparse_probing, absorption)"
)


def sae_label(sae_dir: str | Path) -> str:
    """A name for the SAE: its directory's name, with the parent's in front when that name is just ``sae`` (a
    ``chatsae train`` run keeps its SAE in ``RUN/sae``)."""
    path = Path(sae_dir).resolve()
    return f"{path.parent.name}_{path.name}" if path.name == "sae" and path.parent.name else path.name


def _key_name(key: str) -> str:
    """chatsae's probe key -> SAEBench's metric name: llm -> llm_test_accuracy, sae_top_5 -> sae_top_5_test_accuracy."""
    return f"{key}_test_accuracy"


def _sorted_keys(keys: set[str]) -> list[str]:
    def order(key: str) -> tuple[int, int]:
        kind, _, k = key.partition("_top_")
        return (0 if kind == "llm" else 1, int(k) if k else 0)

    return sorted(keys, key=order)


def saebench_sparse_probing(
    result: dict[str, Any], cfg: Any, model_name: str, name: str, sae_cfg: dict[str, Any], eval_id: str, now: int
) -> dict[str, Any]:
    """SAEBench's ``SparseProbingEvalOutput`` as a dictionary (one dataset per chatsae task)."""
    details, unstructured = [], {}
    for task, res in result["tasks"].items():
        if not res["mean"]:
            continue
        row = {"dataset_name": task}
        row.update({_key_name(k): v["accuracy"] for k, v in res["mean"].items()})
        details.append(row)
        unstructured[f"{task}_results"] = {
            _key_name(k): {cls: scores[k]["accuracy"] for cls, scores in res["classes"].items()} for k in res["mean"]
        }
    keys = _sorted_keys({k for res in result["tasks"].values() for k in res["mean"]})
    averaged = {_key_name(k): mean(d[_key_name(k)] for d in details if _key_name(k) in d) for k in keys}
    n_train = round(cfg.per_class * (1 - cfg.test_fraction))
    return {
        "eval_type_id": "sparse_probing",
        "eval_config": {
            "random_seed": cfg.seed,
            "dataset_names": list(result["tasks"]),
            "probe_train_set_size": n_train,
            "probe_test_set_size": cfg.per_class - n_train,
            "context_length": cfg.context_length,
            "sae_batch_size": 1024,
            "llm_batch_size": cfg.max_batch_size,
            "llm_dtype": cfg.dtype,
            "model_name": model_name,
            "k_values": list(cfg.ks),
            "lower_vram_usage": False,
        },
        "eval_id": eval_id,
        "datetime_epoch_millis": now,
        "eval_result_metrics": {
            "llm": {k: v for k, v in averaged.items() if k.startswith("llm")},
            "sae": {k: v for k, v in averaged.items() if k.startswith("sae")},
        },
        "eval_result_details": details,
        "sae_bench_commit_hash": None,
        "sae_lens_id": "custom_sae",
        "sae_lens_release_id": name,
        "sae_lens_version": None,
        "sae_cfg_dict": sae_cfg,
        "eval_result_unstructured": {**unstructured, "definitions_from": SAEBENCH_DEFINITIONS},
    }


def saebench_absorption(
    result: dict[str, Any], cfg: Any, model_name: str, name: str, sae_cfg: dict[str, Any], eval_id: str, now: int
) -> dict[str, Any] | None:
    """SAEBench's ``AbsorptionEvalOutput`` as a dictionary; None when absorption was not scored (too few letters:
    SAEBench writes no file then either)."""
    ab, setup = result["absorption"], result["absorption_setup"]
    if ab is None or ab["metrics"] is None:
        return None
    acfg = setup["config"]
    details = [
        {
            "first_letter": r["letter"],
            "mean_absorption_fraction": r["mean_absorption_fraction"],
            "full_absorption_rate": r["full_absorption_rate"],
            "num_full_absorption": r["num_full_absorption"],
            "num_probe_true_positives": r["num_probe_true_positives"],
            "num_split_features": r["num_split_features"],
        }
        for r in ab["letters"]
        if r["letter"] in ab["evaluated_letters"]
    ]
    return {
        "eval_type_id": "absorption_first_letter",
        "eval_config": {
            "model_name": model_name,
            "random_seed": cfg.seed,
            "f1_jump_threshold": acfg["f1_jump_threshold"],
            "max_k_value": acfg["max_k"],
            "prompt_template": cfg.absorption_template,
            "prompt_token_pos": setup["word_position"] - setup["prompt_length"],
            "llm_batch_size": cfg.max_batch_size,
            "llm_dtype": cfg.dtype,
            "k_sparse_probe_l1_decay": acfg["l1_decay"],
            "k_sparse_probe_batch_size": setup["train_words"],
            "k_sparse_probe_num_epochs": acfg["l1_steps"],
            "min_GT_probe_f1": acfg["min_probe_f1"],
            "min_feats_for_eval": acfg["min_letters"],
            "eval_k_sparse_probe_batch_size": setup["test_words"],
            "precalc_k_sparse_probe_sae_acts": True,
        },
        "eval_id": eval_id,
        "datetime_epoch_millis": now,
        "eval_result_metrics": {"mean": ab["metrics"]},
        "eval_result_details": details,
        "sae_bench_commit_hash": None,
        "sae_lens_id": "custom_sae",
        "sae_lens_release_id": name,
        "sae_lens_version": None,
        "sae_cfg_dict": sae_cfg,
        "eval_result_unstructured": None,
    }


def _cell(entry: dict[str, Any] | None) -> str:
    if entry is None:
        return "-"
    low, high = entry["interval"]
    return f"{entry['accuracy']:.3f} [{low:.2f},{high:.2f}]"


def format_table(result: dict[str, Any]) -> str:
    """The table ``chatsae bench`` prints (also report.txt)."""
    lines = [f"chatsae bench: {result['sae']} on {result['model']} at {result['hook']}"]
    tasks = result["tasks"]
    if tasks:
        keys = _sorted_keys({k for res in tasks.values() for k in res["mean"]})
        cols = [k for k in keys if k == "llm" or k.startswith("sae")]
        head = {"llm": "dense raw", "sae": "all latents"}
        lines.append(
            "sparse probing: test accuracy, mean over one-vs-rest probes [95% bootstrap interval]; "
            "sae_top_k = k latents picked by class-mean difference"
        )
        widths = [10, 7, 6] + [20] * len(cols)
        header = ["task", "probes", "n_test"] + [head.get(k, k.replace("sae_top_", "sae k=")) for k in cols]
        lines.append("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
        for task, res in tasks.items():
            n_test = res["mean"]["llm"]["n"] if "llm" in res["mean"] else 0
            row = [task, str(len(res["positives"])), str(n_test)] + [_cell(res["mean"].get(k)) for k in cols]
            lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
            if res["skipped"]:
                lines.append(f"  ({task}: classes skipped for too few items: {', '.join(res['skipped'])})")
    ab = result.get("absorption")
    if ab is not None:
        if ab["metrics"] is None:
            lines.append(f"absorption (first letter): not scored: {ab['reason']}")
            ev = [r for r in ab["letters"] if r["letter"] in ab["evaluated_letters"]]
            if ev:
                lines.append(
                    f"  (over those {len(ev)} letters, for information: mean absorption fraction "
                    f"{mean(r['mean_absorption_fraction'] for r in ev):.3f}, full absorption "
                    f"{mean(r['full_absorption_rate'] for r in ev):.3f}, split features "
                    f"{mean(r['num_split_features'] for r in ev):.2f})"
                )
        else:
            m = ab["metrics"]
            lines.append(
                f"absorption (first letter, {len(ab['evaluated_letters'])} letters with probe F1 > 0.6): "
                f"mean absorption fraction {m['mean_absorption_fraction_score']:.3f}, "
                f"full absorption {m['mean_full_absorption_score']:.3f}, "
                f"split features {m['mean_num_split_features']:.2f}"
            )
    secs = result["seconds"]
    lines.append("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in secs.items()))
    return "\n".join(lines)
