"""Integrity of stored bytes: cache shards and SAE weights carry checksums that are verified on read; load_sae checks
sizes against the weights file before allocating, and rejects non-finite weights and truncated or garbage files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from chatsae.activations import cache as cache_mod
from chatsae.activations.cache import ActivationCache, CacheWriter, Manifest
from chatsae.core.utils import file_digest, safetensors_shapes
from chatsae.sae import SAEConfig, create_sae, load_sae, save_sae
from chatsae.sae.io import CFG_FILE, CHECKSUMS_FILE, SPARSITY_FILE, WEIGHTS_FILE


def _cache(tmp_path: Path) -> Path:
    w = CacheWriter.open(tmp_path / "c", Manifest(d_in=4, model="m", hook="resid_post.1", method="fast"), False)
    for s in range(2):
        w.write_shard(torch.randn(10, 4), {"token_ids": torch.arange(10) + 100 * s}, windows_done=s + 1)
    w.finish()
    return tmp_path / "c"


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("which", ["acts", "meta"])
def test_a_shard_whose_bytes_changed_is_refused_naming_it(tmp_path, which):
    path = _cache(tmp_path)
    shard = Manifest.read(path).shards[1]
    f = path / shard[which]
    assert shard[f"{which}_blake2b"] == file_digest(f)
    before = ActivationCache(path, verify=False).gather(torch.tensor([19])).acts
    _flip(f, f.stat().st_size - 3)  # a low byte of the last value: still a readable file
    cache = ActivationCache(path)
    cache.gather(torch.arange(10))  # shard 0 is intact and reads fine
    with pytest.raises(ValueError, match=rf"{f}: checksum mismatch with manifest.json"):
        cache.gather(torch.tensor([19]))
    if which == "acts":  # without verification the changed value would be read silently
        got = ActivationCache(path, verify=False).gather(torch.tensor([19])).acts
        assert got.shape == (1, 4) and not torch.equal(got, before)


def test_each_shard_is_hashed_once_per_process(tmp_path, monkeypatch):
    path = _cache(tmp_path)
    calls: list[str] = []
    monkeypatch.setattr(cache_mod, "file_digest", lambda p: calls.append(Path(p).name) or file_digest(p))
    monkeypatch.setattr(cache_mod, "_VERIFIED", set())
    for _ in range(3):
        ActivationCache(path).gather(torch.arange(20))
    assert sorted(calls) == sorted(f"shard_0000{i}.{k}" for i in range(2) for k in ("acts.npy", "meta.npz"))


def test_safetensors_header_check_agrees_with_safetensors(tmp_path):
    tensors = {"W_enc": torch.randn(3, 5), "b": torch.zeros(7, dtype=torch.float16), "i": torch.arange(4)}
    save_file(tensors, str(tmp_path / "x.safetensors"))
    with safe_open(str(tmp_path / "x.safetensors"), "pt") as fh:
        want = {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}  # noqa: SIM118 - safe_open has no iter
    assert safetensors_shapes(tmp_path / "x.safetensors") == want == {"W_enc": (3, 5), "b": (7,), "i": (4,)}


def _saved(tmp_path: Path, arch: str = "jumprelu") -> Path:
    torch.manual_seed(0)
    return save_sae(create_sae(SAEConfig(arch, d_in=8, d_sae=16)), tmp_path / "sae", sparsity=torch.randn(16))


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused(tmp_path, value):
    path = _saved(tmp_path)
    tensors = load_file(str(path / WEIGHTS_FILE))
    tensors["W_dec"][3, 2] = value
    save_file(tensors, str(path / WEIGHTS_FILE))
    with pytest.raises(ValueError, match=rf"{path / WEIGHTS_FILE}: tensor 'W_dec' has 1 non-finite values"):
        load_sae(path)


@pytest.mark.parametrize("block", ["chatsae", "saelens"])
def test_absurd_d_sae_is_refused_before_allocating(tmp_path, monkeypatch, block):
    path = _saved(tmp_path)
    raw = json.loads((path / CFG_FILE).read_text())
    if block == "chatsae":
        raw["chatsae"]["d_sae"] = 10**12
    else:
        raw.pop("chatsae")
        raw["d_sae"] = 1e12
    (path / CFG_FILE).write_text(json.dumps(raw))
    import chatsae.sae as sae_pkg

    def no_alloc(*a, **k):
        raise AssertionError("create_sae was called: the size check must come first")

    monkeypatch.setattr(sae_pkg, "create_sae", no_alloc)
    with pytest.raises(
        ValueError,
        match=rf"{path / WEIGHTS_FILE}: W_enc has shape \[8, 16\], but cfg.json says "
        r"d_in = 8, d_sae = 1000000000000 \(expected \[8, 1000000000000\]\)",
    ):
        load_sae(path)


def test_truncated_and_garbage_weights_give_one_clear_error(tmp_path):
    path = _saved(tmp_path)
    w = path / WEIGHTS_FILE
    full = w.read_bytes()
    w.write_bytes(full[: len(full) - 40])
    with pytest.raises(ValueError, match=rf"{w}: truncated safetensors file \(tensor '.*' needs \d+ data bytes"):
        load_sae(path)
    w.write_bytes(full[:20])  # cut inside the header
    with pytest.raises(ValueError, match=rf"{w}: not a valid safetensors file \(truncated or garbage"):
        load_sae(path)
    w.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(ValueError, match=rf"{w}: not a valid safetensors file"):
        load_sae(path)
    w.write_bytes((100).to_bytes(8, "little") + b"{" * 100 + full[8:])
    with pytest.raises(ValueError, match=rf"{w}: not a valid safetensors file \(unreadable header"):
        load_sae(path)


@pytest.mark.parametrize("name", [WEIGHTS_FILE, SPARSITY_FILE])
def test_saved_sae_checksums_are_verified(tmp_path, name):
    path = _saved(tmp_path)
    assert set(json.loads((path / CHECKSUMS_FILE).read_text())["files"]) == {WEIGHTS_FILE, SPARSITY_FILE}
    load_sae(path)
    _flip(path / name, (path / name).stat().st_size - 4)  # a mantissa bit: finite, well-formed, but changed
    with pytest.raises(ValueError, match=rf"{path / name}: contents changed since chatsae wrote it"):
        load_sae(path)
    (path / CHECKSUMS_FILE).unlink()  # a directory without checksums (SAELens) is not checked
    assert load_sae(path).cfg.d_sae == 16
