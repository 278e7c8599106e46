"""The ``chatsae`` command. Each command group lives in its own module with a ``register(subparsers)`` function."""

from __future__ import annotations

import argparse
import importlib
import sys

COMMAND_MODULES = ("train", "eval", "interp", "steer", "compare")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chatsae",
        description="Train, evaluate, interpret and steer sparse autoencoders on chat-model activations.",
    )
    parser.add_argument("--version", action="version", version=f"chatsae {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"{__name__}.{name}":
                continue  # command group not installed in this build
            raise
        module.register(sub)
    return parser


def _version() -> str:
    from .. import __version__

    return __version__


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        return int(args.handler(args) or 0)
    except (ValueError, FileNotFoundError, KeyError, RuntimeError) as e:
        if getattr(args, "debug", False):
            raise
        print(f"chatsae {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; completed checkpoints are kept (use --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
