"""Harvesting into the cache on a tiny random Llama: padding never reaches the SAE, FAST keeps samples apart,
an interrupted harvest resumes to the same cache, and the CLI trains end to end on a local model directory."""

from __future__ import annotations

import json

import pytest
import torch

from chatsae.activations.cache import ActivationCache, Manifest
from chatsae.activations.harvest import HarvestConfig, harvest_to_cache
from chatsae.data import block_sequences, fast_sequences
from chatsae.models import HookPoint, capture
from chatsae.models.loading import model_info

HOOK = HookPoint("resid_post", 1)


def _harvest(tiny_llama, tmp_path, name, seqs, opts=None, resume=False, max_tokens=None):
    model, tok = tiny_llama
    man = Manifest(d_in=64, model="tiny", hook=str(HOOK), method="fast")
    return harvest_to_cache(
        model,
        tok,
        HOOK,
        seqs,
        tmp_path / name,
        man,
        opts or HarvestConfig(shard_tokens=300),
        max_tokens=max_tokens,
        resume=resume,
        progress=False,
    )


def interrupted(seqs, at):
    """Yield ``seqs`` and raise KeyboardInterrupt before the ``at``-th one (a harvest killed mid-way)."""
    for i, s in enumerate(seqs):
        if i == at:
            raise KeyboardInterrupt
        yield s


def test_fast_harvest_excludes_padding_and_matches_single_sample_runs(chat_records, tiny_llama, tmp_path):
    model, tok = tiny_llama
    seqs = list(fast_sequences(chat_records(24), tok, dedup_n=None))
    opts = HarvestConfig(shard_tokens=300, batch_tokens=256, exclude_first_position=True)
    man, stats = _harvest(tiny_llama, tmp_path, "c", iter(seqs), opts)
    cache = ActivationCache(tmp_path / "c")
    n_real = sum(len(s.input_ids) for s in seqs)
    assert len(cache) == n_real - len(seqs)  # every real token but position 0 of each sample; no padding
    assert stats.padding_fraction < 0.5
    meta_pos = cache.read_all("positions")
    assert (meta_pos > 0).all()
    # each vector equals the activation of its sample run alone (no cross-sample context, padding irrelevant)
    sids, pos = cache.read_all("sample_ids"), meta_pos
    acts = cache.gather(torch.arange(len(cache))).acts
    for s in seqs[:5]:
        sid = s.sample_ids[0]
        alone = capture(model, HOOK, torch.tensor([s.input_ids]))[0]
        rows = (sids == sid).nonzero().squeeze(1)
        assert torch.allclose(acts[rows], alone[pos[rows]], atol=1e-4)
        assert len(set(s.sample_ids)) == 1


def test_interrupted_harvest_resumes_to_the_same_cache(chat_records, tiny_llama, tmp_path):
    _, tok = tiny_llama
    seqs = list(fast_sequences(chat_records(24), tok, dedup_n=None))
    _harvest(tiny_llama, tmp_path, "full", iter(seqs))

    with pytest.raises(KeyboardInterrupt):
        _harvest(tiny_llama, tmp_path, "part", interrupted(seqs, at=15))
    partial = Manifest.read(tmp_path / "part")
    assert not partial.complete and partial.windows_done >= 1
    _harvest(tiny_llama, tmp_path, "part", iter(seqs), resume=True)
    full, part = ActivationCache(tmp_path / "full"), ActivationCache(tmp_path / "part")
    assert len(full) == len(part)
    idx = torch.arange(len(full))
    assert torch.allclose(full.gather(idx).acts, part.gather(idx).acts, atol=1e-5)
    assert torch.equal(full.read_all("token_ids"), part.read_all("token_ids"))
    # the channel variance recorded at the end is summed from every shard's own moments: the same bits after a resume
    assert part.manifest.info["channel_variance"] == full.manifest.info["channel_variance"]


def test_resume_with_another_model_dtype_is_refused(chat_records, tiny_llama, tmp_path):
    """A cache harvested through a float32 model is not continued through a bfloat16 one (mixed vectors)."""
    import copy

    model, tok = tiny_llama
    seqs = list(fast_sequences(chat_records(24), tok, dedup_n=None))
    info = {"model": model_info(model)}
    man = Manifest(d_in=64, model="tiny", hook=str(HOOK), method="fast", info=info)
    with pytest.raises(KeyboardInterrupt):
        harvest_to_cache(
            model,
            tok,
            HOOK,
            interrupted(seqs, at=15),
            tmp_path / "c",
            man,
            HarvestConfig(shard_tokens=300),
            resume=False,
            progress=False,
        )
    half = copy.deepcopy(model).to(torch.bfloat16)
    man16 = Manifest(d_in=64, model="tiny", hook=str(HOOK), method="fast", info={"model": model_info(half)})
    with pytest.raises(ValueError, match=r"other settings .*model_dtype: 'float32' -> 'bfloat16'"):
        harvest_to_cache(
            half,
            tok,
            HOOK,
            iter(seqs),
            tmp_path / "c",
            man16,
            HarvestConfig(shard_tokens=300),
            resume=True,
            progress=False,
        )


