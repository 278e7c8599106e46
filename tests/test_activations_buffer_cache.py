"""Mixing buffer, activation cache round trip, streaming reads and resumable harvest/training sources."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from chatsae.activations.buffer import MixingBuffer
from chatsae.activations.cache import ActivationCache, CacheSource, CacheWriter, Manifest
from chatsae.core.utils import atomic_file


def _chunks(n_chunks: int, size: int, d: int = 3):
    for c in range(n_chunks):
        idx = torch.arange(c * size, (c + 1) * size)
        yield {"index": idx, "acts": idx[:, None].float().expand(size, d).clone()}


def test_mixing_buffer_emits_every_row_once_and_mixes():
    buf = MixingBuffer(capacity=64, batch_size=8, seed=0)
    out = [b["index"] for b in buf.batches(_chunks(10, 16))]
    seen = torch.cat(out)
    assert sorted(seen.tolist()) == list(range(160))  # every row exactly once (upstream exhausted -> all emitted)
    assert all(len(b) == 8 for b in out)
    assert not torch.equal(seen, torch.arange(160))  # shuffled
    # mixing spans chunks: the first batch already holds rows from several upstream chunks
    assert len(set((out[0] // 16).tolist())) > 1


class _Upstream:
    """Chunks with a resumable position, like a cache source's shard pointer."""

    def __init__(self, n_chunks: int, size: int) -> None:
        self.pos, self.n, self.size = 0, n_chunks, size

    def __iter__(self):
        while self.pos < self.n:
            c = self.pos
            self.pos += 1
            idx = torch.arange(c * self.size, (c + 1) * self.size)
            yield {"index": idx}


def test_mixing_buffer_state_resumes_exactly():
    full = [b["index"] for b in MixingBuffer(64, 8, seed=3).batches(iter(_Upstream(12, 16)))]
    buf, up = MixingBuffer(64, 8, seed=3), _Upstream(12, 16)
    head = []
    for b in buf.batches(iter(up)):
        head.append(b["index"])
        if len(head) == 5:
            state, pos = copy.deepcopy(buf.state_dict()), up.pos
            break
    buf2, up2 = MixingBuffer(64, 8, seed=0), _Upstream(12, 16)
    buf2.load_state_dict(state)
    up2.pos = pos
    tail = [b["index"] for b in buf2.batches(iter(up2))]
    assert torch.equal(torch.cat(head + tail), torch.cat(full))


def _write_cache(tmp_path, n_shards=3, rows=50, d=4):
    w = CacheWriter.open(tmp_path / "c", Manifest(d_in=d, model="m", hook="resid_post.1", method="fast"), resume=False)
    all_acts = []
    for s in range(n_shards):
        acts = torch.randn(rows, d)
        meta = {
            "token_ids": torch.arange(rows) + 1000 * s,
            "special_mask": torch.arange(rows) % 5 == 0,
            "token_class": torch.ones(rows, dtype=torch.long),
            "positions": torch.arange(rows),
            "sample_ids": torch.full((rows,), s),
        }
        w.write_shard(acts, meta, windows_done=s + 1)
        all_acts.append(acts)
    w.finish(note="test")
    return tmp_path / "c", torch.cat(all_acts)


def test_cache_round_trip_and_gather(tmp_path):
    path, acts = _write_cache(tmp_path)
    cache = ActivationCache(path)
    assert len(cache) == 150 and cache.d_in == 4 and cache.manifest.complete
    idx = torch.tensor([149, 0, 77, 50, 3])
    b = cache.gather(idx)
    assert torch.equal(b.acts, acts[idx])
    assert b.token_ids.tolist() == [2049, 0, 1027, 1000, 3]
    assert b.special_mask.tolist() == [False, True, False, True, False]


def test_cache_source_covers_every_row_each_epoch_and_resumes(tmp_path):
    path, acts = _write_cache(tmp_path)
    src = CacheSource(path, batch_size=10, buffer_tokens=40, seed=1)
    it = iter(src)
    epoch = torch.cat([next(it).acts for _ in range(15)])  # 150 rows
    # each epoch's rows are a permutation of the cache (nothing lost to the buffer across the epoch boundary overall)
    later = torch.cat([next(it).acts for _ in range(30)])
    assert later.shape[0] == 300
    counts = torch.zeros(150)
    for row in torch.cat([epoch, later]):
        counts[(acts == row).all(dim=1).nonzero()[0, 0]] += 1
    assert counts.sum() == 450 and counts.min() >= 1

    a = CacheSource(path, batch_size=10, buffer_tokens=40, seed=1)
    ita = iter(a)
    for _ in range(7):
        next(ita)
    state = copy.deepcopy(a.state_dict())
    expect = [next(ita).acts for _ in range(20)]
    b = CacheSource(path, batch_size=10, buffer_tokens=40, seed=1)
    b.load_state_dict(state)
    itb = iter(b)
    assert all(torch.equal(e, next(itb).acts) for e in expect)


