"""Known-answer tests for debiased CKA, held-out CCA, the not-scorable rules, ``scores`` and
``subspaces.score_group``.

Published implementation used as a cross-check (pinned in requirements.txt): ``repsim==0.1.5``,
``repsim.hsic(..., kernel_type="linear", estimator="song")``, the unbiased HSIC of Song et al.;
debiased CKA is ``H[0, 1] / sqrt(H[0, 0] H[1, 1])`` of its matrix. ``repsim.cka(...,
estimator="song")`` is *not* debiased CKA: it divides the unbiased cross-HSIC by the biased
(Gretton) self-HSICs, so it is not 1 for identical inputs.
"""

from __future__ import annotations

import json
from itertools import permutations

import numpy as np
import pytest
import torch
from scipy.stats import binom, ortho_group

from featlib import similarity as sim
from featlib import subspaces


def decaying(n: int, d: int, seed: int, rate: float = 0.75) -> np.ndarray:
    """Random (n, d) data whose column scales decay geometrically (not centred)."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)) * rate ** np.arange(d) + rng.standard_normal(d)


def related(n: int, d_x: int, d_y: int, seed: int, noise: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """X (n, d_x) and Y = a random linear image of X's leading columns plus noise (n, d_y)."""
    X = decaying(n, d_x, seed)
    W = np.random.default_rng(seed + 1).standard_normal((min(d_x, 4), d_y))
    return X, X[:, :min(d_x, 4)] @ W + noise * decaying(n, d_y, seed + 2)


# ----------------------------------------------------------------------------- debiased CKA

def hsic1_matrix(K: np.ndarray, L: np.ndarray) -> float:
    """Song et al.'s closed form with the zero-diagonal Gram matrices, on uncentred data."""
    n = len(K)
    Kt, Lt = K - np.diag(np.diag(K)), L - np.diag(np.diag(L))
    one = np.ones(n)
    return (np.trace(Kt @ Lt) + (one @ Kt @ one) * (one @ Lt @ one) / ((n - 1) * (n - 2))
            - 2 / (n - 2) * one @ Kt @ Lt @ one) / (n * (n - 3))


def hsic1_ustat(K: np.ndarray, L: np.ndarray) -> float:
    """The same estimator as explicit sums over distinct indices (Song et al. 2012, Theorem 2)."""
    n = len(K)
    t2 = sum(K[i, j] * L[i, j] for i, j in permutations(range(n), 2)) / (n * (n - 1))
    t3 = sum(K[i, j] * L[i, q] for i, j, q in permutations(range(n), 3)) / (n * (n - 1) * (n - 2))
    t4 = sum(K[i, j] * L[q, r] for i, j, q, r in permutations(range(n), 4)) / (n * (n - 1) * (n - 2) * (n - 3))
    return t2 + t4 - 2 * t3


def ratio(hsic, X: np.ndarray, Y: np.ndarray) -> float:
    K, L = X @ X.T, Y @ Y.T
    return hsic(K, L) / np.sqrt(hsic(K, K) * hsic(L, L))


@pytest.mark.parametrize("n, d_x, d_y", [(12, 30, 20), (50, 5, 7), (6, 3, 40), (200, 128, 64)])
def test_debiased_cka_matches_repsim_song_hsic(n: int, d_x: int, d_y: int) -> None:
    import repsim

    X, Y = related(n, d_x, d_y, seed=n + d_x)
    H = repsim.hsic([X, Y], kernel_type="linear", estimator="song")
    value = sim.debiased_cka(X, Y)
    assert isinstance(value, float) and -1.0 <= value <= 1.0
    assert value == pytest.approx(H[0, 1] / np.sqrt(H[0, 0] * H[1, 1]), abs=1e-10)
    assert value == pytest.approx(ratio(hsic1_matrix, X, Y), abs=1e-10)
    # repsim's own "song" CKA normalises by the biased self-HSICs: a different quantity
    assert repsim.cka([X, X], kernel_type="linear", estimator="song")[0, 1] < 0.99


@pytest.mark.parametrize("n, d_x, d_y", [(7, 3, 9), (8, 12, 2)])
def test_debiased_cka_equals_u_statistic_sums(n: int, d_x: int, d_y: int) -> None:
    X, Y = related(n, d_x, d_y, seed=n)
    assert sim.debiased_cka(X, Y) == pytest.approx(ratio(hsic1_ustat, X, Y), abs=1e-10)


