"""Known-answer tests for featlib.matching."""

import numpy as np
import pytest
import torch

from featlib.matching import (
    NON_CONCEPT_TOKENS,
    CorrelationAccumulator,
    Matches,
    TopActivations,
    best_partners,
    concept_filter,
    is_non_concept,
    one_to_one,
    threshold,
)


def sparse_codes(n: int, d: int, density: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mask = rng.random((n, d)) < density
    return (mask * rng.exponential(1.0, (n, d))).astype(np.float64)


def accumulate(a: np.ndarray, b: np.ndarray, chunk: int) -> CorrelationAccumulator:
    acc = CorrelationAccumulator(a.shape[1], b.shape[1])
    for s in range(0, a.shape[0], chunk):
        acc.update(torch.from_numpy(a[s:s + chunk]).float(), torch.from_numpy(b[s:s + chunk]).float())
    return acc


def make_matches(idx_a, idx_b, r) -> Matches:
    return Matches(np.asarray(idx_a, np.int64), np.asarray(idx_b, np.int64), np.asarray(r, np.float32))


def test_planted_permutation_recovered():
    a = sparse_codes(5000, 64, 0.05, seed=0)
    perm = np.random.default_rng(1).permutation(64)
    noise = np.abs(np.random.default_rng(2).normal(0, 0.01, a.shape)) * (a > 0)
    b = a[:, perm] + noise
    acc = accumulate(a, b, chunk=777)  # uneven chunks
    m = best_partners(acc.correlation(), acc.active_b)
    assert len(m) == 64
    np.testing.assert_array_equal(m.idx_b, np.arange(64))
    np.testing.assert_array_equal(m.idx_a, perm)  # b[:, j] == a[:, perm[j]]
    assert (m.r > 0.9).all()
    assert m.idx_a.dtype == np.int64 and m.r.dtype == np.float32


def test_streaming_equals_dense_with_dead_features():
    a = sparse_codes(1000, 12, 0.2, seed=3)
    b = 0.5 * a[:, :10] + sparse_codes(1000, 10, 0.2, seed=4)
    a[:, [2, 7]] = 0.0          # never firing
    b[:, 4] = 0.0
    b[:, 9] = 3.0               # constant but non-zero
    acc = accumulate(a, b, chunk=300)
    corr = acc.correlation()
    assert corr.dtype == torch.float32 and corr.shape == (12, 10)
    assert not torch.isnan(corr).any()

    with np.errstate(invalid="ignore", divide="ignore"):
        ref = np.corrcoef(a.T, b.T)[:12, 12:]  # NaN for constant features
    assert np.isnan(ref).any()
    ref = np.nan_to_num(ref, nan=0.0)
    np.testing.assert_allclose(corr.numpy(), ref, atol=1e-5)
    assert (corr[[2, 7], :] == 0).all() and (corr[:, [4, 9]] == 0).all()

    exp_a = np.ones(12, bool); exp_a[[2, 7]] = False
    exp_b = np.ones(10, bool); exp_b[[4, 9]] = False
    np.testing.assert_array_equal(acc.active_a.numpy(), exp_a)
    np.testing.assert_array_equal(acc.active_b.numpy(), exp_b)
    np.testing.assert_allclose(acc.std_a.numpy(), a.std(axis=0, ddof=0), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(acc.std_b.numpy(), b.std(axis=0, ddof=0), rtol=1e-6, atol=1e-9)

    m = best_partners(corr, acc.active_b)
    np.testing.assert_array_equal(m.idx_b, np.flatnonzero(exp_b))


def test_best_partners_ties_and_sign():
    corr = torch.tensor([[0.5, -0.9, 0.1],
                         [0.5, -0.2, 0.3],
                         [0.1, -0.5, 0.3]])
    m = best_partners(corr)
    np.testing.assert_array_equal(m.idx_a, [0, 1, 1])  # ties -> lowest; signed argmax
    np.testing.assert_allclose(m.r, [0.5, -0.2, 0.3])
    m = best_partners(corr, torch.tensor([True, False, True]))
    np.testing.assert_array_equal(m.idx_b, [0, 2])


def test_one_to_one_keeps_highest_correlation():
    m = make_matches(idx_a=[5, 2, 5, 2, 9, 5],
                     idx_b=[0, 1, 2, 3, 4, 5],
                     r=[0.3, 0.8, 0.9, 0.8, 0.1, 0.4])
    out = one_to_one(m)
    np.testing.assert_array_equal(out.idx_a, [2, 5, 9])
    np.testing.assert_array_equal(out.idx_b, [1, 2, 4])  # tie at A=2 -> lower idx_b
    np.testing.assert_allclose(out.r, [0.8, 0.9, 0.1])


def test_threshold_strict():
    m = make_matches([0, 1, 2, 3], [3, 2, 1, 0], [0.2, 0.5, 0.7, -0.9])
    out = threshold(m, 0.5)
    np.testing.assert_array_equal(out.idx_a, [2])
    assert len(threshold(m, -1.0)) == 4
    assert isinstance(out, Matches)


def test_is_non_concept():
    for tok in NON_CONCEPT_TOKENS | {" .", "...", "  ", "\t", "$", "—", "<|im_start|>", "<unk>", " ,\n"}:
        assert is_non_concept(tok), repr(tok)
    for tok in ["cat", " Paris", "3", "don't", "<3a", "a."]:
        assert not is_non_concept(tok), repr(tok)


def test_concept_filter_counts():
    top_a = [[" dog", "cat"],          # 0: clean
             [" Paris", "."],          # 1: punctuation
             ["<bos>", "king"],        # 2: special token
             [" River", "water"],      # 3: clean
             [],                       # 4: no top tokens
             ["apple"]]                # 5: clean
    top_b = [["Dog ", "puppy"],        # 0: shares 'dog' case-insensitively
             ["paris"],                # 1
             ["king"],                 # 2
             ["lake", "ocean"],        # 3: clean, shares nothing with A3
             ["x"],                    # 4
             ["APPLE", "<|endoftext|>"]]  # 5: special token
    m = make_matches([0, 1, 2, 3, 4, 5, 0], [0, 1, 2, 3, 4, 5, 3], [0.9] * 7)
    kept, counts = concept_filter(m, top_a, top_b)
    assert counts == {"non_concept": 3, "shared_token": 1}
    np.testing.assert_array_equal(kept.idx_a, [0])
    np.testing.assert_array_equal(kept.idx_b, [0])
    kept, counts = concept_filter(m, top_a, top_b, require_shared=False)
    assert counts == {"non_concept": 3, "shared_token": 3}
    np.testing.assert_array_equal(kept.idx_b, [0, 3, 3])


def test_top_activations_streaming_equals_global():
    gen = torch.Generator().manual_seed(5)
    n, d, k = 2000, 16, 5
    codes = torch.rand(n, d, generator=gen) * (torch.rand(n, d, generator=gen) < 0.1)
    codes[:, 3] = 0.0
    codes[:, 4] = 0.0
    codes[[10, 1500], 4] = torch.tensor([0.2, 0.7])   # only two positives
    codes[:, 5] = -torch.rand(n, generator=gen)         # negatives never count
    offset = 10_000
    top = TopActivations(d, k)
    perm = torch.randperm(n, generator=gen)  # chunks need not be in order
    for s in range(0, n, 333):
        rows = perm[s:s + 333]
        top.update(codes[rows], rows + offset)

    full = [c for c in range(d) if c not in (3, 4, 5)]
    ref = torch.topk(codes.T, k, dim=1)
    torch.testing.assert_close(top.values[full], ref.values[full])
    torch.testing.assert_close(top.positions[full], ref.indices[full] + offset)
    assert (top.positions[3] == -1).all() and (top.values[3] == 0).all()
    assert (top.positions[5] == -1).all()
    assert top.positions[4].tolist() == [1500 + offset, 10 + offset, -1, -1, -1]
    torch.testing.assert_close(top.values[4], torch.tensor([0.7, 0.2, 0.0, 0.0, 0.0]))


def test_bad_inputs():
    acc = CorrelationAccumulator(4, 3)
    with pytest.raises(ValueError, match="no tokens"):
        acc.correlation()
    with pytest.raises(ValueError, match=r"\(5, 4\).*\(6, 3\)"):
        acc.update(torch.zeros(5, 4), torch.zeros(6, 3))
    with pytest.raises(ValueError, match=r"\(5, 2\)"):
        acc.update(torch.zeros(5, 2), torch.zeros(5, 3))
    with pytest.raises(ValueError):
        acc.update(torch.zeros(5, 4), torch.zeros(5, 7))
    with pytest.raises(ValueError):
        TopActivations(4).update(torch.zeros(5, 3), torch.arange(5))
