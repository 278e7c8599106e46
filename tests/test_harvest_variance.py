"""Harvest-time detection of the channels that dominate the activation variance (chatsae.activations.variance): the
cache writer sums each shard's channel moments, the finished manifest names the dominant channels with their shares
(as a direct numpy computation gives them, also after a resume), ``chatsae harvest`` prints one line about them, and
``chatsae train`` reports them with the robust measures of the training data and the fidelity warning."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from chatsae.activations.cache import ActivationCache, CacheWriter, Manifest
from chatsae.activations.variance import dominance_note

MASSIVE = (7, 20)


def planted(n: int = 3000, h: int = 32, seed: int = 0) -> torch.Tensor:
    """``[n, h]`` vectors whose channels 7 and 20 hold ~92% of the variance (channel 7 also far from 0 on average)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, h, generator=g)
    x[:, 7] = 40.0 + 15.0 * x[:, 7]
    x[:, 20] *= 10.0
    return x


def numpy_shares(x: np.ndarray) -> np.ndarray:
    var = x.astype(np.float64).var(axis=0)
    return var / var.sum()


def write(directory, x: torch.Tensor, dtype: str, parts: list[slice], resume: bool = False) -> CacheWriter:
    w = CacheWriter.open(directory, Manifest(d_in=x.shape[1], dtype=dtype, model="m", hook="resid_post.3"), resume)
    for part in parts:
        meta = {k: torch.zeros(len(x[part]), dtype=torch.long) for k in ("token_ids", "positions", "sample_ids")}
        w.write_shard(x[part], meta, windows_done=len(w.manifest.shards) + 1)
    return w


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_planted_channels_are_named_in_the_manifest_with_their_shares(tmp_path, dtype):
    x = planted()
    parts = [slice(0, 1000), slice(1000, 1700), slice(1700, 3000)]
    write(tmp_path / "c", x, dtype, parts).finish(exhausted=True)
    man = Manifest.read(tmp_path / "c")
    cv = man.info["channel_variance"]
    stored = ActivationCache(tmp_path / "c").gather(torch.arange(len(x))).acts.numpy()  # the vectors as cached
    shares = numpy_shares(stored)
    assert [c for c, _ in cv["dominant_channels"]] == list(MASSIVE)
    for c, s in cv["dominant_channels"]:
        assert s == pytest.approx(float(shares[c]), rel=1e-9)
    assert cv["dominant_share"] == pytest.approx(float(shares[list(MASSIVE)].sum()), rel=1e-9)
    assert cv["dominant_share"] > 0.9 and cv["tokens"] == len(x)
    assert cv["mean_variance"] == pytest.approx(float(stored.astype(np.float64).var(axis=0).sum()), rel=1e-9)
    note = dominance_note(cv, man.hook)
    assert note is not None and note.startswith(
        f"channels 7 ({100 * shares[7]:.0f}%), 20 ({100 * shares[20]:.0f}%) hold "
        f"{100 * shares[list(MASSIVE)].sum():.0f}% of the activation variance at resid_post.3: FVU and MSE"
    )


def test_resumed_writer_records_the_same_bits(tmp_path):
    """Moments live beside each shard: a writer that stops after two shards and a new one that resumes give the
    manifest of one uninterrupted harvest (exactly), also over a moments file the crash left half-written."""
    x = planted(seed=1)
    parts = [slice(0, 800), slice(800, 2000), slice(2000, 3000)]
    write(tmp_path / "full", x, "float32", parts).finish(exhausted=True)
    write(tmp_path / "part", x, "float32", parts[:2])
    (tmp_path / "part" / "shard_00002.moments.npy").write_bytes(b"half")  # the crash left a partial shard
    w = write(tmp_path / "part", x, "float32", parts[2:], resume=True)
    w.finish(exhausted=True)
    full, part = Manifest.read(tmp_path / "full"), Manifest.read(tmp_path / "part")
    assert part.info["channel_variance"] == full.info["channel_variance"]
    assert [s["moments_blake2b"] for s in part.shards] == [s["moments_blake2b"] for s in full.shards]


def test_older_cache_without_moments_loads_and_records_none(tmp_path):
    x = planted()
    write(tmp_path / "c", x, "float32", [slice(0, 1500), slice(1500, 3000)]).finish()
    path = tmp_path / "c" / "manifest.json"
    raw = json.loads(path.read_text())
    del raw["info"]["channel_variance"]
    for s in raw["shards"]:  # a manifest written before channel moments existed
        del s["moments"], s["moments_blake2b"]
    path.write_text(json.dumps(raw))
    old = Manifest.read(tmp_path / "c")
    assert "channel_variance" not in old.info and len(ActivationCache(tmp_path / "c")) == len(x)
    w = CacheWriter.open(tmp_path / "c", Manifest(d_in=32, model="m", hook="resid_post.3"), resume=True)
    assert "channel_variance" not in w.finish().info  # not invented from a part of the shards
    assert dominance_note(None, "resid_post.3") is None


def test_corrupt_moments_file_is_refused(tmp_path):
    x = planted()
    w = write(tmp_path / "c", x, "float32", [slice(0, 3000)])
    np.save(tmp_path / "c" / "shard_00000.moments.npy", np.zeros((2, 32)))
    with pytest.raises(ValueError, match="shard_00000.moments.npy: checksum mismatch"):
        w.finish()


# ---- a tiny random Qwen2 whose residual stream has two massive channels ----------------------------------------


