"""The ``--saes`` option: several SAE variants (architecture, SAE and training fields, folder name) trained from one
pass over the data (:mod:`chatsae.workflows.multi_sae`)."""

from __future__ import annotations

import dataclasses
import re
import typing
from typing import Any, NamedTuple

from ..core.config import parse_value
from ..sae import SAEConfig
from ..train.config import TrainConfig


class SAEVariant(NamedTuple):
    """One entry of ``--saes``: folder ``name``, SAEConfig fields and TrainConfig fields it sets."""

    name: str
    sae: dict[str, Any]
    train: dict[str, Any]


def parse_saes(text: str | None) -> list[SAEVariant]:
    """``'ARCH[:FIELD=VALUE...],...'`` -> variants (ValueError naming the entry and field at fault). The folder name
    is ``name=...`` if given, else the architecture and the options (``jumprelu_sparsity_coef0.004``)."""
    if not text or not text.strip():
        return []
    sae_types, train_types = typing.get_type_hints(SAEConfig), typing.get_type_hints(TrainConfig)
    hidden = {"d_in", "metadata", "architecture"}
    out: list[SAEVariant] = []
    for entry in (e.strip() for e in text.split(",")):
        if not entry:
            continue
        arch, *opts = entry.split(":")
        sae: dict[str, Any] = {"architecture": arch.strip()}
        train: dict[str, Any] = {}
        name = None
        for opt in opts:
            key, eq, value = opt.partition("=")
            key = key.strip().replace("-", "_")
            if not eq:
                raise ValueError(f"--saes {entry!r}: {opt!r} is not FIELD=VALUE")
            try:
                if key == "name":
                    name = value.strip()
                elif key in sae_types and key not in hidden:
                    sae[key] = parse_value(sae_types[key], value.strip())
                elif key in train_types:
                    train[key] = parse_value(train_types[key], value.strip())
                else:
                    raise ValueError(
                        f"unknown field {key!r} (SAE or training options, e.g. k, d_sae, sparsity_coef, lr, seed)"
                    )
            except Exception as e:  # noqa: BLE001 -- argparse.ArgumentTypeError or ValueError, one message
                raise ValueError(f"--saes {entry!r}: {e}") from None
        try:
            SAEConfig(**sae)  # architecture and SAE fields checked here
            dataclasses.replace(TrainConfig(), **train)
        except (TypeError, ValueError) as e:
            raise ValueError(f"--saes {entry!r}: {e}") from None
        given = {k: v for k, v in {**sae, **train}.items() if k != "architecture"}
        label = "_".join([sae["architecture"], *(f"{k}{v}" for k, v in given.items())])
        name = name or re.sub(r"[^A-Za-z0-9_.=-]", "_", label)
        if not re.fullmatch(r"[A-Za-z0-9_.=-]+", name) or name in (v.name for v in out):
            raise ValueError(f"--saes {entry!r}: folder name {name!r} is not a plain, unique file name")
        out.append(SAEVariant(name, sae, train))
    return out
