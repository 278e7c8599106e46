"""Evaluation metrics against naive loop-based references on hand-made tensors, and streaming == one-shot."""

from __future__ import annotations

import math

import pytest
import torch

from chatsae.eval import metrics as M
from chatsae.eval.streaming import LMLossAccumulator, ReconstructionAccumulator, SparsityAccumulator, SubsetAccumulator


# ---- naive references (python loops over tokens / sequences) ----------------------------------------------------
def naive_eq7(x, x_hat, seq_ids):
    n_tokens, h = x.shape
    per_seq: dict[int, list[float]] = {}
    for n in range(n_tokens):
        err = sum((float(x[n, k]) - float(x_hat[n, k])) ** 2 for k in range(h))
        per_seq.setdefault(int(seq_ids[n]), []).append(err)
    return sum(sum(v) / len(v) for v in per_seq.values()) / (len(per_seq) * h)


def naive_fvu(x, x_hat):
    n_tokens, h = x.shape
    mean = [sum(float(x[n, k]) for n in range(n_tokens)) / n_tokens for k in range(h)]
    num = sum((float(x[n, k]) - float(x_hat[n, k])) ** 2 for n in range(n_tokens) for k in range(h))
    den = sum((float(x[n, k]) - mean[k]) ** 2 for n in range(n_tokens) for k in range(h))
    return num / den


def naive_cos_rel(x, x_hat):
    cos, rel = [], []
    for a, b in zip(x.tolist(), x_hat.tolist(), strict=True):
        na, nb = math.sqrt(sum(v * v for v in a)), math.sqrt(sum(v * v for v in b))
        cos.append(sum(p * q for p, q in zip(a, b, strict=True)) / (na * nb))
        rel.append(nb / na)
    return cos, rel


def naive_ce(logits, labels, mask):
    out = torch.zeros(labels.shape)
    for b in range(labels.shape[0]):
        for t in range(labels.shape[1]):
            if mask[b, t]:
                row = [float(v) for v in logits[b, t]]
                lse = math.log(sum(math.exp(v) for v in row))
                out[b, t] = lse - row[int(labels[b, t])]
    return out


def naive_kl(p_logits, q_logits, mask):
    out = torch.zeros(mask.shape)
    for b in range(mask.shape[0]):
        for t in range(mask.shape[1]):
            if mask[b, t]:
                p = torch.softmax(p_logits[b, t].double(), -1).tolist()
                q = torch.softmax(q_logits[b, t].double(), -1).tolist()
                out[b, t] = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))
    return out


@pytest.fixture
def data():
    torch.manual_seed(0)
    n, h, d_sae = 40, 6, 12
    x = torch.randn(n, h) * 3 + 1
    x_hat = x + 0.5 * torch.randn(n, h)
    seq_ids = torch.tensor([0] * 3 + [1] * 17 + [2] * 1 + [3] * 19)  # very different lengths
    f = torch.relu(torch.randn(n, d_sae) - 0.8)
    f[:, 3] = 0  # a dead latent
    f[:, 5] = 1.0  # a dense latent
    token_class = torch.randint(0, 5, (n,))
    positions = torch.cat([torch.arange(3), torch.arange(17), torch.arange(1), torch.arange(19)])
    return x, x_hat, f, seq_ids, token_class, positions


# ---- one-shot functions ------------------------------------------------------------------------------------------
def test_eq7_matches_naive(data):
    x, x_hat, _, seq_ids, _, _ = data
    assert M.sequence_mse(x, x_hat, seq_ids).item() == pytest.approx(naive_eq7(x, x_hat, seq_ids), rel=1e-9)


