"""Special-token latent tables: streamed, batched statistics against a naive per-sample computation."""

from __future__ import annotations

import json

import pytest
import torch

from chatsae.data import TEMPLATE, Record, render_chat
from chatsae.models import capture
from chatsae.steer import special_token_table, write_table

pytestmark = pytest.mark.usefixtures("single_thread")  # tiny tensors

HOOK = "resid_post.1"
CONVERSATIONS = [
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"}],
    [
        {"role": "user", "content": "Name a fruit."},
        {"role": "assistant", "content": "Apple."},
        {"role": "user", "content": "Another one, please."},
        {"role": "assistant", "content": "Pear."},
    ],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
    ],
    [
        {"role": "user", "content": "Write one short sentence about the sea and the sky at night."},
        {"role": "assistant", "content": "The dark sea mirrors a sky full of stars."},
    ],
]


@pytest.fixture(scope="module")
def sae():
    from chatsae.sae import SAEConfig, create_sae

    torch.manual_seed(3)
    sae = create_sae(SAEConfig(architecture="standard", d_in=64, d_sae=40, metadata={"hook_name": HOOK}))
    with torch.no_grad():
        sae.W_enc.mul_(5.0)
        sae.b_enc.copy_(0.1 * torch.randn(40))
    return sae


def _naive(model, tok, sae, key_ids, first: bool):
    """Per sample (unbatched): max of f over positions holding token ``key_ids`` (position 0 only if ``first``,
    else positions > 0), averaged over samples; firing rate over occurrences; other-token firing rate."""
    maxes, n_occ, n_other = [], 0, 0
    fires, other_fire = torch.zeros(40, dtype=torch.float64), torch.zeros(40, dtype=torch.float64)
    for messages in CONVERSATIONS:
        seq = render_chat(messages, tok)
        ids = torch.tensor([seq.input_ids])
        with torch.no_grad():
            f = sae.encode(capture(model, HOOK, ids))[0].double()  # [T, d_sae]
        cls = torch.tensor(seq.token_class)
        pos = torch.arange(len(seq.input_ids))
        at = (ids[0] == key_ids) & (cls == TEMPLATE) & ((pos == 0) if first else (pos > 0))
        other = (cls != TEMPLATE) & (pos > 0)
        other_fire += (f[other] > 0).sum(0)
        n_other += int(other.sum())
        if at.any():
            maxes.append(f[at].max(0).values)
            fires += (f[at] > 0).sum(0)
            n_occ += int(at.sum())
    return torch.stack(maxes).mean(0), fires / n_occ, other_fire / n_other, len(maxes), n_occ


def test_table_matches_naive_per_sample_computation(tiny_llama, sae, tmp_path):
    model, tok = tiny_llama
    records = [Record(i, m, None) for i, m in enumerate(CONVERSATIONS)]
    table = special_token_table(model, tok, sae, records, n_samples=10, top_k=40, max_tokens=128, dedup_n=None)
    assert table.n_samples == len(CONVERSATIONS)
    start = tok.convert_tokens_to_ids("<|im_start|>")
    user = tok.encode("user", add_special_tokens=False)[0]
    cases = {"<|im_start|> @ position 0": (start, True), "<|im_start|>": (start, False), "user": (user, False)}
    for key, (token_id, first) in cases.items():
        avg, rate, other, n_samples, n_occ = _naive(model, tok, sae, token_id, first)
        assert table.tokens[key] == {"n_samples": n_samples, "n_occurrences": n_occ}
        rows = [r for r in table.rows if r.token == key]
        assert [r.rank for r in rows] == list(range(1, 41))
        got = {r.latent: r for r in rows}
        for attr, expected in (("avg_max_activation", avg), ("firing_rate", rate), ("other_firing_rate", other)):
            column = torch.tensor([getattr(got[k], attr) for k in range(40)], dtype=torch.float64)
            torch.testing.assert_close(column, expected, msg=f"{key}: {attr}")
        values = [r.avg_max_activation for r in rows]
        assert values == sorted(values, reverse=True)
    n_turns = sum(len(m) + (m[0]["role"] != "system") for m in CONVERSATIONS)  # + the default system prompt
    assert table.tokens["<|im_start|>"]["n_occurrences"] == n_turns - len(CONVERSATIONS)
    assert "\\n after user" in table.tokens and "\\n after assistant" in table.tokens  # keyed by the role before


def test_top_k_and_written_files(tiny_llama, sae, tmp_path):
    model, tok = tiny_llama
    records = [Record(i, m, None) for i, m in enumerate(CONVERSATIONS)]
    table = special_token_table(model, tok, sae, records, n_samples=2, top_k=3, dedup_n=None)
    assert table.n_samples == 2
    assert all(sum(r.token == k for r in table.rows) == 3 for k in table.tokens)
    md, js = write_table(table, tmp_path / "out")
    data = json.loads(js.read_text())
    assert data["n_samples"] == 2 and len(data["rows"]) == 3 * len(table.tokens)
    text = md.read_text()
    assert "`<\\|im_start\\|> @ position 0`" in text  # pipes escaped inside the table
    assert "| token | rank | latent |" in text