def test_debiased_cka_invariances_and_chance() -> None:
    X = decaying(40, 6, seed=1)
    R = ortho_group.rvs(6, random_state=2)
    assert sim.debiased_cka(X, X) == pytest.approx(1.0, abs=1e-12)
    assert sim.debiased_cka(X, 3 * X @ R - 5.0) == pytest.approx(1.0, abs=1e-10)   # rotation, scale, shift
    # unrelated isotropic data, 100 pairs in 128 dimensions: about 0 (negative for some draws),
    # while the biased CKA is about 0.56
    rng = np.random.default_rng(3)
    pairs = [(rng.standard_normal((100, 128)), rng.standard_normal((100, 128))) for _ in range(5)]
    values = [sim.debiased_cka(A, B) for A, B in pairs]
    assert max(abs(v) for v in values) < 0.1 and min(values) < 0
    assert min(sim.linear_cka(A, B) for A, B in pairs) > 0.5
    with pytest.raises(ValueError, match="at least 4 pairs"):
        sim.debiased_cka(X[:3], X[:3])
    with pytest.raises(ValueError, match="debiased CKA is undefined"):   # centred Gram: -1/n off the diagonal
        sim.debiased_cka(np.eye(6), decaying(6, 4, seed=5))


@pytest.mark.parametrize("n, d_x, d_y", [(25, 4, 6), (9, 15, 11)])
def test_debiased_cka_null_equals_naive(n: int, d_x: int, d_y: int) -> None:
    X, Y = related(n, d_x, d_y, seed=3)
    perms = sim.permutations(n, 30, 5)
    naive = np.array([sim.debiased_cka(X, Y[p]) for p in perms])
    assert np.ptp(naive) > 0.05
    for route in ("auto", "cross", "gram"):
        np.testing.assert_allclose(sim.debiased_cka_null(X, Y, 30, 5, batch_size=7, route=route), naive,
                                   rtol=0, atol=1e-10)


def test_compare_debiased_cka_shares_permutations() -> None:
    X, Y = related(40, 9, 7, seed=18)
    summary, nulls = sim.compare_with_nulls(X, Y, n_shuffles=60, seed=3, metrics=("cka", "cka_debiased"))
    assert summary["cka_debiased"]["score"] == sim.debiased_cka(X, Y)
    np.testing.assert_array_equal(nulls["cka_debiased"], sim.debiased_cka_null(X, Y, 60, 3))
    np.testing.assert_array_equal(nulls["cka"], sim.cka_null(X, Y, 60, 3))
    assert set(summary["cka_debiased"]) == {"score", "null_mean", "null_std", "p"}


# ----------------------------------------------------------------------------- held-out CCA

