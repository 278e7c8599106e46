"""Validation helpers for config dataclasses' ``__post_init__``: :class:`ConfigError` (an error naming the option),
:func:`check`, :func:`check_seed`, :func:`expand_path` and the declarative :func:`validate`."""

from __future__ import annotations

import math
import os
import re
import types
import typing
from typing import Any

from .devices import resolve_device
from .utils import parse_dtype

SEED_MAX = 2**32 - 1
"""Largest seed: seeds are combined with epochs/indices (``seed * 1_000_003 + epoch``) and must stay within the range
``torch.manual_seed`` takes; 0 .. 2**32 - 1 is also numpy's seed range."""


class ConfigError(ValueError):
    """A bad option value. With ``option`` the message is ``--option TEXT`` (the option as typed on the command
    line); :func:`chatsae.core.config.build` rewrites it as ``FILE: section.option TEXT`` when the value came from a
    config file."""

    def __init__(self, text: str, option: str | None = None) -> None:
        self.text, self.option = text, option
        super().__init__(f"{flag(option)}{text}" if option else text)


def base_type(tp: Any) -> tuple[Any, bool]:
    """``int | None`` -> (int, True); ``list[int]`` -> (list[int], False)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return (args[0] if len(args) == 1 else str), True
    return tp, False


def flag(name: str) -> str:
    """``"batch_size"`` -> ``"--batch-size"``."""
    return "--" + name.replace("_", "-")


def check(cond: bool, option: str, msg: str) -> None:
    """Raise ``ConfigError("--option msg")`` unless ``cond``."""
    if not cond:
        raise ConfigError(f" {msg}", option)


def check_seed(value: object, option: str = "seed", count: int = 1) -> None:
    """``ConfigError`` naming ``option`` unless ``value`` (and the ``count - 1`` seeds after it) are integers in
    0 .. :data:`SEED_MAX`."""
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0 and value + max(count, 1) - 1 <= SEED_MAX
    if not ok:
        top = SEED_MAX - max(count, 1) + 1
        shown = repr(value) if len(repr(value)) <= 40 else f"{repr(value)[:36]}..."
        extra = f" (with {count} seeds counted up from it)" if count > 1 else ""
        raise ConfigError(f" must be an integer in [0, {top}]{extra}, got {shown}", option)


def _number(obj: Any, name: str) -> float | None:
    value = getattr(obj, name)
    if value is None:
        return None
    check(isinstance(value, (int, float)) and not isinstance(value, bool), name, f"must be a number, got {value!r}")
    check(math.isfinite(value), name, f"must be a finite number, got {value}")
    return value


_VAR = re.compile(r"\$(\w+|\{[^}]*\})")


def expand_path(value: str, option: str) -> str:
    """A path option's value with ``~`` and ``$VAR`` / ``${VAR}`` expanded (a config file's values reach chatsae
    unexpanded); an empty value or an unset variable is a ConfigError naming the option."""
    check(bool(value.strip()), option, "must not be empty (leave the option out for its default)")
    expanded = os.path.expandvars(os.path.expanduser(value))
    unset = [m.group(0) for m in _VAR.finditer(expanded) if m.group(0) in value]
    check(not unset, option, f"{value!r}: environment variable {', '.join(unset)} is not set")
    return expanded


def _interval(text: str) -> tuple[float, float, bool, bool]:
    """``"[0,1)"`` -> (0, 1, closed low, open high)."""
    low, high = text[1:-1].split(",")
    return float(low), float(high), text[0] == "[", text[-1] == "]"


def validate(
    obj: Any,
    positive: tuple[str, ...] = (),
    non_negative: tuple[str, ...] = (),
    ranges: dict[str, str] | None = None,
    choices: dict[str, tuple[str, ...]] | None = None,
    dtypes: tuple[str, ...] = (),
    devices: tuple[str, ...] = (),
    paths: tuple[str, ...] = (),
    unique: tuple[str, ...] = (),
    seeds: tuple[str, ...] = (),
) -> None:
    """Declarative checks of a config dataclass's fields (None values are skipped: they mean "default").

    ``positive`` / ``non_negative``: numbers > 0 / >= 0 (integer fields are also checked to be integers);
    ``ranges``: ``{"beta1": "[0,1)"}``; ``choices``: ``{"lr_decay": ("cosine", ...)}``; ``dtypes``: float dtype names
    (normalised in place to the canonical name, e.g. ``bf16`` -> ``bfloat16``); ``devices``: device names that must
    exist on this machine (``cuda`` without CUDA is an error); ``paths``: file/directory names, expanded in place
    (:func:`expand_path`: ``~``, ``$VAR``; empty is an error); ``unique``: lists without repeated values; ``seeds``:
    integers in 0 .. :data:`SEED_MAX`.
    """
    hints = typing.get_type_hints(type(obj))
    for name in paths:
        value = getattr(obj, name)
        if isinstance(value, str):
            setattr(obj, name, expand_path(value, name))
    for name in unique:
        values = list(getattr(obj, name) or [])
        repeated = sorted({v for v in values if values.count(v) > 1})
        check(not repeated, name, f"lists {', '.join(map(str, repeated))} more than once")
    for name in (*positive, *non_negative):
        value = _number(obj, name)
        if value is None:
            continue
        is_int = base_type(hints.get(name))[0] is int
        if is_int:
            check(isinstance(value, int), name, f"must be an integer, got {value!r}")
        if name in positive:
            check(value > 0, name, f"must be a positive {'integer' if is_int else 'number'}, got {value}")
        else:
            check(value >= 0, name, f"must be >= 0, got {value}")
    for name in seeds:
        value = getattr(obj, name)
        if value is not None:
            check_seed(value, name)
    for name, text in (ranges or {}).items():
        value = _number(obj, name)
        if value is None:
            continue
        low, high, closed_low, closed_high = _interval(text)
        ok = (value >= low if closed_low else value > low) and (value <= high if closed_high else value < high)
        check(ok, name, f"must be in {text[0]}{low:g}, {high:g}{text[-1]}, got {value}")
    for name, allowed in (choices or {}).items():
        value = getattr(obj, name)
        check(value in allowed, name, f"must be one of {', '.join(map(str, allowed))}; got {value!r}")
    for name in dtypes:
        value = getattr(obj, name)
        try:
            dtype = parse_dtype(value)
        except ValueError as e:
            raise ConfigError(f": {e}", name) from None
        setattr(obj, name, str(dtype).removeprefix("torch."))
    for name in devices:
        try:
            resolve_device(getattr(obj, name), option=name)
        except ValueError as e:
            raise ConfigError(str(e).removeprefix(flag(name)), name) from None