def test_eq7_differs_from_flat_mean_for_unequal_lengths():
    h = 2
    x = torch.zeros(4, h)
    x_hat = torch.zeros(4, h)
    x_hat[0] = torch.tensor([2.0, 0.0])  # sequence 0: one token, squared error 4
    seq_ids = torch.tensor([0, 1, 1, 1])  # sequence 1: three perfect tokens
    eq7 = M.sequence_mse(x, x_hat, seq_ids).item()
    flat = M.token_mse(x, x_hat).item()
    assert eq7 == pytest.approx((4 / 1 + 0 / 3) / 2 / h)  # 1.0
    assert flat == pytest.approx(4 / (4 * h))  # 0.5
    assert eq7 != pytest.approx(flat)
    # equal lengths: the two coincide
    same = torch.tensor([0, 0, 1, 1])
    assert M.sequence_mse(x, x_hat, same).item() == pytest.approx(flat)


def test_mse_st_uses_only_special_positions(data):
    x, x_hat, _, seq_ids, token_class, positions = data
    special = M.subset_masks(token_class, positions)["special"]
    assert 0 < special.sum() < len(special)
    acc = SubsetAccumulator(d_sae=4)
    f = torch.zeros(x.shape[0], 4)
    acc.update(x, x_hat, f, token_class, positions, seq_ids)
    mse_st = acc.result()["special"]["mse"]
    assert mse_st == pytest.approx(naive_eq7(x[special], x_hat[special], seq_ids[special]), rel=1e-9)
    # spoiling the reconstruction of non-special tokens leaves MSE_st unchanged; spoiling a special one does not
    worse = x_hat.clone()
    worse[~special] += 100
    acc2 = SubsetAccumulator(d_sae=4)
    acc2.update(x, worse, f, token_class, positions, seq_ids)
    assert acc2.result()["special"]["mse"] == pytest.approx(mse_st, rel=1e-12)
    assert acc2.result()["all"]["mse"] > 100
    worse[special.nonzero()[0]] += 100
    acc3 = SubsetAccumulator(d_sae=4)
    acc3.update(x, worse, f, token_class, positions, seq_ids)
    assert acc3.result()["special"]["mse"] > mse_st + 1
    # sequences without any special token are skipped: N counts only sequences that have one
    expected_n = len(torch.unique(seq_ids[special]))
    assert acc.result()["special"]["sequences"] == expected_n


def test_fvu_is_about_the_mean(data):
    x, x_hat, *_ = data
    assert M.fvu(x, x_hat).item() == pytest.approx(naive_fvu(x, x_hat), rel=1e-9)
    torch.manual_seed(1)
    offset = torch.full((50, 4), 1000.0)
    noisy = offset + torch.randn(50, 4)
    # predicting the constant offset explains none of the variance: FVU ~ 1, although ||x - x_hat||^2 << ||x||^2
    assert M.fvu(noisy, offset).item() == pytest.approx(1.0, abs=0.05)
    assert M.squared_error(noisy, offset).sum() / noisy.pow(2).sum() < 1e-5


def test_cosine_relative_norm_l0(data):
    x, x_hat, f, *_ = data
    cos, rel = naive_cos_rel(x, x_hat)
    assert M.cosine_similarity(x, x_hat).tolist() == pytest.approx(cos, rel=1e-9)
    assert M.relative_norm(x, x_hat).tolist() == pytest.approx(rel, rel=1e-9)
    assert M.l0(f).tolist() == [sum(1 for v in row if v > 0) for row in f.tolist()]


def test_dead_dense_and_histogram():
    freq = torch.tensor([0.0, 0.0, 1e-3, 0.05, 0.2, 1.0, 3e-9, 0.1])
    assert M.dead_latents(freq) == 2
    assert M.dense_latents(freq) == 2  # > 0.1 strictly: 0.2 and 1.0
    hist = M.firing_histogram(freq)
    assert len(hist) == len(M.HISTOGRAM_EDGES) - 1 and sum(hist) == 6
    expected = [0] * len(hist)
    for v in (1e-3, 0.05, 0.2, 1.0, 3e-9, 0.1):
        lv = math.log10(v)
        i = max(0, min(len(hist) - 1, int(math.floor((lv - M.HISTOGRAM_EDGES[0]) / 0.5 + 1e-9))))
        expected[i] += 1
    assert hist == expected


