"""The converted copy of a GGUF model (chatsae.models.gguf_cache): the same model, tokenizer and logits as the GGUF
file itself, a damaged copy reported and replaced by the GGUF file, and the switches that turn it off."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from chatsae.models import gguf_cache, load_model, load_tokenizer
from chatsae.models.loading import embedded_gguf

pytestmark = pytest.mark.slow


def _gguf() -> Path:
    directory, name = embedded_gguf()
    return directory / name


@pytest.fixture(scope="module")
def from_gguf(embedded):
    """The embedded model loaded from the GGUF file itself (conftest's ``embedded`` always is): the reference."""
    assert getattr(embedded[0], "hf_quantizer", None) is not None  # made by the GGUF loader, not read from a copy
    return embedded


MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is 2+2? <|im_end|>"},
    {"role": "assistant", "content": "It is 4."},
]


def test_copy_loads_the_same_model_tokenizer_and_logits(from_gguf, tmp_path: Path, monkeypatch, capsys) -> None:
    ref_model, ref_tok = from_gguf
    monkeypatch.setenv(gguf_cache.ENV, str(tmp_path))
    where = gguf_cache.converted_dir(_gguf())
    assert where is not None and where.parent == tmp_path / "gguf" and not gguf_cache.ready(where)
    assert gguf_cache.save(ref_model, ref_tok, where, _gguf())  # what the first float32 load writes
    assert gguf_cache.ready(where) and "kept a converted copy" in capsys.readouterr().err

    calls: list[str] = []
    real = gguf_cache.load_model
    monkeypatch.setattr(gguf_cache, "load_model", lambda d, dtype: calls.append(str(d)) or real(d, dtype))
    model, tok = load_model("embedded")
    assert calls == [str(where)]  # read from the copy, not from the GGUF file
    ref_sd, sd = ref_model.state_dict(), model.state_dict()
    assert set(sd) == set(ref_sd) and all(torch.equal(sd[k], ref_sd[k]) for k in ref_sd)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # still tied
    ids = ref_tok.apply_chat_template(MESSAGES, tokenize=True, return_dict=True)["input_ids"]
    assert tok.apply_chat_template(MESSAGES, tokenize=True, return_dict=True)["input_ids"] == ids
    assert (tok.pad_token, tok.eos_token, tok.bos_token) == (ref_tok.pad_token, ref_tok.eos_token, ref_tok.bos_token)
    assert tok.all_special_ids == ref_tok.all_special_ids and tok.chat_template == ref_tok.chat_template
    skip = {"_name_or_path", "quantization_config", "transformers_version", "dtype", "torch_dtype"}
    a, b = ref_model.config.to_dict(), model.config.to_dict()
    assert {k: v for k, v in a.items() if k not in skip} == {k: v for k, v in b.items() if k not in skip}
    with torch.no_grad():
        x = torch.tensor([ids])
        assert torch.equal(model(x).logits, ref_model(x).logits)


def test_damaged_copy_is_reported_and_the_gguf_file_used(from_gguf, tmp_path: Path, monkeypatch, capsys) -> None:
    ref_model, ref_tok = from_gguf
    monkeypatch.setenv(gguf_cache.ENV, str(tmp_path))
    monkeypatch.setattr("chatsae.models.loading._GGUF_TOKENIZERS", {})  # no in-memory tokenizer either
    where = gguf_cache.converted_dir(_gguf())
    assert where is not None and gguf_cache.save(ref_model, ref_tok, where, _gguf())
    tokenizer_json = where / "tokenizer.json"
    tokenizer_json.write_text("{ truncated" + " " * (tokenizer_json.stat().st_size - 11))  # same size, bad content
    tok = load_tokenizer("embedded")
    err = capsys.readouterr().err
    assert f"the converted copy {where} did not load" in err and "converting the GGUF file again" in err
    assert not where.exists()  # chatsae's own copy, removed; the next float32 load writes a new one
    ids = ref_tok.apply_chat_template(MESSAGES, tokenize=True, return_dict=True)["input_ids"]
    assert tok.apply_chat_template(MESSAGES, tokenize=True, return_dict=True)["input_ids"] == ids
    # a truncated weights file: the copy is not ready (sizes recorded in its marker), so it is never read
    assert gguf_cache.save(ref_model, ref_tok, where, _gguf()) and gguf_cache.ready(where)
    weights = where / "model.safetensors"
    with open(weights, "r+b") as fh:
        fh.truncate(weights.stat().st_size - 1)
    assert not gguf_cache.ready(where)
    assert gguf_cache.save(ref_model, ref_tok, where, _gguf()) and gguf_cache.ready(where)  # replaced by a whole one


