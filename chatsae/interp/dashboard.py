"""``chatsae dashboard``: a static, self-contained HTML site from a features run (plus auto-interp results if any).

Layout of the output directory (opens from ``file://``: no server, no network, no CDN)::

    index.html              searchable, sortable list of latents (CSS and JS inlined)
    feature.html            one latent's page, selected by the URL hash: feature.html#123
    data/index.js           window.CHATSAE = {meta, features: [per-latent summary row]}
    data/vocab.js           window.CHATSAE_VOCAB = {token id: decoded string}
    data/chunks/c00001.js   chatsaeChunk(1, {latent id: details}) for latents chunk_size*1 .. chunk_size*2-1

Data travels as JavaScript files loaded by ``<script>`` tags (``fetch`` of local JSON is blocked under file://).
"""

from __future__ import annotations

import json
import math
from importlib import resources
from pathlib import Path
from typing import Any

from ..core.utils import atomic_dir
from .store import AUTOINTERP_FILE, Context, FeatureData, read_autointerp

ASSETS = "dashboard_assets"


def _r(x: float) -> float:
    """Round to 4 significant digits (compact JSON); NaN/inf become 0."""
    return float(f"{x:.4g}") if math.isfinite(x) else 0.0


def _asset(name: str) -> str:
    return resources.files(__package__).joinpath(ASSETS, name).read_text(encoding="utf-8")


