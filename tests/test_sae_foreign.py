"""Loading other libraries' SAEs (chatsae.sae.foreign / sources) from hand-built files in each library's layout,
checked against a naive forward written here from each library's source; format detection, Hub ids from an offline
cache, hook inference and override, ``chatsae convert``, and the one-line errors for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from chatsae.cli import main
from chatsae.sae import load_sae

D, M = 8, 24
TOL = {"rtol": 1e-5, "atol": 1e-5}


def rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed + 7 * sum(shape)))


def inputs() -> torch.Tensor:
    return 2.0 * rand(40, D, seed=99)


def check(sae, encode, decode) -> None:
    """chatsae's encode / decode / forward equal the reference's; the code is sparse but not empty."""
    x = inputs()
    f = encode(x)
    assert (f > 0).any() and (f == 0).any()
    torch.testing.assert_close(sae.encode(x), f, **TOL)
    torch.testing.assert_close(sae.decode(f), decode(f), **TOL)
    torch.testing.assert_close(sae(x), decode(f), **TOL)


# ---- EleutherAI sparsify ----------------------------------------------------------------------------------------
def sparsify_dir(d: Path, k: int = 4, **cfg) -> dict[str, torch.Tensor]:
    """A hookpoint folder as ``SparseCoder.save_to_disk`` writes it (``cfg.json`` = config fields + d_in)."""
    d.mkdir(parents=True, exist_ok=True)
    t = {"encoder.weight": rand(M, D), "encoder.bias": 0.1 * rand(M), "W_dec": rand(M, D, seed=1), "b_dec": rand(D)}
    raw = {"activation": "topk", "expansion_factor": 32, "normalize_decoder": True, "num_latents": M, "k": k}
    raw.update({"multi_topk": False, "skip_connection": False, "transcode": False, "d_in": D, **cfg})
    (d / "cfg.json").write_text(json.dumps(raw))
    save_file(t, str(d / "sae.safetensors"))
    return t


def sparsify_reference(t: dict[str, torch.Tensor], k: int):
    """sparsify's forward: ReLU(W (x - b_dec) + b), top k, embedding-bag decode + b_dec."""

    def encode(x):
        pre = torch.relu((x - t["b_dec"]) @ t["encoder.weight"].T + t["encoder.bias"])
        vals, idx = pre.topk(k, dim=-1)
        return torch.zeros_like(pre).scatter(-1, idx, vals)

    return encode, lambda f: f @ t["W_dec"] + t["b_dec"]


def test_sparsify_hookpoint(tmp_path: Path) -> None:
    t = sparsify_dir(tmp_path / "layers.3", k=5)
    sae = load_sae(tmp_path / "layers.3")
    assert sae.cfg.architecture == "topk" and sae.cfg.k == 5 and sae.cfg.apply_b_dec_to_input
    assert sae.cfg.metadata["hook_name"] == "resid_post.3"
    check(sae, *sparsify_reference(t, 5))


@pytest.mark.parametrize(
    ("name", "hook"),
    [("layers.7.mlp", "mlp_out.7"), ("layers.2.self_attn", "attn_out.2"), ("h.4", "resid_post.4"), ("embed", None)],
)
def test_sparsify_hook_names(tmp_path: Path, name: str, hook: str | None) -> None:
    sparsify_dir(tmp_path / name)
    assert load_sae(tmp_path / name).cfg.metadata.get("hook_name") == hook


def test_sparsify_checkpoint_pick_one(tmp_path: Path) -> None:
    for i in range(2):
        sparsify_dir(tmp_path / "ckpt" / f"layers.{i}")
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps({"sae": {}, "batch_size": 8}))  # sparsify's TrainConfig
    with pytest.raises(ValueError, match=r"ckpt: holds 2 SAEs; give one of them: .*ckpt/layers\.0, .*ckpt/layers\.1$"):
        load_sae(tmp_path / "ckpt")
    assert load_sae(tmp_path / "ckpt" / "layers.1").cfg.metadata["hook_name"] == "resid_post.1"
    # a file of the layout names its folder
    assert load_sae(tmp_path / "ckpt" / "layers.0" / "sae.safetensors").cfg.metadata["hook_name"] == "resid_post.0"


