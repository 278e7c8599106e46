"""Several SAEs from one harvest (--hooks): one forward pass per model batch for every hook, and each SAE equal to
the single-hook run on the same data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import chat_record_list as _records

from chatsae.activations.harvest import HarvestConfig
from chatsae.activations.pipeline import DataConfig
from chatsae.sae import SAEConfig, load_sae
from chatsae.train import TrainConfig
from chatsae.workflows import RunConfig, RunSpec, train_run
from chatsae.workflows.multi_sae import train_runs
from chatsae.workflows.train_run import default_out_dir

pytestmark = pytest.mark.usefixtures("single_thread")
TC = dict(
    total_tokens=5 * 64, batch_size=64, init_sample_tokens=128, checkpoint_every=0, progress=False, device="cpu", seed=7
)


def _spec(tmp_path: Path, tiny_llama, out: str, **data_kw) -> RunSpec:
    data = tmp_path / "chat.jsonl"
    if not data.is_file():
        data.write_text("".join(json.dumps({"messages": r.messages}) + "\n" for r in _records(30)))
    return RunSpec(
        run=RunConfig(out_dir=str(tmp_path / out), eval_max_samples=2),
        sae=SAEConfig(architecture="jumprelu"),
        train=TrainConfig(**TC),
        data=DataConfig(model="tiny", data=str(data), holdout=3, buffer_tokens=256, **data_kw),
        harvest=HarvestConfig(shard_tokens=300),
        d_sae=96,
        model_and_tokenizer=tiny_llama,
        report=lambda m: None,
    )


def test_two_hooks_one_harvest_each_sae_equals_the_single_hook_run(tiny_llama, tmp_path: Path, monkeypatch) -> None:
    from chatsae.activations import harvest as harvest_mod

    passes: list[list[str]] = []  # the hooks of each harvest forward pass (of each batch)
    capture = harvest_mod.capture_sharing_prefix

    def spy(model, hooks, *args, **kw):
        passes.append([str(h) for h in hooks])
        return capture(model, hooks, *args, **kw)

    monkeypatch.setattr(harvest_mod, "capture_sharing_prefix", spy)
    results = train_runs(_spec(tmp_path, tiny_llama, "multi", hooks="resid_post.1,resid_post.2"))
    multi_passes, passes[:] = list(passes), []
    single = [
        train_run(_spec(tmp_path, tiny_llama, f"single{i}", hook=h))
        for i, h in enumerate(["resid_post.1", "resid_post.2"])
    ]
    assert multi_passes and all(p == ["resid_post.1", "resid_post.2"] for p in multi_passes)
    assert len(passes) == 2 * len(multi_passes)  # two single runs: twice the forward passes
    assert [r.out_dir for r in results] == [tmp_path / "multi" / "resid_post.1", tmp_path / "multi" / "resid_post.2"]
    for res, ref in zip(results, single, strict=True):
        assert (res.out_dir / "eval.json").is_file() and (res.out_dir / "metrics.jsonl").is_file() and res.rows
        a, b = load_sae(res.sae_dir), load_sae(ref.sae_dir)
        assert a.cfg.metadata["hook_name"] == b.cfg.metadata["hook_name"] == str(res.context.hook)
        for name, t in b.state_dict().items():
            torch.testing.assert_close(a.state_dict()[name], t, rtol=1e-6, atol=1e-7, msg=name)
        assert res.summary["train_fvu"] == pytest.approx(ref.summary["train_fvu"], rel=1e-6)
    caches = sorted(p.name for p in (tmp_path / "multi" / "activations").iterdir() if p.is_dir())
    assert caches == ["resid_post.1", "resid_post.2"]  # one cache per hook under the run's folder


def test_hooks_option_names_and_errors(tiny_llama, tmp_path: Path, monkeypatch) -> None:
    spec = _spec(tmp_path, tiny_llama, "x", hooks="resid_post.1, resid_post.2")
    spec.run.out_dir = None
    assert default_out_dir(spec) == Path("runs/tiny_resid_post.1+resid_post.2_fast_jumprelu")
    monkeypatch.setenv("WORLD_SIZE", "2")  # several streamed SAEs: one process only
    with pytest.raises(ValueError, match="several SAEs with --cache none train in one process"):
        train_runs(_spec(tmp_path, tiny_llama, "y", hooks="resid_post.1,resid_post.2", cache="none"))
    monkeypatch.delenv("WORLD_SIZE")
    with pytest.raises(ValueError, match="hooks"):
        DataConfig(hooks="resid_post.1,bogus.3")


def test_cli_hooks_harvest_and_train(tiny_llama, tmp_path: Path, capsys) -> None:
    from chatsae.activations.cache import Manifest
    from chatsae.cli import main

    model, tok = tiny_llama
    model.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps({"messages": r.messages}) + "\n" for r in _records(30)))
    common = [
        "--model",
        str(tmp_path / "model"),
        "--data",
        str(data),
        "--hooks",
        "resid_post.2,resid_post.0",
        "--holdout",
        "3",
    ]
    assert main(["harvest", *common, "--out-dir", str(tmp_path / "h"), "--max-tokens", "500"]) == 0
    a, b = (Manifest.read(tmp_path / "h" / "activations" / h) for h in ("resid_post.2", "resid_post.0"))
    assert (a.hook, b.hook) == ("resid_post.2", "resid_post.0") and a.n_tokens == b.n_tokens >= 500
    capsys.readouterr()
    assert (
        main(
            [
                "train",
                *common,
                "--out-dir",
                str(tmp_path / "t"),
                "--width",
                "96",
                "--total-tokens",
                "512",
                "--batch-size",
                "128",
                "--init-sample-tokens",
                "256",
                "--no-progress",
                "--eval-max-samples",
                "2",
                "--buffer-tokens",
                "256",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert out.count("chatsae train: result") == 2
    for h in ("resid_post.2", "resid_post.0"):
        assert load_sae(tmp_path / "t" / h / "sae").cfg.metadata["hook_name"] == h


def test_several_saes_on_one_hook_share_one_harvest(tiny_llama, tmp_path: Path, monkeypatch) -> None:
    """--saes: one harvest for every entry; each SAE equals the single run with the same options."""
    from chatsae.activations import harvest as harvest_mod

    passes: list[int] = []
    capture = harvest_mod.capture_sharing_prefix

    def spy(model, hooks, *args, **kw):
        passes.append(1)
        return capture(model, hooks, *args, **kw)

    monkeypatch.setattr(harvest_mod, "capture_sharing_prefix", spy)
    spec = _spec(tmp_path, tiny_llama, "multi", hook="resid_post.1")
    spec.run.saes = "jumprelu:sparsity_coef=0.01,topk:k=8:lr=0.001"
    results = train_runs(spec)
    n_multi, passes[:] = len(passes), []
    assert [r.out_dir.name for r in results] == ["jumprelu_sparsity_coef0.01", "topk_k8_lr0.001"]
    single = _spec(tmp_path, tiny_llama, "single", hook="resid_post.1")
    single.sae, single.train = SAEConfig(architecture="topk", k=8), TrainConfig(**{**TC, "lr": 0.001})
    ref = train_run(single)
    assert n_multi == len(passes) > 0  # the two SAEs cost one harvest
    got = load_sae(results[1].sae_dir)
    assert got.cfg.architecture == "topk" and got.cfg.k == 8
    for name, t in load_sae(ref.sae_dir).state_dict().items():
        torch.testing.assert_close(got.state_dict()[name], t, rtol=1e-6, atol=1e-7, msg=name)
    first = json.loads((results[0].sae_dir / "config.json").read_text())
    assert first["train"]["sparsity_coef"] == 0.01 and (results[0].out_dir / "eval.json").is_file()


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("jumprelu:sparsity_coef", "not FIELD=VALUE"),
        ("nope", "architecture"),
        ("topk:k=abc", "k"),
        ("topk:colour=red", "unknown field 'colour'"),
        ("topk:k=8,topk:k=8", "unique"),
    ],
)
def test_saes_option_errors(text: str, match: str) -> None:
    from chatsae.workflows.multi_sae import parse_saes

    with pytest.raises(ValueError, match=match):
        RunConfig(saes=text)
    assert [v.name for v in parse_saes("topk:k=8, jumprelu:name=mine")] == ["topk_k8", "mine"]


def test_streamed_together_each_sae_equals_its_own_streaming_run(tiny_llama, tmp_path: Path, monkeypatch) -> None:
    """--cache none with two hooks x two --saes entries: four SAEs trained in threads from one streamed harvest (each
    data window run through the model once for both hooks), each equal to a single --cache none run of its own."""
    from chatsae.activations import streaming

    runs: list[int] = []  # window passes of the model, per harvest
    window_activations = streaming.window_activations

    def spy(model, tokenizer, hooks, *args, **kw):
        runs.append(len(hooks))
        return window_activations(model, tokenizer, hooks, *args, **kw)

    monkeypatch.setattr(streaming, "window_activations", spy)
    hooks, saes = "resid_post.1,resid_post.2", "jumprelu:name=a,topk:k=8:seed=3:name=b"
    spec = _spec(tmp_path, tiny_llama, "multi", hooks=hooks, cache="none")
    spec.run.saes = saes
    results = train_runs(spec)
    together, runs[:] = list(runs), []
    assert [r.out_dir.relative_to(tmp_path / "multi").as_posix() for r in results] == [
        "resid_post.1/a",
        "resid_post.1/b",
        "resid_post.2/a",
        "resid_post.2/b",
    ]
    assert not (tmp_path / "multi" / "activations").exists()  # nothing cached on disk
    for res in results:
        hook, name = res.out_dir.parent.name, res.out_dir.name
        one = _spec(tmp_path, tiny_llama, f"single_{hook}_{name}", hook=hook, cache="none")
        one.run.saes = saes.split(",")[name == "b"]
        ref = train_runs(one)[0]
        assert (res.out_dir / "eval.json").is_file() and res.rows["eval fvu"] == ref.rows["eval fvu"]
        a, b = load_sae(res.sae_dir), load_sae(ref.sae_dir)
        assert a.cfg.architecture == b.cfg.architecture == ("jumprelu" if name == "a" else "topk")
        for key, t in b.state_dict().items():
            torch.testing.assert_close(a.state_dict()[key], t, rtol=1e-6, atol=1e-7, msg=f"{hook}/{name}: {key}")
    assert together and all(n == 2 for n in together) and all(n == 1 for n in runs)
    assert len(together) < len(runs) / 2  # the four single runs harvested more than twice as many windows


def test_streamed_together_run_killed_midway_resumes_to_the_same_saes(tiny_llama, tmp_path: Path, monkeypatch) -> None:
    """One SAE of a --cache none joint run fails after its step-4 checkpoint; `--resume` ends with both SAEs equal to
    those of an uninterrupted joint run."""
    from chatsae.train import checkpoints

    def joint(out: str, resume: bool = False) -> list:
        spec = _spec(tmp_path, tiny_llama, out, cache="none")
        spec.run.saes, spec.run.resume, spec.run.evaluate = "jumprelu:name=a,topk:k=8:name=b", resume, False
        spec.train.checkpoint_every = 2
        return train_runs(spec)

    ref = joint("whole")
    save = checkpoints.save_checkpoint

    def crash(path, state, *args):
        saved = save(path, state, *args)
        if path.parent.parent.name == "b" and state.step == 4:
            raise RuntimeError("killed")
        return saved

    monkeypatch.setattr(checkpoints, "save_checkpoint", crash)
    with pytest.raises(RuntimeError, match="killed"):
        joint("cut")
    assert not (tmp_path / "cut" / "b" / "sae").exists() and (tmp_path / "cut" / "a" / "sae").is_dir()
    monkeypatch.setattr(checkpoints, "save_checkpoint", save)
    for res, whole in zip(joint("cut", resume=True), ref, strict=True):
        a, b = load_sae(res.sae_dir), load_sae(whole.sae_dir)
        for key, t in b.state_dict().items():
            torch.testing.assert_close(a.state_dict()[key], t, rtol=0, atol=0, msg=f"{res.out_dir.name}: {key}")
