"""Feature absorption on the first-letter task, as SAEBench defines it (``sae_bench/evals/absorption``).

1. Words: single tokens of the vocabulary made of ASCII letters (an optional leading space allowed), split 80/20 into
   train/test. Each word ends an ICL prompt ``"\\n{ex} has the first letter: E\\n... {word} has the first letter:"``
   (10 examples from the same split); the activation is read at the word's token.
2. A logistic probe per letter on the raw train activations (one-vs-rest, balanced classes); its test F1 decides
   whether the model represents the letter at all (``f1 > min_probe_f1``).
3. The SAE's main latents per letter: an L1-regularised one-vs-rest probe on all latents ranks them (largest weight
   first); k-sparse probes (k = 1..max_k) on the top k; the main latents are the top k of the largest k at which
   the test F1 kept rising by more than ``f1_jump_threshold`` per step (more than one: feature splitting).
4. For every test word of the letter the probe gets right: the absorption fraction (the share of the probe
   projection carried by up to 3 other latents with probe-cosine >= 0.1 rather than by the main latents) and full
   absorption (main latents silent, the top projecting latent aligned with the probe and carrying >= 40%).

Deviations (docs/evaluation-suite.md): probes are fitted with full-batch L-BFGS (not Adam), the L1 ranking probe
runs ``l1_steps`` full-batch Adam steps (not 50 epochs of 4096-word batches), and absorption is scored on the same
test prompts as the probes (SAEBench draws fresh ICL examples for that step).
"""

from __future__ import annotations

import math
import random
import statistics
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..core.config import validate
from .probing import fit_logistic

LETTERS = "abcdefghijklmnopqrstuvwxyz"
EPS = 1e-8
PROMPT_TEMPLATE = "{word} has the first letter:"


@dataclass
class AbsorptionConfig:
    """SAEBench's absorption settings (their defaults) and the sizes chatsae adds for CPU budgets."""

    max_k: int = 10
    f1_jump_threshold: float = 0.03
    min_probe_f1: float = 0.6
    min_letters: int = 20
    """Fewer letters with probe F1 above min_probe_f1 than this: no score (SAEBench: min_feats_for_eval)."""
    full_cos_threshold: float = 0.025
    fraction_cos_threshold: float = 0.1
    projection_threshold: float = 0.4
    max_absorbers: int = 3
    l1_decay: float = 0.01
    l1_steps: int = 300
    probe_c: float = 1.0

    def __post_init__(self) -> None:
        validate(self, positive=("max_k", "min_letters", "max_absorbers", "l1_steps", "probe_c"))


def alpha_tokens(tokenizer: Any) -> list[tuple[int, str]]:
    """``(token id, word)`` of every non-special vocabulary token that decodes to ASCII letters (one leading space
    allowed, kept in the word), by id (SAEBench's ``get_alpha_tokens``)."""
    special = set(tokenizer.all_special_ids)
    out = []
    for token, tid in tokenizer.get_vocab().items():
        if tid in special:
            continue
        word = tokenizer.convert_tokens_to_string([token])
        core = word[1:] if word.startswith(" ") else word
        if core and core.isascii() and core.isalpha():
            out.append((tid, word))
    return sorted(out)


def first_letter(word: str) -> int:
    """Index in :data:`LETTERS` of the word's first letter."""
    return LETTERS.index(next(c for c in word.lower() if c.isalpha()))


@dataclass
class LetterPrompts:
    """Token ids ``[N, T]`` of equal-length prompts; the word sits at column ``position``."""

    ids: Tensor
    position: int
    words: list[str]
    letters: Tensor
    """``[N]`` first-letter index of each word."""


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []


def first_letter_prompts(
    words: list[tuple[int, str]],
    examples: list[tuple[int, str]],
    tokenizer: Any,
    rng: random.Random,
    template: str = PROMPT_TEMPLATE,
    n_icl: int = 10,
) -> LetterPrompts:
    """SAEBench's ICL prompts, built from token ids (the word and every example are one token, so every prompt has
    the same length and the word's position is known without re-tokenising)."""
    if template.count("{word}") != 1:
        raise ValueError(f"--absorption-template must contain {{word}} once, got {template!r}")
    if len(examples) <= n_icl:
        raise ValueError(f"first-letter prompts need more than {n_icl} example words, got {len(examples)}")
    before, after = (_ids(tokenizer, part) for part in template.split("{word}"))
    answers = [_ids(tokenizer, " " + letter.upper()) for letter in LETTERS]
    if len({len(a) for a in answers}) != 1:
        raise ValueError("the tokenizer splits the answers ' A'..' Z' into different numbers of tokens")
    sep = _ids(tokenizer, "\n")
    build = getattr(tokenizer, "build_inputs_with_special_tokens", None)
    start = list(build([])) if build is not None else []
    rows = []
    for tid, _ in words:
        chosen = rng.sample(examples, n_icl)
        while any(e[0] == tid for e in chosen):
            chosen = rng.sample(examples, n_icl)
        ids = start + sep
        for eid, eword in chosen:
            ids += before + [eid] + after + answers[first_letter(eword)] + sep
        rows.append(ids + before + [tid] + after)
    position = len(rows[0]) - len(after) - 1
    letters = torch.tensor([first_letter(w) for _, w in words], dtype=torch.long)
    return LetterPrompts(torch.tensor(rows, dtype=torch.long), position, [w for _, w in words], letters)