@pytest.mark.parametrize(
    ("cfg", "match"),
    [
        ({"transcode": True}, "transcoder"),
        ({"skip_connection": True}, "skip_connection"),
        ({"activation": "groupmax"}, "groupmax"),
        ({"d_in": D + 1}, r"encoder\.weight.*shape \[24, 8\], expected \[24, 9\].*d_in = 9"),
        ({"num_latents": M * 2}, r"expected \[48, 8\]"),
        ({"k": M + 1}, r"cfg\.json.*k.*1\.\.d_sae=24"),
    ],
)
def test_sparsify_refused(tmp_path: Path, cfg: dict, match: str) -> None:
    sparsify_dir(tmp_path / "layers.0", **cfg)
    with pytest.raises(ValueError, match=match):
        load_sae(tmp_path / "layers.0")


def test_sparsify_skip_weights_refused(tmp_path: Path) -> None:
    t = sparsify_dir(tmp_path / "layers.0")
    save_file({**t, "W_skip": rand(D, D)}, str(tmp_path / "layers.0" / "sae.safetensors"))
    with pytest.raises(ValueError, match=r"sae\.safetensors: holds a skip connection W_skip"):
        load_sae(tmp_path / "layers.0")


def test_sparsify_truncated(tmp_path: Path) -> None:
    sparsify_dir(tmp_path / "layers.0")
    f = tmp_path / "layers.0" / "sae.safetensors"
    f.write_bytes(f.read_bytes()[:-40])
    with pytest.raises(ValueError, match=r"sae\.safetensors: truncated safetensors file"):
        load_sae(tmp_path / "layers.0")


# ---- dictionary_learning ----------------------------------------------------------------------------------------
def unit_rows(w: torch.Tensor) -> torch.Tensor:
    return w / w.norm(dim=-1, keepdim=True)


def dictlearn_state(cls: str, threshold: float = 0.4) -> dict[str, torch.Tensor]:
    """The state dict of each class as its ``__init__`` registers it (names, shapes, transposes)."""
    enc, dec = rand(M, D), unit_rows(rand(M, D, seed=1))  # encoder.weight [M, D]; decoder rows [M, D]
    if cls == "AutoEncoder":
        return {"bias": rand(D), "encoder.weight": enc, "encoder.bias": 0.2 * rand(M), "decoder.weight": dec.T}
    if cls == "AutoEncoderNew":
        return {"encoder.weight": enc, "encoder.bias": 0.2 * rand(M), "decoder.weight": dec.T, "decoder.bias": rand(D)}
    if cls == "GatedAutoEncoder":
        s = {"decoder_bias": rand(D), "encoder.weight": enc, "r_mag": 0.3 * rand(M, seed=2)}
        return {**s, "gate_bias": 0.2 * rand(M, seed=3), "mag_bias": 0.2 * rand(M, seed=4), "decoder.weight": dec.T}
    k = {"k": torch.tensor(4, dtype=torch.int), "threshold": torch.tensor(threshold)}
    if cls in ("AutoEncoderTopK", "BatchTopKSAE"):
        return {**k, "decoder.weight": dec.T, "encoder.weight": enc, "encoder.bias": 0.2 * rand(M), "b_dec": rand(D)}
    s = {"W_enc": enc.T.contiguous(), "b_enc": 0.2 * rand(M), "W_dec": dec, "b_dec": rand(D)}
    if cls == "JumpReluAutoEncoder":
        return {**s, "threshold": threshold * rand(M, seed=5).abs()}
    return {**k, **s, "group_sizes": torch.tensor([4, 8, 12])}  # MatryoshkaBatchTopKSAE