def _ctx(c: Context, with_acts: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {"s": c.sample, "p": c.pos, "c": c.center, "m": _r(c.max_act), "t": c.tokens}
    if with_acts:
        out["a"] = [_r(a) for a in c.acts]
    return out


def _autointerp_row(result: dict[str, Any] | None) -> dict[str, Any]:
    result = result or {}
    fast = result.get("fast") or {}
    return {
        "score": fast.get("score"),
        "name": fast.get("name") or None,
        "explanation": (result.get("explanation") or {}).get("text"),
        "detection": (result.get("detection") or {}).get("balanced_accuracy"),
        "fuzzing": (result.get("fuzzing") or {}).get("balanced_accuracy"),
    }


def _js(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def _page(template: str, title: str, scripts: list[str]) -> str:
    css = _asset("style.css")
    js = "\n".join(_asset(s) for s in scripts)
    return _asset(template).replace("{{CSS}}", css).replace("{{JS}}", js).replace("{{TITLE}}", _escape(title))


def _escape(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def build_dashboard(
    data: FeatureData | str | Path,
    out: str | Path,
    title: str | None = None,
    chunk_size: int = 64,
    n_quantile: int = 10,
    n_random: int = 5,
    autointerp: str | Path | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the dashboard of ``data`` (a FeatureData or a features directory) to ``out`` (replaced atomically; a
    non-empty ``out`` that chatsae did not write is refused unless ``overwrite``, and its other files are kept).

    ``n_quantile`` / ``n_random``: quantile-reservoir and non-activating contexts shown per latent (top contexts
    are all shown). ``autointerp``: results file (default FEATURES_DIR/autointerp.json, used if present).
    Returns the path of ``index.html``.
    """
    if not isinstance(data, FeatureData):
        data = FeatureData(data)
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    meta = data.meta
    sae_meta = (meta.get("sae") or {}).get("metadata") or {}
    title = title or f"chatsae · {sae_meta.get('model_name', 'model')} · {meta.get('hook_name', '')}"
    auto, auto_summary = _read_autointerp(Path(autointerp) if autointerp else data.root / AUTOINTERP_FILE)
    freq, max_act, mean_act, special = data.frequency, data.max_act, data.mean_act, data.special_share
    sample_freq = data.sample_frequency
    rows: list[dict[str, Any]] = []
    chunks: dict[int, dict[str, dict[str, Any]]] = {}  # {chunk number: {latent id: details}}
    for j in range(data.d_sae):
        top = data.contexts(j, "top")
        promoted, _ = data.logits(j)
        ai = _autointerp_row(auto.get(str(j)))
        centre_tokens = list(dict.fromkeys(data.token(c.tokens[c.center]) for c in top if c.tokens))
        rows.append(
            {
                "id": j,
                "freq": _r(float(freq[j])),
                "max": _r(float(max_act[j])),
                "mean": _r(float(mean_act[j])),
                "special": _r(float(special[j])),
                "score": ai["score"],
                "name": ai["name"],
                "tokens": " · ".join(t.replace("\n", "\\n") for t in centre_tokens),
                "promoted": " · ".join(data.token(t).replace("\n", "\\n") for t, _ in promoted[:3]),
            }
        )
        edges, counts = data.histogram(j)
        top_logits, bottom_logits = data.logits(j)
        chunks.setdefault(j // chunk_size, {})[str(j)] = {
            "freq": _r(float(freq[j])),
            "sample_freq": _r(float(sample_freq[j])),
            "max": _r(float(max_act[j])),
            "mean": _r(float(mean_act[j])),
            "special": _r(float(special[j])),
            "autointerp": ai,
            "hist": {"edges": [_r(e) for e in edges], "counts": counts},
            "logits": {"top": [[t, _r(v)] for t, v in top_logits], "bottom": [[t, _r(v)] for t, v in bottom_logits]},
            "template": [[t.token_id, t.count, _r(t.fire_rate), _r(t.mean_act)] for t in data.template_stats(j)],
            "classes": {k: [v[0], _r(v[1])] for k, v in data.class_stats(j).items()},
            "top": [_ctx(c) for c in top],
            "quantile": [
                _ctx(c)
                for c in _spread(
                    [c for c in data.contexts(j, "quantile") if c.sample not in {t.sample for t in top}], n_quantile
                )
            ],
            "random": [_ctx(c, with_acts=False) for c in data.contexts(j, "random")[:n_random]],
        }
    index_meta = {
        "title": title,
        "d_sae": data.d_sae,
        "n_fired": int((max_act > 0).sum()),
        "n_samples": meta.get("n_samples"),
        "n_tokens": data.n_tokens,
        "model": sae_meta.get("model_name"),
        "hook_name": meta.get("hook_name"),
        "chunk_size": chunk_size,
        "fast_top_range": auto_summary,
    }
    out = Path(out)
    with atomic_dir(out, overwrite=overwrite, kind="dashboard", option="--out") as tmp:
        tmp.chmod(0o755)  # a site: readable like an ordinary directory
        _js(tmp / "data" / "index.js", "window.CHATSAE = " + json.dumps({"meta": index_meta, "features": rows}) + ";\n")
        _js(tmp / "data" / "vocab.js", "window.CHATSAE_VOCAB = " + json.dumps(data.token_strings) + ";\n")
        for n, chunk in chunks.items():
            _js(tmp / "data" / "chunks" / f"c{n:05d}.js", f"chatsaeChunk({n}, {json.dumps(chunk)});\n")
        (tmp / "index.html").write_text(_page("index.html", title, ["common.js", "index.js"]), encoding="utf-8")
        (tmp / "feature.html").write_text(_page("feature.html", title, ["common.js", "feature.js"]), encoding="utf-8")
    return out / "index.html"


def _spread(contexts: list[Context], n: int) -> list[Context]:
    """At most ``n`` contexts spread evenly over a list sorted by activation (one per quantile)."""
    if len(contexts) <= n:
        return contexts
    step = (len(contexts) - 1) / max(n - 1, 1)
    return [contexts[round(i * step)] for i in range(n)]


def _read_autointerp(path: Path) -> tuple[dict[str, Any], float | None]:
    """(per-latent results, FAST top-range share) of an autointerp results file; ({}, None) if absent."""
    if not path.is_file():
        return {}, None
    doc = read_autointerp(path)
    fast = (doc.get("summary") or {}).get("fast") or {}
    return doc.get("latents") or {}, fast.get("top_range_share")
