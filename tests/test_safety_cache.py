"""Activation-cache safety on a tiny random Llama: one writer at a time, a clear message for an interrupted harvest,
reuse only for the same data content and a covered token budget, and foreign directories left alone."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys

import pytest
import torch
from test_harvest_pipeline import interrupted

from chatsae.activations.cache import MANIFEST, ActivationCache, Manifest
from chatsae.activations.harvest import HarvestConfig, harvest_to_cache
from chatsae.activations.pipeline import DataConfig, harvest
from chatsae.core import locking
from chatsae.core.locking import LOCK, MARKER, OutputDirError
from chatsae.data import fast_sequences
from chatsae.data.formats import Record
from chatsae.models import HookPoint

HOOK = HookPoint("resid_post", 1)
OPTS = HarvestConfig(shard_tokens=300)


def _records(n: int = 24, tag: str = "") -> list[Record]:
    return [
        Record(
            i,
            [
                {
                    "role": "user",
                    "content": f"Question {i}{tag}: " + " ".join(f"w{(i * 7 + j) % 53}" for j in range(3 + i % 9)),
                },
                {"role": "assistant", "content": f"Answer {i}"},
            ],
            None,
        )
        for i in range(n)
    ]


def _harvest(tiny_llama, directory, seqs, resume=False, max_tokens=None):
    model, tok = tiny_llama
    man = Manifest(d_in=64, model="tiny", hook=str(HOOK), method="fast")
    return harvest_to_cache(
        model, tok, HOOK, seqs, directory, man, OPTS, max_tokens=max_tokens, resume=resume, progress=False
    )


def _write_data(path, tag=""):
    path.write_text("".join(json.dumps({"messages": r.messages}) + "\n" for r in _records(tag=tag)))


def _pipeline(tiny_llama, data, out, max_tokens=None, resume=False):
    cfg = DataConfig(model="tiny", data=str(data), holdout=0, dedup_n=0, layer=1)
    return harvest(cfg, OPTS, out, max_tokens=max_tokens, resume=resume, progress=False, model_and_tokenizer=tiny_llama)


@contextlib.contextmanager
def lock_held_elsewhere(directory, what):
    """Another process holds ``directory``'s lock for the block ."""
    code = (
        "import sys; from chatsae.core.locking import DirLock; DirLock(sys.argv[1], sys.argv[3]).acquire(); "
        "print('ready', flush=True); sys.stdin.read()"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(directory), locking.__file__, what],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "ready"
        yield holder
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)


def test_a_second_writer_gets_the_lock_error(tiny_llama, tmp_path):
    cache = tmp_path / "c"
    with lock_held_elsewhere(cache, "a harvest") as holder:
        seqs = list(fast_sequences(_records(), tiny_llama[1], dedup_n=None))
        with pytest.raises(OutputDirError, match=rf"{cache}: in use by a harvest \(pid {holder.pid} "):
            _harvest(tiny_llama, cache, iter(seqs))
        assert not (cache / MANIFEST).exists() and not list(cache.glob("shard_*"))
    man, _ = _harvest(tiny_llama, cache, iter(seqs))  # the holder is gone: its lock went with it
    assert man.complete and not (cache / LOCK).exists() and (cache / MARKER).is_file()


def test_a_finished_cache_is_read_while_another_process_holds_its_lock(tiny_llama, tmp_path):
    """Nothing writes a finished cache, so reusing one needs no lock: several processes (--distribute-saes ranks)
    start from it at once; an unfinished one still needs the lock."""
    cache = tmp_path / "c"
    seqs = list(fast_sequences(_records(), tiny_llama[1], dedup_n=None))
    first, _ = _harvest(tiny_llama, cache, iter(seqs), max_tokens=200)  # stops before the data runs out
    with lock_held_elsewhere(cache, "a rank"):
        again, stats = _harvest(tiny_llama, cache, iter(seqs), max_tokens=200)
        assert again.complete and again.n_tokens == first.n_tokens and stats.sequences == 0
        with pytest.raises(OutputDirError, match="in use by a rank"):  # extending it is a write: the lock is needed
            _harvest(tiny_llama, cache, iter(seqs), max_tokens=first.n_tokens * 3)


def test_rerun_of_an_interrupted_harvest_without_resume_says_what_to_do(tiny_llama, tmp_path):
    seqs = list(fast_sequences(_records(), tiny_llama[1], dedup_n=None))

    with pytest.raises(KeyboardInterrupt):
        _harvest(tiny_llama, tmp_path / "c", interrupted(seqs, at=15))
    n = Manifest.read(tmp_path / "c").n_tokens
    with pytest.raises(
        ValueError,
        match=rf"{tmp_path / 'c'}: an interrupted harvest is here \({n:,} vectors in .* "
        "add --resume to continue it, or choose another --out-dir / --cache-dir",
    ):
        _harvest(tiny_llama, tmp_path / "c", iter(seqs))
    assert not (tmp_path / "c" / LOCK).exists()  # released on the error
    assert _harvest(tiny_llama, tmp_path / "c", iter(seqs), resume=True)[0].complete


