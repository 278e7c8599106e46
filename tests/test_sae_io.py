"""Saving and loading SAEs in the SAELens directory format: exact round trips and clear errors on bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from chatsae.sae import SAEConfig, create_sae, load_sae, save_sae
from chatsae.sae.io import CFG_FILE, CHECKSUMS_FILE, SPARSITY_FILE, WEIGHTS_FILE, load_sparsity, read_cfg

pytestmark = pytest.mark.usefixtures("single_thread")

VARIANTS = [("jumprelu", "direct"), ("jumprelu", "log"), ("standard", None), ("topk", None), ("gated", None)]
SAELENS_TENSORS = {
    "jumprelu": {"W_enc", "W_dec", "b_enc", "b_dec", "threshold"},
    "standard": {"W_enc", "W_dec", "b_enc", "b_dec"},
    "topk": {"W_enc", "W_dec", "b_enc", "b_dec"},
    "gated": {"W_enc", "W_dec", "b_gate", "b_mag", "r_mag", "b_dec"},
}


def saved(random_sae, tmp_path: Path, arch: str, param: str | None = None, **kw):
    cfg = {"jumprelu_threshold_param": param} if param else {}
    sae = random_sae(arch, metadata={"model_name": "m", "hook_name": "resid_post.3", "context_size": 128}, **cfg)
    return sae, save_sae(sae, tmp_path / f"sae_{arch}", **kw)


@pytest.mark.parametrize(("arch", "param"), VARIANTS)
def test_round_trip_is_exact(random_sae, tmp_path: Path, arch: str, param: str | None) -> None:
    sparsity = torch.randn(48)
    sae, path = saved(random_sae, tmp_path, arch, param, sparsity=sparsity, extra={"config.json": {"a": 1}})
    loaded = load_sae(path)
    assert type(loaded) is type(sae)
    assert loaded.cfg == sae.cfg
    assert loaded.state_dict().keys() == sae.state_dict().keys()
    for name, t in sae.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], t), name
    x = torch.randn(7, 16)
    assert torch.equal(loaded(x), sae(x))
    assert torch.equal(load_sparsity(path), sparsity)
    assert json.loads((path / "config.json").read_text()) == {"a": 1}
    # the on-disk tensors carry the SAELens names; cfg.json the SAELens keys
    assert set(load_file(str(path / WEIGHTS_FILE))) == SAELENS_TENSORS[arch]
    raw = json.loads((path / CFG_FILE).read_text())
    assert raw["architecture"] == arch and raw["d_in"] == 16 and raw["d_sae"] == 48
    # SAELens view: TransformerLens hook name and the format version SAELens keys on; chatsae keeps its own
    assert raw["metadata"]["hook_name"] == "blocks.3.hook_resid_post"
    assert raw["metadata"]["sae_lens_version"] == "6.0.0" and raw["metadata"]["context_size"] == 128
    assert raw["chatsae"]["metadata"]["hook_name"] == "resid_post.3"
    assert raw["apply_b_dec_to_input"] == sae.cfg.apply_b_dec_to_input
    if arch == "topk":
        assert raw["k"] == sae.cfg.k
    if arch == "jumprelu":
        assert torch.equal(load_file(str(path / WEIGHTS_FILE))["threshold"], sae.threshold.detach())


def test_save_replaces_existing_directory_atomically(random_sae, tmp_path: Path) -> None:
    a, path = saved(random_sae, tmp_path, "topk", sparsity=torch.zeros(48))
    b = random_sae("topk", seed=1)
    save_sae(b, path)
    assert torch.equal(load_sae(path).W_enc, b.W_enc)
    assert load_sparsity(path) is None  # nothing left over from the old directory
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary siblings left


def test_saelens_style_cfg_without_chatsae_block(random_sae, tmp_path: Path) -> None:
    """A cfg.json with only SAELens keys (as SAELens writes it) loads with the right architecture settings."""
    sae, path = saved(random_sae, tmp_path, "topk")
    raw = json.loads((path / CFG_FILE).read_text())
    raw.pop("chatsae")
    raw["dtype"] = "torch.float32"
    (path / CFG_FILE).write_text(json.dumps(raw))
    cfg = read_cfg(path)
    assert (cfg.architecture, cfg.d_in, cfg.d_sae, cfg.k, cfg.dtype) == ("topk", 16, 48, 5, "float32")
    assert cfg.metadata["hook_name"] == "blocks.3.hook_resid_post"
    x = torch.randn(3, 16)
    assert torch.equal(load_sae(path)(x), sae(x))


def write_cfg(path: Path, raw: dict) -> None:
    (path / CFG_FILE).write_text(json.dumps(raw))


def test_pre_6_saelens_cfg(random_sae, tmp_path: Path) -> None:
    """Older SAELens configs: metadata keys at the top level, hook_point, k in activation_fn_kwargs, and
    apply_b_dec_to_input defaulting to True for every architecture (as SAELens reads them)."""
    sae, path = saved(random_sae, tmp_path, "topk")
    write_cfg(
        path,
        {
            "architecture": "topk",
            "d_in": 16,
            "d_sae": 48,
            "dtype": "torch.float32",
            "activation_fn_kwargs": {"k": 5},
            "hook_point": "blocks.3.hook_resid_post",
            "model_name": "gpt2",
            "context_size": 64,
            "normalize_activations": False,
        },
    )
    cfg = read_cfg(path)
    assert (cfg.k, cfg.apply_b_dec_to_input) == (5, True)
    assert cfg.metadata == {"hook_name": "blocks.3.hook_resid_post", "model_name": "gpt2", "context_size": 64}
    x = torch.randn(3, 16)
    assert torch.equal(load_sae(path)(x), sae(x))
    write_cfg(path, {"architecture": "topk", "d_in": 16, "d_sae": 48})
    with pytest.raises(ValueError, match=r"cfg\.json.*'k'"):
        read_cfg(path)


def test_saelens_log_threshold_and_topk_decoder_rescale(random_sae, tmp_path: Path) -> None:
    # JumpReLU stored as log_threshold (older SAELens training checkpoints)
    sae, path = saved(random_sae, tmp_path, "jumprelu")
    tensors = load_file(str(path / WEIGHTS_FILE))
    tensors["log_threshold"] = tensors.pop("threshold").log()
    save_file(tensors, str(path / WEIGHTS_FILE))
    (path / CHECKSUMS_FILE).unlink()  # as SAELens writes it: no checksums
    torch.testing.assert_close(load_sae(path).threshold, sae.threshold.detach())
    # TopK with rescale_acts_by_decoder_norm and non-unit decoder rows: z_i * ||d_i|| selects, f_i / ||d_i|| decodes
    sae, path = saved(random_sae, tmp_path, "topk")
    norms = torch.linspace(0.3, 3.0, 48)
    tensors = load_file(str(path / WEIGHTS_FILE))
    tensors["W_dec"] = tensors["W_dec"] * norms[:, None]
    save_file(tensors, str(path / WEIGHTS_FILE))
    (path / CHECKSUMS_FILE).unlink()
    raw = json.loads((path / CFG_FILE).read_text())
    raw.pop("chatsae")
    write_cfg(path, {**raw, "rescale_acts_by_decoder_norm": True})
    loaded = load_sae(path)
    x = torch.randn(9, 16)
    z = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    kept = (z * norms).topk(5, dim=-1)
    f = torch.zeros_like(z).scatter(-1, kept.indices, kept.values.relu())
    want = (f / norms) @ tensors["W_dec"] + sae.b_dec
    torch.testing.assert_close(loaded(x), want)
    torch.testing.assert_close(loaded.encode(x), f)


# ---- bad input ---------------------------------------------------------------------------------------------------
def test_missing_cfg(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="cfg.json"):
        load_sae(tmp_path)
    with pytest.raises(FileNotFoundError, match="cfg.json"):
        load_sae(tmp_path / "nowhere")


def test_cfg_not_an_object(tmp_path: Path) -> None:
    (tmp_path / CFG_FILE).write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"cfg\.json.*JSON object"):
        load_sae(tmp_path)


def test_corrupt_weights(random_sae, tmp_path: Path) -> None:
    _, path = saved(random_sae, tmp_path, "gated")
    (path / WEIGHTS_FILE).write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match=WEIGHTS_FILE):
        load_sae(path)


def test_missing_weights(random_sae, tmp_path: Path) -> None:
    _, path = saved(random_sae, tmp_path, "standard")
    (path / WEIGHTS_FILE).unlink()
    with pytest.raises(FileNotFoundError, match=WEIGHTS_FILE):
        load_sae(path)


def test_invalid_json(random_sae, tmp_path: Path) -> None:
    _, path = saved(random_sae, tmp_path, "standard")
    (path / CFG_FILE).write_text("{not json")
    with pytest.raises(ValueError, match=r"cfg\.json.*invalid JSON"):
        load_sae(path)


@pytest.mark.parametrize("where", ["top", "chatsae"])
def test_unknown_architecture(random_sae, tmp_path: Path, where: str) -> None:
    _, path = saved(random_sae, tmp_path, "standard")
    raw = json.loads((path / CFG_FILE).read_text())
    if where == "top":
        raw.pop("chatsae")
        raw["architecture"] = "relu2"
    else:
        raw["chatsae"]["architecture"] = "relu2"
    (path / CFG_FILE).write_text(json.dumps(raw))
    with pytest.raises(ValueError, match=r"cfg\.json.*architecture.*relu2"):
        load_sae(path)


@pytest.mark.parametrize("field", ["architecture", "d_in", "d_sae"])
def test_missing_field(random_sae, tmp_path: Path, field: str) -> None:
    _, path = saved(random_sae, tmp_path, "standard")
    raw = json.loads((path / CFG_FILE).read_text())
    raw.pop("chatsae")
    raw.pop(field)
    (path / CFG_FILE).write_text(json.dumps(raw))
    with pytest.raises(ValueError, match=rf"cfg\.json.*{field}"):
        load_sae(path)


@pytest.mark.parametrize("arch", ["jumprelu", "standard", "topk", "gated"])
def test_wrong_shapes(random_sae, tmp_path: Path, arch: str) -> None:
    _, path = saved(random_sae, tmp_path, arch)
    tensors = load_file(str(path / WEIGHTS_FILE))
    tensors["W_dec"] = torch.zeros(48, 17)
    save_file(tensors, str(path / WEIGHTS_FILE))
    with pytest.raises(ValueError, match=rf"{WEIGHTS_FILE}.*W_dec"):
        load_sae(path)


@pytest.mark.parametrize("arch", ["jumprelu", "gated"])
def test_missing_tensor(random_sae, tmp_path: Path, arch: str) -> None:
    _, path = saved(random_sae, tmp_path, arch)
    tensors = load_file(str(path / WEIGHTS_FILE))
    name = "threshold" if arch == "jumprelu" else "r_mag"
    del tensors[name]
    save_file(tensors, str(path / WEIGHTS_FILE))
    with pytest.raises(ValueError, match=rf"{WEIGHTS_FILE}.*{name}"):
        load_sae(path)


@pytest.mark.parametrize(
    ("param", "value", "ok"),
    [("log", 0.0, False), ("log", -0.1, False), ("direct", 0.0, True), ("direct", -0.1, False)],
)
def test_threshold_sign(random_sae, tmp_path: Path, param: str, value: float, ok: bool) -> None:
    _, path = saved(random_sae, tmp_path, "jumprelu", param)
    tensors = load_file(str(path / WEIGHTS_FILE))
    tensors["threshold"][3] = value
    save_file(tensors, str(path / WEIGHTS_FILE))
    (path / CHECKSUMS_FILE).unlink()  # an edited file no longer matches its checksum
    if ok:
        assert load_sae(path).threshold[3].item() == value
    else:
        with pytest.raises(ValueError, match="threshold"):
            load_sae(path)


def test_unsupported_normalisation(random_sae, tmp_path: Path) -> None:
    _, path = saved(random_sae, tmp_path, "standard")
    raw = json.loads((path / CFG_FILE).read_text())
    raw.pop("chatsae")
    raw["normalize_activations"] = "expected_average_only_in"
    (path / CFG_FILE).write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="normalize_activations"):
        load_sae(path)


def test_load_sparsity_absent(random_sae, tmp_path: Path) -> None:
    _, path = saved(random_sae, tmp_path, "standard")
    assert not (path / SPARSITY_FILE).exists()
    assert load_sparsity(path) is None


def test_config_dict_round_trip() -> None:
    cfg = SAEConfig(architecture="gated", d_in=8, d_sae=32, metadata={"method": "fast"})
    assert SAEConfig.from_dict(cfg.to_dict()) == cfg
    assert SAEConfig.from_dict({**cfg.to_dict(), "unknown_future_key": 1}) == cfg
    assert create_sae(cfg).cfg is cfg
