"""The FAST steering claim judged pairwise: does adding a special-token latent's direction at the chat template's
special-token positions make answers *better* than the unsteered ones, more often than random directions do?

Protocol (docs/results/steering/judged/README.md):

- directions: per SAE, the unit decoder row of the top latent of one template token (default the later
  ``<|im_start|>``, by average max activation, :mod:`chatsae.steer.special_tokens`); the null: ``n_null`` random
  unit vectors of residual space (``null="unit"``) or random live latents' unit decoder rows (``null="latents"``);
- strength: ``alpha = r * median token norm at the hook`` (position 0, the attention sink, excluded), per ``r``;
- intervention: ``x' = x + alpha * d`` at the special-token positions only (``Steering(positions="special")``:
  special ids and the template's role names, padding never), during the prompt and generation; greedy answers;
- judge: blind and pairwise, steered vs unsteered answer to the same prompt, both A/B orders (which one is asked
  first is a seeded coin), score = mean over the two orders of P(judge prefers steered); identical answers score 0.5
  without a call. A local judge model gives P from its next-token logits of "A"/"B" (one forward pass); an
  OpenAI-compatible judge gives its answer's letter (1 / 0, 0.5 if unparseable).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from itertools import islice
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from ..data import TEMPLATE, bucket_batches, fast_sequences, pad_batch
from ..interp.judges import Judge, ParseError, ask
from ..models.prefix import capture_shared
from ..steer.interventions import Steering, make_edits, resolve_hook
from ..steer.measures import pad_ids, repetition_rate
from ..steer.report import encode_prompt, generate, hook_norm
from ..steer.special_tokens import SpecialTokenAccumulator

if TYPE_CHECKING:
    from ..sae import SAE

RATIOS = (0.25, 0.5, 1.0)
"""Default strengths r: alpha = r x the median token norm at the hook."""
PAIR_PROMPT = (
    "Compare two answers to the question.\n\nQuestion: {question}\n\n[Answer A]\n{a}\n\n[Answer B]\n{b}\n\n"
    "Which answer is more helpful, detailed and correct? Reply with one letter: A or B."
)
PREFILL = "The better answer is"


class DirectionSteering(Steering):
    """:class:`Steering` at ``positions`` with one added vector per batch row: ``x'[b, t] = x[b, t] + delta[b]`` at
    the selected positions ``t`` of row ``b``, ``x`` unchanged elsewhere. Set :attr:`row_delta` ``[B, d]`` before
    each forward/generate of a batch of ``B`` rows."""

    def __init__(self, model: nn.Module, d_model: int, hook: Any, **kw: Any) -> None:
        bank = SimpleNamespace(W_dec=torch.zeros(1, d_model), cfg=SimpleNamespace(metadata={}))
        super().__init__(model, bank, make_edits(0, "add", 0.0), hook=hook, **kw)  # type: ignore[arg-type]
        self.row_delta = torch.zeros(0, d_model)

    def __call__(self, act: Tensor) -> Tensor:
        """``act`` [B, T, d] -> the edited activation (same shape and dtype)."""
        mask = self.position_mask(act.shape[0], act.shape[1], act.device)
        if self.row_delta.shape[0] != act.shape[0]:
            raise RuntimeError(f"DirectionSteering: row_delta has {self.row_delta.shape[0]} rows, batch {act.shape[0]}")
        self.n_edited += int(mask.sum())
        delta = self.row_delta.to(act.device, act.dtype)[:, None, :]
        return torch.where(mask[..., None], act + delta, act)


def unit(v: Tensor) -> Tensor:
    """Rows of ``v`` [n, d] scaled to unit L2 norm."""
    return v / v.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def random_unit_directions(n: int, d: int, seed: int = 0) -> Tensor:
    """``[n, d]`` isotropic random unit vectors (seeded)."""
    return unit(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)))


@torch.no_grad()
def select_special_latents(
    model: nn.Module, tokenizer: Any, saes: Sequence[SAE], records: Any, n_samples: int, token: str, hook: Any = None
) -> list[dict[str, Any]]:
    """Per SAE: ``{"latent", "avg_max_activation", "firing_rate", "other_firing_rate", "live" [latent ids firing on
    some ordinary token]}`` for the top latent of template-token key ``token`` on ``n_samples`` chat samples (one
    pass of the model to the hook feeds every SAE's :class:`SpecialTokenAccumulator`)."""
    hook = resolve_hook(saes[0], hook)
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    accs = [SpecialTokenAccumulator(tokenizer, s.W_dec.shape[0]) for s in saes]
    for batch in bucket_batches(islice(fast_sequences(records, tokenizer), n_samples), max_tokens=4096):
        pb = pad_batch(batch, pad)
        x = capture_shared(model, hook, pb.input_ids.to(device), pb.attention_mask.to(device))
        for sae, acc in zip(saes, accs, strict=True):
            acc.add(sae.encode(x.to(sae.W_dec.dtype)), pb.input_ids, pb.token_class == TEMPLATE, pb.attention_mask)
    out = []
    for acc in accs:
        rows = [r for r in acc.table(top_k=1).rows if r.token == token]
        if not rows:
            raise ValueError(f"template token {token!r} not found; keys: {sorted(acc.stats)}")
        live = (acc.other_fire > 0).nonzero(as_tuple=True)[0].tolist()
        out.append({**{k: getattr(rows[0], k) for k in ("latent", "avg_max_activation", "firing_rate")}, "live": live})
        out[-1]["other_firing_rate"] = rows[0].other_firing_rate
    return out


@torch.no_grad()
def generate_steered(
    model: nn.Module,
    tokenizer: Any,
    prompt_ids: Sequence[Sequence[int]],
    deltas: Tensor,
    hook: Any,
    max_new_tokens: int,
    batch_size: int,
) -> list[list[list[int]]]:
    """Greedy answers ``[n_deltas][n_prompts]`` (token ids) with ``deltas[j]`` [n, d] added at the special-token
    positions; all (delta, prompt) rows are generated in batches of ``batch_size`` rows."""
    steering = DirectionSteering(model, deltas.shape[1], hook, positions="special", tokenizer=tokenizer)
    rows = [(j, i) for j in range(deltas.shape[0]) for i in range(len(prompt_ids))]
    rows.sort(key=lambda r: len(prompt_ids[r[1]]))  # similar lengths together: less padding
    out: dict[tuple[int, int], list[int]] = {}
    for s in range(0, len(rows), batch_size):
        chunk = rows[s : s + batch_size]
        steering.row_delta = deltas[[j for j, _ in chunk]]
        answers = generate(model, tokenizer, [prompt_ids[i] for _, i in chunk], max_new_tokens, len(chunk), steering)
        out.update(zip(chunk, answers, strict=True))
    return [[out[(j, i)] for i in range(len(prompt_ids))] for j in range(deltas.shape[0])]


class PairScore(NamedTuple):
    """One steered-vs-unsteered comparison."""

    score: float
    """Mean over both A/B orders of P(judge prefers the steered answer)."""
    steered_first: bool
    """The seeded coin: the order asked first had the steered answer as A."""
    p_steered: tuple[float, float]
    """P(steered preferred) with the steered answer as A, and as B."""
    consistent: bool | None
    """Whether both orders prefer the same answer (None for identical answers, which are not asked)."""


PairJudge = Callable[[Sequence[tuple[str, str, str]]], list[float]]
"""``[(question, answer A, answer B)] -> [P(judge prefers A)]``."""


def judge_pairs(
    pair_judge: PairJudge, questions: Sequence[str], steered: Sequence[str], clean: Sequence[str], seed: int = 0
) -> list[PairScore]:
    """Score every ``(steered[i], clean[i])`` pair blind in both A/B orders (see :class:`PairScore`)."""
    rng = random.Random(seed)
    coins = [rng.random() < 0.5 for _ in questions]
    ask_idx = [i for i in range(len(questions)) if steered[i] != clean[i]]
    requests: list[tuple[str, str, str]] = []
    for i in ask_idx:  # both orders, the coin's first
        orders = [(steered[i], clean[i]), (clean[i], steered[i])]
        requests += [(questions[i], *ab) for ab in (orders if coins[i] else orders[::-1])]
    p_a = pair_judge(requests) if requests else []
    out = [PairScore(0.5, coins[i], (0.5, 0.5), None) for i in range(len(questions))]
    for n, i in enumerate(ask_idx):
        first, second = p_a[2 * n], p_a[2 * n + 1]
        as_a, as_b = (first, 1.0 - second) if coins[i] else (second, 1.0 - first)
        out[i] = PairScore((as_a + as_b) / 2, coins[i], (as_a, as_b), (as_a > 0.5) == (as_b > 0.5))
    return out


def pair_messages(question: str, a: str, b: str) -> list[dict[str, str]]:
    """The judge's chat: the comparison request and the answer prefill."""
    user = PAIR_PROMPT.format(question=question, a=a.strip() or "(empty)", b=b.strip() or "(empty)")
    return [{"role": "user", "content": user}, {"role": "assistant", "content": PREFILL}]


def logprob_pair_judge(model: nn.Module, tokenizer: Any, batch_size: int = 8) -> PairJudge:
    """A local model as pairwise judge: P(A) = softmax over the next-token logits of the letters after the prefill
    (" A"/"A" vs " B"/"B", log-sum-exp over the variants), one forward pass per request, batched left-padded."""
    letters = {c: sorted({tokenizer.encode(v, add_special_tokens=False)[-1] for v in (c, " " + c)}) for c in "AB"}
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    @torch.no_grad()
    def judge(requests: Sequence[tuple[str, str, str]]) -> list[float]:
        ids = [
            tokenizer.apply_chat_template(pair_messages(*r), continue_final_message=True, tokenize=False)
            for r in requests
        ]
        enc = [list(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in ids]
        out: list[float] = []
        for s in range(0, len(enc), batch_size):
            x, mask = pad_ids(enc[s : s + batch_size], pad)
            logits = model(input_ids=x.to(device), attention_mask=mask.to(device), logits_to_keep=1).logits[:, -1]
            lp = torch.log_softmax(logits.float(), -1)
            a, b = (torch.logsumexp(lp[:, letters[c]], -1) for c in "AB")
            out += torch.sigmoid(a - b).tolist()
        return out

    return judge


def parse_letter(text: str) -> float:
    """1.0 if the answer's first standalone letter A/B is A, 0.0 if B; ParseError otherwise."""
    for word in text.replace("[", " ").replace("]", " ").replace(".", " ").replace(":", " ").split():
        if word in ("A", "B"):
            return 1.0 if word == "A" else 0.0
    raise ParseError(f"no A/B in {text[:80]!r}")


def text_pair_judge(judge: Judge, attempts: int = 2) -> PairJudge:
    """Any chatsae judge (e.g. an OpenAI-compatible endpoint) as pairwise judge from its answer text (the letter
    after the prefill where the judge continues it); an unparseable answer counts 0.5."""

    def run(requests: Sequence[tuple[str, str, str]]) -> list[float]:
        out = []
        for r in requests:
            msgs = pair_messages(*r)
            msgs = msgs if judge.prefills else msgs[:1]
            ans = ask(judge, msgs, lambda t: parse_letter(t), attempts=attempts, max_tokens=16)
            out.append(0.5 if ans.value is None else float(ans.value))
        return out

    return run


def null_percentile(value: float, null: Sequence[float]) -> float:
    """Empirical percentile (0-100) of ``value`` in ``null``: share below plus half the share equal."""
    arr = np.asarray(null, dtype=float)
    return float(100.0 * ((arr < value).sum() + 0.5 * (arr == value).sum()) / len(arr))


def bootstrap_mean(values: np.ndarray, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> list[float]:
    """``[mean, low, high]``: percentile bootstrap over the first axis (items; ``values`` [n] or [n, ...] averaged
    over the other axes per replicate)."""
    v = np.asarray(values, dtype=float)
    idx = np.random.default_rng(seed).integers(0, len(v), (n_boot, len(v)))
    reps = v[idx].reshape(n_boot, -1).mean(1)
    q = (1 - level) / 2
    return [float(v.mean()), float(np.quantile(reps, q)), float(np.quantile(reps, 1 - q))]


def summarize(scores: dict[str, Any], n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Intervals and null percentiles from per-prompt scores ``scores[r][label] = [n_prompts]`` (labels ``sae:NAME``
    and ``null:J``). Per r: each SAE's win rate [mean, low, high], its percentile among the null win rates, its
    per-prompt difference from the null mean; pooled over SAEs: the difference (prompts resampled, SAEs averaged)
    and a verdict only with >= 3 SAEs and an interval excluding 0."""
    out: dict[str, Any] = {}
    for r, by in scores.items():
        null = np.array([v for k, v in by.items() if k.startswith("null:")])  # [n_null, P]
        saes = {k[4:]: np.asarray(v) for k, v in by.items() if k.startswith("sae:")}
        null_rates = null.mean(1)
        entry: dict[str, Any] = {"null_win_rate": bootstrap_mean(null.T, n_boot, seed), "saes": {}}
        entry["null_win_rates"] = null_rates.tolist()
        for name, v in saes.items():
            entry["saes"][name] = {
                "win_rate": bootstrap_mean(v, n_boot, seed),
                "null_percentile": null_percentile(float(v.mean()), null_rates),
                "minus_null": bootstrap_mean(v - null.mean(0), n_boot, seed),
            }
        pooled = np.stack([v - null.mean(0) for v in saes.values()], 1)  # [P, n_saes]
        iv = bootstrap_mean(pooled, n_boot, seed)
        entry["pooled_minus_null"] = iv
        entry["pooled_win_rate_minus_half"] = bootstrap_mean(np.stack(list(saes.values()), 1) - 0.5, n_boot, seed)
        if len(saes) < 3 or iv[1] <= 0 <= iv[2]:
            entry["verdict"] = "no verdict at this budget"
        else:
            entry["verdict"] = f"special-token latents {'beat' if iv[0] > 0 else 'lose to'} the null"
        out[r] = entry
    return out


def run_study(
    model: nn.Module,
    tokenizer: Any,
    saes: dict[str, SAE],
    questions: Sequence[str],
    selection_records: Any,
    pair_judge: PairJudge,
    ratios: Sequence[float] = RATIOS,
    n_null: int = 20,
    null: str = "unit",
    token: str = "<|im_start|>",
    selection_samples: int = 100,
    max_new_tokens: int = 64,
    batch_size: int = 16,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """The whole study (module doc); returns the JSON-ready result: settings, chosen latents, the hook norm, every
    answer (text), per-prompt scores with orders and consistency, and :func:`summarize`'s intervals."""
    names, sae_list = list(saes), list(saes.values())
    hook = resolve_hook(sae_list[0], None)
    prompt_ids = [encode_prompt(tokenizer, [{"role": "user", "content": q}]) for q in questions]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    norm = hook_norm(model, hook, prompt_ids, pad, batch_size)
    log(f"median token norm at {hook}: {norm:.1f}")
    chosen = select_special_latents(model, tokenizer, sae_list, selection_records, selection_samples, token)
    log("special-token latents: " + ", ".join(f"{n}:{c['latent']}" for n, c in zip(names, chosen, strict=True)))
    dirs = [unit(s.W_dec[c["latent"]].detach().float()[None])[0] for s, c in zip(sae_list, chosen, strict=True)]
    labels = [f"sae:{n}" for n in names] + [f"null:{j}" for j in range(n_null)]
    d = dirs[0].shape[0]
    if null == "unit":
        null_dirs, null_ids = random_unit_directions(n_null, d, seed), None
    else:  # random live latents, drawn from the SAEs in turn (never a chosen latent)
        rng = random.Random(seed)
        null_ids = []
        for j in range(n_null):
            c = chosen[j % len(chosen)]
            null_ids.append((j % len(chosen), rng.choice([k for k in c["live"] if k != c["latent"]])))
        null_dirs = torch.stack([unit(sae_list[s].W_dec[k].detach().float()[None])[0] for s, k in null_ids])
    all_dirs = torch.cat([torch.stack(dirs), null_dirs])  # [n_saes + n_null, d]
    eos = {tokenizer.eos_token_id}

    def decode(ids: list[int]) -> str:
        return str(tokenizer.decode([t for t in ids if t not in eos], skip_special_tokens=True))

    clean_ids = generate(model, tokenizer, prompt_ids, max_new_tokens, batch_size)
    clean = [decode(a) for a in clean_ids]
    answers: dict[str, dict[str, list[str]]] = {}
    scores: dict[str, dict[str, list[float]]] = {}
    pairs: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for r in ratios:
        key = f"{r:g}"
        gen = generate_steered(model, tokenizer, prompt_ids, r * norm * all_dirs, hook, max_new_tokens, batch_size)
        answers[key] = {lab: [decode(a) for a in g] for lab, g in zip(labels, gen, strict=True)}
        scores[key], pairs[key] = {}, {}
        for j, lab in enumerate(labels):
            ps = judge_pairs(pair_judge, questions, answers[key][lab], clean, seed + j)
            scores[key][lab] = [p.score for p in ps]
            pairs[key][lab] = [p._asdict() for p in ps]
        changed = np.mean([[a != c for a, c in zip(v, clean, strict=True)] for v in answers[key].values()])
        log(f"r={key} (alpha {r * norm:.1f}): {changed:.0%} of answers changed; judged")
    asked = [p for by in pairs.values() for ps in by.values() for p in ps if p["consistent"] is not None]
    p_a = [q for p in asked for q in (p["p_steered"][0], 1 - p["p_steered"][1])]
    last = answers[f"{ratios[-1]:g}"]
    rep = {lab: float(np.mean([repetition_rate(tokenizer.encode(t), 3) for t in last[lab]])) for lab in labels}
    return {
        "hook": str(hook),
        "median_token_norm": norm,
        "alphas": {f"{r:g}": r * norm for r in ratios},
        "chosen_latents": {n: {k: v for k, v in c.items() if k != "live"} for n, c in zip(names, chosen, strict=True)},
        "null": null,
        "null_latents": null_ids,
        "questions": list(questions),
        "clean_answers": clean,
        "answers": answers,
        "scores": scores,
        "pairs": pairs,
        "judge_sanity": {
            "pairs_asked": len(asked),
            "order_agreement": float(np.mean([p["consistent"] for p in asked])) if asked else math.nan,
            "mean_p_first_position_A": float(np.mean(p_a)) if p_a else math.nan,
        },
        "repetition_3_at_largest_r": rep,
        "summary": summarize(scores, seed=seed),
    }


def study_markdown(result: dict[str, Any]) -> str:
    """The study's tables as Markdown (per r: each SAE's win rate, null percentile and difference from the null)."""
    f = lambda iv: f"{iv[0]:.3f} [{iv[1]:.3f}, {iv[2]:.3f}]"  # noqa: E731
    s = result["judge_sanity"]
    lines = [
        "# Special-token steering, judged pairwise (P(judge prefers steered), 95% bootstrap intervals over prompts)",
        "",
        f"- hook `{result['hook']}`, median token norm {result['median_token_norm']:.1f}; null: {result['null']}",
        f"- judge {result.get('judge', '?')}: {s['pairs_asked']} pairs asked in both orders, order agreement "
        f"{s['order_agreement']:.3f}, mean P(A) {s['mean_p_first_position_A']:.3f}",
        "",
        "| r | alpha | SAE | latent | win rate | null percentile | minus null mean | changed answers |",
        "|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r, entry in result["summary"].items():
        for name, e in entry["saes"].items():
            changed = np.mean(
                [a != c for a, c in zip(result["answers"][r][f"sae:{name}"], result["clean_answers"], strict=True)]
            )
            lat = result["chosen_latents"][name]["latent"]
            lines.append(
                f"| {r} | {result['alphas'][r]:.1f} | {name} | {lat} | {f(e['win_rate'])} | "
                f"{e['null_percentile']:.1f} | {f(e['minus_null'])} | {changed:.0%} |"
            )
        lines.append(
            f"| {r} | | null ({len(entry['null_win_rates'])}) | | {f(entry['null_win_rate'])} | | "
            f"pooled: {f(entry['pooled_minus_null'])} | {entry['verdict']} |"
        )
    return "\n".join(lines) + "\n"
