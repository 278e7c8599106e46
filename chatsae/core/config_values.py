"""Option values from text (command-line flags) and from config files, checked against a dataclass field's type:
:func:`parse_value` (argparse ``type``), :func:`positive_int`, :func:`coerce` (a value read from YAML/JSON)."""

from __future__ import annotations

import argparse
import json
import math
import types
import typing
from typing import Any

from .config_validation import ConfigError, base_type


def _parse_int(text: str) -> int:
    """``"4096"``, ``"4_096"``, ``"1e6"`` -> int; ``"1.5"`` is an error (never truncated)."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"expected an integer, got {text!r}") from None
    if not value.is_integer():
        raise ValueError(f"expected an integer, got {text!r}")
    return int(value)


def _parse_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"expected a finite number, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """An argparse ``type`` for counts: an integer > 0 (``argparse.ArgumentTypeError`` otherwise)."""
    try:
        value = _parse_int(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def parse_value(tp: Any, text: str) -> Any:
    """One command-line string -> a value of type ``tp`` (``argparse.ArgumentTypeError`` with a clear text)."""
    base, optional = base_type(tp)
    if optional and text.lower() in ("none", "null"):
        return None
    try:
        if base is bool:
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"expected true/false, got {text!r}")
        if base is int:
            return _parse_int(text)
        if base is float:
            return _parse_float(text)
        if typing.get_origin(base) in (list, tuple):
            (item,) = typing.get_args(base)[:1]
            return [parse_value(item, t) for t in text.split(",") if t]
        if typing.get_origin(base) is dict or base is dict:
            value = json.loads(text)
            if not isinstance(value, dict):
                raise ValueError(f"expected a JSON object, got {text!r}")
            return value
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"expected a JSON object ({e.msg}), got {text!r}") from None
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def value_kind(value: Any) -> str:
    """``None`` -> ``"null"``; else the value's type and repr, for error messages (``"str 'x'"``)."""
    return "null" if value is None else f"{type(value).__name__} {value!r}"


def coerce(tp: Any, value: Any, where: str) -> Any:
    """Check a value read from a config file against the field type ``tp``; convert where it is unambiguous.

    Numbers given as strings (YAML 1.1 reads ``7e-5`` as a string) become numbers; an integer field rejects
    ``1.5`` rather than truncating it. ``where`` names the key in the error (``"cfg.yaml: train.lr"``).
    """
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        if len(args) != 1:
            return value
        tp, origin = args[0], typing.get_origin(args[0])
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            return value.lower() in ("1", "true", "yes", "on")
        raise ConfigError(f"{where} must be true or false, got {value_kind(value)}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return _parse_int(value.strip())
            except ValueError:
                pass
        raise ConfigError(f"{where} must be an integer, got {value_kind(value)}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ConfigError(f"{where} must be a finite number, got {value}")
            return value
        if isinstance(value, str):
            try:
                return _parse_float(value.strip())
            except ValueError:
                pass
        raise ConfigError(f"{where} must be a number, got {value_kind(value)}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where} must be a string, got {value_kind(value)}")
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {value_kind(value)}")
        (item,) = typing.get_args(tp)[:1] or (Any,)
        return [coerce(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if (origin is dict or tp is dict) and not isinstance(value, dict):
        raise ConfigError(f"{where} must be a mapping, got {value_kind(value)}")
    return value
