"""Typed configs <-> YAML/JSON files <-> command-line flags.

Every config is a dataclass whose attribute docstrings become the CLI help. Precedence: dataclass defaults < a
``--config FILE`` (YAML or JSON; sections named after the config groups, or flat) < explicit command-line flags.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import json
import textwrap
import types
import typing
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


@cache
def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings of a dataclass (the string literal right after each field)."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):
        return {}
    docs: dict[str, str] = {}
    body = tree.body[0].body  # type: ignore[attr-defined]
    for prev, node in zip(body, body[1:], strict=False):
        if (
            isinstance(prev, ast.AnnAssign)
            and isinstance(prev.target, ast.Name)
            and isinstance(node, ast.Expr)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            docs[prev.target.id] = " ".join(node.value.value.split())
    return docs


def _base_type(tp: Any) -> tuple[Any, bool]:
    """``int | None`` -> (int, True); ``list[int]`` -> (list[int], False)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return (args[0] if len(args) == 1 else str), True
    return tp, False


def _parse_value(tp: Any, text: str) -> Any:
    base, optional = _base_type(tp)
    if optional and text.lower() in ("none", "null"):
        return None
    if base is bool:
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")
    if base is int:
        return int(float(text)) if text.replace("_", "").replace("e", "").replace(".", "").isdigit() else int(text)
    if base is float:
        return float(text)
    if typing.get_origin(base) in (list, tuple):
        (item,) = typing.get_args(base)[:1]
        return [_parse_value(item, t) for t in text.split(",") if t]
    if typing.get_origin(base) is dict or base is dict:
        return json.loads(text)
    return text


def add_dataclass_args(parser: argparse.ArgumentParser, cls: type, title: str | None = None,
                       aliases: dict[str, list[str]] | None = None) -> None:  # fmt: skip
    """Add one ``--field-name`` option per dataclass field (defaults suppressed so that only given flags count)."""
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    group = parser.add_argument_group(title or cls.__name__, (cls.__doc__ or "").strip().splitlines()[0])
    for f in dataclasses.fields(cls):
        if f.name == "metadata":
            continue
        tp = hints[f.name]
        default = f.default if f.default is not dataclasses.MISSING else "(computed)"
        flags = [f"--{f.name.replace('_', '-')}"] + [f"--{a}" for a in (aliases or {}).get(f.name, [])]
        metavar = _base_type(tp)[0].__name__.upper() if isinstance(_base_type(tp)[0], type) else "VALUE"
        help_text = f"{docs.get(f.name, '')} [default: {default}]".replace("%", "%%")
        if tp is bool:
            group.add_argument(*flags, dest=f.name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                               help=help_text)  # fmt: skip
            continue
        group.add_argument(
            *flags,
            dest=f.name,
            type=lambda s, tp=tp: _parse_value(tp, s),
            default=argparse.SUPPRESS,
            metavar=metavar,
            help=help_text,
        )


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON config file into a dict, with a clear error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text()) if path.suffix in (".yaml", ".yml") else json.loads(path.read_text())
    except (yaml.YAMLError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot parse config ({e})") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a config file must hold a mapping, got {type(data).__name__}")
    return data


def build(cls: type[T], *layers: dict[str, Any], section: str | None = None, source: str = "config") -> T:
    """Instantiate ``cls`` from dicts applied in order (later wins). A dict may be flat or hold ``section``.

    Unknown keys in a section are an error naming the key; flat dicts only contribute the keys ``cls`` has.
    """
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    values: dict[str, Any] = {}
    for layer in layers:
        if section and isinstance(layer.get(section), dict):
            unknown = set(layer[section]) - names
            if unknown:
                raise ValueError(f"{source}: unknown key(s) {sorted(unknown)} in section {section!r}")
            values.update(layer[section])
        values.update({k: v for k, v in layer.items() if k in names})
    try:
        return cls(**values)
    except TypeError as e:
        raise ValueError(f"{source}: {e}") from e


def to_dict(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj)