def heldout_reference(X: np.ndarray, Y: np.ndarray, variance: float, n_splits: int, seed: int,
                      n_shuffles: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Held-out CCA by the module's recipe in feature space with numpy SVDs: split scores
    (n_splits,), k (2, n_splits) and per-split nulls (n_splits, n_shuffles)."""
    n = len(X)
    m = n // 2
    rng = np.random.default_rng(seed)
    perms = sim.permutations(n - m, n_shuffles, seed)
    scores, ks, nulls = [], [], []
    for _ in range(n_splits):
        perm = rng.permutation(n)
        tr, te = perm[:m], perm[m:]
        fits = []
        for A in (X, Y):
            mu = A[tr].mean(0)
            U, s, Vt = np.linalg.svd(A[tr] - mu, full_matrices=False)
            k = min(int(np.sum(np.cumsum(s**2) / np.sum(s**2) < variance)) + 1, len(s), (m - 1) // 2)
            fits.append((U[:, :k], (A[te] - mu) @ Vt[:k].T / s[:k]))      # train, test scores
        (Ux, Tx), (Uy, Ty) = fits
        P, _, Qt = np.linalg.svd(Ux.T @ Uy)
        c = min(Ux.shape[1], Uy.shape[1])
        tx, ty = Tx @ P[:, :c], Ty @ Qt[:c].T
        split = lambda p: np.mean([np.corrcoef(tx[:, i], ty[p, i])[0, 1] for i in range(c)])  # noqa: E731
        scores.append(split(np.arange(n - m)))
        nulls.append([split(p) for p in perms])
        ks.append((Ux.shape[1], Uy.shape[1]))
    return np.array(scores), np.array(ks).T, np.array(nulls)


@pytest.mark.parametrize("n, d_x, d_y, variance", [(40, 30, 12, 0.99), (61, 5, 7, 0.9), (30, 50, 60, 1.0)])
def test_heldout_matches_reference(n: int, d_x: int, d_y: int, variance: float) -> None:
    """Both train-PCA routes: the (m, m) train Gram block (m <= min(n, d)) and the (r, r) scatter matrix."""
    X, Y = related(n, d_x, d_y, seed=7, noise=0.5)
    ref_scores, ref_k, ref_nulls = heldout_reference(X, Y, variance, 4, seed=3, n_shuffles=15)
    res = sim.heldout_cca(X, Y, variance, n_splits=4, seed=3)
    assert (res.n_train, res.n_test) == (n // 2, n - n // 2)
    np.testing.assert_array_equal(np.stack([res.k_x, res.k_y]), ref_k)
    assert 0 < ref_k.min() and ref_k.max() <= (n // 2 - 1) // 2
    np.testing.assert_allclose(res.split_scores, ref_scores, rtol=0, atol=1e-8)
    assert res.score == pytest.approx(ref_scores.mean(), abs=1e-8)
    null = sim.heldout_cca_null(X, Y, 15, seed=3, variance=variance, n_splits=4)
    np.testing.assert_allclose(null, ref_nulls, rtol=0, atol=1e-8)


def test_heldout_planted_vs_independent_where_svcca_saturates() -> None:
    """n = 100 pairs in 128 dimensions: plain SVCCA is near 1 for unrelated data too."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((100, 128))
    Q = ortho_group.rvs(128, random_state=1)
    for Y, planted in ((X @ Q, True), (rng.standard_normal((100, 128)), False)):
        assert sim.svcca(X, Y).score > 0.85
        s = sim.compare(X, Y, n_shuffles=200, seed=0, metrics=("svcca", "svcca_heldout", "cka_debiased"))
        assert s["svcca"]["score"] is None and "k > n/2" in s["svcca"]["reason"]
        h = s["svcca_heldout"]
        assert h["splits_scored"] == h["n_splits"] == 10 and (h["n_train"], h["n_test"]) == (50, 50)
        if planted:
            assert h["score"] > 0.9 and h["p"] == pytest.approx(1 / 201)        # Simes of ten 1/201
            assert s["cka_debiased"]["score"] > 0.9 and s["cka_debiased"]["p"] == pytest.approx(1 / 201)
        else:
            assert abs(h["score"]) < 0.15 and h["p"] > 0.05
            assert abs(s["cka_debiased"]["score"]) < 0.1 and s["cka_debiased"]["p"] > 0.05


def test_heldout_null_and_p_value() -> None:
    X, Y = related(30, 6, 5, seed=11, noise=3.0)
    summary, nulls = sim.compare_with_nulls(X, Y, n_shuffles=40, seed=2, metrics=("svcca_heldout",))
    split_nulls = sim.heldout_cca_null(X, Y, 40, seed=2)
    res = sim.heldout_cca(X, Y, seed=2)
    assert split_nulls.shape == (10, 40) and nulls["svcca_heldout"].shape == (40,)
    np.testing.assert_array_equal(nulls["svcca_heldout"], split_nulls.mean(0))
    assert summary["svcca_heldout"]["score"] == res.score
    p_split = np.sort([sim.p_value(t, null) for t, null in zip(res.split_scores, split_nulls)])
    simes = min(1.0, min(10 * p / r for r, p in enumerate(p_split, 1)))
    assert summary["svcca_heldout"]["p"] == pytest.approx(simes)
    assert sim.heldout_p_value(np.array([0.5, np.nan]), np.array([[0.0, 0.0, 1.0], [np.nan] * 3])) == 0.5
    assert sim.heldout_p_value(np.array([0.5]), np.array([[0.0, 0.0, 0.0]])) == pytest.approx(0.25)
    # Simes: min over r of S p_(r) / r; here r = 2 gives 3 * 0.2 / 2
    null = lambda p: np.r_[np.ones(round(p * 100) - 1), np.zeros(100 - round(p * 100) + 1)]  # noqa: E731
    assert sim.heldout_p_value(np.array([0.5, 0.5, 0.5]), np.stack([null(0.5), null(0.2), null(0.2)])) == \
        pytest.approx(3 * (20 / 101) / 2)


def test_heldout_p_value_is_calibrated_on_unrelated_data() -> None:
    """200 independent sets of 100 pairs in 16 dimensions: the share of p <= 0.05 lies in the two-sided 99 %
    binomial interval of 5 % (3 to 19 of 200). Twice the mean per-split p (the earlier rule) gave 0 of 200
    (median p 0.97): correlated splits of unrelated data almost never all reject at once."""
    rng = np.random.default_rng(0)
    p = []
    for i in range(200):
        X, Y = rng.standard_normal((100, 16)), rng.standard_normal((100, 16))
        p.append(sim.compare(X, Y, n_shuffles=199, seed=i, metrics=("svcca_heldout",))["svcca_heldout"]["p"])
    lo, hi = binom.ppf([0.005, 0.995], 200, 0.05)
    assert lo <= np.sum(np.array(p) <= 0.05) <= hi, (np.sum(np.array(p) <= 0.05), lo, hi)


def test_heldout_skips_constant_train_halves() -> None:
    """7 identical rows of X and one other: a split whose train half lacks the odd row is skipped."""
    X = np.ones((8, 3))
    X[5] = [2.0, 0.0, 1.0]
    Y = decaying(8, 4, seed=12)
    res = sim.heldout_cca(X, Y, n_splits=6, seed=0)
    trained_on_odd = [5 in p[:4] for p in sim.permutations(8, 6, 0)]
    assert 0 < sum(trained_on_odd) < 6
    np.testing.assert_array_equal(np.isnan(res.split_scores), np.logical_not(trained_on_odd))
    np.testing.assert_array_equal(res.k_x == 0, np.logical_not(trained_on_odd))
    assert res.score == pytest.approx(np.nanmean(res.split_scores))
    skipped_seed = next(s for s in range(20) if 5 not in sim.permutations(8, 1, s)[0, :4])
    s = sim.compare(X, Y, 20, seed=skipped_seed, metrics=("svcca_heldout",), heldout_splits=1)
    assert s["svcca_heldout"] == {"score": None, "null_mean": None, "null_std": None, "p": None,
                                  "reason": "held-out CCA: no split has a train half with variance on both sides",
                                  "n_splits": 1, "n_train": 4, "n_test": 4, "splits_scored": 0}
    with pytest.raises(ValueError, match="at least 8 pairs"):
        sim.heldout_cca(X[:7], Y[:7])


# ----------------------------------------------------------------------------- not scorable

@pytest.mark.parametrize("metric, n, extra, scorable", [
    ("svcca", 2, {}, False), ("svcca", 10, {"k_x": 5, "k_y": 3}, True), ("svcca", 10, {"k_x": 2, "k_y": 6}, False),
    ("svcca_heldout", 7, {}, False), ("svcca_heldout", 8, {}, True), ("svcca_heldout", 8, {"splits_scored": 0}, False),
    ("rsa", 3, {}, False), ("rsa", 4, {}, True), ("cka", 2, {}, False), ("cka", 3, {}, True),
    ("procrustes", 2, {}, False), ("procrustes", 3, {}, True), ("cka_debiased", 3, {}, False),
    ("cka_debiased", 4, {}, True), ("cka_debiased", 9, {"self_hsic_zero": True}, False),
    ("mutual_knn", 21, {"k": 10}, False), ("mutual_knn", 22, {"k": 10}, True),
    ("mutual_knn", 5, {"k": 10}, False),
])
def test_not_scorable_rules(metric: str, n: int, extra: dict, scorable: bool) -> None:
    reason = sim.not_scorable(metric, n, **extra)
    assert (reason is None) == scorable
    assert reason is None or ("\n" not in reason and len(reason) > 20)


def test_not_scorable_messages() -> None:
    assert sim.not_scorable("svcca", 205, k_x=118, k_y=40) == (
        "SVCCA keeps k = 118 components of 205 pairs: k > n/2, chance level saturates")
    assert "k/(n - 1)" in sim.not_scorable("mutual_knn", 15, k=10)
    with pytest.raises(ValueError, match="metric"):
        sim.not_scorable("cca", 10)


def test_compare_small_n_not_scorable_entries() -> None:
    X, Y = decaying(3, 3, seed=28), decaying(3, 4, seed=29)
    summary, nulls = sim.compare_with_nulls(X, Y, n_shuffles=20, seed=0, knn_k=10)
    json.dumps(summary)
    assert list(summary) == ["n", *sim.METRICS]
    none = {"score": None, "null_mean": None, "null_std": None, "p": None}
    for metric in ("svcca_heldout", "rsa", "cka_debiased", "mutual_knn"):
        assert {k: summary[metric][k] for k in none} == none and summary[metric]["reason"], metric
    assert summary["mutual_knn"]["k"] == 10
    assert set(summary["svcca_heldout"]) == {*none, "reason", "n_splits", "n_train", "n_test"}
    for metric in ("cka", "procrustes"):
        assert set(summary[metric]) == {"score", "null_mean", "null_std", "p"}
    assert set(nulls) == {m for m in sim.METRICS if summary[m]["score"] is not None}
    # fewer than 3 pairs: nothing is scorable, nothing raises
    tiny = sim.compare(X[:2], Y[:2], n_shuffles=5)
    assert all(tiny[m]["score"] is None for m in sim.METRICS)


def test_debiased_cka_not_scorable_when_self_hsic_vanishes() -> None:
    """Many-to-one pairs can repeat a row: with all rows of X but one identical, the U-centred
    Gram matrix of X is 0 and debiased CKA is 0/0."""
    X = np.repeat(decaying(2, 5, seed=1), [5, 1], axis=0)          # 5 copies of one row, 1 other
    Y = decaying(6, 4, seed=2)
    s = sim.compare(X, Y, n_shuffles=10, metrics=("cka", "cka_debiased"))
    assert s["cka_debiased"]["score"] is None and "HSIC" in s["cka_debiased"]["reason"]
    assert s["cka"]["score"] is not None
    assert np.isnan(sim.scores(X, Y, metrics=("cka_debiased",))["cka_debiased"])
    with pytest.raises(ValueError, match="debiased CKA is undefined"):
        sim.debiased_cka(X, Y)


def test_metrics_order_and_names() -> None:
    assert sim.METRICS == ("svcca", "svcca_heldout", "rsa", "cka", "cka_debiased", "mutual_knn", "procrustes")
    assert list(sim.METRIC_NAMES) == list(sim.METRICS)


# ----------------------------------------------------------------------------- scores()

def test_scores_equal_compare_and_nan_where_not_scorable() -> None:
    X, Y = related(60, 10, 12, seed=30)
    summary = sim.compare(X, Y, n_shuffles=10, seed=4, knn_k=5, heldout_splits=3)
    out = sim.scores(X, Y, knn_k=5, heldout_splits=3, seed=4)
    assert list(out) == list(sim.METRICS) and all(isinstance(v, float) for v in out.values())
    assert out == {m: summary[m]["score"] for m in sim.METRICS}
    assert sim.scores(torch.from_numpy(X), Y, metrics=["cka", "rsa"]) == {"cka": summary["cka"]["score"],
                                                                          "rsa": summary["rsa"]["score"]}
    small = sim.scores(X[:6], Y[:6])                      # k = 10 neighbours, 6 pairs
    assert np.isnan(small["mutual_knn"]) and np.isnan(small["svcca_heldout"]) and not np.isnan(small["cka"])
    for n in (0, 1, 2):
        assert all(np.isnan(v) for v in sim.scores(X[:n], Y[:n]).values())
    Z = X.copy()
    Z[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        sim.scores(Z, Y)
    with pytest.raises(ValueError, match="metrics"):
        sim.scores(X, Y, metrics=("svcca", "cca"))


# ----------------------------------------------------------------------------- score_group

def test_score_group_shapes() -> None:
    X_all, Y_all = related(80, 10, 12, seed=40, noise=0.3)
    out = subspaces.score_group(X_all, Y_all, np.arange(30), n_shuffles=20, n_random_sets=10, seed=0, variance=0.9)
    json.dumps(out)
    assert list(out) == ["n", *subspaces.GROUP_METRICS] and out["n"] == 30
    for metric in subspaces.GROUP_METRICS:
        assert {"score", "null_mean", "null_std", "p", "random_set_mean", "random_set_p"} <= set(out[metric])
        assert all(isinstance(out[metric][k], float) for k in ("score", "p", "random_set_mean", "random_set_p"))
    small = subspaces.score_group(X_all, Y_all, np.arange(3), n_shuffles=20, n_random_sets=10, seed=0, variance=0.99)
    for metric in subspaces.GROUP_METRICS:                  # 3 pairs: nothing scorable
        entry = small[metric]
        assert entry["reason"] and all(entry[k] is None for k in ("score", "p", "random_set_mean", "random_set_p"))
