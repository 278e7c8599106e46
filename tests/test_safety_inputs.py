"""Garbage in must not give "success" out: absurd outlier vectors are dropped and counted (the input scale stays what
it is on clean data), NaN/Inf stops the run before any optimizer step naming the file and row, a final FVU far above
1 makes ``chatsae train`` exit 1, and records dropped before training are counted, shown and warned about."""

from __future__ import annotations

import json
import math
import random
import string
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from chatsae.activations import TensorSource
from chatsae.activations.cache import CacheSource, CacheWriter, Manifest
from chatsae.cli import main
from chatsae.data import fast_sequences
from chatsae.data.formats import Record
from chatsae.data.sequences import SequenceStats
from chatsae.sae import SAEConfig, create_sae
from chatsae.train import TrainConfig, Trainer
from chatsae.train.init import OUTLIER_FACTOR, BadInputError, bad_rows, inlier_mask, input_scale
from chatsae.workflows import RunConfig, RunSpec, train_run

pytestmark = pytest.mark.usefixtures("single_thread")

D = 16
TC = dict(batch_size=64, progress=False, device="cpu", seed=3, log_every=4)


def _acts(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, D, generator=torch.Generator().manual_seed(seed)) * 3 + 1


def _trainer(source, tmp_path: Path, **tc) -> Trainer:
    sae = create_sae(SAEConfig(architecture="topk", k=4, d_in=D, d_sae=48), seed=1)
    return Trainer(sae, TrainConfig(**{**TC, **tc}), source, tmp_path / "run")


def _state(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in trainer.sae.state_dict().items()}


# ---- the input scale ------------------------------------------------------------------------------------------------


def test_input_scale_is_exactly_the_old_one_on_ordinary_data() -> None:
    """No vector above 1000x the median norm (an attention-sink-like row at ~141x included): bit-identical to
    sqrt(mean ||x||^2) over every row, computed independently."""
    x = _acts(4000)
    x[5] *= 141.0 / x[5].norm() * x.norm(dim=1).median()  # like position 0: ~20,000x the squared norm
    old = math.sqrt(x.double().pow(2).sum(dim=-1).mean().item())
    assert input_scale(x) == old
    assert bool(inlier_mask(x)[0].all())


def test_an_absurd_vector_does_not_move_the_scale() -> None:
    x = _acts(1000)
    clean = input_scale(x)
    y = torch.cat([x, torch.full((1, D), 1e30)])
    assert input_scale(y) == clean  # the outlier is left out exactly
    keep, limit = inlier_mask(y)
    assert keep.tolist() == [True] * 1000 + [False]
    med = x.double().norm(dim=1).median().item()  # the median norm of the 1001 rows lies among the clean ones
    assert limit == pytest.approx((OUTLIER_FACTOR * y.double().norm(dim=1).median().item()) ** 2, rel=1e-9)
    assert limit == pytest.approx((OUTLIER_FACTOR * med) ** 2, rel=0.05)


def test_bad_rows_classifies_nan_inf_and_absurd() -> None:
    x = _acts(8)
    limit = inlier_mask(x)[1]
    assert bad_rows(x, limit) is None
    x[1, 3], x[4, 0], x[6] = float("nan"), float("-inf"), 1e30  # 1e30: its float32 norm overflows, still finite data
    nonfinite, absurd = bad_rows(x, limit)
    assert nonfinite.tolist() == [i in (1, 4) for i in range(8)]
    assert absurd.tolist() == [i == 6 for i in range(8)]


# ---- outliers in training -------------------------------------------------------------------------------------------


def test_one_outlier_vector_is_dropped_counted_and_the_scale_is_sane(tmp_path: Path, capsys) -> None:
    x = _acts(2048)
    x[777] = 1e30
    path = tmp_path / "acts.safetensors"
    save_file({"acts": x}, str(path))
    trainer = _trainer(TensorSource.from_file(path, 64, seed=3), tmp_path, total_tokens=2048, init_sample_tokens=2048)
    res = trainer.fit()  # one epoch: every row is seen exactly once
    clean = torch.cat([x[:777], x[778:]])
    # the rows in the sample's (shuffled) order: summed in another order, so equal up to rounding
    ref = math.sqrt(clean.double().pow(2).sum(-1).mean().item())
    assert res.summary["input_scale"] == pytest.approx(ref, rel=1e-12)
    assert res.summary["outlier_rows_dropped"] == 1
    assert res.summary["tokens"] == 2047  # trained on every other row
    assert res.summary["status"] == "ok" and res.summary["train_fvu"] < 2
    err = capsys.readouterr().err
    assert "WARNING: dropped 1 absurd activation vector" in err and f"{path}, row 777" in err


