"""Typed configs: values from files are checked against the type hints, ranges in ``__post_init__``, sections by name;
devices and dtypes have one home each (issue 12, item 10)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

import pytest
import torch

from chatsae.activations.harvest import HarvestConfig
from chatsae.activations.pipeline import DataConfig
from chatsae.core.config import ConfigError, build, check_sections, coerce, parse_value, validate
from chatsae.core.devices import resolve_device
from chatsae.core.utils import parse_dtype
from chatsae.eval.config import EvalConfig
from chatsae.interp.autointerp import AutointerpConfig
from chatsae.interp.features import FeaturesConfig
from chatsae.interp.judges import JudgeConfig
from chatsae.sae import SAEConfig
from chatsae.train.config import TrainConfig


@dataclass
class Demo:
    n: int = 1
    lr: float = 0.1
    name: str = "x"
    flag: bool = False
    opt: int | None = None
    ids: list[int] = field(default_factory=list)
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        validate(self, positive=("n", "lr", "opt"))


# ---------------------------------------------------------------- coercion of file values


@pytest.mark.parametrize(
    ("tp", "value", "expected"),
    [
        (float, "7e-5", 7e-5),  # YAML 1.1 reads 7e-5 as a string
        (float, 3, 3),
        (int, "4_096", 4096),
        (int, 1e6, 1_000_000),
        (int, "1e3", 1000),
        (bool, "yes", True),
        (bool, False, False),
        (int | None, None, None),
        (list[int], "1,2,3", [1, 2, 3]),
        (list[int], [1.0, "2"], [1, 2]),
        (str, "resid_post.3", "resid_post.3"),
    ],
)
def test_coerce_accepts_unambiguous_values(tp, value, expected):
    out = coerce(tp, value, "f.yaml: k")
    assert out == expected and type(out) is type(expected)


@pytest.mark.parametrize(
    ("tp", "value", "message"),
    [
        (int, "abc", "f.yaml: k must be an integer, got str 'abc'"),
        (int, 1.5, "f.yaml: k must be an integer, got float 1.5"),
        (int, True, "f.yaml: k must be an integer, got bool True"),
        (float, "fast", "f.yaml: k must be a number, got str 'fast'"),
        (str, 15, "f.yaml: k must be a string, got int 15"),
        (bool, "maybe", "f.yaml: k must be true or false, got str 'maybe'"),
        (int, None, "f.yaml: k must be an integer, got null"),
        (list[int], {"a": 1}, "f.yaml: k must be a list, got dict {'a': 1}"),
        (dict, [1], "f.yaml: k must be a mapping, got list [1]"),
    ],
)
def test_coerce_rejects_wrong_types_naming_the_key(tp, value, message):
    with pytest.raises(ConfigError) as e:
        coerce(tp, value, "f.yaml: k")
    assert str(e.value) == message


def test_build_converts_file_strings_and_names_file_and_section():
    cfg = build(
        TrainConfig,
        {"train": {"lr": "7e-5", "batch_size": "256", "total_tokens": 1e4}},
        section="train",
        source="cfg.yaml",
    )
    assert cfg.lr == pytest.approx(7e-5) and cfg.batch_size == 256 and cfg.total_tokens == 10_000
    with pytest.raises(ConfigError, match=r"^cfg\.yaml: sae\.d_in must be an integer, got str 'abc'$"):
        build(SAEConfig, {"sae": {"d_in": "abc"}}, section="sae", source="cfg.yaml")
    with pytest.raises(ConfigError, match=r"^cfg\.yaml: unknown key\(s\) \['lrr'\] in section 'train'; valid keys:"):
        build(TrainConfig, {"train": {"lrr": 1}}, section="train", source="cfg.yaml")


def test_build_names_the_file_for_range_errors_of_file_values_and_the_flag_for_flags():
    file_layer = {"train": {"batch_size": 0}}
    with pytest.raises(ConfigError) as e:
        build(TrainConfig, file_layer, {}, section="train", source=["run.yaml", "command line"])
    assert str(e.value) == "run.yaml: train.batch_size must be a positive integer, got 0"
    with pytest.raises(ConfigError) as e:  # the flag overrides the file: the flag is at fault
        build(
            TrainConfig,
            {"train": {"batch_size": 64}},
            {"batch_size": 0},
            section="train",
            source=["run.yaml", "command line"],
        )
    assert str(e.value) == "--batch-size must be a positive integer, got 0"
    with pytest.raises(ConfigError) as e:
        build(SAEConfig, {"sae": {"dtype": "foo"}}, {}, section="sae", source=["run.yaml", "command line"])
    assert str(e.value) == "run.yaml: sae.dtype: unknown dtype 'foo'; use float32, float16 or bfloat16"


def test_check_sections_rejects_a_misspelled_section_and_lists_the_valid_ones():
    sections = {"train": TrainConfig, "sae": SAEConfig}
    check_sections({"train": {}, "lr": 1.0, "eval": {}}, sections, "c.yaml", other_sections={"eval"})  # no error
    with pytest.raises(ConfigError) as e:
        check_sections({"trian": {"lr": 1}}, sections, "c.yaml")
    assert str(e.value) == "c.yaml: unknown section or option 'trian'; valid sections: train, sae"
    with pytest.raises(ConfigError, match=r"^c\.yaml: section 'train' must be a mapping of options, got int 5$"):
        check_sections({"train": 5}, sections, "c.yaml")


# ---------------------------------------------------------------- command-line values


@pytest.mark.parametrize(
    ("tp", "text", "expected"),
    [(int, "1024", 1024), (int, "1e3", 1000), (int, "4_096", 4096), (float, "7e-5", 7e-5), (int | None, "none", None)],
)
def test_flag_values_parse(tp, text, expected):
    assert parse_value(tp, text) == expected


@pytest.mark.parametrize(
    ("tp", "text", "message"),
    [
        (int, "1.5", "expected an integer, got '1.5'"),  # never truncated to 1
        (int, "abc", "expected an integer, got 'abc'"),
        (float, "x", "expected a number, got 'x'"),
        (bool, "maybe", "expected true/false, got 'maybe'"),
        (dict, "[1]", "expected a JSON object, got '[1]'"),
    ],
)
def test_flag_values_reject_with_argparse_errors(tp, text, message):
    with pytest.raises(argparse.ArgumentTypeError) as e:
        parse_value(tp, text)
    assert str(e.value) == message


# ---------------------------------------------------------------- __post_init__ validation


def test_validate_helper_messages():
    assert Demo(n=3, lr=0.5, opt=None).n == 3
    for kwargs, message in [
        ({"n": 0}, "--n must be a positive integer, got 0"),
        ({"lr": -1.0}, "--lr must be a positive number, got -1.0"),
        ({"opt": 0}, "--opt must be a positive integer, got 0"),
        ({"n": 1.5}, "--n must be an integer, got 1.5"),
        ({"lr": "fast"}, "--lr must be a number, got 'fast'"),
        ({"lr": float("nan")}, "--lr must be a finite number, got nan"),
    ]:
        with pytest.raises(ConfigError) as e:
            Demo(**kwargs)
        assert str(e.value) == message and e.value.option == next(iter(kwargs)), kwargs


@pytest.mark.parametrize(
    ("cls", "kwargs", "message"),
    [
        (TrainConfig, {"batch_size": 0}, "--batch-size must be a positive integer, got 0"),
        (TrainConfig, {"log_every": 0}, "--log-every must be a positive integer, got 0"),
        (TrainConfig, {"beta1": 1.0}, "--beta1 must be in [0, 1), got 1.0"),
        (TrainConfig, {"beta2": -0.5}, "--beta2 must be in [0, 1), got -0.5"),
        (TrainConfig, {"sparsity_coef": -0.1}, "--sparsity-coef must be >= 0, got -0.1"),
        (TrainConfig, {"lr_warmup_steps": -1}, "--lr-warmup-steps must be >= 0, got -1"),
        (TrainConfig, {"sparsity_warmup_steps": -1}, "--sparsity-warmup-steps must be >= 0, got -1"),
        (TrainConfig, {"grad_clip_norm": -1.0}, "--grad-clip-norm must be >= 0, got -1.0"),
        (TrainConfig, {"lr": 0.0}, "--lr must be a positive number, got 0.0"),
        (TrainConfig, {"keep_checkpoints": 0}, "--keep-checkpoints must be a positive integer, got 0"),
        (TrainConfig, {"lr_decay": "exp"}, "--lr-decay must be one of cosine, linear, constant; got 'exp'"),
        (TrainConfig, {"total_tokens": 100}, "--total-tokens (100) must be >= --batch-size (1024)"),
        (TrainConfig, {"device": "foo"}, "--device: unknown device 'foo'; use auto, cpu, cuda, cuda:N or mps"),
        (TrainConfig, {"device": "meta"}, "--device: unsupported device 'meta'; use auto, cpu, cuda, cuda:N or mps"),
        (SAEConfig, {"jumprelu_bandwidth": 0.0}, "--jumprelu-bandwidth must be a positive number, got 0.0"),
        (SAEConfig, {"dtype": "float64x"}, "--dtype: unknown dtype 'float64x'; use float32, float16 or bfloat16"),
        (SAEConfig, {"dtype": "int8"}, "--dtype: unknown dtype 'int8'; use float32, float16 or bfloat16"),
        (SAEConfig, {"d_in": 0}, "--d-in must be a positive integer, got 0"),
        (SAEConfig, {"architecture": "topk", "k": 0}, "--k must be a positive integer, got 0"),
        (SAEConfig, {"aux_coef": -1.0}, "--aux-coef must be >= 0, got -1.0"),
        (DataConfig, {"holdout": -1}, "--holdout must be >= 0, got -1"),
        (DataConfig, {"max_length": 0}, "--max-length must be a positive integer, got 0"),
        (DataConfig, {"model_dtype": "foo"}, "--model-dtype: unknown dtype 'foo'; use float32, float16 or bfloat16"),
        (
            DataConfig,
            {"data_format": "csv"},
            "--data-format must be one of auto, messages, sharegpt, alpaca, qa, "
            "text, chat, openai, conversation, gsm8k, txt; got 'csv'",
        ),
        (HarvestConfig, {"batch_tokens": 0}, "--batch-tokens must be a positive integer, got 0"),
        (HarvestConfig, {"max_tokens": -5}, "--max-tokens must be a positive integer, got -5"),
        (EvalConfig, {"dense_threshold": 2.0}, "--dense-threshold must be in [0, 1], got 2.0"),
        (EvalConfig, {"max_samples": 0}, "--max-samples must be a positive integer, got 0"),
        (FeaturesConfig, {"top_k": 0}, "--top-k must be a positive integer, got 0"),
        (FeaturesConfig, {"dtype": "float8"}, "--dtype: unknown dtype 'float8'; use float32, float16 or bfloat16"),
        (AutointerpConfig, {"attempts": 0}, "--attempts must be a positive integer, got 0"),
        (
            AutointerpConfig,
            {"protocol": "vibes"},
            "--protocol: unknown protocol(s) ['vibes']; use fast, detection, fuzzing or all",
        ),
        (JudgeConfig, {"concurrency": 0}, "--concurrency must be a positive integer, got 0"),
        (JudgeConfig, {"judge": "claude"}, "--judge: unknown judge 'claude'; use local or openai"),
    ],
)
def test_config_post_init_names_the_option(cls, kwargs, message):
    with pytest.raises(ValueError) as e:
        cls(**kwargs)
    assert str(e.value) == message


def test_hook_is_checked_at_parse_time():
    with pytest.raises(ConfigError, match=r"^--hook: unknown hook point 'blocks\.x'"):
        DataConfig(hook="blocks.x")
    assert DataConfig(hook="blocks.3.hook_resid_post").hook == "blocks.3.hook_resid_post"


def test_dtype_aliases_are_normalised():
    assert SAEConfig(dtype="bf16").dtype == "bfloat16" and SAEConfig(dtype="torch.float16").dtype == "float16"
    assert parse_dtype("fp32") is torch.float32 and parse_dtype(torch.bfloat16) is torch.bfloat16
    with pytest.raises(ValueError, match="unknown dtype 5"):
        parse_dtype(5)  # type: ignore[arg-type]


# ---------------------------------------------------------------- devices


def test_resolve_device_is_the_one_home():
    from chatsae.models import resolve_device as models_resolve
    from chatsae.train import trainer

    assert models_resolve is resolve_device and trainer.resolve_device is resolve_device
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(ValueError, match=r"^--model-device: unknown device 'gpu0'"):
        resolve_device("gpu0", option="model_device")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_without_cuda_is_an_error_at_parse_time():
    with pytest.raises(ConfigError) as e:
        TrainConfig(device="cuda")
    assert str(e.value).startswith("--device cuda: CUDA is not available on this machine")
    with pytest.raises(ConfigError, match=r"^--model-device cuda:1: CUDA is not available"):
        DataConfig(model_device="cuda:1")


@pytest.mark.skipif(
    bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available(),
    reason="checks the error on a machine without MPS",
)
def test_mps_without_mps_is_an_error():
    with pytest.raises(ValueError, match=r"^--device mps: MPS is not available on this machine"):
        resolve_device("mps")
