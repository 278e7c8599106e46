"""Dedup, chat-template token classes, FAST / BT(F) / BT(P) sequences, length bucketing and padding."""

from __future__ import annotations

import copy
import random

import numpy as np
import pytest
import torch
from conftest import shared_file

from chatsae.data import (
    ASSISTANT,
    PAD_CLASS,
    SYSTEM,
    TEMPLATE,
    TEXT,
    USER,
    BucketStats,
    ChatTemplateError,
    DataFormatError,
    NGramDeduplicator,
    Record,
    SequenceStats,
    TokenSequence,
    block_sequences,
    bucket_batches,
    fast_sequences,
    ngram_hashes,
    pad_batch,
    read_records,
    render_chat,
)

# ---------------------------------------------------------------- dedup

MASK = (1 << 64) - 1


def _splitmix_py(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK
    return x ^ (x >> 31)


def _hash_py(gram: list[int]) -> int:
    """Pure-Python reference of the documented hash (splitmix ids, polynomial mod 2**64, length, splitmix)."""
    h = 0
    for t in gram:
        h = (h * 0x100000001B3 + _splitmix_py(t)) & MASK
    return _splitmix_py(h ^ ((len(gram) * 0x9E3779B97F4A7C15) & MASK))


def test_ngram_hashes_match_reference_and_are_stable():
    ids = [5, 17, 49151, 0, 2, 9, 9, 9]
    got = ngram_hashes(ids, 3).tolist()
    assert got == [_hash_py(ids[i : i + 3]) for i in range(len(ids) - 2)]
    assert ngram_hashes(ids[:2], 3).tolist() == [_hash_py(ids[:2])]  # shorter than n: the whole sample
    assert ngram_hashes([1, 2, 3], 2).tolist() == [_hash_py([1, 2]), _hash_py([2, 3])]
    assert len(set(ngram_hashes(list(range(1000)), 20).tolist())) == 981  # no collisions on distinct grams


def test_dedup_exact_and_ngram_overlap():
    rng = random.Random(0)
    base = [rng.randrange(50000) for _ in range(60)]
    d = NGramDeduplicator(n=20)
    assert not d.is_duplicate(base)
    assert d.is_duplicate(list(base))  # exact duplicate
    overlap20 = [rng.randrange(50000) for _ in range(30)] + base[10:30] + [rng.randrange(50000) for _ in range(30)]
    assert d.is_duplicate(overlap20)  # shares one 20-gram
    overlap19 = [rng.randrange(50000) for _ in range(30)] + base[10:29] + [rng.randrange(50000) for _ in range(30)]
    assert not d.is_duplicate(overlap19)  # 19 shared tokens are not enough
    assert not d.is_duplicate([rng.randrange(50000) for _ in range(40)])  # distinct
    assert not d.is_duplicate([7, 8, 9]) and d.is_duplicate([7, 8, 9]) and not d.is_duplicate([7, 8])
    assert (d.n_seen, d.n_dropped, d.n_kept) == (8, 3, 5)


def test_dedup_matches_naive_tuple_sets():
    rng = np.random.default_rng(1)
    pool = rng.integers(0, 30, size=400).tolist()  # small vocabulary: many overlaps
    samples = []
    for _ in range(300):
        start, length = int(rng.integers(0, 380)), int(rng.integers(1, 40))
        samples.append(pool[start : start + length])
    d, seen, expected = NGramDeduplicator(n=8), set(), []
    for s in samples:
        grams = {tuple(s[i : i + 8]) for i in range(max(len(s) - 7, 1))}
        expected.append(bool(grams & seen))
        if not expected[-1]:
            seen |= grams
    assert [d.is_duplicate(s) for s in samples] == expected
    assert 20 < d.n_dropped == sum(expected) < 290


# ---------------------------------------------------------------- chat template classes


def _piece(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def _expected_chatml(tok, messages, default_system: str | None = None):
    """Hand-built ChatML token list and classes: <|im_start|> role \\n content <|im_end|> \\n per message."""
    cls_of = {"system": SYSTEM, "user": USER, "assistant": ASSISTANT}
    start, end = tok.convert_tokens_to_ids("<|im_start|>"), tok.convert_tokens_to_ids("<|im_end|>")
    turns = ([{"role": "system", "content": default_system}] if default_system else []) + list(messages)
    ids, cls = [], []
    for m in turns:
        for part, c in ([start], TEMPLATE), (_piece(tok, m["role"]), TEMPLATE), (_piece(tok, "\n"), TEMPLATE):
            ids, cls = ids + part, cls + [c] * len(part)
        content = _piece(tok, m["content"])
        ids, cls = ids + content, cls + [cls_of[m["role"]]] * len(content)
        ids, cls = ids + [end] + _piece(tok, "\n"), cls + [TEMPLATE, TEMPLATE]
    return ids, cls


def test_render_chat_hand_built_multi_turn(chat_tokenizer):
    tok = chat_tokenizer
    msgs = [
        {"role": "system", "content": "You answer in French."},
        {"role": "user", "content": "Hello there, how are you?"},
        {"role": "assistant", "content": "Très bien, merci.\nEt vous?"},
        {"role": "user", "content": "user"},  # content that spells a role name is still content
        {"role": "assistant", "content": "OK."},
    ]
    seq = render_chat(msgs, tok, sample_id=7)
    ids, cls = _expected_chatml(tok, msgs)
    assert seq.input_ids == ids
    assert seq.token_class == cls
    assert seq.special_mask == [c == TEMPLATE for c in cls]
    assert seq.sample_ids == [7] * len(ids)
    role_tokens = sum(len(_piece(tok, m["role"])) for m in msgs)
    assert sum(seq.special_mask) == 4 * 5 + role_tokens  # <|im_start|> role \n ... <|im_end|> \n for each turn
    assert {tok.decode([i]) for i, m in zip(seq.input_ids, seq.special_mask, strict=True) if m} == {
        "<|im_start|>",
        "<|im_end|>",
        "\n",
        "system",
        "user",
        "ass",
        "istant",
    }


def test_render_chat_default_system_prompt_is_system(chat_tokenizer):
    tok = chat_tokenizer
    seq = render_chat([{"role": "user", "content": "hi"}], tok)
    default = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    ids, cls = _expected_chatml(tok, [{"role": "user", "content": "hi"}], default_system=default)
    assert seq.input_ids == ids and seq.token_class == cls
    tail = [(tok.decode([i]), c) for i, c in zip(seq.input_ids[-6:], seq.token_class[-6:], strict=True)]
    assert tail == [
        ("<|im_start|>", TEMPLATE),
        ("user", TEMPLATE),
        ("\n", TEMPLATE),
        ("hi", USER),
        ("<|im_end|>", TEMPLATE),
        ("\n", TEMPLATE),
    ]
    gen = render_chat([{"role": "user", "content": "hi"}], tok, add_generation_prompt=True)
    assert gen.input_ids[: len(ids)] == ids and gen.token_class[len(ids) :] == [TEMPLATE] * (
        len(gen.input_ids) - len(ids)
    )


def _with_template(tok, template):
    other = copy.copy(tok)  # shares the Rust tokenizer; only the template differs
    other.chat_template = template
    return other


def test_no_chat_template_is_a_clear_error(chat_tokenizer):
    base = _with_template(chat_tokenizer, None)
    with pytest.raises(ChatTemplateError, match="base model; use --method bt-p"):
        render_chat([{"role": "user", "content": "hi"}], base)
    with pytest.raises(ChatTemplateError, match="base model"):
        next(fast_sequences([[{"role": "user", "content": "hi"}]], base))


def test_other_template_styles(chat_tokenizer):
    trim = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] | trim }}<|im_end|>\n{% endfor %}"
    seq = render_chat([{"role": "user", "content": "  spaced out \n"}], _with_template(chat_tokenizer, trim))
    words = [(chat_tokenizer.decode([i]), c) for i, c in zip(seq.input_ids, seq.token_class, strict=True)]
    assert words == [("<|im_start|>", 1), ("user", 1), ("\n", 1), ("sp", 3), ("aced", 3), (" out", 3)] + [
        ("<|im_end|>", 1),
        ("\n", 1),
    ]
    # role labels written as plain text ("### User:") and a template-inserted preamble
    plain = (
        "{{ bos_token }}Chat log.\n{% for m in messages %}### {{ m['role'] | capitalize }}:\n{{ m['content'] }}\n\n"
        "{% endfor %}"
    )
    msgs = [{"role": "user", "content": "Why?"}, {"role": "assistant", "content": "Because."}]
    seq = render_chat(msgs, _with_template(chat_tokenizer, plain))
    by_class = {}
    for i, c in zip(seq.input_ids, seq.token_class, strict=True):
        by_class.setdefault(c, []).append(i)
    assert chat_tokenizer.decode(by_class[USER]) == "Why?" and chat_tokenizer.decode(by_class[ASSISTANT]) == "Because."
    assert chat_tokenizer.decode(by_class[SYSTEM]) == "Chat log."
    assert chat_tokenizer.decode(by_class[TEMPLATE]).replace("\n", "") == "<|im_start|>### User:### Assistant:"


