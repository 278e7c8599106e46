"""Import a peer library (SAELens, sparsify) where some of its dependencies are not installed, as on a lent GPU
machine with no package index: the peer's own wheel is installed there with ``--no-deps``, and the third-party modules
that it imports but that its SAE training step never uses (``transformer_lens``, ``datasets``, ``wandb``, ``plotly``,
...) are answered by empty stand-ins. Only the peer's SAE classes run in the benchmarks (``sae_step_peer.py``), and
they use torch alone, so what is timed is the peer's unmodified code; a stand-in that is actually called raises.

    import peer_stubs; peer_stubs.install(extra_path="/tmp/peer")   # before ``import sae_lens`` / ``sparsify``
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import types
from typing import Any

import torch

#: top-level modules that may be answered by a stand-in when they are not importable
STUBBABLE = (
    "transformer_lens",
    "datasets",
    "wandb",
    "plotly",
    "plotly_express",
    "pandas",
    "babe",
    "nltk",
    "dotenv",
    "tenacity",
    "jaxtyping",
    "beartype",
    "typeguard",
    "fancy_einsum",
    "better_abc",
    "pyarrow",
    "scipy",
    "accelerate",
    "natsort",
    "schedulefree",
    "simple_parsing",
    "einops",
    "requests",
    "huggingface_hub",
    "tqdm",
    "yaml",
)
STUBBED: list[str] = []


class _Anything:
    """Stands in for any class, function, decorator or constant of a stubbed module."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __class_getitem__(cls, item: Any) -> type:
        return cls

    def __init_subclass__(cls, **kwargs: Any) -> None:
        pass


class _HookPoint(torch.nn.Module):
    """transformer_lens's HookPoint with no hook attached: the identity (SAELens's SAEs wrap every stage in one)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class _HookedRootModule(torch.nn.Module):
    """transformer_lens's HookedRootModule as SAELens's SAE base class uses it: an ``nn.Module`` whose ``setup()``
    indexes the hook points (nothing to do when no hook is ever attached)."""

    def setup(self) -> None:
        pass


#: stand-ins that must behave (base classes of the peer's SAE): module -> name -> object
SPECIAL: dict[str, dict[str, Any]] = {
    "transformer_lens.hook_points": {"HookPoint": _HookPoint, "HookedRootModule": _HookedRootModule},
    "transformer_lens.HookedTransformer": {"HookedRootModule": _HookedRootModule},
}


class _StubModule(types.ModuleType):
    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return SPECIAL.get(self.__name__, {}).get(name, _Anything)


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Last on ``sys.meta_path``: asked only for modules that no real finder finds."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        top = fullname.split(".")[0]
        if top not in STUBBABLE or not isinstance(sys.modules.get(top, _StubModule(top)), _StubModule):
            return None  # not ours, or a real package's missing submodule: the usual ImportError
        if fullname == top and top not in STUBBED:
            STUBBED.append(top)
        return importlib.machinery.ModuleSpec(fullname, self, is_package=True)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        mod = _StubModule(spec.name)
        mod.__path__ = []  # a package: its submodules are stand-ins too
        return mod

    def exec_module(self, module: types.ModuleType) -> None:
        pass


def install(extra_path: str | None = None) -> None:
    """Answer missing dependencies with stand-ins; ``extra_path`` (the peer wheels' ``--target``) goes *after* the
    installed packages so that those win."""
    if extra_path and extra_path not in sys.path:
        sys.path.append(extra_path)
    if not any(isinstance(f, _StubFinder) for f in sys.meta_path):
        sys.meta_path.append(_StubFinder())  # last: only what no real finder finds
    importlib.invalidate_caches()
