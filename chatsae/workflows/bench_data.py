"""The probing tasks of ``chatsae bench``: reading a task's files, harvesting activations and SAE latents.

Text-level tasks (one item per text; activations mean-pooled over its tokens, as SAEBench pools, leaving out
position 0 and chat-template tokens): ``genre=FILE`` (Brown corpus JSONL, class = the genre letter of ids like
``ca01``; each document gives up to ``chunks_per_text`` windows of ``context_length`` tokens, and a document's
windows are all train or all test) and ``source=FILE1,FILE2,...`` (class = the file; each record is one FAST
sequence cut at ``context_length``). Token-level tasks on one chat file (``default`` = chatsae's own data), from
FAST sequences: ``role`` (system / user / assistant content tokens) and ``template`` (chat-template tokens vs
content). Memory stays flat in the size of the files: records are reservoir-sampled while reading, texts are pooled
batch by batch, and token tasks keep a reservoir of ``tokens_per_class`` vectors per class; records (documents) are
assigned to train or test before harvesting, so no text is split across the two.
"""

from __future__ import annotations

import json
import math
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..activations.harvest import HarvestConfig, activations_for_batch
from ..activations.pipeline import default_data_path
from ..data import TokenSequence, bucket_batches, fast_sequences
from ..data.chat_template import ASSISTANT, SYSTEM, TEMPLATE, TEXT, USER, make_sequence
from ..data.formats import read_records
from ..eval.absorption import encode
from ..eval.probing import Reservoir, mean_pool, reservoir_sample

TASK_KINDS = {"genre": "text", "source": "text", "role": "token", "template": "token"}
BROWN_ID = re.compile(r"^c([a-r])\d\d$")
ROLE_CLASSES = {SYSTEM: "system", USER: "user", ASSISTANT: "assistant"}
SPLITS = ("train", "test")


@dataclass
class BenchTask:
    """One ``--task NAME=FILE[,FILE...]``."""

    name: str
    files: list[str]

    @property
    def kind(self) -> str:
        return TASK_KINDS[self.name]


def parse_task(text: str) -> BenchTask:
    """``"source=a.json,b.jsonl"`` -> BenchTask, files checked to exist (``default`` = chatsae's chat data)."""
    name, sep, rest = text.partition("=")
    if not sep or name not in TASK_KINDS or not rest:
        raise ValueError(f"--task {text!r}: expected NAME=FILE[,FILE...] with NAME one of {', '.join(TASK_KINDS)}")
    files = [str(default_data_path()) if f == "default" else f for f in rest.split(",") if f]
    if name == "source" and len(files) < 2:
        raise ValueError(f"--task {text!r}: source needs two or more files, one per class")
    if name != "source" and len(files) != 1:
        raise ValueError(f"--task {text!r}: {name} takes one file")
    for f in files:
        if not Path(f).is_file():
            raise FileNotFoundError(f"--task {name}: {f}: no such file")
    return BenchTask(name, files)


@dataclass
class TaskData:
    """Items of one task: ``raw[split][class] [n, d]`` and ``latents[split][class] [n, F]`` (row i = same item)."""

    name: str
    kind: str
    classes: list[str]
    raw: dict[str, dict[str, Tensor]] = field(default_factory=dict)
    latents: dict[str, dict[str, Tensor]] = field(default_factory=dict)

    def counts(self) -> dict[str, dict[str, int]]:
        return {s: {c: len(t) for c, t in self.raw.get(s, {}).items()} for s in SPLITS}


@dataclass
class Harvester:
    """What every task harvest needs: model, hook, tokenizer, SAE and batching."""

    model: Any
    tokenizer: Any
    hook: Any
    sae: Any
    batch_tokens: int
    max_batch_size: int

    def batches(self, seqs: list[TokenSequence]) -> Iterator[tuple[Tensor, dict[str, Tensor]]]:
        """Kept activations ``[n, d]`` (position 0 dropped) and their metadata, batch by batch."""
        tok = self.tokenizer
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
        opts = HarvestConfig(exclude_first_position=True)
        for batch in bucket_batches(seqs, self.batch_tokens, self.max_batch_size):
            acts, meta = activations_for_batch(self.model, self.hook, batch, pad_id, opts)
            yield acts, meta


