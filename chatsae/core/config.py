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
import math
import os
import re
import textwrap
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from functools import cache, partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import yaml

from .devices import resolve_device
from .utils import parse_dtype

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T", bound="DataclassInstance")


COMMAND_LINE = "command line"
SEED_MAX = 2**32 - 1
"""Largest seed: seeds are combined with epochs/indices (``seed * 1_000_003 + epoch``) and must stay within the range
``torch.manual_seed`` takes; 0 .. 2**32 - 1 is also numpy's seed range."""


class ConfigError(ValueError):
    """A bad option value. With ``option`` the message is ``--option TEXT`` (the option as typed on the command
    line); :func:`build` rewrites it as ``FILE: section.option TEXT`` when the value came from a config file."""

    def __init__(self, text: str, option: str | None = None) -> None:
        self.text, self.option = text, option
        super().__init__(f"{flag(option)}{text}" if option else text)


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


def _base_type(tp: Any) -> tuple[Any, bool]:
    """``int | None`` -> (int, True); ``list[int]`` -> (list[int], False)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return (args[0] if len(args) == 1 else str), True
    return tp, False


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
    base, optional = _base_type(tp)
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
        metavar = _base_type(tp)[0].__name__.upper() if isinstance(_base_type(tp)[0], type) else "VALUE"
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


def _kind(value: Any) -> str:
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
        raise ConfigError(f"{where} must be true or false, got {_kind(value)}")
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
        raise ConfigError(f"{where} must be an integer, got {_kind(value)}")
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
        raise ConfigError(f"{where} must be a number, got {_kind(value)}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where} must be a string, got {_kind(value)}")
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {_kind(value)}")
        (item,) = typing.get_args(tp)[:1] or (Any,)
        return [coerce(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if (origin is dict or tp is dict) and not isinstance(value, dict):
        raise ConfigError(f"{where} must be a mapping, got {_kind(value)}")
    return value


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
                raise ConfigError(f"{source}: section {key!r} must be a mapping of options, got {_kind(value)}")
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


# ---------------------------------------------------------------- validation helpers for __post_init__


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
        is_int = _base_type(hints.get(name))[0] is int
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


def to_dict(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj)


# ---- fields a resumed run may change ---------------------------------------------------------------------------------
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
