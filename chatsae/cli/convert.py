"""``chatsae convert SRC OUT_DIR``: read an SAE saved by another library and write it in chatsae's SAELens layout."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..core.locking import is_chatsae_dir, is_empty_dir, refuse_foreign
from .common import add_command

HELP = (
    "Convert an SAE saved by another library (SAELens directory, EleutherAI sparsify hookpoint folder, "
    "dictionary_learning ae.pt + config.json, Gemma Scope params.npz, or a Hugging Face Hub id org/repo[/subfolder]) "
    "into chatsae's SAELens-format directory (cfg.json + sae_weights.safetensors), which every chatsae command and "
    "SAELens read. The outputs of the converted SAE are those of the original (checked on random inputs)."
)


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "convert", HELP, run)
    p.add_argument("src", metavar="SRC", help="SAE directory or file in a supported layout, or a Hub id")
    p.add_argument("out_dir", metavar="OUT_DIR", help="output directory (new, empty, or one chatsae wrote)")
    p.add_argument("--hook", default=None, help="hook point of the SAE (e.g. resid_post.15) when SRC does not say it")
    p.add_argument("--model", default=None, help="model the SAE was trained on, recorded as metadata model_name")
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty directory chatsae did not write")


def run(args: argparse.Namespace) -> int:
    import torch  # heavy imports at run time, as in the other command modules: `chatsae --help` stays fast

    from ..sae import load_sae, save_sae

    out = Path(args.out_dir)
    if out.is_dir() and not is_empty_dir(out) and not is_chatsae_dir(out):  # refused before anything is read
        refuse_foreign(out, "OUT_DIR", args.overwrite)
    sae = load_sae(args.src, hook=args.hook)
    if args.model:
        sae.cfg.metadata["model_name"] = args.model
    sae.cfg.metadata.setdefault("converted_from", str(args.src))
    save_sae(sae, out, overwrite=args.overwrite)
    check = load_sae(out)
    x = torch.randn(64, sae.cfg.d_in, generator=torch.Generator().manual_seed(0), dtype=sae.W_dec.dtype)
    x = x * sae.W_dec.norm(dim=1).mean().clamp_min(1.0)
    with torch.no_grad():
        if not torch.allclose(check(x), sae(x), rtol=1e-5, atol=1e-5 * float(x.abs().max())):
            raise ValueError(f"{out}: the written SAE's outputs differ from those of {args.src} (please report)")
    meta = sae.cfg.metadata
    hook = meta.get("hook_name") or "unknown: pass --hook to the commands that use it"
    shape = f"d_in {sae.cfg.d_in}, d_sae {sae.cfg.d_sae}"
    model = meta.get("model_name") or "unknown"
    kind = f"{meta.get('source_format', 'saelens')} {sae.cfg.architecture} SAE"
    print(f"{kind}, {shape}, hook {hook}, model {model} -> {out}")
    return 0
