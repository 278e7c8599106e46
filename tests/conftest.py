"""Shared fixtures: the embedded model (loaded once per session) and a tiny random Llama with a real chat tokenizer."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Small models run far faster on one thread (and a 2-core CI machine is not oversubscribed by intra-op threads);
# set CHATSAE_TEST_THREADS to change it.
torch.set_num_threads(int(os.environ.get("CHATSAE_TEST_THREADS", "1")))

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

# The converted copy of the embedded GGUF (chatsae.models.gguf_cache) goes to a folder of this test session, not the
# user's cache: the first load converts, later loads (CLI subprocesses included) read the copy.
if "CHATSAE_GGUF_CACHE" not in os.environ:
    import atexit
    import shutil
    import tempfile

    _GGUF_CACHE = tempfile.mkdtemp(prefix="chatsae-test-gguf-")
    os.environ["CHATSAE_GGUF_CACHE"] = _GGUF_CACHE
    atexit.register(shutil.rmtree, _GGUF_CACHE, True)


def shared_file(name: str) -> Path:
    """A file of ../shared/data, or skip the test with the reason."""
    path = SHARED_DATA / name
    if not path.is_file():
        pytest.skip(f"{path} is absent (real data from ../shared/data is only on the project's machines)")
    return path


@pytest.fixture(scope="session")
def embedded():
    """(model, tokenizer) of the embedded SmolLM2-135M-Instruct, float32 on CPU, always converted from the GGUF file
    itself (about 8-15 s; the reference of tests/test_models_gguf_cache.py, which also checks it against plain
    transformers); its converted copy is then kept for the session's later loads."""
    from chatsae.models import gguf_cache, load_model
    from chatsae.models.loading import embedded_gguf

    setting = os.environ.get(gguf_cache.ENV)
    os.environ[gguf_cache.ENV] = "0"
    try:
        model, tokenizer = load_model("embedded")
    finally:
        if setting is None:
            del os.environ[gguf_cache.ENV]
        else:
            os.environ[gguf_cache.ENV] = setting
    gguf = Path(*embedded_gguf())
    where = gguf_cache.converted_dir(gguf)
    if where is not None and not gguf_cache.ready(where):
        gguf_cache.save(model, tokenizer, where, gguf)
    model.eval()
    return model, tokenizer


@pytest.fixture(scope="session")
def chat_tokenizer():
    """The embedded model's tokenizer (ChatML template, <|im_start|>/<|im_end|>), without loading its weights."""
    from chatsae.models.loading import load_tokenizer

    return load_tokenizer("embedded")


@pytest.fixture(scope="session")
def tiny_llama(chat_tokenizer):
    """(model, tokenizer): a 4-layer random-weight LlamaForCausalLM (d_model 64) with the real chat tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(chat_tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=chat_tokenizer.bos_token_id,
        eos_token_id=chat_tokenizer.eos_token_id,
        pad_token_id=chat_tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(cfg).eval()
    return model, chat_tokenizer


@pytest.fixture(scope="session")
def massive_qwen2_model(chat_tokenizer):
    """A 2-layer random-weight Qwen2ForCausalLM (d_model 64, seed 0) with the real chat tokenizer whose embedding
    carries residual channels 5 and 17 scaled 200x: two channels hold most of the activation variance at every layer
    (the massive activations of that family, planted). Read-only: tests must not change it."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(
        vocab_size=len(chat_tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=chat_tokenizer.pad_token_id,
    )
    model = Qwen2ForCausalLM(cfg).eval()
    with torch.no_grad():
        model.model.embed_tokens.weight[:, [5, 17]] *= 200.0
    return model


def numbered_chats(n: int) -> list[dict]:
    """``n`` short two-turn conversations (``{"messages": [...]}``) of varied lengths, deterministic."""
    out = []
    for i in range(n):
        words = " ".join(f"w{(i * 7 + j) % 53}" for j in range(3 + (i * 5) % 17))
        msgs = [
            {"role": "user", "content": f"Question {i}: {words}?"},
            {"role": "assistant", "content": f"Answer {i} " + words[::-1]},
        ]
        out.append({"messages": msgs})
    return out


def chat_record_list(n: int) -> list:
    """:func:`numbered_chats` as ``n`` chatsae Records (record index i)."""
    from chatsae.data.formats import Record

    return [Record(i, c["messages"], None) for i, c in enumerate(numbered_chats(n))]


