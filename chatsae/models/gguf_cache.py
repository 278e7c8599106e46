"""A converted copy of a local GGUF model, so that later loads skip the conversion.

transformers parses a GGUF file three times (config, tokenizer, weights) and de-quantises every tensor: ~17 s for the
embedded 135M model on 2 CPU cores, against ~1 s for the same model as safetensors. The first load of a GGUF file of
at most ``CHATSAE_GGUF_CACHE_MAX_GB`` (default 4) of float32 weights writes config, tokenizer and de-quantised float32
weights to ``<cache>/gguf/<file stem>-<key>`` (a first load in another dtype de-quantises to float32, keeps the copy
and casts); later loads (any dtype: the float32 weights are cast as the GGUF loader casts them) read that folder.
Same weights, tokenizer and logits bit for bit, in float32 and in bfloat16 (tested).

``<cache>`` is ``$CHATSAE_GGUF_CACHE`` if it names a directory, else ``$XDG_CACHE_HOME/chatsae`` or
``~/.cache/chatsae``; ``CHATSAE_GGUF_CACHE=0`` turns the cache off. The key covers the GGUF file's resolved path,
size and modification time and the transformers version, so a changed file or library gets a fresh conversion.
A folder is written beside its final place and renamed into it whole (a crash leaves no half-written copy); its
marker records every file's size, and a copy with a file of another size is not read (the next float32 load replaces
it); a copy that fails to load is reported, removed and the GGUF file is used instead.

The conversion itself is sped up by :func:`parse_once` (~23 s -> ~9 s for the embedded model): transformers parses
the GGUF file once for the config, once for the weights and once for the tokenizer (~4.5 s each, most of it building
the tokenizer's 49k-entry metadata arrays), and rebuilds gguf's tensor-name map once per module (~6 s); within the
context both are made once per file.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import json
import os
import shutil
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import transformers
from safetensors.torch import save_model

from ..core.faults import is_disk_full
from .transformers_compat import DTYPE_KW

ENV = "CHATSAE_GGUF_CACHE"
MAX_GB_ENV = "CHATSAE_GGUF_CACHE_MAX_GB"
MARKER = "chatsae_gguf_cache.json"
FORMAT = 2


def cache_root() -> Path | None:
    """The cache's root folder, or None when ``CHATSAE_GGUF_CACHE=0``."""
    setting = os.environ.get(ENV, "").strip()
    if setting in ("0", "off", "false", "no"):
        return None
    if setting and setting not in ("1", "on", "true", "yes"):
        return Path(setting).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "chatsae"


def converted_dir(gguf_path: Path) -> Path | None:
    """Where the converted copy of ``gguf_path`` lives (whether or not it exists yet); None when caching is off."""
    root = cache_root()
    if root is None:
        return None
    resolved = gguf_path.resolve()
    st = resolved.stat()
    ident = f"{FORMAT}|{resolved}|{st.st_size}|{st.st_mtime_ns}|{transformers.__version__}"
    return root / "gguf" / f"{resolved.stem}-{hashlib.sha256(ident.encode()).hexdigest()[:16]}"


