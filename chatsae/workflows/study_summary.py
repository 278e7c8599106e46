"""The numbers a study keeps per SAE and evaluation set (:data:`SUMMARY`, with the shares of high-frequency latents
:data:`HIGH_FREQ`), taken from an :class:`~chatsae.eval.result.EvalResult` by :func:`summarize`."""

from __future__ import annotations

from typing import Any

from ..eval.result import EvalResult

SUMMARY: dict[str, tuple[str, str]] = {
    # summary key: (subset, metric) of EvalResult.metrics
    "log2_mse": ("all", "log2_mse"),
    "log2_mse_st": ("special", "log2_mse"),
    "log2_mse_no_pos0": ("all_no_pos0", "log2_mse"),
    "log2_mse_st_no_pos0": ("special_no_pos0", "log2_mse"),
    "log2_mse_st_strict": ("special_strict", "log2_mse"),
    "log2_mse_st_strict_no_pos0": ("special_strict_no_pos0", "log2_mse"),
    "log2_mse_st_prefix": ("special_prefix", "log2_mse"),
    "log2_mse_st_turns": ("special_turns", "log2_mse"),
    "mse": ("all", "mse"),
    "mse_no_pos0": ("all_no_pos0", "mse"),
    "l0": ("all", "l0"),
    "l0_no_pos0": ("all_no_pos0", "l0"),
    "fvu": ("all", "fvu"),
    "fvu_no_pos0": ("all_no_pos0", "fvu"),
    "delta_lm_loss": ("all", "delta_ce"),
    "delta_lm_loss_no_pos0": ("all_no_pos0", "delta_ce"),
    "ce_recovered": ("all", "ce_recovered"),
    "ce_recovered_no_pos0": ("all_no_pos0", "ce_recovered"),
    "kl": ("all", "kl"),
    "kl_no_pos0": ("all_no_pos0", "kl"),
    "dead_fraction": ("all", "dead_fraction"),
}
CLASS_SUBSETS = {"special": "special_no_pos0", "system": "system", "user": "user", "assistant": "assistant"}
"""Token classes a study reports apart (chat-template tokens without position 0, system, user, assistant content)."""
CLASS_METRICS = {"fvu": "fvu", "kl": "kl", "delta_lm_loss": "delta_ce"}
SUMMARY.update(
    {f"{key}_{cls}": (subset, metric) for cls, subset in CLASS_SUBSETS.items() for key, metric in CLASS_METRICS.items()}
)
"""The numbers a study keeps per SAE and evaluation set (per class: e.g. ``kl_user``, ``fvu_special``)."""
HIGH_FREQ = {"freq_gt_10pct": -1.0, "freq_gt_1pct": -2.0}
"""High-frequency latents (JumpReLU paper): the share of latents firing on at least 10% / 1% of all evaluated tokens
(key -> log10 of the frequency), read from the eval's firing histogram (its bin edges include -1 and -2)."""
SUMMARY_KEYS = (*SUMMARY, *HIGH_FREQ)
"""Every number a study keeps per SAE and evaluation set."""


def summarize(result: EvalResult) -> dict[str, float | None]:
    """The :data:`SUMMARY` numbers of one evaluation (None where a metric does not exist)."""
    d = result.to_dict()["metrics"]
    return {
        **{key: (d.get(s) or {}).get(m) for key, (s, m) in SUMMARY.items()},
        **high_frequency_shares(result.latents),
    }


def high_frequency_shares(latents: dict[str, Any]) -> dict[str, float | None]:
    """:data:`HIGH_FREQ` shares from an eval's ``latents`` block (None without a firing histogram)."""
    hist, d_sae = latents.get("firing_histogram") or {}, latents.get("d_sae")
    edges, counts = hist.get("log10_bin_edges"), hist.get("counts")
    if not edges or not counts or not d_sae:
        return dict.fromkeys(HIGH_FREQ)
    lower = edges[: len(counts)]  # each bin's lower edge
    return {key: sum(c for e, c in zip(lower, counts, strict=True) if e >= at) / d_sae for key, at in HIGH_FREQ.items()}