@pytest.fixture(scope="session")
def chat_records():
    """Factory ``n -> list[Record]``: :func:`chat_record_list`."""
    return chat_record_list


@pytest.fixture
def random_sae():
    """Factory ``(architecture, d_in=16, d_sae=48, seed=0, **cfg) -> SAE`` with every parameter randomised
    (biases, thresholds and ``r_mag`` non-zero, encoder untied), so that forward tests exercise all terms."""
    from chatsae.sae import SAEConfig, create_sae

    def make(architecture: str, d_in: int = 16, d_sae: int = 48, seed: int = 0, **cfg):
        torch.manual_seed(seed)
        cfg.setdefault("k", min(5, d_sae))
        sae = create_sae(SAEConfig(architecture=architecture, d_in=d_in, d_sae=d_sae, **cfg))
        with torch.no_grad():
            sae.W_enc.add_(0.3 * torch.randn_like(sae.W_enc) / d_in**0.5)
            for name, p in sae.named_parameters():
                if name.startswith("b_") or name == "r_mag":
                    p.copy_(0.2 * torch.randn_like(p))
                elif name == "threshold_param":
                    p.copy_(0.05 + 0.25 * torch.rand_like(p))
                elif name == "log_threshold":
                    p.copy_((0.05 + 0.25 * torch.rand_like(p)).log())
        return sae

    return make


@pytest.fixture
def single_thread():
    """Run the test with one torch thread (tiny tensors: multi-threaded kernels only add overhead, and on a loaded
    2-core machine OpenMP spin-waiting makes them 10x slower); restores the previous count."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


INTERP_CHATS = [
    [{"role": "user", "content": f"{q}"}, {"role": "assistant", "content": f"{a}"}]
    for q, a in [
        ("What is the capital of France?", "The capital of France is Paris."),
        ("Name three primary colours.", "Red, blue and yellow."),
        ("Translate 'cat' into German.", "Katze."),
        ("Write a haiku about rain.", "Soft rain on the roof,\nthe garden drinks quietly,\nclouds move to the east."),
        ("How many legs does a spider have?", "A spider has eight legs."),
        ("Give me a synonym for happy.", "Joyful."),
        ("What is 12 times 7?", "12 times 7 is 84."),
        ("Who wrote Hamlet?", "William Shakespeare wrote Hamlet."),
        ("Suggest a name for a dog.", "How about Biscuit?"),
        ("What does CPU stand for?", "Central Processing Unit."),
        ("List two planets.", "Mars and Venus."),
        ("Is water wet?", "Water makes things wet; whether it is itself wet is a question of definitions."),
        ("Say hello in Spanish.", "Hola."),
        ("What colour is the sky on a clear day?", "Blue."),
    ]
]


@pytest.fixture(scope="session")
def interp_features(tiny_llama, tmp_path_factory):
    """(FeatureData, sae, model, tokenizer, sequences): a `chatsae features` run of a random JumpReLU SAE (d_in 64,
    d_sae 32, thresholds at each latent's 97th percentile, so latents fire on ~3% of tokens) on resid_post.1 of
    ``tiny_llama`` over the 14 ``INTERP_CHATS``."""
    from chatsae.data import fast_sequences
    from chatsae.interp.features import FeaturesConfig, collect_features
    from chatsae.models import capture
    from chatsae.sae import SAEConfig, create_sae

    model, tokenizer = tiny_llama
    seqs = list(fast_sequences(INTERP_CHATS, tokenizer))
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: see `single_thread`
    try:
        torch.manual_seed(0)
        sae = create_sae(
            SAEConfig(
                architecture="jumprelu", d_in=64, d_sae=32, metadata={"hook_name": "resid_post.1", "model_name": "tiny"}
            )
        )
        x = torch.cat([capture(model, "resid_post.1", torch.tensor([s.input_ids]))[0, 1:] for s in seqs])
        with torch.no_grad():
            sae.threshold_param.copy_(sae.encode_with_pre(x)[1].quantile(0.97, dim=0))
        cfg = FeaturesConfig(
            n_samples=len(seqs),
            top_k=3,
            n_quantile=6,
            n_random=4,
            window_before=6,
            window_after=3,
            batch_size=4,
            checkpoint_every=2,
            n_logits=5,
        )
        data = collect_features(sae, model, tokenizer, seqs, cfg, tmp_path_factory.mktemp("features") / "features")
    finally:
        torch.set_num_threads(n)
    return data, sae, model, tokenizer, seqs
