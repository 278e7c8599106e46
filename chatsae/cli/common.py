"""Helpers shared by the command modules: subcommands whose options come from typed config dataclasses, and the
one-line error texts of the ``chatsae`` command."""

from __future__ import annotations

import argparse
import os
import pickle
import zipfile
from collections.abc import Callable
from types import TracebackType
from typing import Any

from ..core.config import COMMAND_LINE, add_dataclass_args, build, check_sections, load_config_file
from ..core.faults import DiskFullError, disk_full, is_disk_full
from ..core.redact import redact

ALL_SECTIONS: set[str] = set()
"""Config sections of every registered command: a config file written for ``train`` (run, sae, train, data,
harvest) may be given to ``harvest``, whose own sections are a subset."""


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line (``chatsae train: error: ... (see --help)``), exit 2."""

    def error(self, message: str) -> Any:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def add_command(
    sub: Any,
    name: str,
    help: str,
    handler: Callable[[argparse.Namespace], int | None],
    configs: dict[str, type] | None = None,
    aliases: dict[str, list[str]] | None = None,
) -> argparse.ArgumentParser:
    """Add subcommand ``name``; one option group per config dataclass (section name -> class), plus ``--config FILE``
    and ``--debug``. The handler gets the parsed namespace; use :func:`configs_from_args` to build the configs."""
    p = sub.add_parser(name, help=help, description=help)
    p.set_defaults(handler=handler, config_classes=configs or {})
    for section, cls in (configs or {}).items():
        add_dataclass_args(p, cls, title=f"{section} options ({cls.__name__})", aliases=aliases)
    ALL_SECTIONS.update(configs or {})
    if configs:
        p.add_argument(
            "--config",
            default=None,
            metavar="FILE",
            help="YAML/JSON file with sections " + ", ".join(configs) + " (flags override it)",
        )
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    return p


def configs_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """Build each config of the command: defaults < --config file < flags."""
    file_cfg = load_config_file(args.config) if getattr(args, "config", None) else {}
    if file_cfg:
        check_sections(file_cfg, args.config_classes, args.config, other_sections=frozenset(ALL_SECTIONS))
    flags = {k: v for k, v in vars(args).items() if k not in ("handler", "config_classes", "config", "command")}
    sources = [str(args.config or COMMAND_LINE), COMMAND_LINE]
    return {
        section: build(cls, file_cfg, flags, section=section, source=sources)
        for section, cls in args.config_classes.items()
    }


# ---------------------------------------------------------------- one-line error texts

CLEAR_ERRORS = (ValueError, OSError, RuntimeError, ImportError)
"""Exceptions whose text is written for users (chatsae raises these with the file/option named)."""
_FILE_LOCALS = ("filename", "file", "f", "fname", "path")


def _file_in(tb: TracebackType | None, depth: int | None = None) -> str | None:
    """The file being read where an exception was raised: the innermost frame (of the ``depth`` innermost) holding a
    local ``filename``/``file``/``f``/``path`` that is a path or an open file (safetensors, torch.load, numpy and
    zipfile all name it so)."""
    frames = []
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in reversed(frames[-depth:] if depth else frames):
        for name in _FILE_LOCALS:
            value = frame.f_locals.get(name)
            if isinstance(value, (str, os.PathLike)) and str(value):
                return str(value)
            file_name = getattr(value, "name", None)
            if isinstance(file_name, str) and file_name:
                return file_name
    return None


def _format_error(exc: BaseException) -> tuple[str, str] | None:
    """(what the file is not, hint) for file-format errors of the libraries chatsae reads with, else None (their own
    texts are long and do not name the file)."""
    kind = type(exc).__name__
    if kind == "SafetensorError":
        return "not a valid safetensors file", "truncated?"
    if (
        isinstance(exc, pickle.UnpicklingError)
        or (isinstance(exc, EOFError) and "Ran out of input" in str(exc))
        or (isinstance(exc, RuntimeError) and "PytorchStreamReader failed" in str(exc))
    ):
        return "not a valid PyTorch file", "truncated, or not written by torch.save?"
    if isinstance(exc, zipfile.BadZipFile):
        return "not a valid .npz/zip file", "truncated?"
    if isinstance(exc, RecursionError):
        return "nested too deeply to read", "expected a file of chatsae's format, not one of 1000s of nested levels"
    return None


def _first_line(text: str) -> tuple[str, bool]:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return (lines[0] if lines else ""), len(lines) > 1


def error_message(exc: BaseException) -> str:
    """The one-line text ``chatsae`` prints for ``exc`` (the traceback is kept for ``--debug``), secrets redacted."""
    return redact(_describe(exc))


def _describe(exc: BaseException) -> str:
    hint = "rerun with --debug for the traceback"
    if is_disk_full(exc) and not isinstance(exc, DiskFullError):  # a library's own text (safetensors: IoError)
        return str(disk_full(_file_in(exc.__traceback__) or getattr(exc, "filename", None) or "a file", None))
    fmt = _format_error(exc)
    if fmt is not None:
        what, why = fmt
        where = _file_in(exc.__traceback__) or "an input file"
        return f"{where}: {what} ({why})"
    if isinstance(exc, ImportError) and (exc.name or "").split(".")[0] == "datasets" and "chatsae[" not in str(exc):
        return "reading Hugging Face dataset names needs the datasets package: pip install 'chatsae[datasets]'"
    if isinstance(exc, KeyError):
        key = exc.args[0] if exc.args else "?"
        place = _file_in(exc.__traceback__, depth=2)
        return f"missing entry {key!r}{' in ' + place if place else ''} (a damaged or foreign file?); {hint}"
    if isinstance(exc, CLEAR_ERRORS):
        text, more = _first_line(str(exc))
        if isinstance(exc, OSError) and not text.strip():
            text = f"{exc.strerror or type(exc).__name__}" + (f": {exc.filename}" if exc.filename else "")
        if isinstance(exc, OSError) and exc.filename and str(exc.filename) not in text:
            text = f"{exc.filename}: {text}"
        return text + (f" ({hint} and the full message)" if more else "")
    text, _ = _first_line(str(exc))
    return f"unexpected {type(exc).__name__}{': ' + text if text else ''}; {hint}"