def test_next_token_labels_respect_padding():
    ids = torch.tensor([[5, 6, 7, 2], [8, 9, 2, 2]])
    am = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])  # the pad id equals eos: only the mask tells them apart
    labels, mask = M.next_token_labels(ids, am)
    assert labels[0, :3].tolist() == [6, 7, 2]
    assert mask.tolist() == [[True, True, True, False], [True, False, False, False]]


def test_cross_entropy_and_kl_match_naive():
    torch.manual_seed(2)
    logits = torch.randn(2, 5, 7)
    other = logits + torch.randn(2, 5, 7)
    labels = torch.randint(0, 7, (2, 5))
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0]]).bool()
    ce = M.token_cross_entropy(logits, labels, mask, chunk=3)
    assert torch.allclose(ce, naive_ce(logits, labels, mask), atol=1e-5)
    kl = M.token_kl(logits, other, mask, chunk=4)
    assert torch.allclose(kl, naive_kl(logits, other, mask), atol=1e-5)
    assert (kl[~mask] == 0).all() and (kl[mask] > 0).all()
    assert M.token_kl(logits, logits.clone(), mask).abs().max() < 1e-6
    ce_a, ce_b, kl2 = M.paired_losses(logits, other, labels, mask, chunk=3)
    assert torch.allclose(ce_a, ce, atol=1e-6) and torch.allclose(kl2, kl, atol=1e-6)
    assert torch.allclose(ce_b, naive_ce(other, labels, mask), atol=1e-5)


def test_ce_recovered():
    assert M.ce_recovered(2.0, 2.0, 10.0) == 1.0
    assert M.ce_recovered(2.0, 10.0, 10.0) == 0.0
    assert M.ce_recovered(2.0, 4.0, 10.0) == pytest.approx((10 - 4) / (10 - 2))
    assert math.isnan(M.ce_recovered(2.0, 3.0, 2.0))
    s = M.lm_loss_summary(2.0, 2.5, 6.0, 0.1)
    assert s["delta_ce"] == pytest.approx(0.5) and s["ce_recovered"] == pytest.approx(3.5 / 4)


# ---- streaming == one-shot ---------------------------------------------------------------------------------------
def test_streaming_equals_one_shot(data):
    x, x_hat, f, seq_ids, token_class, positions = data
    cuts = [0, 7, 8, 25, 40]  # sequences 1 and 3 span several batches; one batch has a single token
    recon, spars, lm = ReconstructionAccumulator(), SparsityAccumulator(f.shape[1]), LMLossAccumulator()
    torch.manual_seed(3)
    losses = {k: torch.rand(x.shape[0]) for k in ("ce_clean", "ce_spliced", "ce_zero", "kl")}
    for a, b in zip(cuts, cuts[1:], strict=False):
        recon.update(x[a:b], x_hat[a:b], seq_ids[a:b])
        spars.update(f[a:b])
        lm.update(**{k: v[a:b] for k, v in losses.items()})
    r, s, m = recon.result(), spars.result(), lm.result()
    assert r["tokens"] == 40 and r["sequences"] == 4
    assert r["mse"] == pytest.approx(M.sequence_mse(x, x_hat, seq_ids).item(), rel=1e-10)
    assert r["log2_mse"] == pytest.approx(math.log2(r["mse"]))
    assert r["mse_token"] == pytest.approx(M.token_mse(x, x_hat).item(), rel=1e-10)
    assert r["fvu"] == pytest.approx(M.fvu(x, x_hat).item(), rel=1e-10)
    assert r["explained_variance"] == pytest.approx(1 - r["fvu"])
    assert r["cosine_similarity"] == pytest.approx(M.cosine_similarity(x, x_hat).mean().item(), rel=1e-10)
    assert r["relative_norm"] == pytest.approx(M.relative_norm(x, x_hat).mean().item(), rel=1e-10)
    assert r["mean_sq_norm"] == pytest.approx(x.pow(2).sum(-1).mean().item(), rel=1e-6)
    l0 = M.l0(f).double()
    assert s["l0"] == pytest.approx(l0.mean().item())
    assert s["l0_std"] == pytest.approx(l0.std(unbiased=False).item())
    assert s["l0_p50"] == float(l0.sort().values[math.ceil(0.5 * 40) - 1])
    assert s["l0_max"] == l0.max().item()
    freq = (f > 0).double().mean(0)
    assert s["dead_latents"] == int((freq == 0).sum()) >= 1
    assert s["dense_latents"] == int((freq > 0.1).sum()) >= 1
    mean = {k: v.double().mean().item() for k, v in losses.items()}
    assert m["ce_clean"] == pytest.approx(mean["ce_clean"]) and m["kl"] == pytest.approx(mean["kl"])
    assert m["delta_ce"] == pytest.approx(mean["ce_spliced"] - mean["ce_clean"])
    assert m["ce_recovered"] == pytest.approx(M.ce_recovered(mean["ce_clean"], mean["ce_spliced"], mean["ce_zero"]))