def _split_ids(n: int, test_fraction: float, rng: random.Random) -> list[str]:
    """A shuffled train/test label per item: ``round(n * test_fraction)`` test items (at least 1 when n >= 2)."""
    n_test = min(max(round(n * test_fraction), 1 if n >= 2 else 0), n)
    labels = ["test"] * n_test + ["train"] * (n - n_test)
    rng.shuffle(labels)
    return labels


def _brown_documents(path: str, per_class: int, rng: random.Random) -> dict[str, list[str]]:
    """Genre letter -> reservoir sample of document texts (JSONL with ``id`` like ``ca01`` and ``text``)."""
    by_genre: dict[str, list[tuple[int, str]]] = {}
    seen: dict[str, int] = {}
    with open(path, encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: line {line_no}: not valid JSON ({e.msg})") from None
            doc_id, text = (rec.get("id"), rec.get("text")) if isinstance(rec, dict) else (None, None)
            match = BROWN_ID.match(doc_id) if isinstance(doc_id, str) else None
            if match is None:
                raise ValueError(f"{path}: line {line_no}: field 'id' {doc_id!r} is not a Brown corpus id (e.g. ca01)")
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"{path}: line {line_no}: field 'text' must be a non-empty string")
            genre = match.group(1)
            i = seen[genre] = seen.get(genre, 0) + 1
            kept = by_genre.setdefault(genre, [])
            if len(kept) < per_class:
                kept.append((i, text))
            elif (j := rng.randrange(i)) < per_class:
                kept[j] = (i, text)
    return {g: [t for _, t in sorted(docs)] for g, docs in sorted(by_genre.items())}


def _text_items(spec: BenchTask, h: Harvester, cfg: Any, rng: random.Random) -> tuple[list[str], list[Any]]:
    """(class names, items ``(class index, split, TokenSequence)``) of a text-level task."""
    items: list[tuple[int, str, TokenSequence]] = []
    if spec.name == "genre":
        docs = _brown_documents(spec.files[0], math.ceil(cfg.per_class / cfg.chunks_per_text), rng)
        classes = list(docs)
        build = getattr(h.tokenizer, "build_inputs_with_special_tokens", None)
        start = list(build([])) if build is not None else []
        width = cfg.context_length - len(start)
        for ci, genre in enumerate(classes):
            for text, split in zip(docs[genre], _split_ids(len(docs[genre]), cfg.test_fraction, rng), strict=True):
                ids = list(h.tokenizer(text, add_special_tokens=False)["input_ids"])
                for w in range(min(cfg.chunks_per_text, math.ceil(len(ids) / width))):
                    chunk = start + ids[w * width : (w + 1) * width]
                    classes_ = [TEMPLATE] * len(start) + [TEXT] * (len(chunk) - len(start))
                    items.append((ci, split, make_sequence(chunk, classes_, [0] * len(chunk))))
        return [f"genre_{g}" for g in classes], items
    names = [Path(f).stem for f in spec.files]
    if len(set(names)) < len(names):
        names = list(spec.files)
    for ci, path in enumerate(spec.files):
        records = reservoir_sample(read_records(path), cfg.per_class, rng)
        seqs = list(fast_sequences(records, h.tokenizer, max_length=cfg.context_length, dedup_n=None))
        for seq, split in zip(seqs, _split_ids(len(seqs), cfg.test_fraction, rng), strict=True):
            items.append((ci, split, seq))
    return names, items


