"""Rendering a conversation with the tokenizer's chat template into tokens with per-token classes.

Every token carries a class: ``TEMPLATE`` for chat-template tokens (special tokens, role names after a start-of-turn
token, template separators such as the newline after the role), the role class of the message its characters come
from (``SYSTEM``/``USER``/``ASSISTANT``), ``SYSTEM`` for other text the template inserts (e.g. a default system
prompt), ``TEXT`` for plain text. Classes come from the character offsets of a fast tokenizer over the rendered chat
string; message contents are located with a second rendering in which each content is a sentinel.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

TEXT, TEMPLATE, SYSTEM, USER, ASSISTANT = 0, 1, 2, 3, 4
PAD_CLASS = -1
"""``token_class`` (and ``sample_ids``) value of padding positions in :func:`pad_batch`."""
ROLE_CLASS = {"system": SYSTEM, "user": USER, "assistant": ASSISTANT}
ROLE_NAMES = frozenset(
    {"system", "user", "assistant", "model", "human", "gpt", "bot", "ai", "tool", "tools", "ipython", "developer"}
)
_SENTINEL = "\ue000{}\ue001"
_SENTINEL_RE = re.compile("\ue000(\\d+)\ue001")


class ChatTemplateError(ValueError):
    """The tokenizer has no usable chat template, or a conversation cannot be rendered with it."""


class TokenSequence(NamedTuple):
    """One sequence of tokens; all four lists have the same length."""

    input_ids: list[int]
    special_mask: list[bool]
    """True at chat-template tokens (``token_class == TEMPLATE``)."""
    token_class: list[int]
    sample_ids: list[int]
    """Id (record index) of the sample each token came from."""


def make_sequence(ids: list[int], classes: list[int], sample_ids: list[int]) -> TokenSequence:
    """A sequence whose special mask is derived from the classes."""
    return TokenSequence(ids, [c == TEMPLATE for c in classes], classes, sample_ids)


@dataclass(frozen=True)
class TokenizerInfo:
    """What the renderers need from a tokenizer: ids of all special/added-special tokens, BOS and EOS."""

    special_ids: frozenset[int]
    bos_id: int | None
    eos_id: int | None


def tokenizer_info(tokenizer, chat: bool) -> TokenizerInfo:
    """Check the tokenizer can be used (``chat``: has a chat template and offsets) and collect its special ids."""
    if chat and not getattr(tokenizer, "chat_template", None):
        name = getattr(tokenizer, "name_or_path", "") or "this model"
        raise ChatTemplateError(
            f"the tokenizer of {name} has no chat template: it is a base model; use --method bt-p (plain text), "
            "or pass a chat template"
        )
    if chat and not getattr(tokenizer, "is_fast", False):
        raise ChatTemplateError("token classes need a fast (Rust) tokenizer with offset mappings")
    special = set(tokenizer.all_special_ids)
    special |= {i for i, tok in getattr(tokenizer, "added_tokens_decoder", {}).items() if tok.special}
    return TokenizerInfo(frozenset(special), tokenizer.bos_token_id, tokenizer.eos_token_id)


def _render_str(tokenizer, messages: Sequence[Mapping], add_generation_prompt: bool) -> str:
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    except Exception as e:  # jinja raises its own errors (e.g. roles must alternate)
        raise ChatTemplateError(f"the chat template cannot render this conversation: {e}") from e


def _content_spans(messages: Sequence[Mapping], rendered: str, skeleton: str) -> list[tuple[int, int, int]]:
    """``(start, end, message index)`` of each message's content in ``rendered``, found via the ``skeleton``.

    ``skeleton`` is the rendering with every content replaced by a sentinel; where the template copies contents
    verbatim the spans are exact, otherwise (e.g. the template trims them) the template pieces around each
    sentinel are searched for in ``rendered``.
    """
    parts = _SENTINEL_RE.split(skeleton)  # [piece0, idx0, piece1, idx1, ..., piece_k]
    pieces, order = parts[0::2], [int(i) for i in parts[1::2]]
    spans, pos = [], len(pieces[0])
    if "".join(p + messages[i]["content"] for p, i in zip(pieces, order, strict=False)) + pieces[-1] == rendered:
        for i, piece in zip(order, pieces[1:], strict=True):
            end = pos + len(messages[i]["content"])
            spans.append((pos, end, i))
            pos = end + len(piece)
        return spans
    if not rendered.startswith(pieces[0]) or not rendered.endswith(pieces[-1]):
        raise ChatTemplateError("cannot locate the message contents in the rendered chat template")
    for k, (i, piece) in enumerate(zip(order, pieces[1:], strict=True)):
        end = len(rendered) - len(piece) if k == len(order) - 1 else rendered.find(piece, pos)
        if end < pos:
            raise ChatTemplateError(f"cannot locate message {i}'s content in the rendered chat template")
        spans.append((pos, end, i))
        pos = end + len(piece)
    return spans


def _is_role(text: str, roles: frozenset[str]) -> bool:
    """Template text that is only whitespace or a role name (``user``, ``### Assistant:`` ...)."""
    name = text.strip().strip("#:").strip().lower()
    return not name or name in roles


def _template_text_classes(pieces: list[str], roles: frozenset[str]) -> list[int]:
    """Classes of a run of template-inserted (non-special, non-content) tokens, given their texts.

    Lines that are blank or a role label (``user\\n``, ``### Assistant:``) are TEMPLATE; other lines are SYSTEM
    (an inserted prompt), except whitespace-only tokens at the edges of each such stretch (TEMPLATE separators).
    """
    is_text, start = [], 0
    for j, piece in enumerate(pieces):
        if "\n" in piece or j == len(pieces) - 1:
            is_text += [not _is_role("".join(pieces[start : j + 1]), roles)] * (j + 1 - start)
            start = j + 1
    out, j = [TEMPLATE] * len(pieces), 0
    while j < len(pieces):
        k = j
        while k < len(pieces) and is_text[k]:
            k += 1
        while j < k and not pieces[j].strip():
            j += 1
        hi = k
        while hi > j and not pieces[hi - 1].strip():
            hi -= 1
        out[j:hi] = [SYSTEM] * (hi - j)
        j = k + 1
    return out


def _classify(
    text: str,
    ids: list[int],
    offsets: list[tuple[int, int]],
    spans: list[tuple[int, int, int]],
    span_class: list[int],
    special: frozenset[int],
    roles: frozenset[str],
) -> tuple[list[int], list[int]]:
    """(token classes, index of the span each token overlaps or -1); see the module docstring for the rules."""
    n = len(ids)
    cls: list[int | None] = [None] * n
    owner = [-1] * n
    k = 0
    for t, (a, b) in enumerate(offsets):
        while k < len(spans) and spans[k][1] <= a:
            k += 1
        if ids[t] in special:
            cls[t] = TEMPLATE
        elif b > a and k < len(spans) and spans[k][0] < b:
            cls[t], owner[t] = span_class[k], k
    t = 0
    while t < n:  # runs of template text between special tokens / contents
        end = t
        while end < n and cls[end] is None:
            end += 1
        if end > t:
            cls[t:end] = _template_text_classes([text[a:b] for a, b in offsets[t:end]], roles)
        t = end + 1
    classes = [c for c in cls if c is not None]
    assert len(classes) == n  # every token got a class
    return classes, owner


def render_with_key(
    messages: Sequence[Mapping],
    tokenizer,
    info: TokenizerInfo,
    sample_id: int,
    check: bool,
    add_generation_prompt: bool = False,
) -> tuple[TokenSequence, list[int]]:
    """(sequence, ids of the non-system message contents — the dedup key)."""
    messages = [dict(m) for m in messages]
    for i, m in enumerate(messages):
        if not isinstance(m.get("content"), str) or not isinstance(m.get("role"), str):
            raise ChatTemplateError(f"message {i} needs string 'role' and 'content'")
    rendered = _render_str(tokenizer, messages, add_generation_prompt)
    skeleton = _render_str(
        tokenizer, [{**m, "content": _SENTINEL.format(i)} for i, m in enumerate(messages)], add_generation_prompt
    )
    spans = _content_spans(messages, rendered, skeleton)
    enc = tokenizer(rendered, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    if check:
        ref = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=add_generation_prompt)
        ref = ref["input_ids"] if isinstance(ref, Mapping) else ref
        if list(ref) != ids:
            raise ChatTemplateError(
                "tokenizing the rendered chat string differs from apply_chat_template(tokenize=True); "
                "this template/tokenizer pair is not supported"
            )
    roles = ROLE_NAMES | {m["role"].lower() for m in messages}
    span_class = [ROLE_CLASS.get(messages[i]["role"], TEXT) for _, _, i in spans]
    cls, owner = _classify(rendered, ids, enc["offset_mapping"], spans, span_class, info.special_ids, roles)
    key = [tid for tid, o in zip(ids, owner, strict=True) if o >= 0 and span_class[o] != SYSTEM]
    return make_sequence(ids, cls, [sample_id] * len(ids)), key


def render_chat(
    messages: Sequence[Mapping], tokenizer, sample_id: int = 0, add_generation_prompt: bool = False, check: bool = True
) -> TokenSequence:
    """One conversation rendered with the tokenizer's chat template, with token classes and the special mask.

    ``check``: verify the tokens equal ``apply_chat_template(tokenize=True)``. Raises :class:`ChatTemplateError`.
    """
    return render_with_key(
        messages, tokenizer, tokenizer_info(tokenizer, chat=True), sample_id, check, add_generation_prompt
    )[0]


def text_sequence(text: str, tokenizer, info: TokenizerInfo, sample_id: int) -> TokenSequence:
    """A plain document: ``[BOS] text [EOS]`` (BOS/EOS where the tokenizer has them); specials are TEMPLATE."""
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    ids = [info.bos_id] * (info.bos_id is not None) + ids + [info.eos_id] * (info.eos_id is not None)
    return make_sequence(ids, [TEMPLATE if i in info.special_ids else TEXT for i in ids], [sample_id] * len(ids))