def test_incomplete_cache_is_refused_and_orphans_removed(tmp_path):
    w = CacheWriter.open(tmp_path / "c", Manifest(d_in=2), resume=False)
    w.write_shard(torch.zeros(5, 2), {"token_ids": torch.zeros(5, dtype=torch.long)}, windows_done=1)
    with atomic_file(tmp_path / "c" / "shard_00001.acts.npy") as fh:  # a crash before the manifest names the shard
        fh.write(b"partial")
    with pytest.raises(ValueError, match="did not finish"):
        ActivationCache(tmp_path / "c")
    with pytest.raises(ValueError, match="interrupted harvest.*add --resume"):
        CacheWriter.open(tmp_path / "c", Manifest(d_in=2), resume=False)
    w2 = CacheWriter.open(tmp_path / "c", Manifest(d_in=2), resume=True)
    assert not (tmp_path / "c" / "shard_00001.acts.npy").exists()
    assert w2.manifest.windows_done == 1
    with pytest.raises(ValueError, match="d_in"):
        CacheWriter.open(tmp_path / "c", Manifest(d_in=3), resume=True)


def test_cache_reads_float16_storage(tmp_path):
    w = CacheWriter.open(tmp_path / "c", Manifest(d_in=3, dtype="float16"), resume=False)
    x = torch.randn(8, 3)
    w.write_shard(x, {"token_ids": torch.arange(8)}, windows_done=1)
    w.finish()
    assert np.load(tmp_path / "c" / "shard_00000.acts.npy").dtype == np.float16
    got = ActivationCache(tmp_path / "c").gather(torch.arange(8)).acts
    assert torch.allclose(got, x, atol=2e-3)


def test_a_finished_cache_of_the_same_harvest_is_reused(tmp_path):
    path, _ = _write_cache(tmp_path)
    again = CacheWriter.open(path, Manifest(d_in=4, model="m", hook="resid_post.1", method="fast"), resume=False)
    assert again.manifest.complete and again.manifest.n_tokens == 150
    with pytest.raises(ValueError, match="model: 'm' -> 'other'"):  # a different harvest into the same dir is refused
        CacheWriter.open(path, Manifest(d_in=4, model="other", hook="resid_post.1", method="fast"), resume=False)


def _harvest_manifest(data="a.jsonl", holdout=50, exclude_first=True, batch_tokens=4096, method="fast"):
    info = {
        "data": {"data": data, "format": "messages", "records": 100},
        "max_length": 8192,
        "context_size": 2048,
        "dedup_n": 20,
        "holdout": holdout,
        "options": {
            "exclude_first_position": exclude_first,
            "exclude_special": False,
            "exclude_bos": False,
            "batch_tokens": batch_tokens,
        },
    }
    return Manifest(d_in=2, model="m", hook="resid_post.1", method=method, info=info)


def test_a_cache_is_reused_only_for_the_same_data_and_exclusions(tmp_path):
    w = CacheWriter.open(tmp_path / "c", _harvest_manifest(), resume=False)
    w.write_shard(torch.zeros(5, 2), {"token_ids": torch.zeros(5, dtype=torch.long)}, windows_done=1)
    w.finish()
    # batching options do not change the vectors: reused
    assert CacheWriter.open(tmp_path / "c", _harvest_manifest(batch_tokens=512), resume=True).manifest.complete
    # a manifest of an older version without the held-out count is still reused
    old = _harvest_manifest()
    del old.info["holdout"]
    assert CacheWriter.open(tmp_path / "c", old, resume=False).manifest.n_tokens == 5
    for wanted, field in (
        (_harvest_manifest(exclude_first=False), "exclude_first_position"),
        (_harvest_manifest(data="b.jsonl"), "data"),
        (_harvest_manifest(holdout=0), "holdout"),
    ):
        with pytest.raises(ValueError, match=f"{field}: .* -> "):  # never silently reused, also with --resume
            CacheWriter.open(tmp_path / "c", wanted, resume=True)
        with pytest.raises(ValueError, match=f"{field}: .* -> "):
            CacheWriter.open(tmp_path / "c", wanted, resume=False)
    # the sequence setting of the other method does not matter
    fast = _harvest_manifest()
    fast.info["context_size"] = 512
    assert CacheWriter.open(tmp_path / "c", fast, resume=False).manifest.complete
