"""dictionary_learning interoperability: SAEs trained by the library's own trainers (``trainSAE``, a few steps on the
embedded model's ``resid_post.3`` activations) and saved by it (``config.json`` + ``ae.pt``) load in chatsae with the
library's own ``encode`` / ``decode`` / ``forward`` outputs, for every dictionary class chatsae maps.

Runs only where ``dictionary_learning`` is importable: ``make compat`` builds ``.venv-dictlearn`` (the library with
``--no-deps`` plus what its trainers import) and runs this file there.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

dl = pytest.importorskip("dictionary_learning")

from dictionary_learning.dictionary import AutoEncoder, GatedAutoEncoder, JumpReluAutoEncoder  # noqa: E402
from dictionary_learning.trainers import (  # noqa: E402
    BatchTopKSAE,
    BatchTopKTrainer,
    GatedSAETrainer,
    JumpReluTrainer,
    StandardTrainer,
    TopKTrainer,
)
from dictionary_learning.trainers.matryoshka_batch_top_k import (  # noqa: E402
    MatryoshkaBatchTopKSAE,
    MatryoshkaBatchTopKTrainer,
)
from dictionary_learning.trainers.top_k import AutoEncoderTopK  # noqa: E402
from dictionary_learning.training import trainSAE  # noqa: E402

from chatsae.models import capture  # noqa: E402
from chatsae.sae import load_sae  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")

D_SAE, K, STEPS, BATCH = 256, 8, 12, 64
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
    "How does photosynthesis work?",
    "What is a prime number?",
]
COMMON = {"layer": 3, "lm_name": "embedded", "submodule_name": "resid_post_layer_3", "device": "cpu", "seed": 0}
TRAINERS = {
    "AutoEncoder": (AutoEncoder, "standard", {"trainer": StandardTrainer, "lr": 1e-3, "l1_penalty": 1e-3}),
    "GatedAutoEncoder": (GatedAutoEncoder, "gated", {"trainer": GatedSAETrainer, "lr": 1e-3, "l1_penalty": 1e-3}),
    "AutoEncoderTopK": (AutoEncoderTopK, "topk", {"trainer": TopKTrainer, "k": K, "threshold_start_step": 2}),
    "BatchTopKSAE": (BatchTopKSAE, "jumprelu", {"trainer": BatchTopKTrainer, "k": K, "threshold_start_step": 2}),
    "JumpReluAutoEncoder": (JumpReluAutoEncoder, "jumprelu", {"trainer": JumpReluTrainer, "lr": 1e-3}),
    "MatryoshkaBatchTopKSAE": (
        MatryoshkaBatchTopKSAE,
        "jumprelu",
        {"trainer": MatryoshkaBatchTopKTrainer, "k": K, "group_fractions": [0.25, 0.75], "threshold_start_step": 2},
    ),
}


@pytest.fixture(scope="module")
def acts(embedded) -> torch.Tensor:
    """The embedded model's ``resid_post.3`` activations ``[n, 576]`` over chat-formatted prompts (padding out)."""
    model, tok = embedded
    rows = []
    with torch.no_grad():
        for p in PROMPTS:
            text = tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False)
            ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
            rows.append(capture(model, "resid_post.3", ids)[0].float())
    return torch.cat(rows)


@pytest.fixture(scope="module")
def trained(acts: torch.Tensor, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One ``trainSAE`` run training every class (normalised activations: the library folds the scale on saving)."""
    g = torch.Generator().manual_seed(0)
    batches = [acts[torch.randint(len(acts), (BATCH,), generator=g)].clone() for _ in range(STEPS + 1)]
    configs = []
    for _, _, kw in TRAINERS.values():
        extra = {"warmup_steps": 2, "sparsity_warmup_steps": 2} if "l1_penalty" in kw or "lr" in kw else {}
        if kw["trainer"] in (TopKTrainer, BatchTopKTrainer, MatryoshkaBatchTopKTrainer):
            extra = {"warmup_steps": 2}
        configs.append({**COMMON, **kw, **extra, "steps": STEPS, "activation_dim": acts.shape[1], "dict_size": D_SAE})
    out = tmp_path_factory.mktemp("dictlearn")
    trainSAE(batches, configs, steps=STEPS, save_dir=str(out), normalize_activations=True, device="cpu")
    return out


@pytest.mark.parametrize("cls_name", list(TRAINERS))
def test_dictionary_learning_trained_sae(trained: Path, acts: torch.Tensor, cls_name: str) -> None:
    cls, arch, _ = TRAINERS[cls_name]
    folder = trained / f"trainer_{list(TRAINERS).index(cls_name)}"
    theirs = cls.from_pretrained(
        str(folder / "ae.pt"), **({} if cls_name != "AutoEncoder" else {"normalize_decoder": False})
    )
    theirs.eval()
    ours = load_sae(folder)
    assert ours.cfg.architecture == arch and ours.cfg.metadata["dict_class"] == cls_name
    assert ours.cfg.metadata["hook_name"] == "resid_post.3" and ours.cfg.metadata["model_name"] == "embedded"
    x = acts[:200]
    with torch.no_grad():
        f_theirs = theirs.encode(x)
        f_ours = ours.encode(x)
        assert (f_ours > 0).any() and (f_ours == 0).any()
        scale = float(x.abs().max())
        tol = {"rtol": 1e-4, "atol": 1e-5 * scale}
        torch.testing.assert_close(f_ours, f_theirs, **tol)
        torch.testing.assert_close(ours.decode(f_theirs), theirs.decode(f_theirs), **tol)
        torch.testing.assert_close(ours(x), theirs(x), **tol)
    if cls_name in ("BatchTopKSAE", "MatryoshkaBatchTopKSAE"):
        assert float(theirs.threshold) > 0  # the trained threshold, not the -1 placeholder
