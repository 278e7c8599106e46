"""Seeds: the same seed and inputs give a bit-identical SAE (API and CLI), the seed also fixes the SAE's initial
weights, and different seeds differ."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from chatsae.cli import main
from chatsae.sae import SAEConfig, create_sae, load_sae
from chatsae.train import TrainConfig
from chatsae.workflows import RunConfig, RunSpec, train_run

pytestmark = pytest.mark.usefixtures("single_thread")


def _state(path: Path) -> dict[str, torch.Tensor]:
    return load_sae(path).state_dict()


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("arch", ["jumprelu", "topk", "standard", "gated"])
def test_create_sae_seed_fixes_init_and_leaves_global_rng(arch: str) -> None:
    cfg = SAEConfig(architecture=arch, d_in=8, d_sae=24, k=4)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a, b, c = create_sae(cfg, seed=1), create_sae(cfg, seed=1), create_sae(cfg, seed=2)
    assert torch.equal(torch.get_rng_state(), before)  # the global RNG is untouched
    assert _equal(a.state_dict(), b.state_dict())
    assert not torch.equal(a.W_dec, c.W_dec)
    # independent reference: the seed alone decides the weights, as if drawn right after torch.manual_seed(seed)
    torch.manual_seed(1)
    assert _equal(create_sae(cfg).state_dict(), a.state_dict())


def _spec(out: Path, seed: int) -> RunSpec:
    tc = TrainConfig(
        total_tokens=8 * 64,
        batch_size=64,
        init_sample_tokens=128,
        checkpoint_every=0,
        progress=False,
        device="cpu",
        seed=seed,
    )
    return RunSpec(run=RunConfig(out_dir=str(out), activations="synthetic"), sae=SAEConfig(d_in=8), train=tc, d_sae=24)


def test_train_run_same_seed_bit_identical(tmp_path: Path) -> None:
    a = train_run(_spec(tmp_path / "a", 7))
    b = train_run(_spec(tmp_path / "b", 7))
    c = train_run(_spec(tmp_path / "c", 8))
    assert a.sae_dir and b.sae_dir and c.sae_dir
    assert (a.sae_dir / "sae_weights.safetensors").read_bytes() == (b.sae_dir / "sae_weights.safetensors").read_bytes()
    assert not _equal(_state(a.sae_dir), _state(c.sae_dir))


def _cli(out: Path, seed: int) -> None:
    rc = main(
        [
            "train",
            "--activations",
            "synthetic",
            "--d-in",
            "8",
            "--width",
            "24",
            "--arch",
            "topk",
            "--k",
            "3",
            "--total-tokens",
            "512",
            "--batch-size",
            "64",
            "--init-sample-tokens",
            "128",
            "--no-progress",
            "--seed",
            str(seed),
            "--out-dir",
            str(out),
            "--checkpoint-every",
            "4",
        ]
    )
    assert rc == 0


def test_cli_same_seed_bit_identical(tmp_path: Path) -> None:
    _cli(tmp_path / "a", 3)
    _cli(tmp_path / "b", 3)
    _cli(tmp_path / "c", 4)
    assert _equal(_state(tmp_path / "a" / "sae"), _state(tmp_path / "b" / "sae"))
    # the checkpoints at step 4 agree too (not only the end state)
    ck = "checkpoints/step_0000000004/sae.safetensors"
    assert (tmp_path / "a" / ck).read_bytes() == (tmp_path / "b" / ck).read_bytes()
    assert not _equal(_state(tmp_path / "a" / "sae"), _state(tmp_path / "c" / "sae"))


def test_seeded_sae_creation_is_thread_safe() -> None:
    """SAEs built at once in several threads (joint streaming) get exactly the weights their seeds give alone."""
    import threading

    cfg = SAEConfig(architecture="topk", d_in=32, d_sae=256, k=4)
    alone = {s: create_sae(cfg, seed=s).W_enc.detach().clone() for s in range(8)}
    built: dict[int, torch.Tensor] = {}
    start = threading.Barrier(8)

    def make(s: int) -> None:
        start.wait()
        for _ in range(20):
            built[s] = create_sae(cfg, seed=s).W_enc.detach()

    threads = [threading.Thread(target=make, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(torch.equal(built[s], alone[s]) for s in range(8))
    assert not torch.equal(alone[0], alone[1])


def test_training_and_resume_leave_the_global_rng_alone(tmp_path: Path) -> None:
    """Training draws nothing from the global torch RNG and neither seeds nor restores it: SAEs trained in threads
    (joint streaming) cannot change each other's seeded initial weights."""
    spec = _spec(tmp_path / "a", 7)
    spec.train.checkpoint_every = 4
    torch.manual_seed(123)
    before = torch.get_rng_state()
    train_run(spec)
    assert torch.equal(torch.get_rng_state(), before)
    resumed = _spec(tmp_path / "a", 7)
    resumed.train.checkpoint_every, resumed.run.resume = 4, True
    (tmp_path / "a" / "sae" / "sae_weights.safetensors").unlink()  # the run resumes from its step-4 checkpoint
    train_run(resumed)
    assert torch.equal(torch.get_rng_state(), before)
