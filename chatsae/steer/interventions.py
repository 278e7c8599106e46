"""Steering interventions on SAE latents at the SAE's hook, usable with any HF causal LM and ``model.generate``.

For a latent ``k`` with decoder row ``d_k`` (``sae.W_dec[k]``) and latent activation ``f_k(x)`` (``sae.encode``):

- ``add``:    ``x' = x + alpha * d_k`` (FAST paper: ``z' = z + alpha * d_k``; ``normalize=True`` uses ``d_k / |d_k|``);
- ``clamp``:  ``x' = x + (v - f_k(x)) * d_k`` (sets the latent's contribution to ``v``, keeps the SAE error term);
- ``ablate``: ``x' = x - f_k(x) * d_k`` (clamp to 0: removes the latent's contribution, keeps the error term).

Several latents are applied together (their deltas are summed, all computed from the unedited ``x``).
Positions: ``all`` (every real token), ``special`` (tokens whose id is in a special/template set), ``prompt`` (the
prompt only, not the generated tokens). Padding positions (attention mask 0) are never touched, so left-padded batches
give the same result per row as unpadded prompts.

A forward pre-hook on the model's base model records the ``input_ids`` / attention mask / cache length of every
forward pass, so positions are resolved per decoding step, with or without the KV cache.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import Tensor, nn

from ..models import HookPoint, edit

if TYPE_CHECKING:
    from ..sae import SAE

MODES = ("add", "clamp", "ablate")
POSITIONS = ("all", "special", "prompt")


@dataclass(frozen=True)
class LatentEdit:
    """One intervention on latent ``latent``: ``mode`` add (``value`` = alpha), clamp (``value`` = target activation
    ``v``) or ablate (``value`` unused)."""

    latent: int
    mode: str = "add"
    value: float = 0.0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"LatentEdit.mode: unknown mode {self.mode!r}; choose one of {', '.join(MODES)}")


def make_edits(latents: int | Iterable[int], mode: str = "add", value: float = 0.0) -> list[LatentEdit]:
    """The same edit (``mode``, ``value``) on each of ``latents``."""
    latents = [latents] if isinstance(latents, int) else list(latents)
    if not latents:
        raise ValueError("no latent to steer: give at least one latent index")
    return [LatentEdit(int(k), mode, float(value)) for k in latents]


class StepInfo(NamedTuple):
    """What the pre-hook saw of the current forward pass."""

    input_ids: Tensor | None
    """[B, T] token ids of this step (None when the model was called with ``inputs_embeds``)."""
    real: Tensor
    """[B, T] bool: True at real tokens, False at padding."""
    past_len: int
    """Number of positions already in the KV cache (0 at the prefill or without a cache)."""
    prompt_len: int
    """Length (padded) of the prompt of the current generation: absolute positions >= it are generated tokens."""


def special_token_ids(tokenizer: Any) -> frozenset[int]:
    """Ids of the tokenizer's special tokens plus the non-whitespace chat-template tokens (role names such as
    ``system``/``user``/``assistant``, ``<|start_header_id|>``, ...).

    Template tokens are found by rendering a probe conversation with the chat template and keeping the tokens that
    do not come from the message contents. Whitespace-only template tokens (the newline after a role name) are left
    out, because by id alone they cannot be told apart from newlines inside the text.
    """
    ids = set(tokenizer_special_ids(tokenizer))
    if getattr(tokenizer, "chat_template", None):
        for i in template_probe_ids(tokenizer):
            if tokenizer.decode([i]).strip():
                ids.add(i)
    return frozenset(ids)


def tokenizer_special_ids(tokenizer: Any) -> frozenset[int]:
    """The tokenizer's special-token ids (``all_special_ids`` plus added tokens flagged special)."""
    ids = {int(i) for i in getattr(tokenizer, "all_special_ids", [])}
    ids |= {int(i) for i, tok in getattr(tokenizer, "added_tokens_decoder", {}).items() if getattr(tok, "special", 0)}
    return frozenset(ids)


def template_probe_ids(tokenizer: Any) -> set[int]:
    """Token ids that the chat template itself inserts around messages (rendered probe minus content tokens)."""
    words = ("alpha", "bravo", "charlie")
    messages = [{"role": r, "content": w} for r, w in zip(("system", "user", "assistant"), words, strict=True)]
    try:
        rendered = tokenizer.apply_chat_template(messages, tokenize=False)
    except Exception:  # templates without a system role
        messages = messages[1:]
        rendered = tokenizer.apply_chat_template(messages, tokenize=False)
    content_ids = {i for m in messages for i in tokenizer.encode(m["content"], add_special_tokens=False)}
    content_ids |= {i for m in messages for i in tokenizer.encode(" " + m["content"], add_special_tokens=False)}
    probe = tokenizer(rendered, add_special_tokens=False)["input_ids"]
    return {int(i) for i in probe if int(i) not in content_ids}


