"""Data-parallel training and harvest under torch.distributed (gloo, 2 CPU processes spawned like torchrun would):
a 2-rank run equals a 1-rank run with the same global batch, an interrupted 2-rank run resumes bit-for-bit, another
world size is refused, uneven shards finish, and the harvest split covers every sequence once, token-balanced."""

from __future__ import annotations

import faulthandler
import json
import os
import random
import socket
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp

from chatsae.activations import sharding
from chatsae.activations.cache import ActivationCache, CacheSource, CacheWriter, Manifest
from chatsae.core import distributed as dist_mod
from chatsae.sae import SAEConfig, create_sae
from chatsae.train import TrainConfig, Trainer
from chatsae.train import distributed as train_dist

pytestmark = pytest.mark.usefixtures("single_thread")

D_IN, D_SAE, BATCH, STEPS = 16, 48, 64, 12
SPAWN_TIMEOUT_S = 90.0
"""A hung collective fails the test instead of blocking the suite (a healthy 2-rank run takes a few seconds)."""


# ---- spawning ranks --------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(r: int, world: int, port: int, fn: Any, args: tuple) -> None:
    """One rank: the environment torchrun would set, ``fn(*args)`` inside the process group's session, then exit.

    A crash in C++ (e.g. ``std::terminate`` -> SIGABRT) prints every thread's Python stack (faulthandler), and the
    rank reports on stderr how far it got, so a failure says whether it came in the work, in the process group's
    teardown or after it. After a clean teardown the rank leaves with ``os._exit(0)``: the interpreter's own teardown
    of a spawned test child (C++ destructors of torch / gloo) is not what these tests check, and a rank was seen
    aborted there (SIGABRT after ``process group closed``: CI and a local run, 2026-12-04), failing finished work;
    the ``chatsae`` command leaves a torchrun rank the same way (``chatsae.cli.leave``)."""
    faulthandler.enable(all_threads=True)
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE=str(world)
    )
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.set_num_threads(1)
    with dist_mod.session():
        fn(*args)
        print(f"rank {r}: {getattr(fn, '__name__', fn)} done", file=sys.stderr, flush=True)
    print(f"rank {r}: process group closed", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(0)


def spawn(fn: Any, *args: Any, world: int = 2) -> float:
    """Run ``fn(*args)`` on ``world`` ranks (env as torchrun sets it); fail on a rank's error or after the timeout.
    Returns the wall time."""
    t0 = time.monotonic()
    ctx = mp.start_processes(
        _entry, args=(world, _free_port(), fn, args), nprocs=world, join=False, start_method="spawn"
    )
    while not ctx.join(timeout=1.0):
        if time.monotonic() - t0 > SPAWN_TIMEOUT_S:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"{world}-rank run did not finish in {SPAWN_TIMEOUT_S:.0f}s (hung collective?)")
    return time.monotonic() - t0


# ---- training --------------------------------------------------------------------------------------------------
def make_cache(directory: Path, sizes: list[int], seed: int = 0) -> Path:
    """A cache of ``len(sizes)`` shards of the given row counts (random anisotropic vectors, d_in 16)."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(D_IN, D_IN, generator=g)
    writer = CacheWriter(directory, Manifest(d_in=D_IN, model="synthetic", hook="h", method="fast"))
    for i, n in enumerate(sizes):
        acts = torch.randn(n, D_IN, generator=g) @ mix + 2.0
        meta = {
            "token_ids": torch.arange(n),
            "special_mask": torch.zeros(n, dtype=torch.bool),
            "token_class": torch.zeros(n, dtype=torch.long),
            "positions": torch.arange(n) + 1,
            "sample_ids": torch.full((n,), i),
        }
        writer.write_shard(acts, meta, windows_done=i + 1)
    writer.finish()
    return directory


def train(
    out_dir: Path, cache: Path, result: Path, stop: int | None = None, resume: bool = False, arch: str = "jumprelu"
) -> None:
    """Train a tiny SAE on ``cache`` (any world size; the global batch is BATCH) and save this rank's final state."""
    source = CacheSource(cache, BATCH, buffer_tokens=4 * BATCH, seed=3)
    sae = create_sae(SAEConfig(architecture=arch, d_in=D_IN, d_sae=D_SAE, k=4), seed=0)
    cfg = TrainConfig(
        total_tokens=STEPS * BATCH,
        batch_size=BATCH,
        lr=3e-3,
        lr_warmup_steps=2,
        sparsity_warmup_steps=3,
        init_sample_tokens=3 * BATCH,
        log_every=2,
        checkpoint_every=4,
        dead_window_tokens=3 * BATCH,
        progress=False,
        device="cpu",
        seed=0,
    )
    trainer = Trainer(sae, cfg, source, out_dir)
    trainer.fit(resume=resume, stop_after_steps=stop)
    result.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "sae": {k: v.clone() for k, v in trainer.sae.state_dict().items()},
            "step": trainer.step,
            "tokens": trainer.tokens,
            "fire_counts": trainer.fire_counts.clone(),
            "since_fired": trainer.since_fired.clone(),
            "source": source.state_dict(),
        },
        result / f"rank{dist_mod.rank()}.pt",
    )