def dictlearn_reference(cls: str, t: dict[str, torch.Tensor]):
    """Each class's ``encode`` / ``decode`` as dictionary_learning 0.1.0 writes them."""
    if cls in ("AutoEncoder", "AutoEncoderNew"):
        b = t.get("bias", torch.zeros(D))
        enc = lambda x: torch.relu((x - b) @ t["encoder.weight"].T + t["encoder.bias"])  # noqa: E731
        return enc, lambda f: f @ t["decoder.weight"].T + t.get("decoder.bias", b)
    if cls == "GatedAutoEncoder":

        def gated(x):
            x_enc = (x - t["decoder_bias"]) @ t["encoder.weight"].T
            gate = (x_enc + t["gate_bias"] > 0).float()
            return gate * torch.relu(t["r_mag"].exp() * x_enc + t["mag_bias"])

        return gated, lambda f: f @ t["decoder.weight"].T + t["decoder_bias"]
    if cls == "JumpReluAutoEncoder":

        def jump(x):
            pre = x @ t["W_enc"] + t["b_enc"]
            return torch.relu(pre * (pre > t["threshold"]))

        return jump, lambda f: f @ t["W_dec"] + t["b_dec"]
    if cls == "MatryoshkaBatchTopKSAE":
        pre_fn = lambda x: torch.relu((x - t["b_dec"]) @ t["W_enc"] + t["b_enc"])  # noqa: E731
        dec_fn = lambda f: f @ t["W_dec"] + t["b_dec"]  # noqa: E731
    else:
        pre_fn = lambda x: torch.relu((x - t["b_dec"]) @ t["encoder.weight"].T + t["encoder.bias"])  # noqa: E731
        dec_fn = lambda f: f @ t["decoder.weight"].T + t["b_dec"]  # noqa: E731
    if cls == "AutoEncoderTopK":

        def topk(x):
            pre = pre_fn(x)
            vals, idx = pre.topk(int(t["k"]), dim=-1)
            return torch.zeros_like(pre).scatter(-1, idx, vals)

        return topk, dec_fn
    return (lambda x: pre_fn(x) * (pre_fn(x) > t["threshold"])), dec_fn  # BatchTopK: use_threshold=True


def dictlearn_dir(d: Path, cls: str, t: dict[str, torch.Tensor], **trainer) -> Path:
    """``trainSAE``'s save: ``config.json`` {"trainer": trainer.config, "buffer": ...} and ``ae.pt``."""
    d.mkdir(parents=True, exist_ok=True)
    conf = {"dict_class": cls, "activation_dim": D, "dict_size": M, "lm_name": "embedded", "layer": 3, **trainer}
    (d / "config.json").write_text(json.dumps({"trainer": conf, "buffer": {"d_submodule": D}}))
    torch.save(t, d / "ae.pt")
    return d


CLASSES = [
    ("AutoEncoder", "standard"),
    ("AutoEncoderNew", "standard"),
    ("GatedAutoEncoder", "gated"),
    ("AutoEncoderTopK", "topk"),
    ("BatchTopKSAE", "jumprelu"),
    ("JumpReluAutoEncoder", "jumprelu"),
    ("MatryoshkaBatchTopKSAE", "jumprelu"),
]


@pytest.mark.parametrize(("cls", "arch"), CLASSES)
def test_dictionary_learning(tmp_path: Path, cls: str, arch: str) -> None:
    t = dictlearn_state(cls)
    d = dictlearn_dir(tmp_path / "resid_post_layer_3" / "trainer_0", cls, t, submodule_name="resid_post_layer_3")
    sae = load_sae(d)
    assert sae.cfg.architecture == arch
    assert sae.cfg.metadata["hook_name"] == "resid_post.3" and sae.cfg.metadata["model_name"] == "embedded"
    check(sae, *dictlearn_reference(cls, t))
    assert load_sae(tmp_path).cfg.architecture == arch  # the only SAE below a folder is found


@pytest.mark.parametrize("cls", ["BatchTopKSAE", "MatryoshkaBatchTopKSAE"])
def test_batch_topk_unset_threshold_is_relu(tmp_path: Path, cls: str) -> None:
    """Before training sets it the threshold is -1: the library's encode is then a plain ReLU."""
    t = dictlearn_state(cls, threshold=-1.0)
    sae = load_sae(dictlearn_dir(tmp_path, cls, t))
    assert bool((sae.threshold == 0).all())
    check(sae, *dictlearn_reference(cls, t))


