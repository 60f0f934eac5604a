"""Known-answer tests for featlib.similarity."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy.linalg import subspace_angles
from scipy.spatial.distance import pdist
from scipy.stats import ortho_group, spearmanr

from featlib import similarity as sim


def decaying(n: int, d: int, seed: int, rate: float = 0.75) -> np.ndarray:
    """Random (n, d) data whose column scales decay geometrically."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)) * rate ** np.arange(d)


def known_spectrum(power: np.ndarray, n: int = 200, d: int = 8, seed: int = 0) -> np.ndarray:
    """(n, d) data with centred columns and squared singular values exactly ``power``."""
    rng = np.random.default_rng(seed)
    G = rng.standard_normal((n, len(power)))
    U, _ = np.linalg.qr(G - G.mean(0))
    V, _ = np.linalg.qr(rng.standard_normal((d, len(power))))
    return U @ np.diag(np.sqrt(power)) @ V.T


# ----------------------------------------------------------------------------- SVCCA

def test_svcca_rotation_invariant() -> None:
    X = decaying(500, 20, seed=1)
    R = ortho_group.rvs(20, random_state=2)
    res = sim.svcca(X, X @ R)
    assert 1 < res.k_x < 20 and res.k_x == res.k_y and res.n == 500
    assert res.score == pytest.approx(1.0, abs=1e-8)
    np.testing.assert_allclose(res.correlations, 1.0, atol=1e-8)


def test_svcca_independent_near_zero() -> None:
    rng = np.random.default_rng(3)
    res = sim.svcca(rng.standard_normal((2000, 5)), rng.standard_normal((2000, 5)))
    assert res.k_x == res.k_y == 5
    assert 0 <= res.score < 0.1


def test_svcca_accepts_torch_and_matches_numpy() -> None:
    X, Y = decaying(100, 6, seed=4), decaying(100, 7, seed=5)
    a = sim.svcca(X, Y)
    b = sim.svcca(torch.from_numpy(X).float(), torch.from_numpy(Y))
    assert isinstance(a.score, float)
    assert b.score == pytest.approx(a.score, abs=1e-5)


def test_canonical_correlations_are_cos_subspace_angles() -> None:
    rng = np.random.default_rng(6)
    X = decaying(200, 10, seed=7)
    Y = X[:, :8] @ rng.standard_normal((8, 8)) + 0.5 * decaying(200, 8, seed=8)
    res = sim.svcca(X, Y)
    scores = []
    for A, k in ((X, res.k_x), (Y, res.k_y)):
        Ac = A - A.mean(0)
        _, _, Vt = np.linalg.svd(Ac, full_matrices=False)
        scores.append(Ac @ Vt[:k].T)                    # PCA scores (n, k)
    expected = np.sort(np.cos(subspace_angles(*scores)))[::-1]
    assert len(expected) == min(res.k_x, res.k_y) > 1
    assert 0.05 < res.score < 0.999                     # a non-trivial case
    np.testing.assert_allclose(res.correlations, expected, atol=1e-8)
    Ux, _ = sim.pca_truncate(X)
    Uy, _ = sim.pca_truncate(Y)
    np.testing.assert_allclose(sim.canonical_correlations(Ux, Uy), expected, atol=1e-8)


POWER = np.array([60.0, 30.0, 9.5, 0.3, 0.2])  # cumulative fractions .6 .9 .995 .998 1


@pytest.mark.parametrize("scale", [1.0, 1e-3])
def test_pca_truncate_known_k(scale: float) -> None:
    X = known_spectrum(POWER * scale)
    U, k = sim.pca_truncate(X, 0.99)
    assert k == 3 and U.shape == (200, 3)
    np.testing.assert_allclose(U.T @ U, np.eye(3), atol=1e-10)
    np.testing.assert_allclose(U.sum(0), 0.0, atol=1e-10)
    assert [sim.pca_truncate(X, v)[1] for v in (0.5, 0.95, 0.999, 1.0)] == [1, 3, 5, 5]