# ---------------------------------------------------------------- FAST and block training


@pytest.fixture(scope="module")
def alpaca():
    return list(read_records(shared_file("alpaca_4000.json"), limit=300))


@pytest.fixture(scope="module")
def alpaca_fast(alpaca, chat_tokenizer):
    return list(fast_sequences(alpaca, chat_tokenizer, dedup_n=None))


def test_fast_one_sample_per_sequence(alpaca, alpaca_fast, chat_tokenizer):
    assert len(alpaca_fast) == len(alpaca)
    start = chat_tokenizer.convert_tokens_to_ids("<|im_start|>")
    for rec, seq in zip(alpaca, alpaca_fast, strict=True):
        assert set(seq.sample_ids) == {rec.index}
        assert seq.input_ids.count(start) == 3  # default system, user, assistant: one conversation only
        assert len(seq.input_ids) == len(seq.special_mask) == len(seq.token_class) == len(seq.sample_ids)
    for k in (0, 123):
        assert alpaca_fast[k] == render_chat(alpaca[k].messages, chat_tokenizer, sample_id=k)


def test_fast_truncation_and_stats(alpaca, alpaca_fast, chat_tokenizer):
    stats = SequenceStats()
    short = list(fast_sequences(alpaca, chat_tokenizer, max_length=64, dedup_n=None, stats=stats))
    assert all(len(s.input_ids) <= 64 for s in short)
    for full, cut in zip(alpaca_fast, short, strict=True):
        assert cut == TokenSequence(*(f[:64] for f in full))
    n_long = sum(len(s.input_ids) > 64 for s in alpaca_fast)
    assert 0 < n_long < len(alpaca) and stats.n_truncated == n_long
    assert stats.n_tokens == sum(min(len(s.input_ids), 64) for s in alpaca_fast) and stats.n_samples == len(alpaca)