def test_dictionary_learning_hook_from_layer_only(tmp_path: Path) -> None:
    """``layer`` alone does not say which activation (resid, mlp, attn): no hook is guessed; --hook gives it."""
    d = dictlearn_dir(tmp_path / "trainer_0", "AutoEncoder", dictlearn_state("AutoEncoder"))
    sae = load_sae(d)
    assert "hook_name" not in sae.cfg.metadata and sae.cfg.metadata["dictionary_learning_layer"] == 3
    assert load_sae(d, hook="blocks.3.hook_mlp_out").cfg.metadata["hook_name"] == "mlp_out.3"
    with pytest.raises(ValueError, match=r"hook 'layer3': expected KIND\.LAYER"):
        load_sae(d, hook="layer3")


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"dict_size": M + 1}, r"ae\.pt: tensor 'encoder\.weight' has shape \[24, 8\], expected \[25, 8\]"),
        ({"dict_class": "CrossCoder"}, r"config\.json: dict_class 'CrossCoder' is not supported \(supported: "),
        ({"k": 7}, r"ae\.pt: buffer k = 4, but config\.json says k = 7"),
        ({"activation_dim": "8"}, r"config\.json: field 'activation_dim' must be a positive integer"),
    ],
)
def test_dictionary_learning_bad_config(tmp_path: Path, change: dict, match: str) -> None:
    dictlearn_dir(tmp_path, "AutoEncoderTopK", dictlearn_state("AutoEncoderTopK"), **change)
    with pytest.raises(ValueError, match=match):
        load_sae(tmp_path)