def test_streaming_fvu_is_numerically_sound():
    """Huge common offset (like the attention sink's norm): the merged variance keeps its precision."""
    torch.manual_seed(4)
    x = (1e6 + torch.randn(3000, 8, dtype=torch.float64)).float()
    x_hat = x + 0.1 * torch.randn(3000, 8)
    acc = ReconstructionAccumulator()
    for a in range(0, 3000, 256):
        xb = x[a : a + 256]
        acc.update(xb, x_hat[a : a + 256], torch.zeros(len(xb), dtype=torch.long))
    assert acc.result()["fvu"] == pytest.approx(naive_fvu(x.double(), x_hat.double()), rel=1e-6)


def test_subsets_and_empty_subsets(data):
    x, x_hat, f, seq_ids, _, positions = data
    token_class = torch.full_like(positions, M.ASSISTANT)
    token_class[positions == 0] = M.TEMPLATE
    acc = SubsetAccumulator(d_sae=f.shape[1])
    acc.update(x, x_hat, f, token_class, positions, seq_ids)
    res = acc.result()
    assert set(res) == set(M.SUBSETS)
    assert res["all"]["tokens"] == 40 and res["all_no_pos0"]["tokens"] == 36
    assert res["special"]["tokens"] == 4 and res["special_no_pos0"]["tokens"] == 0
    assert res["assistant"]["tokens"] == 36 and res["user"]["tokens"] == 0
    assert math.isnan(res["user"]["mse"]) and res["user"]["dead_latents"] is None and res["user"]["ce_clean"] is None
    assert set(res["user"]) == set(res["all"])  # stable keys even when empty
    keep = positions != 0
    assert res["all_no_pos0"]["mse"] == pytest.approx(naive_eq7(x[keep], x_hat[keep], seq_ids[keep]), rel=1e-9)