def test_bt_blocks_harvest_full_blocks(chat_records, tiny_llama, tmp_path):
    _, tok = tiny_llama
    blocks = list(block_sequences(chat_records(24), tok, context_size=64, chat=True))
    opts = HarvestConfig(shard_tokens=300, exclude_first_position=False)
    man, _ = _harvest(tiny_llama, tmp_path, "bt", iter(blocks), opts)
    assert man.n_tokens == 64 * len(blocks)


def test_cli_train_on_local_model_dir_end_to_end(chat_records, tiny_llama, tmp_path):
    from chatsae.cli import main
    from chatsae.sae import load_sae

    model, tok = tiny_llama
    model.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps({"messages": r.messages}) + "\n" for r in chat_records(40)))
    out = tmp_path / "run"
    rc = main(
        [
            "train",
            "--model",
            str(tmp_path / "model"),
            "--data",
            str(data),
            "--layer",
            "1",
            "--width",
            "128",
            "--total-tokens",
            "2048",
            "--batch-size",
            "256",
            "--holdout",
            "5",
            "--out-dir",
            str(out),
            "--no-progress",
            "--checkpoint-every",
            "4",
            "--init-sample-tokens",
            "512",
            "--eval-max-samples",
            "5",
        ]
    )
    assert rc == 0
    sae = load_sae(out / "sae")
    assert sae.cfg.d_in == 64 and sae.cfg.d_sae == 128
    assert sae.cfg.metadata["hook_name"] == "resid_post.1" and sae.cfg.metadata["method"] == "fast"
    cfg = json.loads((out / "sae" / "config.json").read_text())
    assert cfg["data"]["data"] == str(data) and cfg["train"]["total_tokens"] == 2048
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 8
    man = Manifest.read(out / "activations")
    assert man.complete and man.method == "fast" and man.hook == "resid_post.1"


def test_max_padding_bounds_every_model_batch_and_keeps_the_vectors(chat_records, tiny_llama, tmp_path):
    """--max-padding reaches the harvest's length bucketing: with wide model batches over samples of very different
    lengths, each batch's padding share stays under the bound (the whole harvest's too), and the cached vectors are the
    same set as without the bound (batching changes no vector beyond float rounding)."""
    from chatsae.activations.harvest import HarvestStats, window_activations

    model, tok = tiny_llama
    seqs = list(fast_sequences(chat_records(40), tok, dedup_n=None))
    free, bounded = HarvestStats(), HarvestStats()
    wide = {"shard_tokens": 100_000, "batch_tokens": 4096, "max_batch_size": 64}
    seen: list[tuple[int, int]] = []

    def batch_padding(stats: HarvestStats):
        def on_batch(_n: int) -> None:
            seen.append((stats.tokens_real, stats.tokens_padded))

        return on_batch

    out_free = window_activations(model, tok, [HOOK], seqs, HarvestConfig(**wide), free)
    out_bound = window_activations(
        model, tok, [HOOK], seqs, HarvestConfig(**wide, max_padding=0.05), bounded, batch_padding(bounded)
    )
    assert out_free is not None and out_bound is not None
    assert free.padding_fraction > 0.10  # the case the bound is for: a wide batch over mixed lengths
    assert bounded.padding_fraction <= 0.05
    steps = [(r1 - r0, p1 - p0) for (r0, p0), (r1, p1) in zip([(0, 0), *seen], seen, strict=False)]
    assert len(steps) > 1 and all(1 - real / padded <= 0.05 + 1e-9 for real, padded in steps)
    a, b = out_free[0][HOOK], out_bound[0][HOOK]
    assert a.shape == b.shape
    order = lambda m: torch.argsort(m["sample_ids"] * 10_000 + m["positions"])  # noqa: E731
    torch.testing.assert_close(a[order(out_free[1])], b[order(out_bound[1])], rtol=1e-4, atol=1e-4)


def test_max_padding_out_of_range_is_refused():
    with pytest.raises(ValueError, match="max.padding"):
        HarvestConfig(max_padding=1.5)
