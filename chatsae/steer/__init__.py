"""Steering with SAE latents: interventions during generation, special-token latent tables, steering reports."""

from .interventions import (
    MODES,
    POSITIONS,
    LatentEdit,
    Steering,
    StepInfo,
    make_edits,
    resolve_hook,
    special_token_ids,
    steer,
    template_probe_ids,
    tokenizer_special_ids,
)
from .measures import AnswerMeasures, answer_nll, measure_answers, non_ascii_share, repetition_rate, summarize
from .report import SteeringReport, conditions_for, load_prompts, run_steering, write_report
from .special_tokens import (
    SpecialTokenAccumulator,
    SpecialTokenTable,
    TokenLatent,
    special_token_table,
    token_key,
    write_table,
)

__all__ = [
    "MODES",
    "POSITIONS",
    "AnswerMeasures",
    "LatentEdit",
    "SpecialTokenAccumulator",
    "SpecialTokenTable",
    "SteeringReport",
    "Steering",
    "StepInfo",
    "TokenLatent",
    "answer_nll",
    "conditions_for",
    "load_prompts",
    "make_edits",
    "measure_answers",
    "non_ascii_share",
    "repetition_rate",
    "resolve_hook",
    "run_steering",
    "special_token_ids",
    "special_token_table",
    "steer",
    "summarize",
    "template_probe_ids",
    "token_key",
    "tokenizer_special_ids",
    "write_report",
    "write_table",
]