def metric_rows(path: Path) -> list[dict]:
    rows = [json.loads(r) for r in path.read_text().splitlines() if r.strip()]
    return [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in rows]


def load(result: Path, r: int = 0) -> dict:
    return torch.load(result / f"rank{r}.pt", weights_only=True)


def full_and_stopped(root: Path, cache: Path) -> None:
    """On every rank: an uninterrupted run (``two``), then the same run killed at step 6 (``resumed``)."""
    train(root / "two", cache, root / "two_result")
    train(root / "resumed", cache, root / "stopped_result", stop=6)  # checkpoint at step 4


def refused_then_resumed(root: Path, cache: Path) -> None:
    """On every rank: resuming the 1-rank checkpoint is refused (message saved), then the 2-rank run resumes."""
    try:
        train(root / "single", cache, root / "never", resume=True)
    except ValueError as e:
        (root / f"refused_rank{dist_mod.rank()}.txt").write_text(str(e))
    train(root / "resumed", cache, root / "resumed_result", resume=True)


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """On a cache of 3 uneven shards: a 2-rank run and the same run stopped at step 6 (one spawn), and the run on
    1 rank."""
    root = tmp_path_factory.mktemp("ddp")
    cache = make_cache(root / "cache", [300, 37, 700])
    wall = spawn(full_and_stopped, root, cache)
    print(f"2 ranks, 12 + 6 steps (with process start): {wall:.1f}s")
    train(root / "one", cache, root / "one_result")
    return root


def test_two_ranks_equal_one_rank(two_rank_run: Path) -> None:
    root = two_rank_run
    r0, r1, one = load(root / "two_result", 0), load(root / "two_result", 1), load(root / "one_result")
    for name, t in r0["sae"].items():  # the ranks hold identical replicas
        assert torch.equal(r1["sae"][name], t), name
    assert r0["step"] == one["step"] == STEPS and r0["tokens"] == one["tokens"] == STEPS * BATCH
    diff = max((r0["sae"][k] - v).abs().max().item() for k, v in one["sae"].items())
    moved = max(
        (one["sae"][k] - v).abs().max().item()
        for k, v in create_sae(SAEConfig("jumprelu", d_in=D_IN, d_sae=D_SAE), seed=0).state_dict().items()
    )
    print(f"max |2-rank - 1-rank| weight difference after {STEPS} steps: {diff:.2e} (weights moved {moved:.2e})")
    assert diff < 1e-5 and moved > 1e-2
    # firing counts and dead masks are reduced over the global batch: the same as on one rank
    assert torch.equal(r0["fire_counts"], one["fire_counts"]) and torch.equal(r0["since_fired"], one["since_fired"])
    # the logged metrics are over the global batch too (only float reduction order differs)
    rows2, rows1 = metric_rows(root / "two" / "metrics.jsonl"), metric_rows(root / "one" / "metrics.jsonl")
    assert [r["step"] for r in rows2] == [r["step"] for r in rows1] == list(range(2, STEPS + 1, 2))
    for a, b in zip(rows2, rows1, strict=True):
        assert a == pytest.approx(b, rel=1e-4, abs=1e-6)
    assert (root / "two" / "sae" / "cfg.json").is_file()