def resolve_hook(sae: SAE, hook: Any) -> Any:

    if hook is None:
        hook = getattr(sae.cfg, "metadata", {}).get("hook_name")
        if not hook:
            raise ValueError("the SAE's cfg.metadata has no 'hook_name'; pass hook= (e.g. 'resid_post.15')")
    return HookPoint.parse(hook) if isinstance(hook, str) else hook


class Steering:
    """Context manager steering ``model`` with SAE latents at the SAE's hook during every forward pass.

    ``with Steering(model, sae, make_edits(k, "add", 50.0), positions="special", tokenizer=tok): model.generate(...)``

    ``hook``: a ``HookPoint`` or hook string (default: ``sae.cfg.metadata["hook_name"]``). ``special_ids``: token
    ids counted as special (default: :func:`special_token_ids` of ``tokenizer``). ``normalize``: add mode uses unit
    decoder rows. ``prompt_len``: fix the prompt length instead of detecting it (see :meth:`position_mask`).
    """

    def __init__(
        self,
        model: nn.Module,
        sae: SAE,
        edits: LatentEdit | Sequence[LatentEdit],
        *,
        hook: Any = None,
        positions: str = "all",
        tokenizer: Any = None,
        special_ids: Iterable[int] | None = None,
        normalize: bool = False,
        prompt_len: int | None = None,
    ) -> None:
        self.edits = [edits] if isinstance(edits, LatentEdit) else list(edits)
        if not self.edits:
            raise ValueError("Steering: no edits given")
        if positions not in POSITIONS:
            raise ValueError(f"Steering: unknown positions {positions!r}; choose one of {', '.join(POSITIONS)}")
        d_sae = sae.W_dec.shape[0]
        for e in self.edits:
            if not 0 <= e.latent < d_sae:
                raise ValueError(f"Steering: latent {e.latent} out of range (the SAE has {d_sae} latents)")
        if positions == "special" and special_ids is None:
            if tokenizer is None:
                raise ValueError("Steering: positions='special' needs tokenizer= or special_ids=")
            special_ids = special_token_ids(tokenizer)
        self.model, self.sae, self.hook, self.positions = model, sae, resolve_hook(sae, hook), positions
        self.normalize, self.fixed_prompt_len = normalize, prompt_len
        self._special = torch.tensor(sorted(special_ids or []), dtype=torch.long)
        self._stack: ExitStack | None = None
        self.n_edited = 0
        """Number of token positions edited so far (summed over forward passes and ``with`` blocks)."""
        self.reset()

    # ---- state -----------------------------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget the tracked sequence: the next forward pass starts a new prompt (done on every ``with``)."""
        self._step: StepInfo | None = None
        self._seq: Tensor | None = None  # [B, L] ids of the current sequence (prompt + generated so far)
        self._prompt_len = self._batch = self._total = 0

    @torch.no_grad()
    def _pre_hook(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        ref = ids if ids is not None else kwargs.get("inputs_embeds")
        if ref is None:
            raise RuntimeError("Steering: the model was called without input_ids or inputs_embeds")
        B, T = ref.shape[:2]
        cache = kwargs.get("past_key_values")
        if cache is None:
            cache = kwargs.get("cache")  # the name of the argument in transformers >= 5
        mask = kwargs.get("attention_mask")  # transformers >= 5 passes None when nothing is padded
        past_len = int(cache.get_seq_length()) if cache is not None and hasattr(cache, "get_seq_length") else 0
        if isinstance(mask, Tensor) and mask.ndim == 2:
            real = mask[:, -T:].bool()
            if cache is None:
                past_len = mask.shape[1] - T
        else:  # no mask, or a prepared 4D mask (static caches): every position counts as real
            real = torch.ones(B, T, dtype=torch.bool, device=ref.device)
        self._track(ids, B, T, past_len)
        self._step = StepInfo(ids, real, past_len, self._prompt_len)

    def _track(self, ids: Tensor | None, B: int, T: int, past_len: int) -> None:
        """Update the prompt length. A pass on top of the tracked sequence's cache continues it; a pass with an empty
        cache starts a new prompt unless it extends the tracked ids (generation without KV cache re-feeds the whole
        sequence each step); a cache built outside the context counts as prompt."""
        seq, batch, total = self._seq, self._batch, self._total
        if past_len > 0:
            if past_len != total or batch != B:
                self._prompt_len = past_len if self.fixed_prompt_len is None else self.fixed_prompt_len
                seq = None
            self._seq = (
                torch.cat([seq[:, :past_len], ids.to(seq.device)], 1) if seq is not None and ids is not None else None
            )
        else:
            extends = (
                ids is not None
                and seq is not None
                and batch == B
                and seq.shape[1] < T
                and bool((ids[:, : seq.shape[1]] == seq.to(ids.device)).all())
            )
            if not extends:
                self._prompt_len = T if self.fixed_prompt_len is None else self.fixed_prompt_len
            self._seq = ids.clone() if ids is not None else None
        self._batch, self._total = B, past_len + T

    def position_mask(self, B: int, T: int, device: torch.device) -> Tensor:
        """[B, T] bool: positions of the current forward pass to edit (never padding).

        ``prompt``: absolute positions below the prompt length, which is the length of the first pass after
        entering/``reset`` or after any pass with an empty cache that does not extend the tracked sequence.
        """
        step = self._step
        if step is None or step.real.shape != (B, T):
            got = None if step is None else tuple(step.real.shape)
            raise RuntimeError(
                f"Steering: activation of shape [{B}, {T}, d] does not match the recorded model inputs {got}; "
                "call the model itself (its forward or generate), not a sub-module"
            )
        mask = step.real.to(device)
        if self.positions == "special":
            if step.input_ids is None:
                raise RuntimeError("Steering: positions='special' needs input_ids (got inputs_embeds)")
            mask = mask & torch.isin(step.input_ids.to(device), self._special.to(device))
        elif self.positions == "prompt":
            absolute = step.past_len + torch.arange(T, device=device)
            mask = mask & (absolute < step.prompt_len)[None, :]
        return mask

    # ---- the edit ----------------------------------------------------------------------------------------------
    def directions(self, device: torch.device | None = None) -> Tensor:
        """[n_edits, d_in] decoder rows of the edited latents (unit norm for add edits when ``normalize``)."""
        W = self.sae.W_dec.detach()
        rows = W[[e.latent for e in self.edits]]
        if self.normalize:
            add = torch.tensor([e.mode == "add" for e in self.edits], device=W.device)
            rows = torch.where(add[:, None], rows / rows.norm(dim=1, keepdim=True).clamp_min(1e-12), rows)
        return rows if device is None else rows.to(device)

    @torch.no_grad()
    def delta(self, x: Tensor) -> Tensor:
        """The change ``x' - x`` for activations ``x`` [N, d_in], in the SAE's dtype. [N, d_in]"""
        dirs = self.directions(x.device)
        coef = (
            torch.tensor([e.value if e.mode == "add" else 0.0 for e in self.edits], dtype=dirs.dtype, device=x.device)
            .expand(x.shape[0], -1)
            .clone()
        )
        encoded = [i for i, e in enumerate(self.edits) if e.mode != "add"]
        if encoded:
            f = self.sae.encode(x.to(dirs.dtype))[:, [self.edits[i].latent for i in encoded]]
            target = torch.tensor(
                [self.edits[i].value if self.edits[i].mode == "clamp" else 0.0 for i in encoded],
                dtype=dirs.dtype,
                device=x.device,
            )
            coef[:, encoded] = target - f
        return coef @ dirs

    def __call__(self, act: Tensor) -> Tensor:
        """Edit the hook activation ``act`` [B, T, d] of the current forward pass (out of place: gradients still
        flow through ``act``; the delta itself is computed without gradient)."""
        mask = self.position_mask(act.shape[0], act.shape[1], act.device)
        n = int(mask.sum())
        if n == 0:
            return act
        self.n_edited += n
        if self.sae.W_dec.device != act.device:
            self.sae.to(act.device)
        x = act[mask]
        new = (x.to(self.sae.W_dec.dtype) + self.delta(x)).to(act.dtype)
        return act.index_put((mask,), new)

    # ---- context manager -----------------------------------------------------------------------------------
    def __enter__(self) -> Steering:

        if self._stack is not None:
            raise RuntimeError("Steering: already active")
        self.reset()
        stack = ExitStack()
        base = getattr(self.model, "base_model", self.model)
        handle = base.register_forward_pre_hook(self._pre_hook, with_kwargs=True)
        stack.callback(handle.remove)
        try:
            stack.enter_context(edit(self.model, self.hook, self))
        except BaseException:
            stack.close()
            raise
        self._stack = stack
        return self

    def __exit__(self, *exc: object) -> None:
        stack, self._stack = self._stack, None
        self._step = None
        if stack is not None:
            stack.close()


def steer(
    model: nn.Module, sae: SAE, latents: int | Iterable[int], value: float = 0.0, mode: str = "add", **kw: Any
) -> Steering:
    """Shorthand: ``with steer(model, sae, k, 50.0): model.generate(...)`` (keywords as :class:`Steering`)."""
    return Steering(model, sae, make_edits(latents, mode, value), **kw)