def ready(directory: Path | None) -> bool:
    """True when ``directory`` holds a complete converted copy: its marker (written last) is there and every file has
    the size the marker records (a truncated or replaced file makes the copy not ready: the GGUF file is used)."""
    if directory is None or not (directory / MARKER).is_file():
        return False
    try:
        files = json.loads((directory / MARKER).read_text())["files"]
        return all((directory / name).stat().st_size == size for name, size in files.items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def load_tokenizer(directory: Path) -> Any:
    return transformers.AutoTokenizer.from_pretrained(str(directory))


def load_model(directory: Path, dtype: torch.dtype) -> Any:
    """The model of a converted copy, in ``dtype``."""
    return transformers.AutoModelForCausalLM.from_pretrained(str(directory), **{DTYPE_KW: dtype})


def max_bytes() -> float:
    """The size limit of a copy's float32 weights, ``CHATSAE_GGUF_CACHE_MAX_GB`` (default 4) GiB."""
    return float(os.environ.get(MAX_GB_ENV, "4")) * 2**30


_PARSE_LOCK = threading.RLock()
_parse_depth = 0


@contextlib.contextmanager
def parse_once() -> Iterator[None]:
    """Within this context, ``gguf.GGUFReader(path)`` returns one reader per file (keyed by resolved path, size and
    modification time) and ``gguf.get_tensor_name_map`` is memoised: transformers looks both up from the ``gguf``
    module at call time, so its config, tokenizer and weights loads share one parse. Readers only read; the
    originals are back when the outermost context exits (nesting is allowed; other threads wait)."""
    global _parse_depth
    try:
        import gguf
    except ImportError:  # transformers will say what is missing
        yield
        return
    with _PARSE_LOCK:
        _parse_depth += 1
        if _parse_depth > 1:
            try:
                yield
            finally:
                _parse_depth -= 1
            return
        reader_cls, name_map = gguf.GGUFReader, getattr(gguf, "get_tensor_name_map", None)
        readers: dict[tuple[str, int, int], Any] = {}

        def reader(path: Any, *args: Any, **kwargs: Any) -> Any:
            if args or kwargs:  # another mode (e.g. writable): not shared
                return reader_cls(path, *args, **kwargs)
            st = Path(path).resolve().stat()
            key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
            if key not in readers:
                readers[key] = reader_cls(path)
            return readers[key]

        gguf.GGUFReader = reader  # type: ignore[misc,assignment]
        if name_map is not None:
            gguf.get_tensor_name_map = functools.lru_cache(maxsize=None)(name_map)
        try:
            yield
        finally:
            gguf.GGUFReader = reader_cls  # type: ignore[misc]
            if name_map is not None:
                gguf.get_tensor_name_map = name_map
            readers.clear()
            _parse_depth -= 1


def fits(gguf_path: Path) -> bool:
    """Whether the de-quantised float32 weights of ``gguf_path`` (counted from its tensor headers) fit under
    :func:`max_bytes`; False when the headers cannot be read. Call it within :func:`parse_once` to share the parse
    with the load that follows."""
    try:
        import gguf

        n = sum(int(t.n_elements) for t in gguf.GGUFReader(str(gguf_path)).tensors)
    except Exception:  # noqa: BLE001 - any failure: no claim, the caller loads as asked
        return False
    return 0 < 4 * n <= max_bytes()


def save(model: Any, tokenizer: Any, directory: Path, gguf_path: Path) -> bool:
    """Write the converted copy of a float32 ``model`` (and its ``tokenizer``) to ``directory``; False when skipped
    (not float32, too large, or another process got there first). Never raises for a full disk or a read-only
    cache: the load goes on without a copy, with a notice."""

    params = list(model.parameters())
    if not params or any(p.dtype != torch.float32 for p in params):
        return False
    nbytes = sum(p.numel() * 4 for p in {p.data_ptr(): p for p in params}.values())
    if nbytes > max_bytes():
        return False
    tmp = directory.parent / f".{directory.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir(parents=True)
        config = copy.deepcopy(model.config)
        if hasattr(config, "quantization_config"):
            del config.quantization_config  # the copy holds plain de-quantised weights
        config.save_pretrained(str(tmp))
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(str(tmp))
        save_model(model, str(tmp / "model.safetensors"))  # tied weights stored once
        tokenizer.save_pretrained(str(tmp))
        info = {
            "format": FORMAT,
            "gguf_file": str(gguf_path.resolve()),
            "transformers": transformers.__version__,
            "files": {f.name: f.stat().st_size for f in sorted(tmp.iterdir())},
        }
        (tmp / MARKER).write_text(json.dumps(info, indent=1) + "\n")
        if (directory / MARKER).is_file() and not ready(directory):
            shutil.rmtree(directory, ignore_errors=True)  # an incomplete copy of chatsae's own: replaced
        try:
            os.rename(tmp, directory)
        except OSError:  # another process renamed its copy first: keep that one
            return False
        print(
            f"chatsae: kept a converted copy of {gguf_path.name} ({nbytes / 2**20:,.0f} MiB) in {directory} for "
            f"faster loads ({ENV}=0 turns this off)",
            file=sys.stderr,
        )
        return True
    except Exception as err:  # noqa: BLE001 -- a full disk raised by safetensors is no OSError
        if not (isinstance(err, OSError) or is_disk_full(err)):
            raise
        print(
            f"chatsae: could not keep a converted copy of {gguf_path.name} in {directory.parent} ({err}); "
            f"loading from the GGUF file each time (set {ENV}=0 to silence this)",
            file=sys.stderr,
        )
        return False
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def discard(directory: Path, err: Exception) -> None:
    """A converted copy that failed to load: say so and remove it (chatsae wrote it: its marker is there)."""
    print(
        f"chatsae: the converted copy {directory} did not load ({type(err).__name__}: {err}); converting the GGUF "
        "file again",
        file=sys.stderr,
    )
    if (directory / MARKER).is_file():
        shutil.rmtree(directory, ignore_errors=True)
