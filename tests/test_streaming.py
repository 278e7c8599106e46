"""Streaming harvest (--cache none), the read-ahead Prefetcher and the disk-space check of a cache harvest.

The streamed windows are the cache harvest's shards (same vectors, same metadata, same order before mixing); the
mixed stream resumes exactly; the Prefetcher hands out the wrapped source's batches and state; a harvest that would
not fit on the disk is refused before anything is written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import chat_record_list as _records

from chatsae.activations.cache import ActivationCache, CacheSource, Manifest
from chatsae.activations.harvest import HarvestConfig, harvest_to_cache
from chatsae.activations.pipeline import DataConfig
from chatsae.activations.streaming import Prefetcher, StreamingSource
from chatsae.data import fast_sequences
from chatsae.models import HookPoint
from chatsae.sae import SAEConfig, load_sae
from chatsae.train import TrainConfig
from chatsae.workflows import RunConfig, RunSpec, train_run

pytestmark = pytest.mark.usefixtures("single_thread")
HOOK = HookPoint("resid_post", 1)
OPTS = HarvestConfig(shard_tokens=300)


def _streaming(tiny_llama, records, batch_size=32, buffer_tokens=256, **kw) -> StreamingSource:
    model, tok = tiny_llama
    return StreamingSource(
        model,
        tok,
        HOOK,
        lambda: fast_sequences(records, tok),
        OPTS,
        64,
        batch_size,
        buffer_tokens=buffer_tokens,
        seed=3,
        **kw,
    )


def _cache(tiny_llama, records, directory: Path) -> ActivationCache:
    model, tok = tiny_llama
    man = Manifest(d_in=64, model="tiny", hook=str(HOOK), method="fast")
    harvest_to_cache(model, tok, HOOK, fast_sequences(records, tok), directory, man, OPTS, progress=False)
    return ActivationCache(directory)


def test_streamed_windows_are_the_cache_shards_in_order(tiny_llama, tmp_path: Path) -> None:
    records = _records(20)
    cache = _cache(tiny_llama, records, tmp_path / "cache")
    src = _streaming(tiny_llama, records)
    stream = src.windows(0, 0)
    for i, shard in enumerate(cache.manifest.shards):
        epoch, w, rows = next(stream)
        acts = np.load(tmp_path / "cache" / shard["acts"])
        with np.load(tmp_path / "cache" / shard["meta"]) as meta:
            assert (epoch, w) == (0, i)
            assert torch.equal(rows["acts"], torch.from_numpy(acts))
            for k in ("token_ids", "special_mask", "positions", "sample_ids"):
                assert torch.equal(rows[k], torch.from_numpy(meta[k])), k
    epoch, w, rows = next(stream)  # endless: the data again, as epoch 1
    assert (epoch, w) == (1, 0) and torch.equal(
        rows["acts"], torch.from_numpy(np.load(tmp_path / "cache" / cache.manifest.shards[0]["acts"]))
    )


def test_mixed_stream_holds_cache_vectors_and_resumes_exactly(tiny_llama, tmp_path: Path) -> None:
    records = _records(12)
    cache = _cache(tiny_llama, records, tmp_path / "cache")
    n = len(cache)
    every = cache.gather(torch.arange(n)).acts
    src = _streaming(tiny_llama, records, batch_size=16, buffer_tokens=64)
    it = iter(src)
    first = [next(it) for _ in range(n // 16 + 3)]  # into the second pass over the data
    got = torch.cat([b.acts for b in first])
    assert bool((got[:, None, :] == every[None, :, :]).all(-1).any(1).all())  # every row is a cache vector
    assert not torch.equal(got[:64], every[:64])  # mixed, not in harvest order
    state = src.state_dict()
    after = [next(it).acts for _ in range(5)]
    it.close()
    again = _streaming(tiny_llama, records, batch_size=16, buffer_tokens=64)
    again.load_state_dict(state)
    it2 = iter(again)
    for a in after:
        assert torch.equal(next(it2).acts, a)
    it2.close()


def test_rank_shares_are_disjoint_windows(tiny_llama) -> None:
    records = _records(30)
    full = [(e, w) for e, w, _ in _take(_streaming(tiny_llama, records).windows(0, 0), 6)]
    r0 = [(e, w) for e, w, _ in _take(_streaming(tiny_llama, records, rank=0, world_size=2).windows(0, 0), 3)]
    r1 = [(e, w) for e, w, _ in _take(_streaming(tiny_llama, records, rank=1, world_size=2).windows(0, 0), 3)]
    epoch0 = [w for e, w in full if e == 0]
    assert len(epoch0) >= 3 and epoch0 == list(range(len(epoch0)))
    assert [w for e, w in r0 if e == 0] == epoch0[0::2] and [w for e, w in r1 if e == 0] == epoch0[1::2]


def _take(it, n):
    return [next(it) for _ in range(n)]


def test_prefetcher_hands_out_the_sources_batches_and_state(tiny_llama, tmp_path: Path) -> None:
    records = _records(12)
    _cache(tiny_llama, records, tmp_path / "cache")

    def source() -> CacheSource:
        return CacheSource(tmp_path / "cache", 16, buffer_tokens=64, seed=1)

    plain = iter(source())
    ref = [next(plain).acts for _ in range(12)]
    pre = Prefetcher(source(), depth=3, pin=False)
    assert pre.d_in == 64 and pre.cache is pre.source.cache  # the wrapped source's attributes show through
    it = iter(pre)
    got = [next(it).acts for _ in range(7)]
    state = pre.state_dict()  # after 7 consumed batches, although the thread read further
    it.close()
    assert all(torch.equal(a, b) for a, b in zip(got, ref[:7], strict=True))
    resumed = source()
    resumed.load_state_dict(state)
    it2 = iter(resumed)
    assert all(torch.equal(next(it2).acts, r) for r in ref[7:])
    it3 = iter(pre)  # the wrapped source was put back where the consumer stopped
    assert torch.equal(next(it3).acts, ref[7])
    it3.close()


def test_producer_error_reaches_the_consumer(tiny_llama) -> None:
    model, tok = tiny_llama
    src = StreamingSource(model, tok, HOOK, lambda: iter(()), OPTS, 64, 16, buffer_tokens=64)
    with pytest.raises(ValueError, match="no activation vectors"):
        next(iter(src))


def test_cache_none_run_trains_and_evaluates_without_a_cache(tiny_llama, tmp_path: Path) -> None:
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps({"messages": r.messages}) + "\n" for r in _records(30)))
    lines: list[str] = []
    tc = TrainConfig(
        total_tokens=6 * 64,
        batch_size=64,
        init_sample_tokens=128,
        checkpoint_every=3,
        progress=False,
        device="cpu",
        seed=5,
    )
    spec = RunSpec(
        run=RunConfig(out_dir=str(tmp_path / "run"), eval_max_samples=3),
        sae=SAEConfig(architecture="topk", k=4),
        train=tc,
        data=DataConfig(model="tiny", data=str(data), layer=1, holdout=4, cache="none", buffer_tokens=256),
        harvest=HarvestConfig(shard_tokens=300),
        d_sae=96,
        model_and_tokenizer=tiny_llama,
        report=lines.append,
    )
    res = train_run(spec)
    assert not (tmp_path / "run" / "activations").exists() and res.summary["steps"] == 6
    meta = load_sae(res.sae_dir).cfg.metadata
    assert meta["activations"] == "streamed" and meta["hook_name"] == "resid_post.1"
    assert (tmp_path / "run" / "eval.json").is_file() and res.rows
    state = torch.load(sorted((tmp_path / "run" / "checkpoints").glob("step_*"))[-1] / "state.pt", weights_only=True)
    assert state["source"]["window"] >= 1 and "buffer" in state["source"]


def test_harvest_refused_when_the_disk_lacks_space(tiny_llama, tmp_path: Path, monkeypatch, capsys) -> None:
    import shutil

    from chatsae.activations import harvest as harvest_mod

    model, tok = tiny_llama
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(harvest_mod.shutil, "disk_usage", lambda p: usage._replace(free=100_000))
    man = Manifest(d_in=64, model="tiny", hook=str(HOOK), method="fast")
    with pytest.raises(OSError, match="not enough disk space") as e:
        harvest_to_cache(
            model,
            tok,
            HOOK,
            fast_sequences(_records(8), tok),
            tmp_path / "c",
            man,
            OPTS,
            max_tokens=10_000,
            progress=False,
        )
    need = 10_000 * (64 * 4 + harvest_mod.META_BYTES)
    assert f"{need / 2**30:.2f} GiB" in str(e.value) and "--cache none" in str(e.value)
    assert "about" in capsys.readouterr().err and not list((tmp_path / "c").glob("shard_*"))
    # enough space: the same harvest runs
    monkeypatch.setattr(harvest_mod.shutil, "disk_usage", lambda p: usage._replace(free=need + 1))
    m, _ = harvest_to_cache(
        model, tok, HOOK, fast_sequences(_records(8), tok), tmp_path / "c", man, OPTS, max_tokens=10_000, progress=False
    )
    assert m.complete and m.n_tokens > 0


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_cache_reads_back_the_rounded_vectors(tiny_llama, tmp_path: Path, dtype: str) -> None:
    model, tok = tiny_llama
    seqs = list(fast_sequences(_records(6), tok))
    full = _cache(tiny_llama, _records(6), tmp_path / "f32")
    man = Manifest(d_in=64, model="tiny", hook=str(HOOK), method="fast", dtype=dtype)
    harvest_to_cache(model, tok, HOOK, seqs, tmp_path / dtype, man, OPTS, progress=False)
    half = ActivationCache(tmp_path / dtype)
    idx = torch.randperm(len(full), generator=torch.Generator().manual_seed(0))[:50]
    want = full.gather(idx).acts.to(getattr(torch, dtype)).float()
    assert torch.equal(half.gather(idx).acts, want)
    assert (tmp_path / dtype / half.manifest.shards[0]["acts"]).stat().st_size < (
        tmp_path / "f32" / full.manifest.shards[0]["acts"]
    ).stat().st_size * 0.6


def test_shared_stream_tracks_every_reader_and_bounds_the_lead(tiny_llama) -> None:
    """Two readers of one SharedStream are tracked apart (each pass over the stream has its own id), so the faster
    one waits once it is ``lead`` windows ahead, and windows no reader needs are dropped."""
    import threading

    from chatsae.activations.streaming import SharedStream

    model, tok = tiny_llama
    records = _records(30)
    stream = SharedStream(model, tok, [HOOK], lambda: fast_sequences(records, tok), OPTS, lead=1)
    slow, fast = (stream.source(HOOK, 64, 32)._windows(0, 0, lambda _n: None) for _ in range(2))
    assert next(slow)[1] == 0 and next(fast)[1] == 0
    assert len(stream._at) == 2  # ids were `id(object())` of a freed object, which can repeat: one entry for both
    assert next(fast)[1] == 1  # one window ahead of the slowest: allowed
    got: list[int] = []
    t = threading.Thread(target=lambda: got.append(next(fast)[1]), daemon=True)
    t.start()
    t.join(0.5)
    assert t.is_alive() and not got  # two ahead: waits for the slow reader
    assert next(slow)[1] == 1
    t.join(5)
    assert got == [2] and set(stream._kept) <= {1, 2}
    slow.close()
    fast.close()
    assert stream._at == {}
