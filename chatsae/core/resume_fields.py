"""The resume-volatility registry: which config fields a resumed run (or a study's rerun) may change.

Config classes register as run-config sections (:func:`run_config_section`) and mark their volatile fields with
:data:`RESUME_MAY_CHANGE`; :func:`resume_volatile` collects the marks for the checkpoint's resume check."""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T", bound="DataclassInstance")

RESUME_MAY_CHANGE: Mapping[str, str] = types.MappingProxyType({"resume": "may_change"})
"""``dataclasses.field`` metadata of a config field that a resumed run (or a study's rerun) may change: it does not
change the trained SAE (progress display, device, logging and checkpoint cadence, output options), so the check that a
resume uses the checkpoint's settings skips it."""

RUN_CONFIG_SECTIONS: dict[str, type] = {}
"""The config class saved as each section of a run config (``run_config.json``), registered by
:func:`run_config_section` where the class is defined."""


def run_config_section(name: str) -> Callable[[type[T]], type[T]]:
    """Class decorator: the dataclass is saved as section ``name`` of a run config (see :func:`resume_volatile`)."""

    def register(cls: type[T]) -> type[T]:
        RUN_CONFIG_SECTIONS[name] = cls
        return cls

    return register


def may_change_on_resume(cls: type) -> tuple[str, ...]:
    """The fields of dataclass ``cls`` marked :data:`RESUME_MAY_CHANGE`, in field order."""
    return tuple(f.name for f in dataclasses.fields(cls) if f.metadata.get("resume") == RESUME_MAY_CHANGE["resume"])


def resume_volatile() -> dict[str, tuple[str, ...]]:
    """Section -> the fields a resumed run may change, for every registered run-config section
    (:func:`run_config_section`) from the marks on its class's fields (:data:`RESUME_MAY_CHANGE`)."""
    return {name: may_change_on_resume(cls) for name, cls in RUN_CONFIG_SECTIONS.items()}