def test_resume_keeps_the_outlier_limit_and_count_bit_identically(tmp_path: Path, capsys) -> None:
    """The limit (from the sample) and the count survive a checkpoint: a resumed run drops the same vector, once, and
    ends bit-identical to the uninterrupted run. The outlier (1e10: finite float32 norm, so only the restored limit
    catches it) sits in the 21st batch, after the interruption at step 16."""
    x = _acts(2048)
    order = torch.randperm(2048, generator=torch.Generator().manual_seed(3 * 1_000_003))  # TensorSource's epoch 0
    row = int(order[20 * 64])
    x[row] = 1e10
    path = tmp_path / "acts.safetensors"
    save_file({"acts": x}, str(path))
    tc = dict(total_tokens=2048, init_sample_tokens=2048, checkpoint_every=8)
    full = _trainer(TensorSource.from_file(path, 64, seed=3), tmp_path / "a", **tc).fit()
    assert full.summary["outlier_rows_dropped"] == 1 and "WARNING: dropped 1" in capsys.readouterr().err
    _trainer(TensorSource.from_file(path, 64, seed=3), tmp_path / "b", **tc).fit(stop_after_steps=16)
    assert "WARNING: dropped" not in capsys.readouterr().err  # not seen before the interruption
    resumed = _trainer(TensorSource.from_file(path, 64, seed=3), tmp_path / "b", **tc).fit(resume=True)
    err = capsys.readouterr().err
    assert (
        f"WARNING: dropped 1 absurd activation vector(s) (norm > 1000x the median norm), first at {path}, "
        f"row {row} at step 21" in err
    )
    assert resumed.summary["outlier_rows_dropped"] == 1 and resumed.summary["tokens"] == 2047
    a, b = full.sae_dir / "sae_weights.safetensors", resumed.sae_dir / "sae_weights.safetensors"
    assert a.read_bytes() == b.read_bytes()


def test_too_many_outliers_stop_before_training_naming_the_row(tmp_path: Path) -> None:
    x = _acts(2048)
    x[[100, 900, 1500]] = 1e25  # 3 / 2048 > 0.1%
    path = tmp_path / "acts.safetensors"
    save_file({"acts": x}, str(path))
    trainer = _trainer(TensorSource.from_file(path, 64, seed=3), tmp_path, total_tokens=640, init_sample_tokens=2048)
    before = _state(trainer)
    with pytest.raises(BadInputError, match=rf"{path}, row (100|900|1500): 3 of the 2,048 vectors .* 1000x"):
        trainer.fit()
    assert trainer.step == 0 and all(torch.equal(before[k], v) for k, v in trainer.sae.state_dict().items())


def test_outliers_after_the_sample_stop_when_they_pass_the_share(tmp_path: Path) -> None:
    x = _acts(1024)
    x[[200, 201]] = 1e20  # in the 4th batch; the sample (first batch) is clean
    trainer = _trainer(TensorSource(x, 64, shuffle=False), tmp_path, total_tokens=1024, init_sample_tokens=64)
    trainer.initialise()
    stream = iter(trainer.source)
    for _ in range(3):
        trainer.train_step(next(stream))
    before = _state(trainer)
    # 2 dropped of max(194 seen, 64) > 0.1%: stop, before the step
    with pytest.raises(BadInputError, match=r"activation tensor, row 200: 2 of 194 vectors are absurd"):
        trainer.train_step(next(stream))
    assert trainer.step == 3 and all(torch.equal(before[k], v) for k, v in trainer.sae.state_dict().items())


# ---- NaN / Inf ------------------------------------------------------------------------------------------------------