@pytest.mark.parametrize("scale", [1.0, 1e-3])
def test_buggy_rule_would_keep_one_component(scale: float) -> None:
    X = known_spectrum(POWER * scale)
    s = np.linalg.svd(X - X.mean(0), compute_uv=False)
    fraction = np.cumsum(s**2) / np.sum(s**2)
    total_variance = X.var(axis=0).sum()
    k_buggy = int(np.argmax(fraction >= 0.99 * total_variance)) + 1  # the original rule
    assert k_buggy == 1
    assert sim.pca_truncate(X, 0.99)[1] == 3 != k_buggy


def test_pca_truncate_zero_variance() -> None:
    with pytest.raises(ValueError, match="zero variance"):
        sim.pca_truncate(np.ones((10, 4)) * 0.1)
    with pytest.raises(ValueError, match="zero variance"):
        sim.svcca(np.random.default_rng(0).standard_normal((10, 3)), np.zeros((10, 3)))


# ----------------------------------------------------------------------------- RSA

def test_rsa_matches_scipy_with_ties() -> None:
    rng = np.random.default_rng(9)
    X = rng.integers(-2, 3, size=(60, 4)).astype(float)
    X = X[X.std(1) > 0][:40]
    Y = np.round(X[:, :3] + rng.integers(-1, 2, size=(40, 3)), 0)
    Y[Y.std(1) == 0, 0] += 1.0
    # pdist's own rounding (up to ~5e-13 here) splits distances that tie in exact arithmetic; at 12
    # decimals they tie again, as in featlib (one matrix product, errors ~1e-15, then the same rounding)
    dx, dy = (np.round(pdist(A, "correlation"), sim.DISTANCE_DECIMALS) for A in (X, Y))
    assert len(np.unique(dx)) < len(dx) and len(np.unique(dy)) < len(dy)  # ties present
    assert np.abs(sim.correlation_distances(X) - pdist(X, "correlation")).max() < 1e-12
    assert np.array_equal(sim.correlation_distances(X), dx) and np.array_equal(sim.correlation_distances(Y), dy)
    assert sim.rsa(X, Y) == pytest.approx(spearmanr(dx, dy)[0], abs=1e-10)


def test_rsa_matches_scipy_continuous() -> None:
    X, Y = decaying(50, 9, seed=10), decaying(50, 4, seed=11)
    expected = spearmanr(pdist(X, "correlation"), pdist(Y, "correlation"))[0]
    assert sim.rsa(X, Y) == pytest.approx(expected, abs=1e-10)
    assert sim.rsa(X, 3 * X + 1) == pytest.approx(1.0, abs=1e-12)


def test_rsa_zero_variance_row_named() -> None:
    X = np.random.default_rng(12).standard_normal((8, 3))
    Y = X.copy()
    Y[5] = 2.0
    with pytest.raises(ValueError, match="row 5 of Y"):
        sim.rsa(X, Y)


# ----------------------------------------------------------------------------- nulls

def test_nulls_equal_naive_recomputation() -> None:
    X, Y = decaying(40, 12, seed=13), decaying(40, 9, seed=14)
    perms = sim.permutations(40, 25, seed=15)
    assert perms.shape == (25, 40)
    assert all(np.array_equal(np.sort(p), np.arange(40)) for p in perms)
    naive_svcca = [sim.svcca(X, Y[p]).score for p in perms]
    naive_rsa = [sim.rsa(X, Y[p]) for p in perms]
    np.testing.assert_allclose(sim.svcca_null(X, Y, 25, 15, batch_size=7), naive_svcca, atol=1e-8)
    np.testing.assert_allclose(sim.rsa_null(X, Y, 25, 15), naive_rsa, atol=1e-8)


def test_nulls_seeded() -> None:
    X, Y = decaying(30, 5, seed=16), decaying(30, 6, seed=17)
    for null in (sim.svcca_null, sim.rsa_null):
        a, b, c = null(X, Y, 20, 1), null(X, Y, 20, 1), null(X, Y, 20, 2)
        assert a.shape == (20,)
        np.testing.assert_array_equal(a, b)
        assert not np.array_equal(a, c)
    np.testing.assert_array_equal(sim.permutations(30, 5, 3), sim.permutations(30, 5, 3))


