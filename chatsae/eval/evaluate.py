"""The evaluation driver: run a model with an SAE spliced in at its hook and stream every metric.

Per batch of sequences (built the way the SAE's method says, length-bucketed, right-padded):

1. clean forward (no edit): clean logits, for CE clean and KL(clean ‖ spliced), and the residual stream where
   the edited passes diverge (:func:`chatsae.models.resume.clean_forward`);
2. spliced forward, restarted at the hook layer from that state (the blocks below the hook are not run again): at
   the hook, ``fn(act)`` records the clean activation ``x`` and returns the reconstruction ``x̂ = sae(x)``
   (position 0 kept clean unless ``splice_first_position``); this gives the spliced logits and the activations for
   the reconstruction metrics;
3. zero-ablation losses, for CE recovered: the activation replaced by zeros at the same positions. At a
   residual-stream hook of a known family the zero-ablated logits depend only on the position and the first token,
   so one short pass over one row per distinct first token gives the whole batch's
   (:mod:`chatsae.eval.zero_ablation`; a single row for chat data); otherwise a pass restarted like pass 2. It does
   not depend on the SAE: with a ``zero_ablation_cache`` (a dict the caller keeps, as ``chatsae compare`` /
   ``sweep`` do) its per-token CE is stored under the batch's content and hook, and other SAEs evaluated on the same
   sequences through the same model skip it.

When every row of a batch opens with the same tokens (a chat template's system prompt), passes 1 and 2 run them
once (:mod:`chatsae.models.prefix`; ``EvalConfig.share_prefix``) and their positions are scored once. With
``EvalConfig.restart=False`` (or a model :func:`~chatsae.models.resume.can_resume` rejects) passes 2 and 3 run the
whole model over every row; the results are the same (to float rounding). :func:`evaluate_many` evaluates several
SAEs of one hook with one clean and one zero-ablated pass per batch. Cost on the embedded model, in full forward
passes per batch (idle machine, 2026-12-04, ``benchmarks/eval_cost.py``; docs/performance.md): one SAE with every
metric 1.49 at ``resid_post.15`` (1.70 without the shared prefix), 0.85 per SAE with 4 SAEs together.

Without ``lm_loss`` only the model up to the hook is run (``capture_shared``: the shared prefix once). Padding is
excluded everywhere through the attention mask; labels are the next token of the same sequence.

Record selection and sequence building are in :mod:`chatsae.eval.sequences`, the forward passes and their losses in
:mod:`chatsae.eval.spliced_passes`; their names are re-exported here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

from ..core.progress import Progress
from ..data.formats import Record
from ..data.sequences import PaddedBatch, bucket_batches, pad_batch
from ..models import HookPoint, check_hook, check_sae_width
from ..models.prefix import capture_shared
from ..models.resume import can_resume
from ..sae import K_ARCHITECTURES, SAE
from . import metrics as M
from .config import EvalConfig, resolve_config
from .result import EvalResult, write_result
from .sequences import build_sequences, select_records, special_ids
from .spliced_passes import LMLosses, Logits, loss_by_part, spliced_losses, spliced_losses_many
from .streaming import SubsetAccumulator

__all__ = [
    "LMLosses",
    "Logits",
    "build_sequences",
    "evaluate",
    "evaluate_many",
    "loss_by_part",
    "select_records",
    "special_ids",
    "spliced_losses",
    "spliced_losses_many",
    "zero_ablation_key",
]


def _device(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


def evaluate(
    sae: SAE,
    model: nn.Module,
    tokenizer: Any,
    records: Iterable[Record],
    cfg: EvalConfig | None = None,
    sae_path: str | None = None,
    zero_ablation_cache: dict[tuple[Any, ...], Tensor] | None = None,
) -> EvalResult:
    """Evaluate ``sae`` (taking raw activations) on ``records`` through ``model``; see the module docstring.

    Unset fields of ``cfg`` come from ``sae.cfg.metadata`` (:func:`~chatsae.eval.config.resolve_config`). The SAE is
    moved to the model's device. Metrics are in raw activation units. The JSON is written to ``cfg.output`` if set.
    ``zero_ablation_cache``: a dict shared by evaluations through this same ``model`` (filled and read here).
    """
    cfg = resolve_config(cfg or EvalConfig(), sae.cfg.metadata)
    return evaluate_many([sae], model, tokenizer, records, [cfg], [sae_path], zero_ablation_cache)[0]


def evaluate_many(
    saes: list[SAE],
    model: nn.Module,
    tokenizer: Any,
    records: Iterable[Record],
    cfgs: list[EvalConfig],
    sae_paths: list[str | None] | None = None,
    zero_ablation_cache: dict[tuple[Any, ...], Tensor] | None = None,
) -> list[EvalResult]:
    """Evaluate several SAEs of **one hook** on the same records with one clean forward per batch: each SAE then
    costs one restarted spliced pass (and the zero-ablated pass is shared). Same results as :func:`evaluate` on
    each. ``cfgs[i]`` (resolved, one per SAE) differ at most in ``output``; each result is written to its own."""
    if not saes or len(cfgs) != len(saes):
        raise ValueError(f"evaluate_many: {len(saes)} SAEs and {len(cfgs)} configs")
    cfg = cfgs[0]
    shared = [{k: v for k, v in dataclasses.asdict(c).items() if k != "output"} for c in cfgs]
    if any(s != shared[0] for s in shared[1:]):
        raise ValueError("evaluate_many: the SAEs need the same evaluation settings (hook, data, method, ...)")
    if not cfg.hook:
        raise ValueError("no hook point: the SAE's metadata has no hook_name; pass --hook (e.g. resid_post.15)")
    hook = check_hook(model, cfg.hook)
    for sae in saes:
        check_sae_width(sae.cfg.d_in, model, hook)
    saes = [sae.to(_device(model)).eval() for sae in saes]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    t0 = time.perf_counter()
    seqs = build_sequences(select_records(records, cfg), tokenizer, cfg)
    if not seqs:
        raise ValueError(f"{cfg.data or 'records'}: no sequences to evaluate (empty data or held-out split)")
    batches = list(bucket_batches(seqs, max_tokens=cfg.batch_tokens, max_batch_size=cfg.max_batch_size))
    special = special_ids(tokenizer)
    accs = [SubsetAccumulator(s.cfg.d_sae, dense_threshold=cfg.dense_threshold, special_ids=special) for s in saes]
    n_seq = n_tok = 0
    with Progress(len(batches), "eval", enabled=cfg.progress, unit="batches") as bar:
        for batch in batches:
            n_tok += _eval_batch(saes, model, hook, pad_batch(batch, pad_id), n_seq, cfg, accs, zero_ablation_cache)
            n_seq += len(batch)
            bar.advance(1, tokens=str(n_tok))
    seconds = time.perf_counter() - t0
    paths = sae_paths or [None] * len(saes)
    results = []
    for sae, acc, path, c in zip(saes, accs, paths, cfgs, strict=True):
        setup = {**_setup(cfg, model, n_seq, n_tok, seconds), "evaluated_together": len(saes)}
        result = EvalResult(
            sae=_sae_info(sae, path),
            setup=setup,
            metrics=acc.result(),
            latents=_latents(acc, sae.cfg.d_sae, cfg.dense_threshold),
            per_sequence=acc.per_sequence(),
        )
        if c.output:
            write_result(result, c.output)
        results.append(result)
    return results


def zero_ablation_key(
    hook: HookPoint, input_ids: Tensor, attention_mask: Tensor, splice_first_position: bool
) -> tuple[Any, ...]:
    """Key of a batch's zero-ablated losses: the hook, the position-0 rule and a digest of the batch's tokens."""
    digest = hashlib.sha256(input_ids.cpu().numpy().tobytes() + attention_mask.cpu().numpy().tobytes()).hexdigest()
    return str(hook), bool(splice_first_position), tuple(input_ids.shape), digest


def _eval_batch(
    saes: list[SAE],
    model: nn.Module,
    hook: HookPoint,
    pb: PaddedBatch,
    seq_offset: int,
    cfg: EvalConfig,
    accs: list[SubsetAccumulator],
    zero_cache: dict[tuple[Any, ...], Tensor] | None = None,
) -> int:
    """Run one padded batch (sequence ids from ``seq_offset``) into each SAE's accumulator; returns its number of
    real tokens."""
    device = _device(model)
    ids, am = pb.input_ids.to(device), pb.attention_mask.to(device)
    valid = am.bool()
    token_class, positions = pb.token_class.to(device), pb.positions.to(device)
    seq_ids = (torch.arange(ids.shape[0], device=device) + seq_offset)[:, None].expand_as(ids)
    stores: list[dict[str, Tensor]] = [{} for _ in saes]

    def runner(sae: SAE, store: dict[str, Tensor]) -> Callable[[Tensor], Tensor]:
        def run_sae(act: Tensor) -> Tensor:
            # the SAE runs on the real tokens only; padding keeps its activation (no real token attends to it)
            x = act[valid].to(sae.W_dec.dtype)
            f = sae.encode(x)
            x_hat = sae.decode(f)
            store.update(x=x, x_hat=x_hat, f=f)
            out = act.clone()
            out[valid] = x_hat.to(act.dtype)
            return out

        return run_sae

    fns = [runner(sae, store) for sae, store in zip(saes, stores, strict=True)]
    if cfg.lm_loss:
        first = bool(cfg.splice_first_position)
        key = zero_ablation_key(hook, ids, am, first) if zero_cache is not None else None
        cached = zero_cache.get(key) if zero_cache is not None and key is not None else None
        all_losses = spliced_losses_many(
            model,
            hook,
            ids,
            am,
            fns,
            zero_ablation=cfg.zero_ablation,
            splice_first_position=first,
            ce_zero=cached,
            restart=cfg.restart and can_resume(model),
            share_prefix=cfg.share_prefix,
        )
        for losses, acc in zip(all_losses, accs, strict=True):
            if zero_cache is not None and key is not None and losses.ce_zero is not None:
                zero_cache[key] = losses.ce_zero
            m = losses.mask
            acc.update_lm(
                token_class[m],
                positions[m],
                seq_ids[m],
                ids[m],
                ce_clean=losses.ce_clean[m],
                ce_spliced=losses.ce_spliced[m],
                kl=losses.kl[m],
                ce_zero=None if losses.ce_zero is None else losses.ce_zero[m],
            )
    else:
        with torch.inference_mode():
            act = capture_shared(model, hook, ids, am, cfg.share_prefix)
            for fn in fns:
                fn(act)
    for store, acc in zip(stores, accs, strict=True):
        acc.update(
            store["x"], store["x_hat"], store["f"], token_class[valid], positions[valid], seq_ids[valid], ids[valid]
        )
    return int(valid.sum())


def _sae_info(sae: SAE, path: str | None) -> dict[str, Any]:
    c = sae.cfg
    info = {
        "path": path,
        "architecture": c.architecture,
        "d_in": c.d_in,
        "d_sae": c.d_sae,
        "k": c.k if c.architecture in K_ARCHITECTURES else None,
        "metadata": dict(c.metadata),
    }
    return info


def _setup(cfg: EvalConfig, model: nn.Module, n_seq: int, n_tok: int, seconds: float) -> dict[str, Any]:
    source = getattr(model, "chatsae_source", None) or {}
    return {
        "model": source.get("name") or cfg.model,
        "hook": str(HookPoint.parse(cfg.hook or "")),
        "method": cfg.method,
        "data": cfg.data,
        "holdout": cfg.holdout,
        "holdout_seed": cfg.holdout_seed,
        "max_samples": cfg.max_samples,
        "max_tokens": cfg.max_tokens,
        "max_length": cfg.max_length if cfg.method == "fast" else None,
        "context_size": cfg.context_size if cfg.method != "fast" else None,
        "sequences": n_seq,
        "tokens": n_tok,
        "lm_loss": cfg.lm_loss,
        "splice_first_position": cfg.splice_first_position,
        "dense_threshold": cfg.dense_threshold,
        "device": str(_device(model)),
        "model_dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "seconds": seconds,
    }


def _latents(acc: SubsetAccumulator, d_sae: int, dense_threshold: float) -> dict[str, Any]:
    freq = acc.firing_frequency("all")
    dead, dense = M.dead_latents(freq), M.dense_latents(freq, dense_threshold)
    return {
        "d_sae": d_sae,
        "dead": dead,
        "dense": dense,
        "dead_fraction": dead / d_sae,
        "dense_fraction": dense / d_sae,
        "firing_histogram": {"log10_bin_edges": list(M.HISTOGRAM_EDGES), "counts": M.firing_histogram(freq)},
    }