def _cache(tmp_path: Path, shards: list[np.ndarray]) -> Path:
    directory = tmp_path / "cache"
    writer = CacheWriter(directory, Manifest(d_in=D, model="m", hook="h", method="fast"))
    for i, a in enumerate(shards):
        n = len(a)
        meta = {
            "token_ids": torch.zeros(n, dtype=torch.long),
            "positions": torch.arange(n),
            "sample_ids": torch.full((n,), i, dtype=torch.long),
        }
        writer.write_shard(torch.from_numpy(a), meta, windows_done=i + 1)
    writer.finish()
    return directory


def test_nan_in_a_cache_shard_names_the_shard_and_row_before_any_step(tmp_path: Path) -> None:
    a, b = _acts(256, 1).numpy(), _acts(256, 2).numpy()
    b[37, 5] = np.nan
    directory = _cache(tmp_path, [a, b])
    trainer = _trainer(
        CacheSource(directory, 64, buffer_tokens=128, seed=3), tmp_path, total_tokens=512, init_sample_tokens=512
    )
    before = _state(trainer)
    with pytest.raises(BadInputError, match=r"shard_00001\.acts\.npy, row 37: the input activations hold NaN/Inf"):
        trainer.fit()
    assert trainer.step == 0 and all(torch.equal(before[k], v) for k, v in trainer.sae.state_dict().items())
    assert not (tmp_path / "run" / "sae").exists()


def test_inf_in_a_tensor_file_names_the_file_and_row_and_no_step_takes_it(tmp_path: Path) -> None:
    x = _acts(512)
    x[130, 2] = float("inf")  # the 3rd batch in file order; the sample is the first batch
    path = tmp_path / "acts.pt"
    torch.save(x, path)
    source = TensorSource.from_file(path, 64)
    source.shuffle = False
    trainer = _trainer(source, tmp_path, total_tokens=512, init_sample_tokens=64)
    trainer.initialise()
    stream = iter(source)
    trainer.train_step(next(stream))
    trainer.train_step(next(stream))
    before = _state(trainer)
    with pytest.raises(BadInputError, match=rf"{path}, row 130: the input activations hold NaN/Inf \(1 vector"):
        trainer.train_step(next(stream))
    assert trainer.step == 2 and all(torch.equal(before[k], v) for k, v in trainer.sae.state_dict().items())