def test_two_rank_resume_is_exact_and_world_size_is_checked(two_rank_run: Path) -> None:
    root, cache = two_rank_run, two_rank_run / "cache"
    state = torch.load(root / "resumed" / "checkpoints" / "step_0000000004" / "state.pt", weights_only=True)
    assert state["world_size"] == 2 and len(state["ranks"]) == 2  # every rank's data-stream state
    assert not (root / "resumed" / "sae").exists()
    # another world size is refused with a clear message, before anything is changed: 2 -> 1 here, 1 -> 2 below
    before = (root / "resumed" / "metrics.jsonl").read_text()
    with pytest.raises(
        ValueError,
        match=r"checkpoint of a run on 2 process\(es\), this run has 1: resume with the "
        r"same number",
    ):
        train(root / "resumed", cache, root / "refused", resume=True)
    assert (root / "resumed" / "metrics.jsonl").read_text() == before
    train(root / "single", cache, root / "single_result", stop=4)
    # new processes (as after a kill) resume the 2-rank run
    spawn(refused_then_resumed, root, cache)
    for r in range(2):
        assert "checkpoint of a run on 1 process(es), this run has 2" in (root / f"refused_rank{r}.txt").read_text()
    full = load(root / "two_result")
    for r in range(2):
        res = load(root / "resumed_result", r)
        for name, t in full["sae"].items():
            assert torch.equal(res["sae"][name], t), (r, name)
        assert torch.equal(res["fire_counts"], full["fire_counts"]) and res["step"] == STEPS
    assert metric_rows(root / "resumed" / "metrics.jsonl") == metric_rows(root / "two" / "metrics.jsonl")


def test_batch_must_divide_over_ranks(tmp_path: Path) -> None:
    os.environ["WORLD_SIZE"] = "3"  # no process group: only the size is read
    try:
        with pytest.raises(ValueError, match="--batch-size 64 .* does not divide over 3 processes"):
            train_dist.check_batch_size(64)
    finally:
        del os.environ["WORLD_SIZE"]


# ---- harvest ---------------------------------------------------------------------------------------------------
LENGTHS = [200, 5, 7, 90, 33, 12, 64, 8, 150, 21, 40, 9, 3, 120, 17]
"""Token lengths of the harvested sequences: very uneven, so the ranks' shares differ in count and in shards."""