def test_p_value() -> None:
    null = np.array([1.0, 2.0, 3.0])
    assert sim.p_value(5.0, null) == pytest.approx(1 / 4)   # larger than all -> 1/(1+N)
    assert sim.p_value(2.0, null) == pytest.approx(3 / 4)   # ties count as >=
    assert sim.p_value(2.5, null) == pytest.approx(2 / 4)
    assert sim.p_value(0.0, null) == pytest.approx(1.0)
    assert sim.p_value(0.0, np.array([])) == 1.0
    # ties within 1e-9 * max(1, |observed|) count as >=
    assert sim.p_value(2.0 + 5e-10, null) == pytest.approx(3 / 4)
    assert sim.p_value(2.0 + 5e-9, null) == pytest.approx(2 / 4)
    assert sim.p_value(1e6, np.array([1e6 - 1e-4])) == 1.0


def test_p_value_rounding_ties_give_one() -> None:
    """10 pairs in 20 dimensions: SVCCA keeps k = 9 = n - 1 components per side, so every
    canonical correlation is 1 and every re-pairing reproduces the observed score up to
    rounding. An exact ``>=`` gave p anywhere between about 0.5 and 1 (rounding noise)."""
    old = []
    for seed in range(6):
        rng = np.random.default_rng(seed)
        X, Y = rng.standard_normal((10, 20)), rng.standard_normal((10, 20))
        observed, null = sim.svcca(X, Y).score, sim.svcca_null(X, Y, 200, seed=0)
        assert abs(observed - 1) < 1e-12 and np.ptp(null) < 1e-12
        assert sim.p_value(observed, null) == 1.0
        old.append((1 + np.count_nonzero(null >= observed)) / (1 + null.size))   # the previous rule
    assert min(old) < 0.9


def test_compare_planted_structure() -> None:
    rng = np.random.default_rng(18)
    X = decaying(60, 10, seed=19)
    Y = X @ ortho_group.rvs(10, random_state=20) + 0.01 * rng.standard_normal((60, 10))
    summary, nulls = sim.compare_with_nulls(X, Y, n_shuffles=200, seed=0)
    json.dumps(summary)
    assert summary["n"] == 60 and nulls["svcca"].shape == nulls["rsa"].shape == (200,)
    for key in ("svcca", "rsa"):
        s = summary[key]
        assert s["p"] == pytest.approx(1 / 201)
        assert s["score"] > s["null_mean"] + 5 * s["null_std"]
    assert summary["svcca"]["score"] > 0.95
    assert summary == sim.compare(X, Y, n_shuffles=200, seed=0)


def test_compare_independent_not_significant() -> None:
    X, Y = decaying(60, 10, seed=21), decaying(60, 8, seed=22)
    summary = sim.compare(X, Y, n_shuffles=200, seed=0)
    assert set(summary["svcca"]) == {"score", "null_mean", "null_std", "p", "k_x", "k_y"}
    assert set(summary["rsa"]) == {"score", "null_mean", "null_std", "p"}
    assert summary["svcca"]["p"] > 0.05 and summary["rsa"]["p"] > 0.05


def test_random_subset_null() -> None:
    X = decaying(80, 6, seed=23)
    out = sim.random_subset_null(X, 2 * X + 1, n=20, n_samples=10, seed=0)
    assert out["svcca"].shape == out["rsa"].shape == (10,)
    np.testing.assert_allclose(out["svcca"], 1.0, atol=1e-8)
    np.testing.assert_allclose(out["rsa"], 1.0, atol=1e-10)
    Y = decaying(80, 5, seed=24)
    a = sim.random_subset_null(X, Y, 20, 10, seed=1)
    b = sim.random_subset_null(X, Y, 20, 10, seed=1)
    np.testing.assert_array_equal(a["rsa"], b["rsa"])
    assert np.all(a["svcca"] < 0.9)


# ----------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("fn", [sim.svcca, sim.rsa, sim.compare])
def test_mismatched_n(fn) -> None:
    X, Y = np.ones((10, 3)), np.ones((11, 4))
    with pytest.raises(ValueError, match=r"\(10, 3\).*\(11, 4\)"):
        fn(X, Y)