def test_switches_and_limits(tiny_llama, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(gguf_cache.ENV, "0")
    assert gguf_cache.cache_root() is None and gguf_cache.converted_dir(_gguf()) is None
    monkeypatch.delenv(gguf_cache.ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert gguf_cache.cache_root() == tmp_path / "xdg" / "chatsae"
    model, tok = tiny_llama
    where = tmp_path / "copy"
    half = type(model)(model.config).to(torch.bfloat16)
    assert not gguf_cache.save(half, tok, where, _gguf())  # only float32 weights are kept (cast later, exactly)
    monkeypatch.setenv(gguf_cache.MAX_GB_ENV, "0.000001")
    assert not gguf_cache.save(model, tok, where, _gguf())  # over the size limit
    assert not where.exists() and not list(tmp_path.glob(".copy.tmp-*"))


def test_first_bfloat16_load_keeps_a_float32_copy(from_gguf, tmp_path: Path, monkeypatch, capsys) -> None:
    """``make run`` loads the model in bfloat16 (``--model-dtype fast``): its first load still leaves the float32 copy,
    and both that load and the next (from the copy) equal the float32 GGUF weights cast to bfloat16, bit for bit."""
    ref_model, _ = from_gguf
    monkeypatch.setenv(gguf_cache.ENV, str(tmp_path))
    where = gguf_cache.converted_dir(_gguf())
    assert where is not None and not gguf_cache.ready(where) and gguf_cache.fits(_gguf())
    first, _ = load_model("embedded", dtype="bfloat16")
    assert gguf_cache.ready(where) and "kept a converted copy" in capsys.readouterr().err
    calls: list[str] = []
    real = gguf_cache.load_model
    monkeypatch.setattr(gguf_cache, "load_model", lambda d, dtype: calls.append(str(d)) or real(d, dtype))
    again, _ = load_model("embedded", dtype="bfloat16")
    assert calls == [str(where)]
    ref = {k: v.to(torch.bfloat16) for k, v in ref_model.state_dict().items()}
    monkeypatch.setenv(gguf_cache.ENV, "0")
    plain, _ = load_model("embedded", dtype="bfloat16")  # transformers' own bfloat16 load of the GGUF file
    plain_buffers = dict(plain.named_buffers())
    assert plain_buffers["model.rotary_emb.inv_freq"].dtype == torch.float32  # the loader keeps RoPE in float32
    ids = torch.arange(5, 1_205).remainder(40_000)[None]  # 1,200 positions: RoPE's rounding would show
    with torch.no_grad():
        want = plain(ids).logits
    for model in (first, again):
        sd = model.state_dict()
        assert all(v.dtype == torch.bfloat16 for v in sd.values())
        assert set(sd) == set(ref) and all(torch.equal(sd[k], ref[k]) for k in ref)
        buffers = dict(model.named_buffers())  # non-persistent ones too (not in the state dict)
        assert set(buffers) == set(plain_buffers)
        for k, b in plain_buffers.items():
            assert buffers[k].dtype == b.dtype and torch.equal(buffers[k], b), k
        with torch.no_grad():
            assert torch.equal(model(ids).logits, want)  # the first run computes what every later run does
    # no copy written after all (a full disk): the GGUF file is loaded again in bfloat16, the same model
    monkeypatch.setenv(gguf_cache.ENV, str(tmp_path / "other"))
    monkeypatch.setattr(gguf_cache, "save", lambda *a: False)
    unsaved, _ = load_model("embedded", dtype="bfloat16")
    assert not gguf_cache.ready(gguf_cache.converted_dir(_gguf()))
    assert all(
        torch.equal(b, plain_buffers[k]) and b.dtype == plain_buffers[k].dtype for k, b in unsaved.named_buffers()
    )
    with torch.no_grad():
        assert torch.equal(unsaved(ids).logits, want)
    monkeypatch.setenv(gguf_cache.MAX_GB_ENV, "0.1")  # 513 MiB of float32 weights: over the limit
    assert not gguf_cache.fits(_gguf())
    assert not gguf_cache.fits(tmp_path / "missing.gguf")


def test_parse_once_reads_the_file_once_and_changes_nothing(from_gguf, monkeypatch) -> None:
    """``load_model`` parses a GGUF file once (``parse_once``); transformers alone parses it for the config, the
    tokenizer and the weights. The weights and tokenizer are the same either way (``from_gguf`` was loaded through
    ``parse_once``; the reference here is plain transformers, unpatched), and the patch is undone on exit."""
    import gguf
    from transformers import AutoModelForCausalLM, AutoTokenizer

    real, made = gguf.GGUFReader, []

    def counting(path, *args, **kwargs):
        made.append(str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(gguf, "GGUFReader", counting)
    directory, name = embedded_gguf()
    plain = AutoModelForCausalLM.from_pretrained(str(directory), gguf_file=name, dtype=torch.float32)
    plain_tok = AutoTokenizer.from_pretrained(str(directory), gguf_file=name)
    assert len(made) >= 3  # config, weights, tokenizer: each parses the file
    ref_model, ref_tok = from_gguf
    sd, ref = plain.state_dict(), ref_model.state_dict()
    assert set(sd) == set(ref) and all(torch.equal(sd[k], ref[k]) for k in ref)
    ids = plain_tok.apply_chat_template(MESSAGES, tokenize=True, return_dict=True)["input_ids"]
    assert ref_tok.apply_chat_template(MESSAGES, tokenize=True, return_dict=True)["input_ids"] == ids

    made.clear()
    with gguf_cache.parse_once():
        assert gguf_cache.fits(_gguf())
        AutoTokenizer.from_pretrained(str(directory), gguf_file=name)
        with gguf_cache.parse_once():  # nested: the same readers
            assert gguf.GGUFReader(str(_gguf())) is gguf.GGUFReader(str(directory / name))
    assert made == [str(_gguf())]  # one parse for fits, tokenizer and the nested look-ups
    assert gguf.GGUFReader is counting  # restored