def test_fast_dedup_drops_repeats(alpaca, chat_tokenizer):
    recs = alpaca[:40] + [Record(100 + r.index, r.messages, None) for r in alpaca[:40]]
    stats = SequenceStats()
    seqs = list(fast_sequences(recs, chat_tokenizer, dedup_n=20, stats=stats))
    kept = [s.sample_ids[0] for s in seqs]
    assert all(k < 100 for k in kept) and stats.n_duplicates == 80 - len(kept) >= 40
    # the shared default system prompt (24 tokens) alone does not make samples duplicates
    assert len(kept) >= 38


def test_wrong_record_kind_is_an_error(chat_tokenizer):
    with pytest.raises(DataFormatError, match="record 0 is plain text, but FAST needs chat records"):
        next(fast_sequences([Record(0, None, "text")], chat_tokenizer))
    with pytest.raises(DataFormatError, match="record 3 is a chat record, but BT\\(P\\) trains on plain text"):
        next(block_sequences([Record(3, [{"role": "user", "content": "q"}], None)], chat_tokenizer, chat=False))


def test_bt_f_blocks_preserve_concatenation(alpaca, alpaca_fast, chat_tokenizer):
    stats = SequenceStats()
    blocks = list(block_sequences(alpaca, chat_tokenizer, context_size=256, chat=True, stats=stats))
    assert blocks and all(len(b.input_ids) == 256 for b in blocks)
    flat = [x for s in alpaca_fast for x in s.input_ids]  # ChatML samples already end in <|im_end|>\n: no EOS added
    joined = [x for b in blocks for x in b.input_ids]
    assert joined == flat[: len(joined)] and stats.n_dropped_tokens == len(flat) - len(joined) < 256
    sids = [x for b in blocks for x in b.sample_ids]
    assert sids == sorted(sids) and sids == [x for s in alpaca_fast for x in s.sample_ids][: len(sids)]
    assert any(len(set(b.sample_ids)) > 1 for b in blocks)  # samples are packed across boundaries
    tail = list(block_sequences(alpaca, chat_tokenizer, context_size=256, chat=True, drop_last=False))
    assert [x for b in tail for x in b.input_ids] == flat and len(tail[-1].input_ids) == stats.n_dropped_tokens


