"""Judge prompts and the parsers of their answers (auto-interpretation).

- FAST protocol (paper section 5): the judge sees each top sentence as tokens interleaved with activation values and
  answers ``My final verdict score is: [[S]], feature name is [[NAME]]`` with S on the 1-5 monosemanticity rubric.
- Explanation (for detection/fuzzing): activating tokens marked ``<<like this>>``; the answer is ``[[explanation]]``.
- Detection / fuzzing (EleutherAI delphi style): numbered excerpts, the answer is a 0/1 list ``[[1, 0, ...]]``.

Parsers raise :class:`ParseError` on malformed answers; the caller retries and finally records them as unparseable.
Judges that continue a started answer get retries prefilled with :data:`PREFILL` of the protocol.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import NamedTuple

from .store import Context

Messages = list[dict[str, str]]

SYSTEM = (
    "You are a meticulous interpretability researcher. You study the latents (features) of a sparse "
    "autoencoder trained on the internal activations of a chat language model."
)

RUBRIC = """Rate how monosemantic the latent is on this 1-5 scale:
5: clear pattern with no deviating examples
4: clear pattern with one or two deviating examples
3: clear overall pattern but quite a few examples that don't fit
2: broad consistent theme but lacking structure
1: no discernible pattern"""


PREFILL = {"fast": "My final verdict score is: [[", "explanation": "The latent detects: [[", "binary": "[["}
"""Answer openings for retries of judges that continue a started answer (small local models rarely produce the
requested format unprompted; started this way they mostly do)."""


class ParseError(ValueError):
    """The judge's answer does not have the requested form."""


class FastVerdict(NamedTuple):
    score: int
    """1-5 monosemanticity score."""
    name: str
    """Short feature name given by the judge."""


def token_text(s: str) -> str:
    """A token's text made visible in a one-line excerpt (newlines, tabs and carriage returns escaped)."""
    return s.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")


def format_with_values(ctx: Context, tok: Callable[[int], str], scale: float, show_zero: bool = True) -> str:
    """``tok(act)`` for every token, activations as integers 0-10 relative to ``scale`` (the latent's max)."""
    parts = []
    for t, a in zip(ctx.tokens, ctx.acts, strict=True):
        v = round(10 * a / scale) if scale > 0 else 0
        if a > 0:
            v = max(v, 1)  # a firing token never shows as 0
        parts.append(f"{token_text(tok(t))}({v})" if v or show_zero else token_text(tok(t)))
    return " ".join(parts)


def format_marked(tokens: Sequence[int], marked: Sequence[bool], tok: Callable[[int], str]) -> str:
    """The excerpt as text with marked tokens (runs of them) wrapped in ``<<`` ``>>``."""
    out, inside = [], False
    for t, m in zip(tokens, marked, strict=True):
        if m and not inside:
            out.append("<<")
        elif not m and inside:
            out.append(">>")
        inside = m
        out.append(token_text(tok(t)))
    if inside:
        out.append(">>")
    return "".join(out)


def fast_prompt(contexts: Sequence[Context], tok: Callable[[int], str], show_zero: bool = True) -> Messages:
    """The FAST protocol prompt for one latent's top contexts."""
    scale = max((max(c.acts, default=0.0) for c in contexts), default=0.0)
    examples = "\n".join(
        f"Example {i + 1}: {format_with_values(c, tok, scale, show_zero)}" for i, c in enumerate(contexts)
    )
    user = (
        f"Here are the {len(contexts)} text excerpts on which one latent activates most strongly. Each token is "
        "followed by the latent's activation in parentheses, scaled to an integer from 0 (inactive) to 10 (its "
        "strongest activation); \\n marks a newline. Chat-template tokens such as <|im_start|> are part of the "
        f"text.\n\n{examples}\n\nLook for the pattern in the tokens with high activations.\n{RUBRIC}\n\n"
        "Think briefly, then end your answer with exactly this line:\n"
        "My final verdict score is: [[S]], feature name is [[NAME]]\n"
        "where S is the score (1-5) and NAME a short name for the latent."
    )
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


_BRACKETS = re.compile(r"\[\[(.*?)\]\]", re.S)
_SCORE_AFTER = re.compile(r"score\s*(?:is)?\s*:?\s*\[\[\s*([^\]]*?)\s*\]\]", re.I | re.S)
_NAME_AFTER = re.compile(r"name\s*(?:is)?\s*:?\s*\[\[\s*(.*?)\s*\]\]", re.I | re.S)
_NUMBER = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:/\s*5)?\s*$")