def test_subset_firing_counts_match_a_loop_over_subsets() -> None:
    """SubsetAccumulator counts every subset's firings in one product (masks x fired); the reference is the plain
    loop: each subset's rows taken out of f and counted on their own."""
    g = torch.Generator().manual_seed(3)
    n, d_sae = 300, 64
    f = torch.relu(torch.randn(n, d_sae, generator=g) - 0.8)
    f[5, :] = 0.0  # a token with no latent firing
    token_class = torch.randint(0, 3, (n,), generator=g)
    positions = torch.arange(n) % 25
    seq_ids = torch.arange(n) // 25
    token_ids = torch.randint(0, 50, (n,), generator=g)
    x = torch.randn(n, 8, generator=g)
    acc = SubsetAccumulator(d_sae=d_sae, special_ids=[1, 2, 3])
    for lo, hi in ((0, 120), (120, 300)):  # two batches
        sl = slice(lo, hi)
        acc.update(x[sl], x[sl] * 0.9, f[sl], token_class[sl], positions[sl], seq_ids[sl], token_ids[sl])
    strict = M.strict_special(token_ids, torch.tensor([1, 2, 3]))
    before = M.before_first_user(token_class, positions, seq_ids)
    for name, m in M.subset_masks(token_class, positions, strict, before).items():
        ref = SparsityAccumulator(d_sae)
        ref.update(f[m], seq_ids[m])
        got = acc.sparsity[name]
        assert got.n == ref.n == int(m.sum()), name
        assert torch.equal(got.fire_counts, ref.fire_counts), name
        assert torch.equal(got.l0_counts, ref.l0_counts), name
        a, b = got.result(), ref.result()
        assert a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a), name


def naive_template_parts(token_class: list[int], positions: list[int], seq_ids: list[int]) -> tuple[list, list]:
    """Indices of the template tokens (position 0 left out) before / after their sequence's first user token, by a
    walk over each sequence in position order."""
    prefix, turns = [], []
    for s in sorted(set(seq_ids)):
        idx = sorted((i for i in range(len(seq_ids)) if seq_ids[i] == s), key=lambda i: positions[i])
        seen_user = False
        for i in idx:
            seen_user = seen_user or token_class[i] == M.USER
            if token_class[i] == M.TEMPLATE and positions[i] != 0:
                (turns if seen_user else prefix).append(i)
    return prefix, turns


def test_template_parts_match_a_walk_over_each_sequence() -> None:
    """special_prefix / special_turns split the template set (no position 0) at each sequence's first user token:
    the streaming accumulator (sequences cut across calls) and the one-shot masks agree with a plain walk."""
    g = torch.Generator().manual_seed(5)
    n, h = 400, 6
    token_class = torch.randint(0, 5, (n,), generator=g)
    token_class[torch.rand(n, generator=g) < 0.5] = M.TEMPLATE
    seq_ids = torch.arange(n) // 40
    positions = torch.arange(n) % 40
    token_class[(seq_ids == 3) & (token_class == M.USER)] = M.ASSISTANT  # a sequence without a user token
    x = torch.randn(n, h, generator=g)
    x_hat = x + 0.3 * torch.randn(n, h, generator=g)
    f = torch.relu(torch.randn(n, 16, generator=g))
    prefix, turns = naive_template_parts(token_class.tolist(), positions.tolist(), seq_ids.tolist())
    assert prefix and turns
    masks = M.subset_masks(token_class, positions, before_user=M.before_first_user(token_class, positions, seq_ids))
    assert masks["special_prefix"].nonzero().flatten().tolist() == prefix
    assert sorted(masks["special_turns"].nonzero().flatten().tolist()) == sorted(turns)
    assert torch.equal(masks["special_prefix"] | masks["special_turns"], masks["special_no_pos0"])
    acc = SubsetAccumulator(d_sae=16)
    for lo, hi in ((0, 55), (55, 130), (130, 400)):  # cuts inside sequences 1 and 3
        sl = slice(lo, hi)
        acc.update(x[sl], x_hat[sl], f[sl], token_class[sl], positions[sl], seq_ids[sl])
    res = acc.result()
    for name, idx in (("special_prefix", prefix), ("special_turns", turns)):
        i = torch.tensor(idx)
        assert res[name]["tokens"] == len(idx), name
        assert res[name]["mse"] == pytest.approx(naive_eq7(x[i], x_hat[i], seq_ids[i]), rel=1e-9), name


def _same(u: object, v: object) -> bool:
    """Equal, or both NaN (an empty subset's means)."""
    return u == v or (isinstance(u, float) and isinstance(v, float) and math.isnan(u) and math.isnan(v))