def test_bt_f_inserts_eos_when_missing(chat_tokenizer):
    tok = _with_template(
        chat_tokenizer, "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}\n{% endfor %}"
    )
    recs = [[{"role": "user", "content": f"question {i}"}] for i in range(6)]
    blocks = list(block_sequences(recs, tok, context_size=8, chat=True, drop_last=False))
    ids = [x for b in blocks for x in b.input_ids]
    eos = tok.eos_token_id
    assert ids.count(eos) == 6
    positions = [i for i, x in enumerate(ids) if x == eos]
    sids = [x for b in blocks for x in b.sample_ids]
    assert [sids[p] for p in positions] == list(range(6)) and positions[-1] == len(ids) - 1


def test_bt_p_documents_with_bos_eos(chat_tokenizer):
    tok = chat_tokenizer
    docs = list(read_records(shared_file("brown_corpus.jsonl"), limit=3))
    blocks = list(block_sequences(docs, tok, context_size=512, chat=False))
    assert len(blocks) >= 10 and all(len(b.input_ids) == 512 for b in blocks)
    expected, classes = [], []
    for d in docs:
        body = _piece(tok, d.text)
        expected += [tok.bos_token_id, *body, tok.eos_token_id]
        classes += [TEMPLATE] + [TEXT] * len(body) + [TEMPLATE]
    joined = [x for b in blocks for x in b.input_ids]
    assert joined == expected[: len(joined)]
    assert [c for b in blocks for c in b.token_class] == classes[: len(joined)]
    wiki = list(read_records(shared_file("wikitext2_valid.txt"), limit=50))
    assert all(len(b.input_ids) == 128 for b in block_sequences(wiki, tok, context_size=128, chat=False))


# ---------------------------------------------------------------- bucketing and padding


def _lengths(batch):
    return [len(s.input_ids) for s in batch]


