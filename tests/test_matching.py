"""Known-answer tests for featlib.matching."""

import numpy as np
import torch

from featlib.matching import (
    NON_CONCEPT_TOKENS,
    Matches,
    top_activations,
    concept_filter,
    is_non_concept,
    one_to_one,
    threshold,
)


def sparse_codes(n: int, d: int, density: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mask = rng.random((n, d)) < density
    return (mask * rng.exponential(1.0, (n, d))).astype(np.float64)


def make_matches(idx_a, idx_b, r) -> Matches:
    return Matches(np.asarray(idx_a, np.int64), np.asarray(idx_b, np.int64), np.asarray(r, np.float32))


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


def test_top_activations_from_sparse_rows_equal_a_dense_sort():
    from featlib.sparse_rows import pack

    gen = torch.Generator().manual_seed(5)
    n, d, k = 2000, 16, 5
    codes = torch.rand(n, d, generator=gen) * (torch.rand(n, d, generator=gen) < 0.1)
    codes[:, 3] = 0.0
    codes[:, 4] = 0.0
    codes[[10, 1500], 4] = torch.tensor([0.2, 0.7])   # only two positives
    codes[:, 5] = -torch.rand(n, generator=gen)         # negatives never count
    codes[[7, 3, 900], 6] = 5.0                         # a tie: lowest positions first
    packed = pack(codes.split(333), d)
    values, positions = top_activations(packed.indptr, packed.indices, packed.data, d, k)

    full = [c for c in range(d) if c not in (3, 4, 5)]
    ref = torch.topk(codes.T, k, dim=1)
    np.testing.assert_allclose(values[full], ref.values[full].numpy())
    assert positions[6, :3].tolist() == [3, 7, 900]
    np.testing.assert_array_equal(positions[[c for c in full if c != 6]], ref.indices[[c for c in full if c != 6]].numpy())
    assert (positions[3] == -1).all() and (values[3] == 0).all()
    assert (positions[5] == -1).all()
    assert positions[4].tolist() == [1500, 10, -1, -1, -1]
    np.testing.assert_allclose(values[4], [0.7, 0.2, 0.0, 0.0, 0.0])


