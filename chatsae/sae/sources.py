"""Where an SAE is and which layout it has: a local directory or file, or a Hugging Face Hub id.

:func:`locate` answers ``(format, path)``. Detection order inside a directory: ``sae_weights.safetensors`` (chatsae /
SAELens), ``sae.safetensors`` (EleutherAI sparsify hookpoint folder), ``ae.pt`` (dictionary_learning), ``params.npz``
(Gemma Scope); then the config files alone (``cfg.json`` with ``architecture`` / ``d_in``+``k``, ``config.json``
with ``trainer``) so that a missing weights file is reported as such. A directory in none of these layouts is
searched three levels down: one SAE found there is loaded, several are listed for the user to pick one
(``CKPT/layers.15``). A path that does not exist and looks like ``org/repo[/subfolder]`` is fetched with
``huggingface_hub`` (only that subfolder; or only the top-level SAE files), which honours ``HF_HUB_OFFLINE`` and
``HF_HUB_CACHE``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from huggingface_hub import HfApi, snapshot_download

from .base import SAE
from .foreign import HOOK_KINDS, build, read_dictionary_learning, read_gemma_scope, read_sparsify

SAELENS, SPARSIFY, DICTLEARN, GEMMA_SCOPE = "saelens", "sparsify", "dictionary_learning", "gemma_scope"
LOOKED_FOR = (
    "cfg.json + sae_weights.safetensors (chatsae / SAELens), cfg.json + sae.safetensors (EleutherAI sparsify), "
    "ae.pt + config.json (dictionary_learning), params.npz (Gemma Scope)"
)
SAE_FILES: tuple[str, ...] = ("cfg.json", "sae_weights.safetensors", "sparsity.safetensors", "checksums.json")
SAE_FILES += ("sae.safetensors", "ae.pt", "config.json", "params.npz")
"""The files of every layout: what a Hub download without a subfolder fetches (the repository's top level only)."""
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(/[\w.=-]+)*/?$")
_HOOK = re.compile(rf"^({'|'.join(HOOK_KINDS)})\.(\d+)$")
_TL_HOOK = re.compile(rf"^blocks\.(\d+)\.hook_({'|'.join(HOOK_KINDS)})$")
MAX_LISTED = 12


def detect(d: Path) -> str | None:
    """The layout of directory ``d`` (one of the format names above), or None."""
    for fmt, name in ((SAELENS, "sae_weights.safetensors"), (SPARSIFY, "sae.safetensors"), (DICTLEARN, "ae.pt")):
        if (d / name).is_file():
            return fmt
    if (d / "params.npz").is_file():
        return GEMMA_SCOPE
    if (d / "cfg.json").is_file():  # weights missing: the reader of the layout the config has says so
        cfg = _peek(d / "cfg.json")
        return SPARSIFY if "architecture" not in cfg and {"k", "d_in"} <= set(cfg) else SAELENS
    return DICTLEARN if "trainer" in _peek(d / "config.json") else None


def _peek(f: Path) -> dict:
    """A JSON object's keys for detection ({} if absent or unreadable: the reader reports errors)."""
    try:
        raw = json.loads(f.read_text()) if f.is_file() else {}
    except (OSError, ValueError, RecursionError):
        return {}
    return raw if isinstance(raw, dict) else {}


def candidates(d: Path, depth: int = 3) -> list[Path]:
    """SAE folders below ``d`` (at most ``depth`` levels; a folder that is an SAE is not searched further)."""
    found: list[Path] = []
    for sub in sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if detect(sub):
            found.append(sub)
        elif depth > 1:
            found.extend(candidates(sub, depth - 1))
    return found


def locate(src: str | Path) -> tuple[str, Path]:
    """``(format, path)`` of the SAE at ``src``: a directory for every format but Gemma Scope (its ``params.npz``)."""
    p = Path(src)
    if p.is_file():
        if p.suffix == ".npz":
            return GEMMA_SCOPE, p
        fmt = detect(p.parent)
        if fmt and p.name in SAE_FILES:
            return locate(p.parent)
        raise ValueError(f"{p}: not a file of a known SAE layout (expected one of: {LOOKED_FOR})")
    if p.is_dir():
        fmt = detect(p)
        if fmt == GEMMA_SCOPE:
            return fmt, p / "params.npz"
        if fmt:
            return fmt, p
        found = candidates(p)
        if len(found) == 1:
            return locate(found[0])
        if found:
            listed = ", ".join(str(f) for f in found[:MAX_LISTED])
            more = f" (and {len(found) - MAX_LISTED} more)" if len(found) > MAX_LISTED else ""
            raise ValueError(f"{p}: holds {len(found)} SAEs; give one of them: {listed}{more}")
        raise FileNotFoundError(f"{p}: no SAE in a known layout here or in its subfolders (looked for {LOOKED_FOR})")
    if is_hub_id(str(src)):
        return locate(download(str(src)))
    raise FileNotFoundError(f"{p}: no such file or directory (expected an SAE directory with cfg.json, or a Hub id)")


def is_hub_id(src: str) -> bool:
    """``org/repo[/subfolder...]`` whose first part is not a local directory (a typo in a local path stays local)."""
    return bool(_HUB_ID.match(src)) and not Path(src.split("/")[0]).exists()


def download(src: str) -> Path:
    """Local path of Hub id ``org/repo[/subfolder]`` (from the cache, or downloaded: that subfolder only)."""
    parts = src.strip("/").split("/")
    repo_id, sub = "/".join(parts[:2]), "/".join(parts[2:])
    patterns = [f"{sub}/*"] if sub else list(SAE_FILES)
    if sub and parts[-1] in SAE_FILES:  # a file: only it
        patterns = [sub]
    try:
        root = Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as e:  # huggingface_hub: offline/not cached, repo not found, gated, network errors
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise FileNotFoundError(
            f"{src}: not a local path, and Hugging Face Hub repository {repo_id!r} could not be read "
            f"({type(e).__name__}: {msg})"
        ) from e
    local = root / sub if sub else root
    if not local.exists():
        raise FileNotFoundError(f"{src}: repository {repo_id!r} has no {sub!r} (cached at {root})")
    if not sub and not detect(root):
        folders = _hub_folders(repo_id)
        raise FileNotFoundError(f"{src}: no SAE at the top of the repository; give a subfolder: {folders}")
    return local


def _hub_folders(repo_id: str) -> str:
    """The repository's SAE folders, as Hub ids, for the error message (listed online; '' when offline)."""
    try:
        files = HfApi().list_repo_files(repo_id)
    except Exception:  # offline or unreachable: the message then names no folders
        return f"{repo_id}/FOLDER"
    marks = ("/cfg.json", "/sae.safetensors", "/ae.pt", "/params.npz")
    folders = sorted({f.rsplit("/", 1)[0] for f in files if f.endswith(marks)})
    more = f" (and {len(folders) - MAX_LISTED} more)" if len(folders) > MAX_LISTED else ""
    return ", ".join(f"{repo_id}/{f}" for f in folders[:MAX_LISTED]) + more or f"{repo_id}/FOLDER"


def load_foreign(fmt: str, path: Path) -> SAE:
    """Read a sparsify, dictionary_learning or Gemma Scope SAE found by :func:`locate`."""
    readers = {SPARSIFY: read_sparsify, DICTLEARN: read_dictionary_learning, GEMMA_SCOPE: read_gemma_scope}
    return build(readers[fmt](path))


def normalize_hook(hook: str) -> str:
    """chatsae hook string from ``resid_post.15`` or TransformerLens ``blocks.15.hook_resid_post``."""
    if m := _HOOK.match(hook):
        return hook
    if m := _TL_HOOK.match(hook):
        return f"{m.group(2)}.{m.group(1)}"
    raise ValueError(
        f"hook {hook!r}: expected KIND.LAYER with KIND one of {', '.join(HOOK_KINDS)} (e.g. resid_post.15), "
        "or blocks.15.hook_resid_post"
    )


def set_hook(sae: SAE, hook: str | None) -> SAE:
    """Record ``hook`` (the caller's override) as ``sae.cfg.metadata['hook_name']``; None leaves it as inferred."""
    if hook is not None:
        sae.cfg.metadata["hook_name"] = normalize_hook(hook)
    return sae