def test_an_edited_data_file_with_the_same_record_count_is_not_reused(tiny_llama, tmp_path):
    data = tmp_path / "chat.jsonl"
    _write_data(data)
    _, man, _, _ = _pipeline(tiny_llama, data, tmp_path / "run")
    old_hash = man.info["data"]["data_hash"]
    assert old_hash and man.info["data"]["records"] == 24
    assert json.loads((tmp_path / "run" / MARKER).read_text())["kind"] == "run"  # the run dir chatsae created
    _write_data(data, tag=" (edited)")
    for resume in (False, True):
        with pytest.raises(
            ValueError,
            match=rf"data_hash: '{old_hash}' -> '[0-9a-f]+' \(the data file's content "
            "changed\\)",
        ):
            _pipeline(tiny_llama, data, tmp_path / "run", resume=resume)


def test_a_smaller_budget_cache_is_extended_for_a_bigger_run(tiny_llama, tmp_path, capsys):
    data = tmp_path / "chat.jsonl"
    _write_data(data)
    _, small, _, _ = _pipeline(tiny_llama, data, tmp_path / "run", max_tokens=300)
    assert small.complete and small.info["exhausted"] is False and small.info["max_tokens"] == 300
    n_small = small.n_tokens
    capsys.readouterr()
    _, big, stats, _ = _pipeline(tiny_llama, data, tmp_path / "run", max_tokens=900)
    assert (
        f"the cache holds {n_small:,} vectors, harvested with a budget of 300 before the data ran out; this run "
        "asks for 900: extending the cache"
    ) in capsys.readouterr().err
    assert big.n_tokens >= 900 > n_small and stats.sequences > 0 and big.info["max_tokens"] == 900
    # the extended cache holds exactly what a fresh harvest with the bigger budget holds
    _, fresh, _, _ = _pipeline(tiny_llama, data, tmp_path / "fresh", max_tokens=900)
    a, b = ActivationCache(tmp_path / "run" / "activations"), ActivationCache(tmp_path / "fresh" / "activations")
    assert len(a) == len(b) == fresh.n_tokens
    idx = torch.arange(len(a))
    assert torch.equal(a.gather(idx).acts, b.gather(idx).acts)
    # a smaller run reuses it as it is (nothing harvested, no note)
    capsys.readouterr()
    _, again, stats, _ = _pipeline(tiny_llama, data, tmp_path / "run", max_tokens=500)
    err = capsys.readouterr().err
    assert stats.sequences == 0 and again.n_tokens == big.n_tokens and "extending" not in err and "warning" not in err


def test_exhausted_data_gives_a_plain_warning_with_the_counts(tiny_llama, tmp_path, capsys):
    data = tmp_path / "chat.jsonl"
    _write_data(data)
    _, man, _, _ = _pipeline(tiny_llama, data, tmp_path / "run", max_tokens=100_000)
    n = man.n_tokens
    assert man.info["exhausted"] is True and n < 100_000
    warn = f"warning: cache holds {n:,} vectors, run asks for 100,000: they are repeated {100_000 / n:.1f} times"
    assert warn in capsys.readouterr().err
    _, again, stats, _ = _pipeline(tiny_llama, data, tmp_path / "run", max_tokens=100_000)  # reused, same warning
    assert stats.sequences == 0 and warn in capsys.readouterr().err


def test_an_older_manifest_without_the_new_fields_is_still_reused(tiny_llama, tmp_path, capsys):
    data = tmp_path / "chat.jsonl"
    _write_data(data)
    cache, man, _, _ = _pipeline(tiny_llama, data, tmp_path / "run", max_tokens=300)
    raw = json.loads((cache / MANIFEST).read_text())
    for key in ("max_tokens", "exhausted"):
        del raw["info"][key]
    del raw["info"]["data"]["data_hash"]
    for s in raw["shards"]:
        del s["acts_blake2b"], s["meta_blake2b"]
    (cache / MANIFEST).write_text(json.dumps(raw))
    capsys.readouterr()
    _, old, stats, _ = _pipeline(tiny_llama, data, tmp_path / "run", max_tokens=900)
    assert stats.sequences == 0 and old.n_tokens == man.n_tokens  # fields missing: not compared
    assert "does not record whether its harvest used all the data" in capsys.readouterr().err
    assert len(ActivationCache(cache)) == man.n_tokens


def test_a_foreign_cache_dir_is_refused_and_left_alone(tiny_llama, tmp_path):
    cache = tmp_path / "mine"
    cache.mkdir()
    (cache / "shard_notes.txt").write_text("a user's file that orphan removal would have deleted")
    seqs = list(fast_sequences(_records(), tiny_llama[1], dedup_n=None))
    with pytest.raises(OutputDirError, match=f"{cache}: a non-empty directory that is not a chatsae activation cache"):
        _harvest(tiny_llama, cache, iter(seqs))
    assert sorted(p.name for p in cache.iterdir()) == ["shard_notes.txt"]
