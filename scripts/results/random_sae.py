"""Write a random SAE of a trained SAE's shape (``chatsae.sae.baseline.random_sae``): the floor of ``chatsae proxies``.

    python scripts/results/random_sae.py TEMPLATE_SAE_DIR --activations CACHE_DIR --l0 29.5 --out OUT_SAE_DIR

The width, hook and model come from TEMPLATE_SAE_DIR; ``b_dec`` and the threshold are calibrated on ``--rows``
activation vectors drawn (seed-fixed) from CACHE_DIR, a ``chatsae harvest`` cache of the trained SAEs' training data,
so that the mean L0 on them is ``--l0``. Run ``chatsae features OUT_SAE_DIR`` on the same records as the trained SAEs
and compare with ``chatsae proxies``.
"""

from __future__ import annotations

import argparse
import json

import torch

from chatsae.activations.cache import ActivationCache
from chatsae.sae import load_sae, save_sae
from chatsae.sae.baseline import random_sae


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("template", help="a trained SAE directory (shape, model and hook)")
    ap.add_argument("--activations", required=True, help="activation cache of the training data (calibration)")
    ap.add_argument("--l0", type=float, required=True, help="target mean L0 per token on the calibration vectors")
    ap.add_argument("--rows", type=int, default=8192, help="calibration vectors (default 8192)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the weights and of the calibration draw")
    ap.add_argument("--out", required=True, help="output SAE directory")
    a = ap.parse_args(argv)
    template = load_sae(a.template)
    cache = ActivationCache(a.activations)
    gen = torch.Generator().manual_seed(a.seed)
    rows = torch.randperm(len(cache), generator=gen)[: min(a.rows, len(cache))]
    batch = cache.gather(rows)
    calib = batch.acts
    if batch.positions is not None:  # the attention sink is never calibrated on (caches usually leave it out)
        calib = calib[batch.positions != 0]
    meta = dict(template.cfg.metadata)
    sae = random_sae(template.cfg.d_in, template.cfg.d_sae, calib, a.l0, seed=a.seed, metadata=meta)
    sae.cfg.metadata["random_baseline"]["calibration_cache"] = str(a.activations)
    sae.cfg.metadata["random_baseline"]["template"] = str(a.template)
    save_sae(sae, a.out)
    print(json.dumps(sae.cfg.metadata["random_baseline"], indent=2))
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
