"""``python -m chatsae ...`` = the ``chatsae`` command; also how torchrun starts it:
``torchrun --nproc-per-node N -m chatsae train ...`` (docs/scaling.md)."""

from .cli import run

if __name__ == "__main__":
    run()
