"""Feature absorption (chatsae.eval.absorption): the per-word scores against hand-computed cases, the split-feature
rule, and the whole evaluation on a constructed SAE where one letter's direction is absorbed by token latents on a
known subset of words."""

from __future__ import annotations

import math
import random

import pytest
import torch

from chatsae.eval.absorption import (
    AbsorptionConfig,
    absorption_eval,
    absorption_scores,
    alpha_tokens,
    first_letter_prompts,
    split_features,
)
from chatsae.sae import SAEConfig, create_sae


def test_absorption_scores_by_hand():
    # probe direction e0; latent 0 = main (decoder e0), latent 1 absorbs (decoder (e0 + e1)/sqrt2), latent 2 unrelated
    r2 = math.sqrt(2)
    w_dec = torch.tensor([[1.0, 0, 0], [1 / r2, 1 / r2, 0], [0, 0, 1.0]])
    acts = torch.tensor([[1.0, 0, 0], [1.0, 1.0, 0], [1.0, 0.5, 0], [1.0, 0, 1.0]])
    latents = torch.tensor(
        [
            [1.0, 0, 0],  # main fires: main projection 1 >= probe projection 1 -> 0
            [0.0, r2, 0],  # main silent, absorber projection sqrt2 * cos(pi/4) = 1 -> 1, full absorption
            [0.5, r2 / 2, 0],  # main projection 0.5, absorber 0.5 of 1: 0.5 / (0.5 + 0.5) = 0.5, not full
            [0.0, 0, 1.0],  # nothing aligned carries the direction: 0
        ]
    )
    frac, full = absorption_scores(acts, latents, torch.tensor([2.0, 0, 0]), w_dec, [0], AbsorptionConfig())
    assert frac.tolist() == pytest.approx([0.0, 1.0, 0.5, 0.0], abs=1e-6)
    assert full.tolist() == [False, True, False, False]


def test_split_features_rule():
    feats = [[5], [5, 7], [5, 7, 1], [5, 7, 1, 2]]
    assert split_features([0.50, 0.60, 0.61, 0.9], feats, 0.03) == [5, 7]  # stops at the first small step
    assert split_features([0.8, 0.8, 0.9, 0.95], feats, 0.03) == [5]


def _constructed(n_per_letter: int, seed: int):
    """Words of 4 letters (directions e0..e3); 20% of the 'a' words also carry one of 10 token directions
    (dims 4..13), and then only the token's latent fires (the 'a' latent is inhibited): absorption. Returns
    (acts, letters, absorbed mask)."""
    gen = torch.Generator().manual_seed(seed)
    rows, letters, absorbed = [], [], []
    for letter in range(4):
        for i in range(n_per_letter):
            x = torch.zeros(16)
            x[letter] = 0.8 + 0.4 * torch.rand((), generator=gen)
            x[14:] = 0.3 * torch.randn(2, generator=gen)
            hit = letter == 0 and i % 5 == 0
            if hit:
                x[4 + (i // 5) % 10] = 1.0
            rows.append(x)
            letters.append(letter)
            absorbed.append(hit)
    return torch.stack(rows), torch.tensor(letters), torch.tensor(absorbed)


def _absorbing_sae():
    sae = create_sae(SAEConfig("standard", d_in=16, d_sae=16, apply_b_dec_to_input=False))
    w_enc, w_dec = torch.zeros(16, 16), torch.zeros(16, 16)
    for letter in range(4):
        w_enc[letter, letter] = 1.0
        w_dec[letter, letter] = 1.0
    for j in range(10):
        t = 4 + j
        w_enc[t, t] = 1.0
        w_enc[t, 0] = -2.0  # the token inhibits the 'a' latent
        w_dec[t, 0] = w_dec[t, t] = 1 / math.sqrt(2)
    for t in (14, 15):
        w_enc[t, t] = 1.0
        w_dec[t, t] = 1.0
    with torch.no_grad():
        sae.W_enc.copy_(w_enc)
        sae.W_dec.copy_(w_dec)
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


def test_absorption_eval_on_constructed_sae():
    sae = _absorbing_sae()
    tr_x, tr_y, _ = _constructed(200, seed=0)
    te_x, te_y, te_abs = _constructed(50, seed=1)
    cfg = AbsorptionConfig(min_letters=4)
    res = absorption_eval(tr_x, tr_y, te_x, te_y, sae, cfg)
    by = {r.letter: r for r in res.letters}
    assert res.evaluated == ["a", "b", "c", "d"]
    a = by["a"]
    assert a.probe_f1 == 1.0 and a.num_probe_true_positives == 50
    assert a.split_features == [0]  # each token latent adds too little F1 to count as a split
    assert a.mean_absorption_fraction == pytest.approx(int(te_abs.sum()) / 50)  # 10 of 50
    assert a.num_full_absorption == int(te_abs.sum())
    for name, latent in (("b", 1), ("c", 2), ("d", 3)):
        assert by[name].split_features == [latent]
        assert by[name].mean_absorption_fraction == 0.0 and by[name].num_full_absorption == 0
    assert res.metrics is not None
    assert res.metrics["mean_absorption_fraction_score"] == pytest.approx(0.2 / 4)
    assert res.metrics["mean_num_split_features"] == 1.0
    strict = absorption_eval(tr_x, tr_y, te_x, te_y, sae, AbsorptionConfig(min_letters=20))
    assert strict.metrics is None and "only 4 letter(s)" in (strict.reason or "")


def test_prompts_equal_length_and_word_position(chat_tokenizer):
    words = alpha_tokens(chat_tokenizer)
    assert len(words) > 1000
    assert all(w.strip().isalpha() for _, w in words[:200])
    rng = random.Random(0)
    chosen = rng.sample(words, 6)
    p = first_letter_prompts(chosen[:3], chosen[3:] + rng.sample(words, 20), chat_tokenizer, rng, n_icl=5)
    assert p.ids.shape[0] == 3
    assert p.ids[:, p.position].tolist() == [tid for tid, _ in chosen[:3]]
    text = chat_tokenizer.decode(p.ids[0])
    assert text.endswith(f"{chosen[0][1]} has the first letter:") and text.count("has the first letter:") == 6
    with pytest.raises(ValueError, match="contain"):
        first_letter_prompts(chosen[:1], words[:20], chat_tokenizer, rng, template="no word here")