@pytest.fixture(scope="module")
def massive_qwen2(massive_qwen2_model, chat_tokenizer, chat_records, tmp_path_factory):
    """A directory holding conftest's massive_qwen2_model (channels 5 and 17 scaled 200x; the embedded model's chat
    tokenizer), and a chat data file."""
    model = massive_qwen2_model
    root = tmp_path_factory.mktemp("massive")
    model.save_pretrained(root / "model")
    chat_tokenizer.save_pretrained(root / "model")
    data = root / "chat.jsonl"
    data.write_text("".join(json.dumps({"messages": r.messages}) + "\n" for r in chat_records(40)))
    return root / "model", data


def test_cli_harvest_prints_and_records_the_massive_channels(massive_qwen2, tmp_path, capsys, single_thread):
    from chatsae.cli import main

    model_dir, data = massive_qwen2
    out = tmp_path / "h"
    argv = ["harvest", "--model", str(model_dir), "--data", str(data), "--layer", "1", "--holdout", "0"]
    assert main([*argv, "--out-dir", str(out)]) == 0
    man = Manifest.read(out / "activations")
    acts = ActivationCache(out / "activations").gather(torch.arange(man.n_tokens)).acts.numpy()
    shares = numpy_shares(acts)
    cv = man.info["channel_variance"]
    assert {c for c, _ in cv["dominant_channels"]} == {5, 17} and cv["dominant_share"] > 0.9
    assert cv["dominant_share"] == pytest.approx(float(shares[[5, 17]].sum()), rel=1e-6)
    printed = capsys.readouterr()
    line = dominance_note(cv, "resid_post.1")
    assert line is not None and line in printed.out + printed.err


def test_cli_train_summary_shows_robust_measures_and_the_warning(
    massive_qwen2, tmp_path, capsys, monkeypatch, single_thread
):
    """`chatsae train` on the model with two massive channels: FVU looks excellent while nothing but those channels
    is reconstructed; training_summary.json carries the robust measures on the last training vectors and on the
    held-out records, the harvest's dominant channels and the warnings, and the printed table shows them."""
    from chatsae.cli import main

    monkeypatch.setenv("COLUMNS", "300")  # the result table unwrapped

    model_dir, data = massive_qwen2
    out = tmp_path / "run"
    argv = ["train", "--model", str(model_dir), "--data", str(data), "--layer", "1", "--width", "128"]
    argv += ["--total-tokens", "4096", "--batch-size", "256", "--holdout", "5", "--init-sample-tokens", "512"]
    assert main([*argv, "--out-dir", str(out), "--no-progress", "--eval-max-samples", "5"]) == 0
    s = json.loads((out / "sae" / "training_summary.json").read_text())
    harvest = s["harvest_channel_variance"]  # the cache's record, carried into the summary
    assert harvest == Manifest.read(out / "activations").info["channel_variance"]
    assert {c for c, _ in harvest["dominant_channels"]} == {5, 17} and harvest["dominant_share"] > 0.9
    for key, where in (("train", "training data, last "), ("eval", "no pos 0")):
        r = s[f"{key}_robust"]  # FVU looks excellent, the other channels are not reconstructed at all
        assert r["tokens"] > 0 and r["fvu"] < 0.1 and r["fvu_no_dominant"] > 3 * r["fvu"]
        assert r["cosine_median"] is not None and r["fvu_standardized"] > 3 * r["fvu"]
        assert {c for c, _ in r["dominant_channels"]} == {5, 17}
        warnings = s[f"{key}_fidelity_warnings"]
        assert any(w.startswith("FVU without the dominant channels") and f"({where}" in w for w in warnings)
        assert any(w.startswith(f"channels dominating the activation variance ({where}") for w in warnings)
    assert s["train_robust"]["tokens"] == 4096  # the whole (small) run: 16 batches of 256
    printed = capsys.readouterr()
    text = " ".join((printed.out + printed.err).split())
    note = dominance_note(harvest, "resid_post.1")
    assert note is not None and note in text  # said once before training
    for row in ("channels dominating the harvest's variance", "train WARNING 1", "train FVU without dominant"):
        assert row in text


def test_trainer_measures_the_final_sae_on_the_last_vectors_trained_on(tmp_path, monkeypatch, single_thread):
    """``Trainer.final_measures`` sees the final SAE and the last FINAL_SAMPLE_TOKENS vectors of the run (scaled as
    trained on: the oldest batch trimmed), and what it returns is in the summary and training_summary.json."""
    from chatsae.activations import TensorSource
    from chatsae.sae import SAEConfig, create_sae
    from chatsae.train import TrainConfig, Trainer
    from chatsae.train import trainer as trainer_mod

    monkeypatch.setattr(trainer_mod, "FINAL_SAMPLE_TOKENS", 100)
    x = planted(n=640)
    cfg = TrainConfig(
        total_tokens=640, batch_size=32, init_sample_tokens=64, checkpoint_every=0, progress=False, device="cpu"
    )
    t = Trainer(create_sae(SAEConfig("topk", d_in=32, d_sae=64, k=4), seed=0), cfg, TensorSource(x, 32), tmp_path)
    seen: list[tuple[object, torch.Tensor]] = []

    def measures(sae, batches):
        seen.append((sae, torch.cat(batches)))
        return {"final_rows": sum(len(b) for b in batches)}

    t.final_measures = measures
    trained: list[torch.Tensor] = []
    screen = t.screen
    monkeypatch.setattr(t, "screen", lambda batch: trained.append(screen(batch)) or trained[-1])
    res = t.fit()
    ((sae, rows),) = seen
    assert sae is t.sae and rows.shape == (100, 32) and res.summary["final_rows"] == 100
    assert torch.equal(rows, torch.cat(trained)[-100:] / t.scale)  # the last 100 vectors, as trained on
    assert json.loads((res.sae_dir / "training_summary.json").read_text())["final_rows"] == 100
    assert t.final_batches == []  # released