def test_nan_through_the_cli_is_one_line_naming_the_file(tmp_path: Path, capsys) -> None:
    x = _acts(512)
    x[3, 0] = float("nan")
    path = tmp_path / "acts.npy"
    np.save(path, x.numpy())
    rc = main(
        [
            "train",
            "--activations",
            str(path),
            "--out-dir",
            str(tmp_path / "r"),
            "--total-tokens",
            "256",
            "--batch-size",
            "64",
            "--init-sample-tokens",
            "512",
            "--no-progress",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 1 and f"{path}, row 3: the input activations hold NaN/Inf" in err
    assert "lower --lr" not in err and "cannot normalise" not in err


# ---- a failed run is not a success ----------------------------------------------------------------------------------


def test_fvu_far_above_one_exits_1_and_marks_the_summary(tmp_path: Path, capsys) -> None:
    """Activations with a huge constant offset and tiny variance, b_dec at zero, two steps: the reconstruction is
    far worse than the mean (FVU >> 1). The SAE is saved, the summary says failed_quality and the CLI exits 1."""
    x = 1000.0 + 0.01 * torch.randn(512, D, generator=torch.Generator().manual_seed(0))
    path = tmp_path / "acts.safetensors"
    save_file({"acts": x}, str(path))
    rc = main(
        [
            "train",
            "--activations",
            str(path),
            "--out-dir",
            str(tmp_path / "r"),
            "--total-tokens",
            "128",
            "--batch-size",
            "64",
            "--b-dec-init",
            "zeros",
            "--arch",
            "topk",
            "--k",
            "2",
            "--no-progress",
        ]
    )
    captured = capsys.readouterr()
    assert rc == 1
    assert "chatsae train: FAILED: final train FVU" in captured.err and "> 2" in captured.err
    summary = json.loads((tmp_path / "r" / "sae" / "training_summary.json").read_text())
    assert summary["status"] == "failed_quality" and summary["train_fvu"] > 100
    assert (tmp_path / "r" / "sae" / "sae_weights.safetensors").is_file()


def test_an_ordinary_run_is_ok_and_exits_0(tmp_path: Path) -> None:
    path = tmp_path / "acts.safetensors"
    save_file({"acts": _acts(512)}, str(path))
    rc = main(
        [
            "train",
            "--activations",
            str(path),
            "--out-dir",
            str(tmp_path / "r"),
            "--total-tokens",
            "256",
            "--batch-size",
            "64",
            "--arch",
            "topk",
            "--k",
            "4",
            "--no-progress",
        ]
    )
    summary = json.loads((tmp_path / "r" / "sae" / "training_summary.json").read_text())
    assert rc == 0 and summary["status"] == "ok" and summary["outlier_rows_dropped"] == 0


# ---- counts of dropped data -----------------------------------------------------------------------------------------


def test_system_only_and_empty_samples(chat_tokenizer) -> None:
    """System-only conversations have no user/assistant content: they are deduplicated on their system text (not
    all on one empty key); a sample with no content at all is dropped and counted as empty."""
    recs = [Record(i, [{"role": "system", "content": f"You are helper number {i}."}], None) for i in range(6)]
    recs += [Record(6, [{"role": "system", "content": "You are helper number 0."}], None)]  # a true duplicate
    recs += [Record(7, [{"role": "user", "content": ""}, {"role": "assistant", "content": ""}], None)]
    stats = SequenceStats()
    seqs = list(fast_sequences(recs, chat_tokenizer, stats=stats))
    assert [s.sample_ids[0] for s in seqs] == list(range(6))
    assert (stats.n_samples, stats.n_duplicates, stats.n_empty, stats.n_sequences) == (8, 1, 1, 6)


def test_dedup_drops_are_counted_in_the_summary_and_warned(tiny_llama, tmp_path: Path) -> None:
    rng = random.Random(0)

    def words(n: int) -> str:
        return " ".join("".join(rng.choice(string.ascii_lowercase) for _ in range(5)) for _ in range(n))

    same = {"messages": [{"role": "user", "content": "🙂"}, {"role": "assistant", "content": "🙂"}]}
    distinct = [
        {"messages": [{"role": "user", "content": words(6)}, {"role": "assistant", "content": words(8)}]}
        for _ in range(20)
    ]
    lines = [json.dumps(same)] * 30 + [json.dumps(r) for r in distinct]
    lines.insert(10, "{not json")
    data = tmp_path / "chat.jsonl"
    data.write_text("\n".join(lines) + "\n")
    from chatsae.activations.pipeline import DataConfig

    report: list[str] = []
    spec = RunSpec(
        run=RunConfig(out_dir=str(tmp_path / "run"), evaluate=False),
        sae=SAEConfig(architecture="topk", k=4),
        train=TrainConfig(**{**TC, "total_tokens": 128}),
        data=DataConfig(model="tiny", data=str(data), layer=1, holdout=0, skip_bad=True),
        d_sae=96,
        model_and_tokenizer=tiny_llama,
        report=report.append,
    )
    res = train_run(spec)
    counts = res.summary["data_counts"]
    assert counts == {
        "records_skipped_bad": 1,
        "samples_read": 50,
        "samples_dedup_dropped": 29,
        "samples_empty_dropped": 0,
        "samples_truncated": 0,
    }
    saved = json.loads((res.sae_dir / "training_summary.json").read_text())
    assert saved["data_counts"] == counts and saved["outlier_rows_dropped"] == 0
    warning = [r for r in report if r.startswith("WARNING:")]
    assert warning == [
        "WARNING: 30 of 51 records (58.8%) were dropped before training: 29 by the n-gram dedup "
        "(--dedup-n; 0 disables it), 1 malformed, skipped (--skip-bad)"
    ]

    # a second run on the cache reads the counts from its manifest; the CLI table shows them
    from chatsae.workflows.train_run import count_rows

    rows = count_rows(saved)
    assert rows["samples dropped by dedup"] == "29 of 51" and rows["records skipped (--skip-bad)"] == "1 of 51"
    spec2 = RunSpec(
        run=RunConfig(out_dir=str(tmp_path / "run2"), activations=str(tmp_path / "run" / "activations")),
        sae=SAEConfig(architecture="topk", k=4),
        train=TrainConfig(**{**TC, "total_tokens": 128}),
        d_sae=96,
        report=report.append,
    )
    assert train_run(spec2).summary["data_counts"] == counts
