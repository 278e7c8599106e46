"""Steering reports: greedy chat generations for a list of alphas (or clamp values), side by side, with measures.

:func:`run_steering` generates, for every condition, an answer to every prompt (chat template with
``add_generation_prompt``, left-padded batches, greedy), then scores all answers with the clean model
(:mod:`chatsae.steer.measures`). :func:`write_report` writes ``steering.md`` and ``steering.json``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..core.locking import claim_dir
from ..core.ownership import check_replace
from ..core.utils import write_output_file
from ..data import read_records
from ..models.prefix import capture_shared
from .interventions import LatentEdit, Steering, make_edits, resolve_hook
from .measures import AnswerMeasures, measure_answers, pad_ids, summarize

if TYPE_CHECKING:
    from ..sae import SAE


@dataclass
class Condition:
    """One column of the report: a label and its edits (None = clean model)."""

    label: str
    edits: list[LatentEdit] | None
    value: float | None = None


@dataclass
class Generation:
    """One answer: prompt index, condition label, text and token ids (EOS included when generated)."""

    prompt: int
    condition: str
    text: str
    ids: list[int]
    measures: dict[str, Any] = field(default_factory=dict)


@dataclass
class SteeringReport:
    """Everything :func:`write_report` writes."""

    settings: dict[str, Any]
    prompts: list[list[dict]]
    conditions: list[str]
    generations: list[Generation]
    summary: dict[str, dict[str, float]]


def conditions_for(latents: Sequence[int], mode: str, values: Sequence[float]) -> list[Condition]:
    """add: one condition per alpha; clamp: clean + one per clamp value; ablate: clean + ablated."""
    if mode == "add":
        return [Condition(f"alpha={_num(v)}", make_edits(latents, "add", v), float(v)) for v in values]
    clean = Condition("clean", None)
    if mode == "clamp":
        return [clean] + [Condition(f"clamp={_num(v)}", make_edits(latents, "clamp", v), float(v)) for v in values]
    if mode == "ablate":
        return [clean, Condition("ablate", make_edits(latents, "ablate"))]
    raise ValueError(f"unknown mode {mode!r}; choose add, clamp or ablate")


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:g}"


# ---- prompts ---------------------------------------------------------------------------------------------------
def load_prompts(path: str | Path, limit: int | None = None) -> list[list[dict]]:
    """Prompts as chat messages: a ``.txt`` file (one prompt per line) or any format of ``read_records`` (chat
    records are cut after their last user message; plain text becomes one user message)."""

    prompts = []
    for rec in read_records(path, text_split="line", limit=limit):
        if rec.messages is None:
            prompts.append([{"role": "user", "content": rec.text}])
            continue
        last_user = max((i for i, m in enumerate(rec.messages) if m["role"] == "user"), default=None)
        if last_user is None:
            raise ValueError(f"{path}: record {rec.index}: field 'messages' has no user message to answer")
        prompts.append(rec.messages[: last_user + 1])
    return prompts


def encode_prompt(tokenizer: Any, messages: list[dict]) -> list[int]:
    """Token ids of ``messages`` rendered with the chat template and the generation prompt."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def eos_ids_of(model: nn.Module, tokenizer: Any) -> set[int]:
    """EOS ids of the tokenizer and the model's generation config."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    gen = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids |= set(gen) if isinstance(gen, (list, tuple)) else ({gen} if gen is not None else set())
    return ids


@torch.no_grad()
def generate(
    model: nn.Module,
    tokenizer: Any,
    prompt_ids: Sequence[Sequence[int]],
    max_new_tokens: int = 128,
    batch_size: int = 8,
    steering: Steering | None = None,
    **gen_kwargs: Any,
) -> list[list[int]]:
    """Greedy answers (token ids, cut after the first EOS, which is kept) to tokenised prompts, in batches of
    left-padded prompts, under ``steering`` if given (entered once per batch). ``model``: a transformers causal LM
    (its ``generate`` is unknown to torch's typing of ``nn.Module`` attributes, hence the ignores)."""
    device = next(model.parameters()).device
    eos = eos_ids_of(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos, default=0)
    kwargs = {
        "do_sample": False,
        "max_new_tokens": max_new_tokens,
        "pad_token_id": pad,
        "eos_token_id": sorted(eos) or None,
        **gen_kwargs,
    }
    if not kwargs["do_sample"]:
        kwargs.update(temperature=None, top_p=None, top_k=None)
    answers: list[list[int]] = []
    for s in range(0, len(prompt_ids), batch_size):
        ids, mask = pad_ids(prompt_ids[s : s + batch_size], pad)
        if steering is None:
            out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **kwargs)  # type: ignore[operator]
        else:
            with steering:
                out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **kwargs)  # type: ignore[operator]
        for row in out[:, ids.shape[1] :].tolist():
            cut = next((i + 1 for i, t in enumerate(row) if t in eos), len(row))
            answers.append(row[:cut])
    return answers


@torch.no_grad()
def hook_norm(
    model: nn.Module, hook: Any, prompt_ids: Sequence[Sequence[int]], pad_id: int, batch_size: int = 8
) -> float:
    """Median L2 norm of the hook activations over the prompts' tokens, position 0 (attention sink) excluded:
    the scale against which alpha should be read."""

    device = next(model.parameters()).device
    norms = []
    for s in range(0, len(prompt_ids), batch_size):
        ids, mask = pad_ids(prompt_ids[s : s + batch_size], pad_id, left=False)  # positions start at 0
        acts = capture_shared(model, hook, ids.to(device), mask.to(device)).float().cpu()  # [B, L, d]
        keep = mask.bool()
        keep[:, 0] = False
        norms.append(acts[keep].norm(dim=-1))
    norms_all = torch.cat(norms)
    return float(norms_all.median()) if len(norms_all) else float("nan")