class TinyLM(torch.nn.Module):
    """A torch-only stand-in for a causal LM (embedding, 2 MLP blocks under ``layers``; vocab 64, d_model 32), so the
    spawned ranks need not import transformers; each token's activation depends on its token only, so harvests
    batched differently give the same vectors."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Embedding(64, 2 * D_IN)
        self.layers = torch.nn.ModuleList(
            torch.nn.Sequential(torch.nn.Linear(2 * D_IN, 2 * D_IN), torch.nn.Tanh()) for _ in range(2)
        )

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **_: Any) -> torch.Tensor:
        x = self.embed(input_ids)
        for layer in self.layers:
            x = x + layer(x)
        return x


def tiny_model() -> tuple[Any, Any]:
    """:class:`TinyLM` and a stand-in tokenizer (the harvest uses only its pad/eos/bos ids)."""
    return TinyLM().eval(), SimpleNamespace(pad_token_id=0, eos_token_id=1, bos_token_id=None)


def sequences() -> list[Any]:
    from chatsae.data.chat_template import make_sequence

    rng = random.Random(0)
    return [make_sequence([rng.randrange(2, 64) for _ in range(n)], [0] * n, [i] * n) for i, n in enumerate(LENGTHS)]


def harvest_and_train(cache: Path, out_dir: Path, result: Path) -> None:
    """Harvest :func:`sequences` into ``cache`` on every rank, then train a few steps on it."""
    from chatsae.activations.harvest import HarvestConfig, harvest_to_cache
    from chatsae.models import HookPoint

    model, tok = tiny_model()
    opts = HarvestConfig(shard_tokens=64, batch_tokens=256, max_batch_size=8)
    manifest = Manifest(d_in=2 * D_IN, model="tiny", hook="resid_post.1", method="fast")
    harvest_to_cache(model, tok, HookPoint.parse("resid_post.1"), sequences(), cache, manifest, opts, progress=False)
    source = CacheSource(cache, 32, buffer_tokens=128, seed=1)
    sae = create_sae(SAEConfig(architecture="topk", d_in=2 * D_IN, d_sae=64, k=4), seed=0)
    cfg = TrainConfig(
        total_tokens=2000, batch_size=32, init_sample_tokens=64, checkpoint_every=0, progress=False, device="cpu"
    )
    trainer = Trainer(sae, cfg, source, out_dir)
    trainer.fit()
    result.mkdir(parents=True, exist_ok=True)
    rank_file = result / f"rank{dist_mod.rank()}.pt"
    torch.save({"W_dec": trainer.sae.W_dec.detach().clone(), "step": trainer.step}, rank_file)


def test_partition_balanced_covers_once_and_balances() -> None:
    rng = random.Random(1)
    for _ in range(200):
        lengths = [rng.choice([1, 3, 10, 50, 400]) * rng.randint(1, 9) for _ in range(rng.randint(0, 40))]
        parts = rng.randint(1, 5)
        groups = sharding.partition_balanced(lengths, parts)
        assert len(groups) == parts
        assert sorted(i for g in groups for i in g) == list(range(len(lengths)))  # every item exactly once
        assert all(g == sorted(g) for g in groups)
        totals = [sum(lengths[i] for i in g) for g in groups]
        assert max(totals) - min(totals) <= max(lengths, default=0)  # greedy bound (longest-first)
        assert sharding.partition_balanced(lengths, parts) == groups  # deterministic
    assert sharding.partition_balanced([5, 4, 3, 3, 1], 2) == [[0, 3], [1, 2, 4]]  # 5+3 vs 4+3+1
    # single-process harvests keep the stream untouched
    seqs = iter(sequences())
    assert sharding.shard_sequences(seqs) is seqs


def test_two_rank_harvest_split_and_uneven_shards_train(tmp_path: Path) -> None:
    from chatsae.activations.harvest import HarvestConfig, harvest_to_cache
    from chatsae.models import HookPoint

    wall = spawn(harvest_and_train, tmp_path / "cache2", tmp_path / "run2", tmp_path / "res2")
    print(f"2-rank harvest + training: {wall:.1f}s")
    model, tok = tiny_model()  # the same data harvested by one process, for reference
    opts = HarvestConfig(shard_tokens=64, batch_tokens=256, max_batch_size=8)
    manifest = Manifest(d_in=2 * D_IN, model="tiny", hook="resid_post.1", method="fast")
    harvest_to_cache(
        model, tok, HookPoint.parse("resid_post.1"), sequences(), tmp_path / "cache1", manifest, opts, progress=False
    )
    two, one = ActivationCache(tmp_path / "cache2"), ActivationCache(tmp_path / "cache1")
    man = two.manifest
    assert man.complete and man.info["world_size"] == 2 and len(two) == len(one) == sum(LENGTHS) - len(LENGTHS)
    # each rank wrote its own shard files; the one manifest lists both ranks' shards
    prefixes = {s["acts"][:10] for s in man.shards}
    assert prefixes == {"shard_r00_", "shard_r01_"}
    ids2 = two.read_all("sample_ids").tolist()
    rank_of_row = [0 if s["acts"].startswith("shard_r00_") else 1 for s in man.shards for _ in range(s["n"])]
    by_rank = [{i for i, r in zip(ids2, rank_of_row, strict=True) if r == k} for k in range(2)]
    assert not by_rank[0] & by_rank[1] and by_rank[0] | by_rank[1] == set(range(len(LENGTHS)))  # disjoint, complete
    # token-balanced: the ranks' token counts differ by at most the longest sequence
    rank_tokens = [sum(LENGTHS[i] for i in ids) for ids in by_rank]
    assert abs(rank_tokens[0] - rank_tokens[1]) <= max(LENGTHS) and man.info["rank_tokens"] == [
        sum(1 for r in rank_of_row if r == k) for k in range(2)
    ]
    # the same vectors as the single-process harvest (no sample twice, none dropped), keyed by (sample, position)
    key2 = list(zip(ids2, two.read_all("positions").tolist(), strict=True))
    key1 = list(zip(one.read_all("sample_ids").tolist(), one.read_all("positions").tolist(), strict=True))
    assert sorted(key2) == sorted(key1) and len(set(key2)) == len(key2)
    a2 = two.gather(torch.arange(len(two))).acts
    a1 = one.gather(torch.arange(len(one))).acts
    order1 = {k: i for i, k in enumerate(key1)}
    torch.testing.assert_close(a2, a1[[order1[k] for k in key2]], atol=1e-6, rtol=1e-6)
    # rank 0 sums every rank's shard moments into the merged manifest: the channel variance of the one-process harvest
    cv2, cv1 = man.info["channel_variance"], one.manifest.info["channel_variance"]
    assert cv2["tokens"] == cv1["tokens"] == len(one)
    assert cv2["mean_variance"] == pytest.approx(cv1["mean_variance"], rel=1e-6)
    assert [c for c, _ in cv2["dominant_channels"]] == [c for c, _ in cv1["dominant_channels"]]
    # training on the uneven shards finished on both ranks, at the same step, with identical weights
    r0, r1 = (torch.load(tmp_path / "res2" / f"rank{r}.pt", weights_only=True) for r in range(2))
    assert r0["step"] == r1["step"] == 2000 // 32 and torch.equal(r0["W_dec"], r1["W_dec"])


def test_cache_of_another_world_size(tmp_path: Path) -> None:
    """An interrupted 2-process harvest is not resumed by one process (nor its shards removed as orphans)."""
    from chatsae.activations.harvest import HarvestConfig, harvest_to_cache
    from chatsae.models import HookPoint

    cache = tmp_path / "cache"
    writer = CacheWriter(
        cache,
        Manifest(d_in=2 * D_IN, model="tiny", hook="resid_post.1", method="fast"),
        name=sharding.rank_manifest_name(1, 2),
        prefix="shard_r01_",
    )
    writer.write_shard(torch.zeros(3, 2 * D_IN), {"sample_ids": torch.zeros(3, dtype=torch.long)}, windows_done=1)
    model, tok = tiny_model()
    manifest = Manifest(d_in=2 * D_IN, model="tiny", hook="resid_post.1", method="fast")
    with pytest.raises(
        ValueError, match="an interrupted harvest by 2 processes is here; resume it with torchrun --nproc-per-node 2"
    ):
        harvest_to_cache(
            model,
            tok,
            HookPoint.parse("resid_post.1"),
            sequences(),
            cache,
            manifest,
            HarvestConfig(),
            resume=True,
            progress=False,
        )
    assert (cache / "shard_r01_00000.acts.npy").is_file()
    with pytest.raises(ValueError, match="cannot split 1 shard.* over 2 readers"):
        CacheSource(make_cache(tmp_path / "one_shard", [100]), 32, rank=1, world_size=2)


def distributed_saes(root: Path, cache: Path) -> None:
    """On every rank: two SAEs on one saved cache with --distribute-saes (one per rank)."""
    from chatsae.workflows import RunConfig, RunSpec
    from chatsae.workflows.multi_sae import train_runs

    spec = RunSpec(
        run=RunConfig(
            out_dir=str(root / "dist"),
            activations=str(cache),
            distribute_saes=True,
            saes="jumprelu:name=a,topk:k=4:name=b",
        ),
        train=TrainConfig(
            total_tokens=STEPS * BATCH,
            batch_size=BATCH,
            init_sample_tokens=3 * BATCH,
            checkpoint_every=0,
            progress=False,
            device="cpu",
            seed=0,
        ),
        d_sae=D_SAE,
        report=lambda m: None,
    )
    results = train_runs(spec)
    (root / f"ranks_{dist_mod.global_rank()}.json").write_text(json.dumps([str(r.out_dir) for r in results]))


def test_distribute_saes_places_one_sae_per_rank(tmp_path: Path) -> None:
    """--distribute-saes: SAE i trains on rank i mod 2, alone, and equals the same SAE trained by one process."""
    from chatsae.sae import load_sae
    from chatsae.workflows import RunConfig, RunSpec, train_run

    cache = make_cache(tmp_path / "cache", [300, 500])
    spawn(distributed_saes, tmp_path, cache)
    placed = [json.loads((tmp_path / f"ranks_{r}.json").read_text()) for r in range(2)]
    assert placed == [[str(tmp_path / "dist" / "a")], [str(tmp_path / "dist" / "b")]]
    for name, arch, k in (("a", "jumprelu", 32), ("b", "topk", 4)):
        ref = train_run(
            RunSpec(
                run=RunConfig(out_dir=str(tmp_path / f"ref_{name}"), activations=str(cache)),
                sae=SAEConfig(architecture=arch, k=k),
                train=TrainConfig(
                    total_tokens=STEPS * BATCH,
                    batch_size=BATCH,
                    init_sample_tokens=3 * BATCH,
                    checkpoint_every=0,
                    progress=False,
                    device="cpu",
                    seed=0,
                ),
                d_sae=D_SAE,
                report=lambda m: None,
            )
        )
        got, want = load_sae(tmp_path / "dist" / name / "sae"), load_sae(ref.sae_dir)
        assert got.cfg.architecture == arch
        for key, t in want.state_dict().items():
            torch.testing.assert_close(got.state_dict()[key], t, rtol=0, atol=0, msg=key)
