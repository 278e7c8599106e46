"""train_run, the one orchestration of a training run: each source (synthetic, tensor file, harvest from a model)
gives the same SAE as building the pieces by hand, d_sae comes from the expansion factor unless given, provenance and
the run config are saved, and a harvest ends with the held-out evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from chatsae.activations import TensorSource
from chatsae.activations.pipeline import DataConfig
from chatsae.sae import SAEConfig, create_sae, load_sae
from chatsae.train import TrainConfig, Trainer
from chatsae.workflows import RunConfig, RunSpec, train_run

pytestmark = pytest.mark.usefixtures("single_thread")

TC = dict(
    total_tokens=6 * 64, batch_size=64, init_sample_tokens=128, checkpoint_every=2, progress=False, device="cpu", seed=5
)


def _tensor_file(tmp_path: Path) -> Path:
    path = tmp_path / "acts.safetensors"
    save_file({"acts": torch.randn(300, 12, generator=torch.Generator().manual_seed(0)) * 3}, str(path))
    return path


def test_tensor_file_run_matches_the_pieces_by_hand(tmp_path: Path) -> None:
    path = _tensor_file(tmp_path)
    spec = RunSpec(
        run=RunConfig(out_dir=str(tmp_path / "run"), activations=str(path), expansion_factor=3),
        sae=SAEConfig(architecture="topk", k=4, metadata={"note": "x"}),
        train=TrainConfig(**TC),
        metadata={"extra": 1},
        extra_config={"study": {"k": 4}},
    )
    res = train_run(spec)
    assert res.sae_dir == tmp_path / "run" / "sae" and res.out_dir == tmp_path / "run" and res.context is None
    sae = load_sae(res.sae_dir)
    assert (sae.cfg.d_in, sae.cfg.d_sae, sae.cfg.k) == (12, 36, 4)  # d_sae = expansion_factor x d_in
    assert sae.cfg.metadata["activations"] == str(path) and sae.cfg.metadata["note"] == "x"
    assert sae.cfg.metadata["extra"] == 1
    saved = json.loads((res.sae_dir / "config.json").read_text())
    assert saved["study"] == {"k": 4} and saved["train"]["seed"] == 5 and saved["run"]["expansion_factor"] == 3
    assert res.summary["steps"] == 6 and res.rows == {}

    # the same run assembled by hand (independent of train_run): bit-identical SAE
    cfg = SAEConfig(architecture="topk", k=4, d_in=12, d_sae=36)
    by_hand = Trainer(
        create_sae(cfg, seed=5), TrainConfig(**TC), TensorSource.from_file(path, 64, seed=5), tmp_path / "hand"
    ).fit()
    ref = load_sae(by_hand.sae_dir)
    for name, t in ref.state_dict().items():
        assert torch.equal(sae.state_dict()[name], t), name


def test_explicit_d_sae_and_synthetic_recovery_row(tmp_path: Path) -> None:
    spec = RunSpec(
        run=RunConfig(out_dir=str(tmp_path / "s"), activations="synthetic", expansion_factor=3),
        sae=SAEConfig(d_in=8),
        train=TrainConfig(**TC),
        d_sae=20,
    )
    res = train_run(spec)
    assert load_sae(res.sae_dir).cfg.d_sae == 20
    assert res.rows["true features recovered (cos > 0.9)"].endswith("%")


def test_default_out_dirs() -> None:
    from chatsae.workflows.train_run import default_out_dir

    synthetic = RunSpec(run=RunConfig(activations="synthetic"))
    assert default_out_dir(synthetic) == Path("runs/synthetic_synthetic_synthetic_jumprelu")
    tensor = RunSpec(run=RunConfig(activations="x/acts.npy"), sae=SAEConfig(architecture="topk"))
    assert default_out_dir(tensor) == Path("runs/acts_topk")
    spec = RunSpec(data=DataConfig(model="a/b.gguf", layer=3, method="bt-f"))
    assert default_out_dir(spec) == Path("runs/b_resid_post.3_bt-f_jumprelu")


def test_harvest_run_evaluates_held_out(tiny_llama, tmp_path: Path) -> None:
    from conftest import chat_record_list as _records

    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps({"messages": r.messages}) + "\n" for r in _records(30)))
    lines: list[str] = []
    spec = RunSpec(
        run=RunConfig(out_dir=str(tmp_path / "run"), eval_max_samples=3),
        sae=SAEConfig(architecture="topk", k=4),
        train=TrainConfig(**{**TC, "total_tokens": 4 * 64}),
        data=DataConfig(model="tiny", data=str(data), layer=1, holdout=4),
        d_sae=96,
        model_and_tokenizer=tiny_llama,
        report=lines.append,
    )
    res = train_run(spec)
    assert res.context is not None and str(res.context.hook) == "resid_post.1" and len(res.context.held_out) == 4
    assert any(line.startswith("harvested ") for line in lines)
    sae = load_sae(res.sae_dir)
    assert sae.cfg.metadata["eval_data"] == str(tmp_path / "run" / "heldout.jsonl")
    assert len((tmp_path / "run" / "heldout.jsonl").read_text().splitlines()) == 4
    assert (tmp_path / "run" / "eval.json").is_file() and res.rows  # the held-out evaluation ran

    # an SAE trained later on that cache carries the harvest's settings, so that it is evaluated alike
    # (before: only model/hook/method, and `chatsae eval` spliced position 0, the attention sink, into the model)
    from chatsae.eval.config import EvalConfig, resolve_config

    again = RunSpec(
        run=RunConfig(out_dir=str(tmp_path / "again"), activations=str(tmp_path / "run" / "activations")),
        sae=SAEConfig(architecture="topk", k=4),
        train=TrainConfig(**{**TC, "total_tokens": 2 * 64}),
        d_sae=96,
    )
    meta = load_sae(train_run(again).sae_dir).cfg.metadata
    keys = (
        "model_name",
        "hook_name",
        "method",
        "context_size",
        "max_length",
        "data",
        "holdout",
        "holdout_seed",
        "exclude_first_position",
        "exclude_special",
        "exclude_bos",
    )
    assert {k: meta.get(k) for k in keys} == {k: sae.cfg.metadata[k] for k in keys}
    assert meta["exclude_first_position"] is True and meta["holdout"] == 4
    for m in (meta, sae.cfg.metadata):
        resolved = resolve_config(EvalConfig(), m, data_from_metadata=True)
        assert resolved.splice_first_position is False and resolved.hook == "resid_post.1"
