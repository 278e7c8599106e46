"""Export a features run (and auto-interp names) in the Neuronpedia export layout (gzipped JSON lines).

Layout (as in Neuronpedia's public exports and its ``neuronpedia-utils`` converter)::

    OUT/<model_id>/<source_id>/
        model.jsonl  source.jsonl  sourceset.jsonl  release.jsonl
        features/batch-0.jsonl.gz      one Feature per line (per-latent statistics, logit lens, histogram)
        activations/batch-0.jsonl.gz   one Activation per line (a context: tokens + per-token values)
        explanations/batch-0.jsonl.gz  one Explanation per line (auto-interp names / explanations), if any

``source_id`` is ``<layer>-<source_set>`` (e.g. ``15-chatsae-res-4608``). Field names follow Neuronpedia's database
models; fields chatsae does not compute (correlations, DFA, loss values, vectors) are left empty. Assumptions,
documented in ``docs/interp.md``: activation ids are deterministic strings (not CUIDs); top contexts carry
``binMin = binContains = -1`` (chatsae's marker of the top bin), quantile contexts the activation range of their
quantile group and its share of the reservoir.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..core.config import validate
from ..core.locking import claim_dir
from ..core.utils import atomic_dir, check_inside, safe_name
from .store import AUTOINTERP_FILE, Context, FeatureData, read_autointerp


@dataclass
class NeuronpediaConfig:
    """Neuronpedia export settings (``chatsae export-neuronpedia``)."""

    out: str | None = None
    """Export root. None = SAE_DIR/neuronpedia."""
    model_id: str | None = None
    """Neuronpedia model id. None = the SAE's model name (path parts and .gguf removed)."""
    source_set: str | None = None
    """Source set name, without the layer. None = chatsae-<res|mlp|att>-<d_sae>."""
    creator_id: str = "chatsae"
    """creatorId / authorId written into every record."""
    release: str = "chatsae"
    """Release name."""
    batch_size: int = 1024
    """Latents per batch-N.jsonl.gz file."""
    n_quantile: int = 10
    """Quantile contexts exported per latent (besides all top contexts)."""
    overwrite: bool = False
    """Write into an existing --out directory chatsae did not write (same-named files replaced, others kept)."""

    def __post_init__(self) -> None:
        validate(self, positive=("batch_size",), non_negative=("n_quantile",), paths=("out",))


def _ids(data: FeatureData, cfg: NeuronpediaConfig) -> tuple[str, str, str, int]:
    """(model_id, source_set, source_id, layer)."""
    sae_meta = (data.meta.get("sae") or {}).get("metadata") or {}
    model_id = cfg.model_id or Path(str(sae_meta.get("model_name") or "model")).name.replace(".gguf", "")
    safe_name(model_id, "--model-id" if cfg.model_id else "--model-id (default: the SAE's model name)")
    hook = str(data.meta.get("hook_name") or "resid_post.0")
    kind, _, layer = hook.partition(".")
    short = {"resid_pre": "res", "resid_post": "res", "mlp_out": "mlp", "attn_out": "att"}.get(kind, kind)
    source_set = safe_name(cfg.source_set or f"chatsae-{short}-{data.d_sae}", "--source-set")
    return model_id, source_set, f"{int(layer or 0)}-{source_set}", int(layer or 0)