def harvest_text_task(spec: BenchTask, h: Harvester, cfg: Any, rng: random.Random) -> TaskData:
    """Mean-pooled raw activations and mean-pooled SAE latents (each token encoded, then pooled) per item."""
    classes, items = _text_items(spec, h, cfg, rng)
    if not items:
        raise ValueError(f"--task {spec.name}: no texts in {', '.join(spec.files)}")
    seqs = [s._replace(sample_ids=[i] * len(s.input_ids)) for i, (_, _, s) in enumerate(items)]
    d, f = h.sae.W_dec.shape[1], h.sae.W_dec.shape[0]
    raw_sum = torch.zeros(len(items), d, dtype=torch.float64)
    lat_sum = torch.zeros(len(items), f, dtype=torch.float64)
    counts = torch.zeros(len(items), dtype=torch.long)
    for acts, meta in h.batches(seqs):
        keep = meta["token_class"] != TEMPLATE
        groups, inverse = meta["sample_ids"][keep].unique(return_inverse=True)
        sums, n = mean_pool(acts[keep], inverse, len(groups))
        raw_sum[groups] += sums
        counts[groups] += n
        lat_sum[groups] += mean_pool(encode(h.sae, acts[keep]), inverse, len(groups))[0]
    ok = counts > 0
    raw = (raw_sum / counts.clamp(min=1)[:, None]).float()
    lat = (lat_sum / counts.clamp(min=1)[:, None]).float()
    data = TaskData(spec.name, "text", classes)
    for split in SPLITS:
        rows = {
            c: [i for i, (ci, s, _) in enumerate(items) if ci == k and s == split and ok[i]]
            for k, c in enumerate(classes)
        }
        data.raw[split] = {c: raw[r] for c, r in rows.items()}
        data.latents[split] = {c: lat[r] for c, r in rows.items()}
    return data


def _token_labels(name: str, token_class: Tensor) -> tuple[list[str], Tensor]:
    """(class names, class index per token, -1 = not in the task) for ``role`` / ``template``."""
    if name == "role":
        labels = torch.full_like(token_class, -1)
        for i, cls in enumerate(ROLE_CLASSES):
            labels[token_class == cls] = i
        return list(ROLE_CLASSES.values()), labels
    content = (token_class == SYSTEM) | (token_class == USER) | (token_class == ASSISTANT)
    labels = torch.where(token_class == TEMPLATE, 0, torch.where(content, 1, -1))
    return ["template", "content"], labels


def harvest_token_tasks(specs: list[BenchTask], h: Harvester, cfg: Any, rng: random.Random) -> list[TaskData]:
    """The token-level tasks that read the same file, from one pass over a reservoir sample of its records."""
    records = reservoir_sample(read_records(specs[0].files[0]), cfg.records, rng)
    seqs = list(fast_sequences(records, h.tokenizer, max_length=cfg.max_length, dedup_n=None))
    if not seqs:
        raise ValueError(f"--task {specs[0].name}: no chat records in {specs[0].files[0]}")
    splits = _split_ids(len(seqs), cfg.test_fraction, rng)
    seqs = [s._replace(sample_ids=[i] * len(s.input_ids)) for i, s in enumerate(seqs)]
    is_test = torch.tensor([s == "test" for s in splits])
    n_test = max(1, round(cfg.tokens_per_class * cfg.test_fraction))
    caps = {"train": max(1, cfg.tokens_per_class - n_test), "test": n_test}
    pools: dict[tuple[str, str, str], Reservoir] = {}
    names = {spec.name: _token_labels(spec.name, torch.zeros(0, dtype=torch.long))[0] for spec in specs}
    seed = rng.randrange(1 << 30)
    for acts, meta in h.batches(seqs):
        test_tok = is_test[meta["sample_ids"]]
        for spec in specs:
            classes, labels = _token_labels(spec.name, meta["token_class"])
            for k, cls in enumerate(classes):
                for split, mask in (("train", ~test_tok), ("test", test_tok)):
                    sel = (labels == k) & mask
                    if bool(sel.any()):
                        key = (spec.name, split, cls)
                        pool = pools.setdefault(key, Reservoir(caps[split], seed=seed + len(pools)))
                        pool.add(acts[sel])
    out = []
    for spec in specs:
        data = TaskData(spec.name, "token", names[spec.name])
        for split in SPLITS:
            data.raw[split] = {
                c: pools[(spec.name, split, c)].data() for c in data.classes if (spec.name, split, c) in pools
            }
            data.latents[split] = {c: encode(h.sae, t) for c, t in data.raw[split].items()}
        out.append(data)
    return out