def test_dictionary_learning_bad_weights(tmp_path: Path) -> None:
    t = dictlearn_state("JumpReluAutoEncoder")
    dictlearn_dir(tmp_path, "JumpReluAutoEncoder", {k: v for k, v in t.items() if k != "threshold"})
    with pytest.raises(ValueError, match=r"ae\.pt: no tensor 'threshold' \(expected W_enc, .*; found W_dec, W_enc"):
        load_sae(tmp_path)
    dictlearn_dir(tmp_path, "JumpReluAutoEncoder", t)
    data = (tmp_path / "ae.pt").read_bytes()
    (tmp_path / "ae.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"ae\.pt: not a readable PyTorch state dict"):
        load_sae(tmp_path)
    (tmp_path / "config.json").unlink()
    (tmp_path / "ae.pt").write_bytes(data)
    with pytest.raises(FileNotFoundError, match=r"config\.json: missing; dictionary_learning saves it beside ae\.pt"):
        load_sae(tmp_path)


# ---- Gemma Scope ------------------------------------------------------------------------------------------------
def gemma_scope(path: Path, theta: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = {"W_enc": rand(D, M), "W_dec": unit_rows(rand(M, D, seed=1)), "b_enc": 0.2 * rand(M), "b_dec": rand(D)}
    t["threshold"] = theta if theta is not None else 0.5 * rand(M, seed=3).abs()
    np.savez(path, **{k: v.numpy() for k, v in t.items()})
    return t


def gemma_reference(t: dict[str, torch.Tensor]):
    """Gemma Scope's tutorial forward: ``mask = pre > threshold; acts = mask * relu(pre)`` (no b_dec subtraction)."""

    def encode(x):
        pre = x @ t["W_enc"] + t["b_enc"]
        return (pre > t["threshold"]) * torch.relu(pre)

    return encode, lambda f: f @ t["W_dec"] + t["b_dec"]


def test_gemma_scope(tmp_path: Path) -> None:
    npz = tmp_path / "gemma-scope-2b-pt-res" / "layer_12" / "width_16k" / "average_l0_82" / "params.npz"
    t = gemma_scope(npz, theta=torch.cat([0.5 * rand(M - 2, seed=3).abs(), torch.tensor([-0.3, 0.0])]))
    for src in (npz, npz.parent):
        sae = load_sae(src)
        assert sae.cfg.architecture == "jumprelu" and not sae.cfg.apply_b_dec_to_input
        assert sae.cfg.metadata["hook_name"] == "resid_post.12"
        assert sae.cfg.metadata["model_name"] == "google/gemma-2-2b"
        check(sae, *gemma_reference(t))


def test_gemma_scope_names(tmp_path: Path) -> None:
    gemma_scope(tmp_path / "gemma-scope-9b-it-mlp" / "layer_20" / "width_131k" / "average_l0_5" / "params.npz")
    meta = load_sae(tmp_path / "gemma-scope-9b-it-mlp" / "layer_20" / "width_131k" / "average_l0_5").cfg.metadata
    assert meta["hook_name"] == "mlp_out.20" and meta["model_name"] == "google/gemma-2-9b-it"
    gemma_scope(tmp_path / "gemma-scope-2b-pt-transcoders" / "layer_3" / "width_16k" / "average_l0_5" / "params.npz")
    with pytest.raises(ValueError, match="Gemma Scope transcoder"):
        load_sae(tmp_path / "gemma-scope-2b-pt-transcoders" / "layer_3" / "width_16k" / "average_l0_5")


def test_gemma_scope_bad(tmp_path: Path) -> None:
    t = gemma_scope(tmp_path / "params.npz")
    np.savez(tmp_path / "params.npz", **{k: v.numpy() for k, v in t.items() if k != "b_dec"})
    with pytest.raises(ValueError, match=r"params\.npz: no tensor 'b_dec'"):
        load_sae(tmp_path)
    np.savez(tmp_path / "params.npz", **{**{k: v.numpy() for k, v in t.items()}, "W_dec": rand(M + 1, D).numpy()})
    with pytest.raises(ValueError, match=r"params\.npz: tensor 'W_dec' has shape \[25, 8\], expected \[24, 8\]"):
        load_sae(tmp_path)
    (tmp_path / "params.npz").write_bytes((tmp_path / "params.npz").read_bytes()[:300])
    with pytest.raises(ValueError, match=r"params\.npz: not a readable \.npz file"):
        load_sae(tmp_path)


# ---- SAELens directories chatsae did not write -----------------------------------------------------------------
def saelens_dir(d: Path, arch: str, t: dict[str, torch.Tensor], **cfg) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    meta = {"sae_lens_version": "6.5.0", "hook_name": "blocks.6.hook_resid_post", "model_name": "gpt2"}
    raw = {"architecture": arch, "d_in": D, "d_sae": M, "dtype": "float32", "device": "cpu", "metadata": meta}
    raw.update({"apply_b_dec_to_input": True, "normalize_activations": "none", "reshape_activations": "none", **cfg})
    (d / "cfg.json").write_text(json.dumps(raw))
    save_file(t, str(d / "sae_weights.safetensors"))
    return d


def test_saelens_batchtopk_saved_as_jumprelu(tmp_path: Path) -> None:
    """SAELens writes a BatchTopK SAE as jumprelu with its one threshold repeated, b_dec subtracted."""
    t = {"W_enc": rand(D, M), "b_enc": 0.2 * rand(M), "W_dec": unit_rows(rand(M, D, seed=1)), "b_dec": rand(D)}
    t["threshold"] = torch.full((M,), 0.7)
    sae = load_sae(saelens_dir(tmp_path, "jumprelu", t))
    assert sae.cfg.metadata["hook_name"] == "blocks.6.hook_resid_post"

    def encode(x):  # SAELens JumpReLUSAE.encode: relu(pre) * (pre > threshold)
        pre = (x - t["b_dec"]) @ t["W_enc"] + t["b_enc"]
        return torch.relu(pre) * (pre > t["threshold"])

    check(sae, encode, lambda f: f @ t["W_dec"] + t["b_dec"])


@pytest.mark.parametrize(
    ("arch", "match"),
    [("abstopk", "with their sign"), ("jumprelu_transcoder", "transcoder"), ("batchtopk", "saves the inference SAE")],
)
def test_saelens_refused_architectures(tmp_path: Path, arch: str, match: str) -> None:
    t = {"W_enc": rand(D, M), "b_enc": rand(M), "W_dec": rand(M, D), "b_dec": rand(D)}
    saelens_dir(tmp_path, arch, t, k=4)
    with pytest.raises(ValueError, match=rf"cfg\.json: architecture '{arch}' .*{match}.*chatsae cannot load it"):
        load_sae(tmp_path)


# ---- detection, Hub ids -----------------------------------------------------------------------------------------
def test_unknown_layout(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "model.bin").write_bytes(b"x")
    with pytest.raises(
        FileNotFoundError, match=r"no SAE in a known layout.*sae_weights\.safetensors.*sparsify.*ae\.pt.*params\.npz"
    ):
        load_sae(tmp_path)
    with pytest.raises(ValueError, match=r"model\.bin: not a file of a known SAE layout"):
        load_sae(tmp_path / "sub" / "model.bin")


def hub_cache(root: Path, repo: str, files: dict[str, Path]) -> None:
    """The Hub cache layout: models--org--name/refs/main -> snapshots/<rev>/... (blobs are plain copies here)."""
    rev = "0123456789abcdef0123456789abcdef01234567"
    repo_dir = root / f"models--{repo.replace('/', '--')}"
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / "main").write_text(rev)
    for rel, src in files.items():
        dst = repo_dir / "snapshots" / rev / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(src.read_bytes())


@pytest.fixture
def offline_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    import huggingface_hub.constants as hf

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hf, "HF_HUB_OFFLINE", True)  # huggingface_hub reads both variables when imported
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(cache))
    monkeypatch.chdir(tmp_path)  # "org" is not a local folder here
    return cache


