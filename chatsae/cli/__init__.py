"""The ``chatsae`` command. Each command group lives in its own module with a ``register(subparsers)`` function.

Command handlers import the workflows they run inside the handler: ``chatsae --help`` and the parsing of every
command stay fast (no torch or transformers import before a command runs)."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import sys
from typing import NoReturn

from .common import OneLineParser, error_message

COMMAND_MODULES = ("train", "eval", "interp", "steer", "compare", "convert", "bench")
DISTRIBUTED_COMMANDS = ("train", "harvest")
"""Commands that run under torchrun (several processes); the others are single-process."""


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
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
    """Run one command; returns the exit status: 0 ok, 1 error (one line on stderr), 130 interrupted.

    Every exception becomes one line ``chatsae CMD: error: MESSAGE`` naming the file or option at fault;
    ``--debug`` re-raises it with its traceback.
    """
    parser = build_parser()
    args = parser.parse_args(argv)  # --help, --version and usage errors (one line) exit here: SystemExit 0 / 2
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        check_world(args.command)
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        print("interrupted; completed checkpoints are kept (use --resume)", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - every failure is one clear line; --debug shows the traceback
        if getattr(args, "debug", False):
            raise
        print(f"chatsae {args.command}: error: {error_message(e)}", file=sys.stderr)
        return 1


def run(argv: list[str] | None = None) -> NoReturn:
    """The ``chatsae`` and ``python -m chatsae`` entry point: :func:`main`, then :func:`leave` with its status."""
    try:
        code = main(argv)
    except SystemExit as e:  # --help, --version, usage errors (argparse: 0 or 2)
        code = e.code if isinstance(e.code, int) else int(e.code is not None)
    leave(code)


def leave(code: int) -> NoReturn:
    """Exit with ``code``. A process of a multi-process world (torchrun, ``WORLD_SIZE`` > 1) flushes its output and
    logs and ends with ``os._exit``, skipping the interpreter's teardown: its work is written and its process group
    destroyed by then, and in that teardown torch's C++ side (gloo) occasionally aborts a rank with SIGABRT
    (``terminate called without an active exception``; seen in ~1 of 40 two-rank CPU runs here, after
    ``destroy_process_group``), which torchrun would report as a failed job, or restart."""
    if env_world_size() > 1:
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):  # a closed or broken pipe: nothing more to say
                stream.flush()
        os._exit(code)
    sys.exit(code)


def env_world_size() -> int:
    """Processes torchrun started (env ``WORLD_SIZE``; 1 without it), read without importing torch."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def check_world(command: str) -> None:
    """Refuse a single-process command started by torchrun with several processes: every rank would run the whole
    command and write the same files."""
    world = env_world_size()
    if world > 1 and command not in DISTRIBUTED_COMMANDS:
        several = "`torchrun ... -m chatsae train --saes A,B,... [--hooks ...] --distribute-saes`"
        raise ValueError(
            f"`chatsae {command}` runs in one process, and torchrun started {world} "
            f"(WORLD_SIZE={world}); only {' and '.join(DISTRIBUTED_COMMANDS)} are distributed. Run it "
            f"without torchrun; to train several SAEs on several GPUs use {several} "
            "(docs/scaling.md)"
        )


if __name__ == "__main__":
    run()
