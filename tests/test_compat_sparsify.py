"""EleutherAI sparsify interoperability: TopK SAEs trained by sparsify's own ``Trainer`` on the embedded model
(hookpoints ``layers.2`` and ``layers.5``, a few steps) and saved by it (a checkpoint folder with one ``cfg.json`` +
``sae.safetensors`` folder per hookpoint) load in chatsae with sparsify's own ``encode`` / ``decode`` / ``forward``
outputs; the checkpoint folder itself lists its hookpoints.

Runs only where ``sparsify`` (PyPI ``eai-sparsify``) is importable: ``make compat`` builds ``.venv-sparsify`` and runs
this file there.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

sparsify = pytest.importorskip("sparsify")

from datasets import Dataset  # noqa: E402
from sparsify import SparseCoder, SparseCoderConfig, TrainConfig, Trainer  # noqa: E402

from chatsae.models import capture  # noqa: E402
from chatsae.sae import load_sae  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")

PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about autumn leaves.",
    "Explain how a bicycle stays upright.",
    "Give me three tips for learning a new language.",
    "Why is the sky blue?",
    "Summarise the plot of Hamlet in two sentences.",
    "How do I boil an egg?",
    "What does a compiler do?",
    "Tell me a joke about cats.",
    "List the planets of the solar system.",
]
SEQ, K, D_SAE = 16, 8, 512


def chat_ids(tok) -> torch.Tensor:
    """The prompts in the chat template, concatenated and cut into rows of SEQ tokens ``[n, SEQ]``."""
    ids: list[int] = []
    for p in PROMPTS:
        text = tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False)
        ids += tok(text, add_special_tokens=False)["input_ids"]
    n = len(ids) // SEQ
    return torch.tensor(ids[: n * SEQ]).view(n, SEQ)


@pytest.fixture(scope="module")
def checkpoint(embedded, tmp_path_factory: pytest.TempPathFactory) -> Path:
    model, tok = embedded
    data = Dataset.from_dict({"input_ids": chat_ids(tok).tolist()}).with_format("torch")
    out = tmp_path_factory.mktemp("sparsify")
    cfg = TrainConfig(
        SparseCoderConfig(num_latents=D_SAE, k=K),
        batch_size=4,
        layers=[2, 5],
        optimizer="adam",
        lr=1e-3,
        lr_warmup_steps=1,
        log_to_wandb=False,
        save_dir=str(out),
        run_name="run",
    )
    Trainer(cfg, data, model).fit()  # saves every hookpoint's SAE at the end
    return out / "run"


def test_sparsify_trained_sae(checkpoint: Path, embedded) -> None:
    model, tok = embedded
    with pytest.raises(ValueError, match=r"run: holds 2 SAEs; give one of them: .*run/layers\.2, .*run/layers\.5$"):
        load_sae(checkpoint)
    theirs = SparseCoder.load_from_disk(checkpoint / "layers.5")
    ours = load_sae(checkpoint / "layers.5")
    assert ours.cfg.architecture == "topk" and ours.cfg.k == K and ours.cfg.d_sae == D_SAE
    assert ours.cfg.metadata["hook_name"] == "resid_post.5" and ours.cfg.metadata["source_format"] == "sparsify"
    with torch.no_grad():
        x = capture(model, "resid_post.5", chat_ids(tok)[:6]).flatten(0, 1).float()  # [96, 576]
        acts, idx, _ = theirs.encode(x)
        f_theirs = torch.zeros(len(x), D_SAE).scatter(-1, idx, acts)
        f_ours = ours.encode(x)
        assert (f_ours > 0).any()
        tol = {"rtol": 1e-4, "atol": 1e-5 * float(x.abs().max())}
        torch.testing.assert_close(f_ours, f_theirs, **tol)
        torch.testing.assert_close(ours.decode(f_theirs), theirs.decode(acts, idx), **tol)
        torch.testing.assert_close(ours(x), theirs(x).sae_out, **tol)
    # the other hookpoint is the other layer's SAE
    assert load_sae(checkpoint / "layers.2").cfg.metadata["hook_name"] == "resid_post.2"
