"""Helpers shared by the command modules: subcommands whose options come from typed config dataclasses."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from ..config import add_dataclass_args, build, load_config_file


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
    if configs:
        p.add_argument("--config", default=None, metavar="FILE",
                       help="YAML/JSON file with sections " + ", ".join(configs) + " (flags override it)")  # fmt: skip
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    return p


def configs_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """Build each config of the command: defaults < --config file < flags."""
    file_cfg = load_config_file(args.config) if getattr(args, "config", None) else {}
    flags = {k: v for k, v in vars(args).items() if k not in ("handler", "config_classes", "config", "command")}
    source = args.config or "command line"
    return {
        section: build(cls, file_cfg, flags, section=section, source=source)
        for section, cls in args.config_classes.items()
    }