def f1_score(pred: Tensor, truth: Tensor) -> float:
    """Binary F1 (0 when there is no true or predicted positive, as sklearn's zero_division=0)."""
    tp = int((pred & truth).sum())
    denom = int(pred.sum()) + int(truth.sum())
    return 2 * tp / denom if denom else 0.0


def absorption_scores(
    acts: Tensor, latents: Tensor, probe_dir: Tensor, w_dec: Tensor, main: list[int], cfg: AbsorptionConfig
) -> tuple[Tensor, Tensor]:
    """SAEBench's ``FeatureAbsorptionCalculator`` for words ``acts [N, d]`` with SAE latents ``latents [N, F]``:
    ``(absorption fraction [N] in [0, 1], full absorption [N] bool)`` for the probe direction ``probe_dir [d]``
    and the letter's main latents ``main``; ``w_dec [F, d]``."""
    p = (probe_dir / probe_dir.norm()).double()
    cos = torch.nn.functional.cosine_similarity(w_dec.double(), p[None], dim=-1)  # [F]
    proj = latents.double() * cos  # [N, F]: each latent's projection on the probe
    act_proj = acts.double() @ p  # [N]
    main_t = torch.tensor(main, dtype=torch.long)
    main_proj = proj[:, main_t].sum(1)
    candidate = torch.ones(proj.shape[1], dtype=torch.bool)
    candidate[main_t] = False
    candidate &= cos >= cfg.fraction_cos_threshold
    absorber = torch.where(candidate[None] & (proj > 0), proj, torch.zeros_like(proj))
    absorbers = absorber.topk(min(cfg.max_absorbers, proj.shape[1]), dim=1).values.sum(1)
    safe = torch.where(act_proj == 0, torch.ones_like(act_proj), act_proj)
    share = torch.where(act_proj == 0, torch.zeros_like(act_proj), absorbers / safe)
    partial = torch.minimum(absorbers, act_proj - main_proj)
    partial = (partial / (partial + main_proj)).nan_to_num(0.0).clamp(0.0, 1.0)
    fraction = torch.where(main_proj <= 0, torch.ones_like(partial), partial)
    fraction = torch.where((main_proj >= act_proj) | (share < cfg.projection_threshold), 0.0, fraction)
    top = proj.argmax(1)
    full = (
        (latents[:, main_t] < EPS).all(1)
        & (cos[top] >= cfg.full_cos_threshold)
        & (act_proj >= 0)
        & (proj.gather(1, top[:, None])[:, 0] / safe >= cfg.projection_threshold)
    )
    return fraction.float(), full


@dataclass
class LetterResult:
    """One letter: the raw probe's test F1, the k-sparse probes' F1 (k = 1..max_k), the main latents and the
    absorption counts over the probe's true positives in the test split."""

    letter: str
    probe_f1: float
    n_test: int
    f1_by_k: list[float] = field(default_factory=list)
    split_features: list[int] = field(default_factory=list)
    num_probe_true_positives: int = 0
    absorption_fraction_sum: float = 0.0
    num_full_absorption: int = 0

    @property
    def mean_absorption_fraction(self) -> float:
        return self.absorption_fraction_sum / max(self.num_probe_true_positives, 1)

    @property
    def full_absorption_rate(self) -> float:
        return self.num_full_absorption / max(self.num_probe_true_positives, 1)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(
            mean_absorption_fraction=self.mean_absorption_fraction,
            full_absorption_rate=self.full_absorption_rate,
            num_split_features=len(self.split_features),
        )
        return d


@dataclass
class AbsorptionResult:
    letters: list[LetterResult]
    evaluated: list[str]
    """Letters whose probe F1 exceeds min_probe_f1 (the ones the means are over)."""
    metrics: dict[str, float | None] | None
    """SAEBench's mean metrics; None when fewer than min_letters letters were evaluated (see ``reason``)."""
    reason: str | None = None