def _write_gz(path: Path, records: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8", compresslevel=5) as fh:
        for r in records:
            fh.write(json.dumps(r) + "\n")


def _activation(
    data: FeatureData, c: Context, common: dict[str, Any], aid: str, bins: tuple[float, float, float]
) -> dict[str, Any]:
    values = [float(a) for a in c.acts]
    top = max(values) if values else 0.0
    return {
        "id": aid,
        "tokens": [data.token(t) for t in c.tokens],
        **common,
        "maxValue": top,
        "maxValueTokenIndex": values.index(top) if values else 0,
        "minValue": min(values) if values else 0.0,
        "values": values,
        "dataSource": None,
        "dataIndex": str(c.sample),
        "dfaValues": [],
        "dfaTargetIndex": None,
        "dfaMaxValue": None,
        "lossValues": [],
        "logitContributions": None,
        "binMin": bins[0],
        "binMax": bins[1],
        "binContains": bins[2],
        "qualifyingTokenIndex": c.center,
    }


def export_neuronpedia(
    data: FeatureData | str | Path, cfg: NeuronpediaConfig, out: str | Path, autointerp: str | Path | None = None
) -> Path:
    """Write the export for ``data``; returns the source directory (replaced atomically)."""
    if not isinstance(data, FeatureData):
        data = FeatureData(data)
    model_id, source_set, source_id, layer = _ids(data, cfg)
    now = datetime.now(timezone.utc).isoformat()
    creator = {"creatorId": cfg.creator_id, "createdAt": now}
    auto_path = Path(autointerp) if autointerp else data.root / AUTOINTERP_FILE
    auto = read_autointerp(auto_path).get("latents", {}) if auto_path.is_file() else {}
    hook_name = f"blocks.{layer}.hook_{str(data.meta.get('hook_name', 'resid_post.0')).partition('.')[0]}"
    freq = data.frequency
    features, activations, explanations = [], [], []
    claim_dir(out, "neuronpedia", overwrite=cfg.overwrite, option="--out", inputs=(data.root, auto_path))
    target = check_inside(out, Path(out) / model_id / source_id, "--model-id / --source-set")
    with atomic_dir(target, overwrite=cfg.overwrite, kind="neuronpedia", option="export directory") as tmp:
        tmp.chmod(0o755)
        for j in range(data.d_sae):
            common = {"index": str(j), "layer": source_id, "modelId": model_id, **creator}
            top, bottom = data.logits(j)
            edges, counts = data.histogram(j)
            nz = [i for i, n in enumerate(counts) if n]
            lo, hi = (nz[0], nz[-1] + 1) if nz else (0, 0)
            features.append(
                {
                    **common,
                    "maxActApprox": float(data.max_act[j]),
                    "hasVector": False,
                    "vector": [],
                    "vectorLabel": None,
                    "vectorDefaultSteerStrength": float(data.max_act[j]) or 10.0,
                    "hookName": hook_name,
                    "topkCosSimIndices": [],
                    "topkCosSimValues": [],
                    "neuron_alignment_indices": [],
                    "neuron_alignment_values": [],
                    "neuron_alignment_l1": [],
                    "correlated_neurons_indices": [],
                    "correlated_neurons_pearson": [],
                    "correlated_neurons_l1": [],
                    "correlated_features_indices": [],
                    "correlated_features_pearson": [],
                    "correlated_features_l1": [],
                    "neg_str": [data.token(t) for t, _ in bottom],
                    "neg_values": [v for _, v in bottom],
                    "pos_str": [data.token(t) for t, _ in top],
                    "pos_values": [v for _, v in top],
                    "frac_nonzero": float(freq[j]),
                    "freq_hist_data_bar_heights": counts[lo:hi],
                    "freq_hist_data_bar_values": [(edges[i] * edges[i + 1]) ** 0.5 for i in range(lo, hi)],
                    "logits_hist_data_bar_heights": [],
                    "logits_hist_data_bar_values": [],
                    "decoder_weights_dist": [],
                }
            )
            tops = data.contexts(j, "top")
            for n, c in enumerate(tops):
                activations.append(_activation(data, c, common, f"{source_id}-{j}-top{n}", (-1.0, c.max_act, -1.0)))
            quant = data.contexts(j, "quantile")
            groups = _quantile_groups(quant, cfg.n_quantile)
            for n, (c, bins) in enumerate(groups):
                activations.append(_activation(data, c, common, f"{source_id}-{j}-q{n}", bins))
            for key in ("fast", "explanation"):
                result = (auto.get(str(j)) or {}).get(key) or {}
                text = result.get("name") if key == "fast" else result.get("text")
                if text:
                    explanations.append(
                        {
                            "id": f"{source_id}-{j}-{key}",
                            "modelId": model_id,
                            "layer": source_id,
                            "index": str(j),
                            "description": text,
                            "authorId": cfg.creator_id,
                            "embedding": None,
                            "triggeredById": None,
                            "typeName": f"chatsae-{key}",
                            "explanationModelName": _judge_name(auto_path),
                            "notes": f"FAST score {result.get('score')}/5" if key == "fast" else None,
                            "createdAt": now,
                        }
                    )
            if (j + 1) % cfg.batch_size == 0 or j == data.d_sae - 1:
                batch = j // cfg.batch_size
                _write_gz(tmp / "features" / f"batch-{batch}.jsonl.gz", features)
                _write_gz(tmp / "activations" / f"batch-{batch}.jsonl.gz", activations)
                if explanations:
                    _write_gz(tmp / "explanations" / f"batch-{batch}.jsonl.gz", explanations)
                features, activations, explanations = [], [], []
        _write_meta(tmp, data, cfg, model_id, source_set, source_id, now)
    return target


def _quantile_groups(contexts: list[Context], n: int) -> list[tuple[Context, tuple[float, float, float]]]:
    """Pick ``n`` contexts spread over the (sorted, best first) reservoir; each with (binMin, binMax, binContains)
    of the quantile group it represents."""
    if not contexts or n <= 0:
        return []
    n = min(n, len(contexts))
    size = len(contexts) / n
    out = []
    for g in range(n):
        group = contexts[round(g * size) : round((g + 1) * size)]
        acts = [c.max_act for c in group]
        out.append((group[0], (min(acts), max(acts), len(group) / len(contexts))))
    return out


def _judge_name(path: Path) -> str | None:
    if not path.is_file():
        return None
    runs = read_autointerp(path).get("runs") or []
    return runs[-1].get("judge") if runs else None


def _write_meta(
    tmp: Path, data: FeatureData, cfg: NeuronpediaConfig, model_id: str, source_set: str, source_id: str, now: str
) -> None:
    def line(name: str, obj: dict[str, Any]) -> None:
        (tmp / name).write_text(json.dumps(obj) + "\n", encoding="utf-8")

    sae_meta = (data.meta.get("sae") or {}).get("metadata") or {}
    line(
        "model.jsonl",
        {
            "id": model_id,
            "instruct": True,
            "creatorId": cfg.creator_id,
            "displayNameShort": model_id,
            "displayName": model_id,
            "tlensId": None,
            "dimension": None,
            "visibility": "PUBLIC",
            "defaultSourceSetName": source_set,
            "defaultSourceId": source_id,
            "inferenceEnabled": False,
            "layers": 0,
            "neuronsPerLayer": data.d_sae,
            "createdAt": now,
            "owner": "",
            "updatedAt": now,
            "website": None,
        },
    )
    line(
        "sourceset.jsonl",
        {
            "modelId": model_id,
            "name": source_set,
            "creatorId": cfg.creator_id,
            "hasDashboards": True,
            "visibility": "PUBLIC",
            "description": f"chatsae {data.meta.get('hook_name')} - {data.d_sae}",
            "type": "sae",
            "creatorName": cfg.creator_id,
            "urls": [],
            "releaseName": cfg.release,
            "createdAt": now,
        },
    )
    line(
        "source.jsonl",
        {
            "id": source_id,
            "modelId": model_id,
            "setName": source_set,
            "creatorId": cfg.creator_id,
            "hasDashboards": True,
            "inferenceEnabled": False,
            "inferenceHosts": [],
            "saelensConfig": json.dumps(sae_meta),
            "visibility": "PUBLIC",
            "num_prompts": data.meta.get("n_samples"),
            "num_tokens_in_prompt": None,
            "dataset": (data.meta.get("config") or {}).get("data"),
            "createdAt": now,
        },
    )
    line(
        "release.jsonl",
        {
            "name": cfg.release,
            "description": f"chatsae SAEs of {model_id}",
            "creatorName": cfg.creator_id,
            "creatorId": cfg.creator_id,
            "visibility": "PUBLIC",
            "urls": [],
            "createdAt": now,
        },
    )
