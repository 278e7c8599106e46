"""End to end on the embedded SmolLM2-135M-Instruct: FAST harvest of the default data at the middle layer, training
from the cache, and the attention sink at position 0 kept out of the training vectors."""

from __future__ import annotations

import json

import pytest
import torch

from chatsae.activations.cache import ActivationCache, CacheSource
from chatsae.activations.harvest import HarvestConfig
from chatsae.activations.pipeline import DataConfig, harvest
from chatsae.data import TEMPLATE
from chatsae.sae import SAEConfig, create_sae, load_sae
from chatsae.train import TrainConfig, Trainer


@pytest.mark.slow
def test_fast_jumprelu_on_embedded_model(embedded, tmp_path):
    cfg = DataConfig(max_samples=24, holdout=4)
    cache_dir, manifest, stats, ctx = harvest(
        cfg, HarvestConfig(), tmp_path, max_tokens=None, resume=False, progress=False, model_and_tokenizer=embedded
    )
    assert str(ctx.hook) == "resid_post.15" and len(ctx.held_out) == 4
    assert manifest.complete and manifest.d_in == 576 and manifest.method == "fast"
    cache = ActivationCache(cache_dir)
    assert len(cache) == stats.tokens_real - stats.sequences  # all real tokens but position 0 of each sample
    assert (cache.read_all("positions") > 0).all()
    classes = cache.read_all("token_class")
    assert (classes == TEMPLATE).any() and (classes >= 0).all()  # special tokens kept, no padding
    norms = cache.gather(torch.arange(len(cache))).acts.norm(dim=1)
    assert norms.max() < 2_000  # the ~25,000-norm attention sink at position 0 is excluded

    tc = TrainConfig(
        total_tokens=24_576, batch_size=512, log_every=4, progress=False, checkpoint_every=0, init_sample_tokens=1024
    )
    sae = create_sae(SAEConfig(d_in=576, d_sae=1152, metadata={"hook_name": "resid_post.15", "method": "fast"}))
    result = Trainer(sae, tc, CacheSource(cache_dir, 512), tmp_path / "run").fit()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["fvu"] < 0.6 * rows[0]["fvu"] and rows[-1]["fvu"] < 1.0  # it learns
    loaded = load_sae(result.sae_dir)
    x = cache.gather(torch.arange(256)).acts
    assert (loaded(x) - x).pow(2).sum() < (x - x.mean(0)).pow(2).sum()  # raw activations in, better than the mean