def _l1_ranking(latents: Tensor, labels: Tensor, letters: list[int], cfg: AbsorptionConfig) -> Tensor:
    """SAEBench's ``train_sparse_multi_probe``: one-vs-rest BCE (positive weight n_neg / n_pos) + ``l1_decay`` x
    mean over probes of ``|w|_1``, Adam (lr 0.01 decaying exponentially to 1e-5, weight decay 1e-6), full batch,
    from zero weights (deterministic; SAEBench's random init is ~1/sqrt(d_sae), negligible for real widths).
    Returns the weights ``[len(letters), F]``."""
    x = latents.float()
    y = torch.stack([(labels == letter).float() for letter in letters], 1)  # [N, L]
    pos_weight = (len(y) - y.sum(0)) / y.sum(0)
    w = torch.zeros(len(letters), x.shape[1], requires_grad=True)  # SAEBench: nn.Linear's small random init
    b = torch.zeros(len(letters), requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=0.01, weight_decay=1e-6)
    gamma = math.exp(math.log(1e-5 / 0.01) / cfg.l1_steps)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=gamma)
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    with torch.enable_grad():
        for _ in range(cfg.l1_steps):
            opt.zero_grad()
            loss = loss_fn(x @ w.T + b, y) + cfg.l1_decay * w.abs().sum(-1).mean()
            loss.backward()
            opt.step()
            sched.step()
    return w.detach()


def split_features(f1_by_k: list[float], feats_by_k: list[list[int]], threshold: float) -> list[int]:
    """SAEBench's ``add_feature_splits_to_metrics_df``: the features of the largest k reached while every step
    raises F1 by more than ``threshold`` (k = 1 always qualifies)."""
    best, chosen = -100.0, []
    for score, feats in zip(f1_by_k, feats_by_k, strict=True):
        if score <= best + threshold:
            break
        best, chosen = score, feats
    return chosen


@torch.no_grad()
def encode(sae: Any, acts: Tensor, batch: int = 1024) -> Tensor:
    """SAE latents ``[N, F]`` (float32, CPU) of ``acts [N, d]``, in batches."""
    dtype = sae.W_dec.dtype
    parts = [
        sae.encode(acts[i : i + batch].to(sae.W_dec.device, dtype)).float().cpu() for i in range(0, len(acts), batch)
    ]
    return torch.cat(parts) if parts else torch.zeros(0, sae.W_dec.shape[0])


def absorption_eval(
    train_acts: Tensor,
    train_letters: Tensor,
    test_acts: Tensor,
    test_letters: Tensor,
    sae: Any,
    cfg: AbsorptionConfig,
) -> AbsorptionResult:
    """The whole first-letter absorption evaluation on word activations ``[N, d]`` with letter indices ``[N]``."""
    train_lat, test_lat = encode(sae, train_acts), encode(sae, test_acts)
    w_dec = sae.W_dec.detach().float().cpu()
    present = [i for i in range(len(LETTERS)) if 0 < int((train_letters == i).sum()) < len(train_letters)]
    if not present:
        raise ValueError("absorption: the train words hold fewer than two different first letters")
    ranking = _l1_ranking(train_lat, train_letters, present, cfg)
    results: list[LetterResult] = []
    for row, letter in enumerate(present):
        ytr, yte = train_letters == letter, test_letters == letter
        probe = fit_logistic(train_acts, ytr.long(), c=cfg.probe_c, balanced=True)
        said = probe.logits(test_acts) > 0
        res = LetterResult(LETTERS[letter], f1_score(said, yte), int(yte.sum()))
        feats_by_k = []
        for k in range(1, min(cfg.max_k, train_lat.shape[1]) + 1):
            feats = ranking[row].topk(k).indices
            kp = fit_logistic(train_lat[:, feats], ytr.long(), c=cfg.probe_c, balanced=True)
            res.f1_by_k.append(f1_score(kp.logits(test_lat[:, feats]) > 0, yte))
            feats_by_k.append(feats.tolist())
        res.split_features = split_features(res.f1_by_k, feats_by_k, cfg.f1_jump_threshold)
        tp = said & yte
        res.num_probe_true_positives = int(tp.sum())
        if res.num_probe_true_positives:
            frac, full = absorption_scores(test_acts[tp], test_lat[tp], probe.weight, w_dec, res.split_features, cfg)
            res.absorption_fraction_sum, res.num_full_absorption = float(frac.sum()), int(full.sum())
        results.append(res)
    evaluated = [r for r in results if r.probe_f1 > cfg.min_probe_f1]
    names = [r.letter for r in evaluated]
    if len(evaluated) < cfg.min_letters:
        reason = (
            f"only {len(evaluated)} letter(s) with probe F1 > {cfg.min_probe_f1} (need {cfg.min_letters}): "
            "the model does not represent first letters well enough at this hook, or too few words"
        )
        return AbsorptionResult(results, names, None, reason)
    columns = {
        "absorption_fraction_score": [r.mean_absorption_fraction for r in evaluated],
        "full_absorption_score": [r.full_absorption_rate for r in evaluated],
        "num_split_features": [float(len(r.split_features)) for r in evaluated],
    }
    metrics: dict[str, float | None] = {}
    for name, values in columns.items():
        metrics[f"mean_{name}"] = statistics.mean(values)
        metrics[f"std_dev_{name}"] = statistics.stdev(values) if len(values) > 1 else None
    return AbsorptionResult(results, names, metrics)