def _score(text: str) -> int:
    m = _NUMBER.match(text)
    if not m:
        raise ParseError(f"score [[{text}]] is not a number")
    value = float(m.group(1))
    if value != int(value) or not 1 <= value <= 5:
        raise ParseError(f"score [[{text}]] is not an integer from 1 to 5")
    return int(value)


def parse_fast(answer: str) -> FastVerdict:
    """``... [[S]] ... [[NAME]]`` -> FastVerdict; the last ``score ... [[S]]`` / ``name ... [[NAME]]`` win, else the
    first numeric ``[[..]]`` is the score and the first non-numeric one the name."""
    groups = [g.strip() for g in _BRACKETS.findall(answer)]
    if not groups:
        raise ParseError("no [[...]] in the answer")
    scores, names = _SCORE_AFTER.findall(answer), _NAME_AFTER.findall(answer)
    if scores:
        score = _score(scores[-1])
    else:
        numeric = [g for g in groups if _NUMBER.match(g)]
        if not numeric:
            raise ParseError("no [[score]] in the answer")
        score = _score(numeric[0])
    name = names[-1].strip() if names else next((g for g in groups if not _NUMBER.match(g)), "")
    if not name or name.upper() == "NAME":
        raise ParseError("no [[feature name]] in the answer")
    return FastVerdict(score, name[:200])


EXAMPLE_EXPLANATION = "the word 'the' after a comma"
"""The example of the explanation prompt (an answer repeating it is rejected)."""


def explain_prompt(contexts: Sequence[Context], tok: Callable[[int], str]) -> Messages:
    """Ask for an explanation of a latent from activating examples (activating tokens marked)."""
    examples = "\n".join(
        f"Example {i + 1}: {format_marked(c.tokens, [a > 0 for a in c.acts], tok)}" for i, c in enumerate(contexts)
    )
    user = (
        "Here are text excerpts on which one latent activates. The tokens where it is active are marked "
        f"<<like this>>; \\n marks a newline.\n\n{examples}\n\nWhat does the latent detect? Give a short, concrete "
        "explanation (one phrase) that would let someone predict on which tokens and texts it fires. End your "
        f"answer with the explanation in double brackets, e.g. [[{EXAMPLE_EXPLANATION}]]."
    )
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def parse_explanation(answer: str) -> str:
    """The last non-empty ``[[...]]``; the prompt's own example copied back is not an explanation."""
    groups = [g.strip() for g in _BRACKETS.findall(answer) if g.strip()]
    if not groups:
        raise ParseError("no [[explanation]] in the answer")
    if groups[-1].lower() == EXAMPLE_EXPLANATION.lower():
        raise ParseError("the answer repeats the prompt's example explanation")
    return groups[-1][:300]


def detection_prompt(explanation: str, excerpts: Sequence[str]) -> Messages:
    """Ask which excerpts contain what ``explanation`` describes."""
    listed = "\n".join(f"Example {i + 1}: {e}" for i, e in enumerate(excerpts))
    example = ", ".join("1" if i % 2 else "0" for i in range(len(excerpts)))
    user = (
        f'A latent of a language model is described as: "{explanation}".\n\nFor each of the {len(excerpts)} '
        f"excerpts below, decide whether the latent would activate on some token of it (1) or not (0).\n\n"
        f"{listed}\n\nAnswer with the {len(excerpts)} decisions in order as a list in double brackets, e.g. "
        f"[[{example}]]."
    )
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def fuzzing_prompt(explanation: str, excerpts: Sequence[str]) -> Messages:
    """Ask whether the marked tokens of each excerpt are the ones ``explanation`` describes."""
    listed = "\n".join(f"Example {i + 1}: {e}" for i, e in enumerate(excerpts))
    example = ", ".join("1" if i % 2 else "0" for i in range(len(excerpts)))
    user = (
        f'A latent of a language model is described as: "{explanation}".\n\nIn each of the {len(excerpts)} '
        "excerpts below some tokens are marked <<like this>>. Decide whether the marked tokens are where the latent "
        f"described would activate (1) or not (0).\n\n{listed}\n\nAnswer with the {len(excerpts)} decisions in "
        f"order as a list in double brackets, e.g. [[{example}]]."
    )
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def parse_binary_list(answer: str, n: int) -> list[int]:
    """The last ``[[0, 1, ...]]`` with exactly ``n`` 0/1 entries."""
    for group in reversed(_BRACKETS.findall(answer)):
        items = [x for x in re.split(r"[\s,;]+", group.strip()) if x]
        if items and all(x in ("0", "1") for x in items):
            if len(items) != n:
                raise ParseError(f"expected {n} decisions, got {len(items)}")
            return [int(x) for x in items]
    raise ParseError(f"no [[...]] list of {n} 0/1 decisions in the answer")