def test_hub_ids_offline(tmp_path: Path, offline_hub: Path) -> None:
    src = tmp_path / "src"
    t = sparsify_dir(src / "layers.5")
    sparsify_dir(src / "layers.6")
    files = {f"{h}/{n}": src / h / n for h in ("layers.5", "layers.6") for n in ("cfg.json", "sae.safetensors")}
    hub_cache(offline_hub, "org/sae-ckpt", files)
    sae = load_sae("org/sae-ckpt/layers.5")
    assert sae.cfg.metadata["hook_name"] == "resid_post.5"
    check(sae, *sparsify_reference(t, 4))
    with pytest.raises(FileNotFoundError, match=r"org/sae-ckpt: no SAE at the top of the repository; give a subfolder"):
        load_sae("org/sae-ckpt")
    with pytest.raises(FileNotFoundError, match=r"org/other: not a local path, and Hugging Face Hub repository"):
        load_sae("org/other")
    npz = tmp_path / "g" / "params.npz"
    g = gemma_scope(npz)
    hub_cache(offline_hub, "google/gemma-scope-2b-pt-res", {"layer_4/width_16k/average_l0_9/params.npz": npz})
    sae = load_sae("google/gemma-scope-2b-pt-res/layer_4/width_16k/average_l0_9")
    assert sae.cfg.metadata["hook_name"] == "resid_post.4"  # the cache folder name says which Gemma Scope repo
    check(sae, *gemma_reference(g))


# ---- chatsae convert --------------------------------------------------------------------------------------------
def test_convert(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    t = dictlearn_state("BatchTopKSAE")
    src = dictlearn_dir(tmp_path / "src", "BatchTopKSAE", t)
    assert main(["convert", str(src), str(tmp_path / "out"), "--hook", "resid_post.3", "--model", "embedded"]) == 0
    assert "dictionary_learning jumprelu SAE" in capsys.readouterr().out
    sae = load_sae(tmp_path / "out")
    meta = json.loads((tmp_path / "out" / "cfg.json").read_text())["metadata"]
    assert meta["hook_name"] == "blocks.3.hook_resid_post" and meta["model_name"] == "embedded"
    assert sae.cfg.metadata["source_format"] == "dictionary_learning"
    check(sae, *dictlearn_reference("BatchTopKSAE", t))
    assert main(["convert", str(src), str(tmp_path / "out")]) == 0  # its own output may be rewritten


def test_convert_refuses_foreign_out_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = dictlearn_dir(tmp_path / "src", "AutoEncoder", dictlearn_state("AutoEncoder"))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    assert main(["convert", str(src), str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip()
    assert "chatsae convert: error:" in err and "non-empty directory that chatsae did not write" in err
    assert len(err.splitlines()) == 1 and sorted(p.name for p in (tmp_path / "out").iterdir()) == ["notes.txt"]
    assert main(["convert", str(tmp_path / "nowhere"), str(tmp_path / "out2")]) == 1
    assert "no such file or directory" in capsys.readouterr().err


def test_steer_asks_for_the_hook(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A foreign SAE whose format does not say its hook: the command says how to give it, before loading the model."""
    d = dictlearn_dir(tmp_path / "trainer_0", "AutoEncoder", dictlearn_state("AutoEncoder"))
    assert main(["special-tokens", str(d), "--data", str(tmp_path / "chat.jsonl")]) == 1
    assert "the SAE's metadata has no hook_name; pass --hook (e.g. --hook resid_post.15)" in capsys.readouterr().err
