"""The random-SAE baseline of the interpretability proxies (chatsae.sae.baseline): unit-norm random decoder rows, the
encoder its transpose, b_dec the calibration mean, a threshold that gives the asked L0, seed-fixed, and saved and
loaded like a trained BatchTopK SAE."""

from __future__ import annotations

import pytest
import torch

from chatsae.sae import BatchTopKSAE, load_sae, save_sae
from chatsae.sae.baseline import random_sae, threshold_for_l0


def test_threshold_for_l0_by_hand():
    pre = torch.tensor([[5.0, 1.0, 3.0], [4.0, 2.0, 0.5]])
    # L0 1 per row = 2 entries above theta: the 3rd largest entry (3.0) leaves 5 and 4 above it
    assert threshold_for_l0(pre, 1.0) == 3.0
    assert ((pre > threshold_for_l0(pre, 1.0)).sum(1).float().mean()) == 1.0
    assert threshold_for_l0(pre, 2.0) == 1.0  # 4 entries above: 5, 4, 3, 2
    with pytest.raises(ValueError, match="target L0"):
        threshold_for_l0(pre, 3.0)


def calibration(rows=2000, d_in=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, d_in, generator=g) * torch.linspace(0.5, 2.0, d_in) + 30.0  # a large common mean


def test_random_sae_shape_weights_and_l0(tmp_path):
    x = calibration()
    meta = {"model_name": "tiny", "hook_name": "resid_post.1", "data": "train.json", "method": "fast"}
    sae = random_sae(16, 64, x, target_l0=5.0, seed=3, metadata=meta)
    assert isinstance(sae, BatchTopKSAE) and sae.W_dec.shape == (64, 16)
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(64))
    assert torch.equal(sae.W_enc, sae.W_dec.T) and not sae.b_enc.any()
    assert torch.allclose(sae.b_dec, x.mean(0))
    l0 = (sae.encode(x) > 0).sum(1).double().mean()
    assert l0 == pytest.approx(5.0, abs=1 / len(x))
    assert sae.cfg.metadata["method"] == "random" and "data" not in sae.cfg.metadata
    assert sae.cfg.metadata["random_baseline"]["calibration_l0"] == pytest.approx(5.0, abs=1 / len(x))
    same = random_sae(16, 64, x, target_l0=5.0, seed=3, metadata=meta)
    other = random_sae(16, 64, x, target_l0=5.0, seed=4, metadata=meta)
    assert torch.equal(same.W_dec, sae.W_dec) and not torch.equal(other.W_dec, sae.W_dec)
    # saved and read back as a BatchTopK SAE with the same threshold and latents
    path = save_sae(sae, tmp_path / "random")
    back = load_sae(path)
    assert isinstance(back, BatchTopKSAE) and float(back.threshold) == pytest.approx(float(sae.threshold))
    assert torch.equal(back.encode(x[:50]), sae.encode(x[:50]))
    with pytest.raises(ValueError, match="calibration"):
        random_sae(16, 64, x[:, :8], target_l0=5.0)


def test_the_script_calibrates_on_a_cache_and_skips_position_0(tmp_path, capsys):
    import importlib.util
    from pathlib import Path

    from chatsae.activations.cache import CacheWriter, Manifest
    from chatsae.sae import SAEConfig, create_sae

    spec = importlib.util.spec_from_file_location(
        "random_sae", Path(__file__).resolve().parents[1] / "scripts" / "results" / "random_sae.py"
    )
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    x = calibration(rows=600)
    x[::50] = 1e4  # position 0 of each 50-token sample: the attention sink, far off (must not be calibrated on)
    writer = CacheWriter(tmp_path / "cache", Manifest(d_in=16, model="tiny", hook="resid_post.1", method="fast"))
    meta = {"token_ids": torch.zeros(600, dtype=torch.long), "positions": torch.arange(600) % 50}
    writer.write_shard(x, {**meta, "sample_ids": torch.arange(600) // 50}, windows_done=1)
    writer.finish()
    trained = create_sae(SAEConfig(architecture="batchtopk", d_in=16, d_sae=64, metadata={"hook_name": "resid_post.1"}))
    save_sae(trained, tmp_path / "trained")
    argv = [str(tmp_path / "trained"), "--activations", str(tmp_path / "cache"), "--l0", "4", "--rows", "600"]
    assert script.main([*argv, "--out", str(tmp_path / "random")]) == 0
    sae = load_sae(tmp_path / "random")
    kept = x[torch.arange(600) % 50 != 0]
    assert torch.allclose(sae.b_dec, kept.mean(0), rtol=1e-5)
    assert (sae.encode(kept) > 0).sum(1).double().mean() == pytest.approx(4.0, abs=1 / len(kept))
    info = sae.cfg.metadata["random_baseline"]
    assert info["calibration_rows"] == 588 and sae.cfg.metadata["hook_name"] == "resid_post.1"
    assert "wrote" in capsys.readouterr().out
