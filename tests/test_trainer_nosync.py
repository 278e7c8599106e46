"""The step loop without per-step host syncs gives the metrics.jsonl values of the former loop.

The reference below is the former ``train_step`` (every metric read with ``.item()`` each step, the dead mask computed
twice per step, a boolean-index assignment) and the former per-window mean, written out independently of the
trainer's code."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from chatsae.activations import TensorSource
from chatsae.sae import SAEConfig, create_sae
from chatsae.train import StepMetrics, TrainConfig, Trainer
from chatsae.train.schedule import lr_at, sparsity_coef_at

pytestmark = pytest.mark.usefixtures("single_thread")


def _trainer(
    tmp_path: Path, arch: str, name: str, acts: torch.Tensor | None = None, d_sae: int = 24, k: int = 3, **train: object
) -> Trainer:
    cfg = TrainConfig(
        total_tokens=23 * 32,
        batch_size=32,
        log_every=5,
        checkpoint_every=0,
        init_sample_tokens=64,
        dead_window_tokens=96,
        progress=False,
        device="cpu",
        seed=3,
        **train,
    )  # type: ignore[arg-type]
    if acts is None:
        acts = torch.randn(400, 8, generator=torch.Generator().manual_seed(1)) * 2 + 0.5
    sae = create_sae(SAEConfig(architecture=arch, d_in=8, d_sae=d_sae, k=k), seed=3)
    return Trainer(sae, cfg, TensorSource(acts, 32, seed=3), tmp_path / name)


def _old_step(t: Trainer, batch) -> StepMetrics:
    """The former train_step, verbatim in substance."""
    x = batch.acts.to(t.device, torch.float32) / t.scale
    lr = lr_at(t.step, t.total_steps, t.cfg.lr, t.lr_end, t.lr_warmup, t.cfg.lr_warmup_start_factor, t.cfg.lr_decay)
    for group in t.optimizer.param_groups:
        group["lr"] = lr
    coef = sparsity_coef_at(t.step, t.sparsity_coef, t.coef_warmup)
    dead = t.dead_mask()
    out = t.sae.loss(x, coef, dead)
    t.optimizer.zero_grad(set_to_none=True)
    out.loss.backward()
    t.sae.remove_parallel_decoder_grad()
    torch.nn.utils.clip_grad_norm_(t.sae.parameters(), t.cfg.grad_clip_norm)
    t.optimizer.step()
    t.sae.normalize_decoder()
    if hasattr(t.sae, "clamp_threshold"):
        t.sae.clamp_threshold()
    with torch.no_grad():
        fired = out.feature_acts.float() > 1e-8
        t.state.fire_counts += fired.sum(dim=0)
        t.state.since_fired += x.shape[0]
        t.state.since_fired[fired.any(dim=0)] = 0
        t.state.step += 1
        t.state.tokens += x.shape[0]
        resid = (x - out.x_hat.float()).pow(2).sum()
        total = (x - x.mean(dim=0)).pow(2).sum().clamp_min(1e-12)
        return StepMetrics(
            out.loss.item(),
            out.mse.item(),
            (resid / total).item(),
            fired.sum(dim=-1).float().mean().item(),
            out.sparsity.item(),
            out.aux.item(),
            t.silent_mask().float().mean().item(),
        )


def _old_rows(t: Trainer) -> list[dict[str, float]]:
    t.initialise()
    stream, window, rows = iter(t.source), [], []
    while t.step < t.total_steps:
        window.append(_old_step(t, next(stream)))
        if t.step % t.cfg.log_every == 0 or t.step == t.total_steps:
            mean = {k: sum(getattr(m, k) for m in window) / len(window) for k in StepMetrics._fields}
            rows.append(
                {
                    "step": t.step,
                    "tokens": t.tokens,
                    **mean,
                    "lr": t.optimizer.param_groups[0]["lr"],
                    "sparsity_coef": sparsity_coef_at(t.step, t.sparsity_coef, t.coef_warmup),
                }
            )
            window = []
    return rows


@pytest.mark.parametrize("arch", ["jumprelu", "topk", "standard"])
def test_metrics_log_equals_the_former_per_step_formulas(tmp_path: Path, arch: str) -> None:
    new = _trainer(tmp_path, arch, "new")
    new.fit()
    logged = [json.loads(r) for r in (tmp_path / "new" / "metrics.jsonl").read_text().splitlines()]
    ref = _old_rows(_trainer(tmp_path, arch, "old"))
    assert [r["step"] for r in logged] == [5, 10, 15, 20, 23] == [r["step"] for r in ref]
    assert any(r["dead_frac"] > 0 for r in ref) or arch != "topk"  # the dead mask matters somewhere
    for got, want in zip(logged, ref, strict=True):
        for k, v in want.items():
            assert got[k] == pytest.approx(v, rel=1e-6, abs=1e-9), (got["step"], k)
    # the trained weights are those of the former loop, too
    old = _trainer(tmp_path, arch, "old2")
    _old_rows(old)
    for name, p in new.sae.state_dict().items():
        torch.testing.assert_close(p, old.sae.state_dict()[name], rtol=1e-5, atol=1e-6)


def test_non_finite_metrics_are_reported_with_their_step(tmp_path: Path) -> None:
    t = _trainer(tmp_path, "standard", "nan")
    t.initialise()
    stream = iter(t.source)
    t.state.window = [t.train_step(next(stream)) for _ in range(2)]
    with torch.no_grad():
        t.sae.W_enc.fill_(float("nan"))  # from step 3 on, the loss is NaN; read only with the window
    t.state.window += [t.train_step(next(stream)) for _ in range(2)]
    with pytest.raises(RuntimeError, match="non-finite loss/metrics at step 3"):
        t.window_rows(t.state.window)


def test_train_step_returns_device_metrics_without_reading_them() -> None:
    t = _trainer(Path("/nonexistent"), "jumprelu", "x")
    t.initialise()
    m = t.train_step(next(iter(t.source)))
    assert isinstance(m, torch.Tensor) and m.shape == (len(StepMetrics._fields),) and m.device == t.device
    assert all(math.isfinite(v) for v in m.tolist())


@pytest.mark.parametrize("cap", [False, True])
def test_auxk_dead_window_follows_the_references_unless_capped(tmp_path: Path, cap: bool) -> None:
    """SAELens/sparsify: no latent is dead before a full dead window has passed, so AuxK is 0 until then; with
    dead_window_cap the window is capped at the tokens seen (AuxK from the 2nd step). The logged dead share counts
    silent latents either way."""
    t = _trainer(tmp_path, "topk", f"cap{cap}", d_sae=96, k=1, dead_window_cap=cap)  # some latents stay silent
    t.initialise()
    stream = iter(t.source)
    rows = [StepMetrics(*t.train_step(next(stream)).tolist()) for _ in range(5)]  # 160 tokens; window 96
    silent = t.since_fired >= min(96, t.tokens)
    assert silent.any() and rows[-1].dead_frac == pytest.approx(silent.float().mean().item())
    # before a full window (96 tokens = 3 steps) has passed: AuxK only with the cap
    early = [r.aux for r in rows[:3]]
    assert all(a > 0 for a in early[1:]) if cap else all(a == 0 for a in early), early
    assert torch.equal(t.dead_mask(), silent)  # after a full window both rules agree