def run_steering(
    model: nn.Module,
    tokenizer: Any,
    sae: SAE,
    prompts: list[list[dict]],
    latents: Sequence[int],
    values: Sequence[float] = (0, 15, 25, 50, 100, 150, 200),
    mode: str = "add",
    positions: str = "all",
    normalize: bool = False,
    max_new_tokens: int = 128,
    batch_size: int = 8,
    hook: Any = None,
    settings: dict[str, Any] | None = None,
) -> SteeringReport:
    """Generate every prompt under every condition and measure the answers (see module doc)."""
    if not prompts:
        raise ValueError("no prompts to steer")
    prompt_ids = [encode_prompt(tokenizer, m) for m in prompts]
    conditions = conditions_for(latents, mode, values)
    eos = eos_ids_of(model, tokenizer)
    generations: list[Generation] = []
    summary: dict[str, dict[str, float]] = {}
    for cond in conditions:
        steering = None
        if cond.edits is not None:
            steering = Steering(
                model, sae, cond.edits, hook=hook, positions=positions, tokenizer=tokenizer, normalize=normalize
            )
        answers = generate(model, tokenizer, prompt_ids, max_new_tokens, batch_size, steering)
        measures = measure_answers(model, tokenizer, prompt_ids, answers, eos, batch_size)
        summary[cond.label] = summarize(measures)
        summary[cond.label]["edited_positions"] = float(steering.n_edited if steering is not None else 0)
        for i, (a, m) in enumerate(zip(answers, measures, strict=True)):
            generations.append(Generation(i, cond.label, tokenizer.decode(a, skip_special_tokens=True), a, _flat(m)))
    steering_hook = resolve_hook(sae, hook)
    info = {
        "latents": list(map(int, latents)),
        "mode": mode,
        "positions": positions,
        "normalize": normalize,
        "values": [float(v) for v in values],
        "max_new_tokens": max_new_tokens,
        "hook": str(steering_hook),
        "decoder_norms": {int(k): float(sae.W_dec[k].detach().norm()) for k in latents},
        "hook_norm_median": hook_norm(model, steering_hook, prompt_ids, tokenizer.pad_token_id or 0, batch_size),
        **(settings or {}),
    }
    return SteeringReport(info, prompts, [c.label for c in conditions], generations, summary)


def _flat(m: AnswerMeasures) -> dict[str, Any]:
    d = m._asdict()
    rep = d.pop("repetition")
    d.update({f"repetition_{n}": v for n, v in rep.items()})
    d["perplexity"] = math.exp(m.nll / m.n_scored) if m.n_scored else float("nan")
    return d


# ---- writing -----------------------------------------------------------------------------------------------------
def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\r", "").replace("\n", "<br>") or "*(empty)*"


def report_markdown(report: SteeringReport) -> str:
    """The report as Markdown: settings, a summary table per condition, then each prompt's answers side by side."""
    s = report.settings
    lines = ["# Steering report", ""]
    lines += [f"- **{k}**: `{v}`" for k, v in s.items()]
    lines += [
        "",
        "Alpha is in raw activation units: compare it with `hook_norm_median` (median L2 norm of the hook",
        "activation over prompt tokens, position 0 excluded) and the latents' `decoder_norms`.",
        "",
        "## Summary (means over prompts)",
        "",
        "| condition | answer length (tokens) | repetition 1-gram | repetition 2-gram | repetition 3-gram "
        "| non-ASCII letter share | perplexity (clean model) | edited positions |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in report.conditions:
        m = report.summary[c]
        lines.append(
            f"| {c} | {m['mean_length']:.1f} | {m['repetition_1']:.3f} | {m['repetition_2']:.3f} | "
            f"{m['repetition_3']:.3f} | {m['non_ascii_share']:.3f} | {m['perplexity']:.2f} | "
            f"{int(m['edited_positions'])} |"
        )
    lines += [
        "",
        "Repetition = 1 − distinct-n of the answer's tokens; non-ASCII letter share = share of letters that",
        "are not ASCII (language switching / garbled bytes); perplexity of the answer under the unsteered",
        "model. See docs/steering.md.",
        "",
        "## Generations",
        "",
    ]
    by_key = {(g.prompt, g.condition): g for g in report.generations}
    for i, messages in enumerate(report.prompts):
        lines += [
            f"### Prompt {i + 1}",
            "",
            "> " + _cell(messages[-1]["content"]),
            "",
            "| condition | tokens | answer |",
            "|---|---:|---|",
        ]
        for c in report.conditions:
            g = by_key[(i, c)]
            lines.append(f"| {c} | {g.measures['length']} | {_cell(g.text)} |")
        lines.append("")
    return "\n".join(lines)


def write_report(report: SteeringReport, out_dir: str | Path, overwrite: bool = False) -> tuple[Path, Path]:
    """Write ``steering.md`` and ``steering.json`` into ``out_dir`` (claimed as chatsae's; a user's file of either
    name is never replaced; atomically); returns their paths."""
    out = claim_dir(out_dir, "steering", overwrite, "--out")
    md, js = out / "steering.md", out / "steering.json"
    for path in (md, js):
        check_replace(path, "--out")
    write_output_file(md, report_markdown(report), "--out")
    write_output_file(js, json.dumps(asdict(report), indent=1, ensure_ascii=False), "--out")
    return md, js
