"""Typed configs <-> YAML/JSON files <-> command-line flags.

Every config is a dataclass whose attribute docstrings become the CLI help. Precedence: dataclass defaults < a
``--config FILE`` (YAML or JSON; sections named after the config groups, or flat) < explicit command-line flags.

This module reads config files and flags and builds the dataclasses; the checks their ``__post_init__`` run
(:class:`ConfigError`, :func:`validate`) are in :mod:`chatsae.core.config_validation`, the parsing of one value
(flag text, a file's value against the field type) in :mod:`chatsae.core.config_values`, and the registry of fields a
resumed run may change in :mod:`chatsae.core.resume_fields`; all of them are importable from here too.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import json
import textwrap
import typing
from collections.abc import Sequence
from functools import cache, partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import yaml

from .config_validation import (
    SEED_MAX,
    ConfigError,
    base_type,
    check,
    check_seed,
    expand_path,
    flag,
    validate,
)
from .config_values import coerce, parse_value, positive_int, value_kind
from .resume_fields import (
    RESUME_MAY_CHANGE,
    RUN_CONFIG_SECTIONS,
    may_change_on_resume,
    resume_volatile,
    run_config_section,
)

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T", bound="DataclassInstance")

__all__ = [
    "COMMAND_LINE",
    "RESUME_MAY_CHANGE",
    "RUN_CONFIG_SECTIONS",
    "SEED_MAX",
    "ConfigError",
    "UniqueKeyLoader",
    "add_dataclass_args",
    "build",
    "check",
    "check_sections",
    "check_seed",
    "coerce",
    "expand_path",
    "field_docs",
    "flag",
    "load_config_file",
    "may_change_on_resume",
    "parse_value",
    "positive_int",
    "resume_volatile",
    "run_config_section",
    "to_dict",
    "validate",
]


COMMAND_LINE = "command line"


@cache
def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings of a dataclass (the string literal right after each field)."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):
        return {}
    docs: dict[str, str] = {}
    node = tree.body[0]
    assert isinstance(node, ast.ClassDef)  # the source of a class
    body = node.body
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


def add_dataclass_args(
    parser: argparse.ArgumentParser, cls: type, title: str | None = None, aliases: dict[str, list[str]] | None = None
) -> None:
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
        metavar = base_type(tp)[0].__name__.upper() if isinstance(base_type(tp)[0], type) else "VALUE"
        help_text = f"{docs.get(f.name, '')} [default: {default}]".replace("%", "%%")
        if tp is bool:
            group.add_argument(
                *flags, dest=f.name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text
            )
            continue
        group.add_argument(
            *flags,
            dest=f.name,
            type=partial(parse_value, tp),
            default=argparse.SUPPRESS,
            metavar=metavar,
            help=help_text,
        )


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (YAML would keep the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                line = key_node.start_mark.line + 1
                raise ValueError(f"key {key!r} is given twice in one mapping, on lines {seen[key] + 1} and {line}")
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``json.loads`` object hook refusing a key given twice in one object."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"key {key!r} is given twice in one object")
        out[key] = value
    return out


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON config file into a dict, with a clear error (a key given twice in one mapping is one)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: config file not found")
    try:
        text = path.read_text(encoding="utf-8-sig")
        if path.suffix in (".yaml", ".yml"):
            data = yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
        else:
            data = json.loads(text, object_pairs_hook=_unique_pairs)
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except (yaml.YAMLError, ValueError, RecursionError) as e:
        raise ValueError(f"{path}: cannot parse config ({' '.join(str(e).split())})") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a config file must hold a mapping, got {type(data).__name__}")
    return data


def check_sections(
    data: dict[str, Any],
    sections: dict[str, type],
    source: str,
    other_sections: set[str] | frozenset[str] = frozenset(),
) -> None:
    """A config file's top-level keys must be sections (``sections``, or another command's ``other_sections``) or
    fields of one of ``sections``' classes (flat files); anything else is an error naming the key."""
    fields_ = {f.name for cls in sections.values() for f in dataclasses.fields(cls)}
    for key, value in data.items():
        if key in sections:
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: section {key!r} must be a mapping of options, got {value_kind(value)}")
        elif key not in fields_ and key not in other_sections:
            raise ConfigError(f"{source}: unknown section or option {key!r}; valid sections: {', '.join(sections)}")


def build(
    cls: type[T], *layers: dict[str, Any], section: str | None = None, source: str | Sequence[str] = "config"
) -> T:
    """Instantiate ``cls`` from dicts applied in order (later wins). A dict may be flat or hold ``section``.

    Unknown keys in a section are an error naming the key; flat dicts only contribute the keys ``cls`` has. Values
    are checked against the field types (:func:`coerce`); ``__post_init__`` validates ranges. ``source`` names the
    layers in error messages (one name, or one per layer; ``"command line"`` for parsed flags).
    """
    sources = [source] * len(layers) if isinstance(source, str) else list(source)
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    origin: dict[str, str] = {}  # key -> where its value came from ("FILE: section.key")
    for layer, src in zip(layers, sources, strict=True):
        if section and isinstance(layer.get(section), dict):
            unknown = set(layer[section]) - names
            if unknown:
                raise ConfigError(
                    f"{src}: unknown key(s) {sorted(unknown)} in section {section!r}; "
                    f"valid keys: {', '.join(sorted(names))}"
                )
            for k, v in layer[section].items():
                origin[k] = f"{src}: {section}.{k}"
                values[k] = coerce(hints[k], v, origin[k])
        for k, v in layer.items():
            if k in names:
                origin[k] = f"{src}: {k}"
                values[k] = coerce(hints[k], v, origin[k])
    try:
        return cls(**values)
    except ConfigError as e:
        where = origin.get(e.option or "")
        if where is None or where.startswith(f"{COMMAND_LINE}:"):
            raise
        raise ConfigError(f"{where}{e.text}") from None  # the bad value came from a config file: name it
    except TypeError as e:
        raise ValueError(f"{sources[-1]}: {e}") from e


def to_dict(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj)
