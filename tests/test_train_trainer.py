"""The trainer: decoder-norm constraint over real steps, exact resume, metrics log, and the folded final SAE."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from chatsae.activations import SyntheticSource, TensorSource
from chatsae.sae import SAEConfig, create_sae, load_sae
from chatsae.train import TrainConfig, Trainer

pytestmark = pytest.mark.usefixtures("single_thread")

D_IN, D_SAE, BATCH = 16, 48, 64


def make_trainer(
    out: Path, source, arch: str = "jumprelu", steps: int = 24, seed: int = 0, init_seed: int | None = None, **kw
) -> Trainer:
    """``init_seed`` (default ``seed``) seeds the SAE's initial weights only."""
    sae_cfg = SAEConfig(architecture=arch, d_in=D_IN, d_sae=D_SAE, k=4)
    sae = create_sae(sae_cfg, seed=seed if init_seed is None else init_seed)
    settings = dict(
        total_tokens=steps * BATCH,
        batch_size=BATCH,
        lr=3e-3,
        lr_warmup_steps=3,
        sparsity_warmup_steps=5,
        init_sample_tokens=4 * BATCH,
        log_every=3,
        checkpoint_every=8,
        keep_checkpoints=2,
        dead_window_tokens=6 * BATCH,
        progress=False,
        device="cpu",
        seed=seed,
    )
    cfg = TrainConfig(**{**settings, **kw})
    return Trainer(sae, cfg, source, out)


def synthetic() -> SyntheticSource:
    return SyntheticSource(d_in=D_IN, n_features=32, batch_size=BATCH, mean_active=3, seed=5, offset=2.0)


def tensor_source() -> TensorSource:
    g = torch.Generator().manual_seed(3)
    # 5.5 batches: the epoch boundary and the reshuffle both fall inside the run
    return TensorSource(torch.randn(BATCH * 11 // 2, D_IN, generator=g) * 4.0 + 1.0, BATCH, seed=7)


SOURCES = {"synthetic": synthetic, "tensor": tensor_source}


def metric_rows(path: Path) -> list[dict]:
    rows = [json.loads(r) for r in path.read_text().splitlines() if r.strip()]
    for r in rows:
        r.pop("tokens_per_s")
    return rows


@pytest.mark.parametrize("arch", ["jumprelu", "topk", "gated", "standard"])
def test_decoder_norm_constraint_over_trainer_steps(tmp_path: Path, arch: str) -> None:
    trainer = make_trainer(tmp_path, synthetic(), arch=arch, steps=6, checkpoint_every=0)
    w0 = trainer.sae.W_dec.detach().clone()
    trainer.fit()
    w = trainer.sae.W_dec.detach()
    assert (w - w0).abs().max() > 1e-3  # the decoder did train
    norms = w.norm(dim=1)
    if arch == "standard":  # free decoder norms (the L1 penalty is weighted by them)
        assert (norms - 1).abs().max() > 1e-4
    else:
        torch.testing.assert_close(norms, torch.ones(D_SAE), atol=1e-6, rtol=0)


@pytest.mark.parametrize("stop", [16, 19])  # at a checkpoint, and 3 steps after one (those are redone)
@pytest.mark.parametrize("source", sorted(SOURCES))
def test_resume_is_exact(tmp_path: Path, source: str, stop: int) -> None:
    full = make_trainer(tmp_path / "full", SOURCES[source]())
    full.fit()

    first = make_trainer(tmp_path / "resumed", SOURCES[source]())
    res = first.fit(stop_after_steps=stop)
    assert res.sae_dir is None and res.summary["stopped_at_step"] == stop
    assert not (tmp_path / "resumed" / "sae").exists()
    # a brand-new trainer, SAE (different init) and source: everything must come from the checkpoint
    second = make_trainer(tmp_path / "resumed", SOURCES[source](), init_seed=1)
    assert not torch.equal(second.sae.W_enc, full.sae.W_enc)
    second.fit(resume=True)

    assert second.step == full.step == 24 and second.tokens == full.tokens
    for name, t in full.sae.state_dict().items():
        assert torch.equal(second.sae.state_dict()[name], t), name
    assert torch.equal(second.fire_counts, full.fire_counts)
    assert second.scale == full.scale
    a, b = load_sae(tmp_path / "full" / "sae"), load_sae(tmp_path / "resumed" / "sae")
    for name, t in a.state_dict().items():
        assert torch.equal(b.state_dict()[name], t), name
    # the metrics log has each logged step once, with the same values as the uninterrupted run (the log window in
    # progress at the checkpoint is checkpointed too)
    rows_full, rows_resumed = metric_rows(full.metrics_path), metric_rows(second.metrics_path)
    steps = [r["step"] for r in rows_resumed]
    assert steps == sorted(set(steps)) == [3, 6, 9, 12, 15, 18, 21, 24]
    for a, b in zip(rows_full, rows_resumed, strict=True):
        assert a == b
    # only the most recent checkpoints are kept
    assert sorted(p.name for p in second.checkpoint_dir.iterdir()) == ["step_0000000016", "step_0000000024"]


def test_resumed_metrics_rows_identical(tmp_path: Path) -> None:
    full = make_trainer(tmp_path / "full", synthetic())
    full.fit()
    make_trainer(tmp_path / "resumed", synthetic()).fit(stop_after_steps=16)
    second = make_trainer(tmp_path / "resumed", synthetic())
    second.fit(resume=True)
    assert metric_rows(second.metrics_path) == metric_rows(full.metrics_path)


def test_resume_without_checkpoint_starts_from_scratch(tmp_path: Path) -> None:
    a = make_trainer(tmp_path / "a", synthetic(), steps=5, checkpoint_every=0)
    a.fit()
    b = make_trainer(tmp_path / "b", synthetic(), steps=5, checkpoint_every=0)
    b.fit(resume=True)
    assert torch.equal(a.sae.W_dec, b.sae.W_dec)


def test_final_sae_is_folded(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, synthetic(), arch="jumprelu", steps=8, checkpoint_every=0)
    res = trainer.fit()
    assert trainer.scale > 1.5  # the synthetic data (offset 2.0) is far from E||x||^2 = 1
    sae = load_sae(res.sae_dir)
    x = next(iter(synthetic())).acts
    torch.testing.assert_close(sae(x), trainer.scale * trainer.sae(x / trainer.scale), rtol=1e-5, atol=1e-5)
    assert sae.cfg.metadata["input_scale_folded"] == trainer.scale
    assert res.summary["steps"] == 8


def test_source_width_mismatch(tmp_path: Path) -> None:
    sae = create_sae(SAEConfig(architecture="topk", d_in=D_IN + 1, d_sae=D_SAE, k=4))
    with pytest.raises(ValueError, match="d_in"):
        Trainer(sae, TrainConfig(total_tokens=BATCH, batch_size=BATCH, device="cpu"), synthetic(), tmp_path)


@pytest.mark.parametrize(
    ("arch", "beta1", "expected"),
    [("jumprelu", None, 0.0), ("topk", None, 0.9), ("standard", None, 0.9), ("jumprelu", 0.9, 0.9)],
)
def test_adam_beta1_defaults_per_architecture(tmp_path: Path, arch: str, beta1: float | None, expected: float) -> None:
    trainer = make_trainer(tmp_path, synthetic(), arch=arch, steps=2, beta1=beta1, checkpoint_every=0)
    assert trainer.optimizer.param_groups[0]["betas"][0] == expected
    assert trainer.fit().summary["beta1"] == expected