def test_bucket_batches_realistic_lengths(alpaca_fast):
    stats = BucketStats()
    batches = list(bucket_batches(alpaca_fast, max_tokens=2048, max_batch_size=32, bucket_window=300, stats=stats))
    seen = sorted(s.sample_ids[0] for b in batches for s in b)
    assert seen == sorted(s.sample_ids[0] for s in alpaca_fast)  # each sequence exactly once
    assert all(len(b) <= 32 and len(b) * max(_lengths(b)) <= 2048 for b in batches)
    real = sum(sum(_lengths(b)) for b in batches)
    padded = sum(len(b) * max(_lengths(b)) for b in batches)
    assert stats.padding_fraction == pytest.approx(1 - real / padded) and stats.n_sequences == len(alpaca_fast)
    # naive batching in arrival order with the same budget pads far more
    naive, cur = [], []
    for s in alpaca_fast:
        if cur and (len(cur) >= 32 or (len(cur) + 1) * max(_lengths(cur) + [len(s.input_ids)]) > 2048):
            naive, cur = naive + [cur], []
        cur.append(s)
    naive.append(cur)
    naive_pad = 1 - real / sum(len(b) * max(_lengths(b)) for b in naive)
    assert stats.padding_fraction < 0.1 and stats.padding_fraction < naive_pad / 3


def test_bucket_batches_long_alone_and_seeded_order():
    seqs = [TokenSequence([1] * n, [False] * n, [TEXT] * n, [i] * n) for i, n in enumerate([5, 300, 7, 6, 90, 8])]
    batches = list(bucket_batches(seqs, max_tokens=100, max_batch_size=3, bucket_window=4))
    assert [[s.sample_ids[0] for s in b] for b in batches] == [[0, 3, 2], [1], [5], [4]]
    a = list(bucket_batches(seqs * 5, max_tokens=100, max_batch_size=2, bucket_window=30, seed=3))
    b = list(bucket_batches(seqs * 5, max_tokens=100, max_batch_size=2, bucket_window=30))
    assert a != b and sorted(map(_lengths, a)) == sorted(map(_lengths, b))


def test_bucket_batches_max_padding_bounds_every_batch(alpaca_fast):
    # one window of all the samples, budget far above it: without a bound, few wide batches pad a lot
    kw = dict(max_tokens=65536, max_batch_size=1024, bucket_window=len(alpaca_fast))
    wide, tight = BucketStats(), BucketStats()
    assert list(bucket_batches(alpaca_fast, **kw, stats=wide)) == list(
        bucket_batches(alpaca_fast, **kw, max_padding=None)
    )
    batches = list(bucket_batches(alpaca_fast, **kw, stats=tight, max_padding=0.05))
    assert sorted(s.sample_ids[0] for b in batches for s in b) == sorted(s.sample_ids[0] for s in alpaca_fast)
    assert all(1 - sum(_lengths(b)) / (len(b) * max(_lengths(b))) <= 0.05 for b in batches)
    assert tight.padding_fraction <= 0.05 < wide.padding_fraction
    with pytest.raises(ValueError, match="max_padding"):
        next(bucket_batches(alpaca_fast, max_padding=1.0))


def test_pad_batch_shapes_and_masks():
    seqs = [
        TokenSequence([5, 6, 7], [True, False, False], [TEMPLATE, USER, USER], [4, 4, 4]),
        TokenSequence([8], [False], [ASSISTANT], [9]),
    ]
    out = pad_batch(seqs, pad_id=2)
    assert all(t.shape == (2, 3) for t in out)
    assert out.input_ids.tolist() == [[5, 6, 7], [8, 2, 2]]
    assert out.attention_mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert out.special_mask.tolist() == [[True, False, False], [False, False, False]]
    assert out.token_class.tolist() == [[TEMPLATE, USER, USER], [ASSISTANT, PAD_CLASS, PAD_CLASS]]
    assert out.sample_ids.tolist() == [[4, 4, 4], [9, -1, -1]]
    assert out.positions.tolist() == [[0, 1, 2], [0, 1, 2]]
    assert out.input_ids.dtype == torch.long and out.special_mask.dtype == torch.bool
    with pytest.raises(ValueError):
        pad_batch([], pad_id=0)
