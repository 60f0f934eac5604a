"""Known-answer tests for the CKA, mutual k-NN and Procrustes metrics of featlib.similarity.

Published implementations used as cross-checks (pinned in requirements.txt):

* ``repsim==0.1.5``: ``repsim.cka(..., kernel_type="linear", estimator="gretton")``. It has
  no Procrustes or shape metric.
* ``rsatoolbox==0.3.2``: correlation-distance RDMs and Spearman RDM comparison. It has no
  CKA and no Procrustes metric.
* ``scipy.spatial.procrustes`` and ``scipy.linalg.orthogonal_procrustes`` (scipy is a main
  dependency) for Procrustes.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy.linalg import orthogonal_procrustes
from scipy.spatial import procrustes as scipy_procrustes
from scipy.stats import ortho_group

from featlib import similarity as sim
from featlib.metrics import cka, knn, procrustes


def decaying(n: int, d: int, seed: int, rate: float = 0.75) -> np.ndarray:
    """Random (n, d) data whose column scales decay geometrically (not centred)."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)) * rate ** np.arange(d) + rng.standard_normal(d)


def isometry(d_in: int, d_out: int, seed: int) -> np.ndarray:
    """(d_in, d_out) with orthonormal rows (d_in <= d_out): an isometric embedding."""
    return ortho_group.rvs(d_out, random_state=seed)[:d_in]


def centred_unit(A: np.ndarray, width: int) -> np.ndarray:
    """Columns centred, zero-padded to ``width`` columns, unit Frobenius norm."""
    Ac = A - A.mean(0)
    Ac = np.hstack([Ac, np.zeros((A.shape[0], width - A.shape[1]))])
    return Ac / np.linalg.norm(Ac)


# ----------------------------------------------------------------------------- linear CKA

def gram_cka(X: np.ndarray, Y: np.ndarray) -> float:
    """tr(KHLH) / sqrt(tr(KHKH) tr(LHLH)) with K = X X^T, L = Y Y^T, H = I - 11^T/n."""
    n = X.shape[0]
    H = np.eye(n) - np.ones((n, n)) / n
    K, L = X @ X.T, Y @ Y.T
    return np.trace(K @ H @ L @ H) / np.sqrt(np.trace(K @ H @ K @ H) * np.trace(L @ H @ L @ H))


def test_cka_rotation_and_isotropic_scaling_invariant() -> None:
    X = decaying(40, 6, seed=1)
    R = ortho_group.rvs(6, random_state=2)
    assert sim.linear_cka(X, X @ R * 3) == pytest.approx(1.0, abs=1e-10)
    assert sim.linear_cka(X @ R * 3, X) == pytest.approx(1.0, abs=1e-10)
    assert sim.linear_cka(X, X @ isometry(6, 9, seed=3) - 5.0) == pytest.approx(1.0, abs=1e-10)
    # not invariant to anisotropic scaling, and unrelated data scores well below 1
    assert sim.linear_cka(X, X * np.arange(1, 7) ** 2) < 0.99
    assert sim.linear_cka(X, decaying(40, 6, seed=4)) < 0.6


@pytest.mark.parametrize("n, d_x, d_y", [(30, 5, 7), (12, 20, 9), (8, 3, 30)])
def test_cka_equals_gram_formula(n: int, d_x: int, d_y: int) -> None:
    X = decaying(n, d_x, seed=n + d_x)
    Y = X[:, :1] ** 2 @ np.ones((1, d_y)) + decaying(n, d_y, seed=d_y)
    value = sim.linear_cka(X, Y)
    assert isinstance(value, float) and 0.0 < value < 1.0
    assert value == pytest.approx(gram_cka(X, Y), abs=1e-10)
    assert sim.linear_cka(torch.from_numpy(X), torch.from_numpy(Y).float()) == pytest.approx(value, abs=1e-5)


def test_cka_matches_repsim() -> None:
    """repsim 0.1.5 ``cka(kernel_type="linear", estimator="gretton")`` is the biased-HSIC
    linear CKA of Kornblith et al., the definition used here (the 1/(n-1)^2 HSIC factors
    cancel in the ratio). repsim's ``estimator="song"`` (unbiased HSIC) is a different
    quantity and is not what ``linear_cka`` computes. rsatoolbox 0.3.2 has no CKA."""
    import repsim

    for seed, (n, d_x, d_y) in enumerate([(50, 5, 7), (15, 30, 4)]):
        X = decaying(n, d_x, seed=10 + seed)
        Y = X @ np.random.default_rng(seed).standard_normal((d_x, d_y)) + decaying(n, d_y, seed=20 + seed)
        ref = repsim.cka([X, Y], kernel_type="linear", estimator="gretton")[0, 1]
        assert sim.linear_cka(X, Y) == pytest.approx(ref, abs=1e-10)


def test_cka_zero_variance_rejected() -> None:
    with pytest.raises(ValueError, match="zero variance"):
        sim.linear_cka(np.ones((5, 3)), decaying(5, 2, seed=0))


# ----------------------------------------------------------------------------- RSA vs rsatoolbox

def test_rsa_matches_rsatoolbox() -> None:
    """rsatoolbox 0.3.2: ``calc_rdm(Dataset(X), method="correlation")`` and
    ``compare(rdm_x, rdm_y, method="spearman")``. Same definition as ``similarity.rsa``:
    rsatoolbox's correlation distance removes each pattern's (row's) mean and takes
    1 - cosine, i.e. ``pdist(X, "correlation")``, in the same upper-triangle order, and its
    Spearman is the Pearson correlation of average ranks (ties averaged). The only
    differences are numerical (its distances come from one matrix product, so exact ties
    between distances could in principle break differently; none occur here)."""
    from rsatoolbox.data import Dataset
    from rsatoolbox.rdm import calc_rdm, compare

    for seed, (n, d_x, d_y) in enumerate([(30, 8, 5), (12, 40, 3)]):
        X = decaying(n, d_x, seed=30 + seed)
        Y = X @ np.random.default_rng(seed).standard_normal((d_x, d_y)) + decaying(n, d_y, seed=40 + seed)
        rdm_x = calc_rdm(Dataset(X), method="correlation")
        rdm_y = calc_rdm(Dataset(Y), method="correlation")
        ref = float(compare(rdm_x, rdm_y, method="spearman")[0, 0])
        assert sim.rsa(X, Y) == pytest.approx(ref, abs=1e-8)


# ----------------------------------------------------------------------------- Procrustes

@pytest.mark.parametrize("d_y", [6, 9])
def test_procrustes_isometry_is_perfect(d_y: int) -> None:
    X = decaying(25, 6, seed=5)
    Y = 7.0 * X @ isometry(6, d_y, seed=6) + 2.0        # rotation/isometry, scale, shift
    assert sim.procrustes_similarity(X, Y) == pytest.approx(1.0, abs=1e-10)
    assert sim.procrustes_distance(X, Y) == pytest.approx(0.0, abs=1e-6)   # sqrt of rounding
    Yz = np.hstack([X @ ortho_group.rvs(6, random_state=7), np.zeros((25, 3))])  # zero columns
    assert sim.procrustes_similarity(X, Yz) == pytest.approx(1.0, abs=1e-10)
    assert sim.procrustes_similarity(X, decaying(25, d_y, seed=8)) < 0.8


@pytest.mark.parametrize("n, d_x, d_y", [(30, 5, 8), (10, 12, 4)])
def test_procrustes_matches_scipy(n: int, d_x: int, d_y: int) -> None:
    """Against scipy: ``orthogonal_procrustes`` gives the optimal rotation ``Q`` of the
    centred, unit-norm, zero-padded ``Y`` onto ``X``; the distance is ``||Xn - Yn Q||_F``.
    ``scipy.spatial.procrustes`` also fits a scale, so its disparity is ``1 - s^2``
    (our ``d^2 = 2 - 2 s``); the angular distance of Williams et al. is ``arccos(s)``."""
    X = decaying(n, d_x, seed=n)
    Y = np.tanh(X[:, :1] @ np.ones((1, d_y))) + decaying(n, d_y, seed=d_y)
    s, d = sim.procrustes_similarity(X, Y), sim.procrustes_distance(X, Y)
    assert 0.0 < s < 1.0 and d == pytest.approx(np.sqrt(2 - 2 * s), abs=1e-12)
    width = max(d_x, d_y)
    Xn, Yn = centred_unit(X, width), centred_unit(Y, width)
    Q, scale = orthogonal_procrustes(Yn, Xn)
    assert d == pytest.approx(np.linalg.norm(Xn - Yn @ Q), abs=1e-10)
    assert s == pytest.approx(scale, abs=1e-10)           # scale = sum of singular values
    assert s == pytest.approx(np.trace(Xn.T @ Yn @ Q), abs=1e-10)
    pad = lambda A: np.hstack([A, np.zeros((n, width - A.shape[1]))])  # noqa: E731
    _, _, disparity = scipy_procrustes(pad(X), pad(Y))
    assert disparity == pytest.approx(1 - s**2, abs=1e-10)


# ----------------------------------------------------------------------------- mutual k-NN

def brute_mutual_knn(X: np.ndarray, Y: np.ndarray, k: int) -> float:
    """Python sets of the k most cosine-similar other rows (no ties in the test data)."""
    def sets(A: np.ndarray) -> list[set[int]]:
        Z = A / np.linalg.norm(A, axis=1, keepdims=True)
        S = Z @ Z.T
        return [set(sorted((j for j in range(len(A)) if j != i), key=lambda j: -S[i, j])[:k])
                for i in range(len(A))]
    return float(np.mean([len(a & b) / k for a, b in zip(sets(X), sets(Y))]))


def on_circle(degrees: list[float]) -> np.ndarray:
    t = np.deg2rad(degrees)
    return np.stack([np.cos(t), np.sin(t)], axis=1)


def test_mutual_knn_hand_example() -> None:
    # X angles 0, 10, 30, 65, 110; Y angles 0, 25, 30, 90, -40 (cosine = angular closeness).
    # k=1: N_X = 1,0,1,2,3 and N_Y = 1,2,1,2,0 -> shared for items 0, 2, 3 -> 3/5.
    # k=2: N_X = {1,2},{0,2},{0,1},{2,4},{2,3}; N_Y = {1,2},{0,2},{0,1},{1,2},{0,1}
    #      -> overlaps 2,2,2,1,0 -> 7/10.
    X, Y = on_circle([0, 10, 30, 65, 110]), on_circle([0, 25, 30, 90, -40])
    assert sim.mutual_knn(X, Y, k=1) == pytest.approx(0.6, abs=1e-15)
    assert sim.mutual_knn(X, Y, k=2) == pytest.approx(0.7, abs=1e-15)
    assert sim.mutual_knn(X, Y, k=4) == 1.0               # k = n - 1: everything shared
    np.testing.assert_array_equal(knn._knn_sets(torch.from_numpy(Y), 2, "Y").numpy(),
                                  [[1, 2], [0, 2], [0, 1], [1, 2], [0, 1]])


def test_mutual_knn_identical_and_invariances() -> None:
    X = decaying(40, 6, seed=9)
    assert sim.mutual_knn(X, X, k=5) == 1.0
    # cosine neighbours are invariant to rotations/isometries and positive row scaling
    Y = (X @ isometry(6, 8, seed=10)) * np.linspace(0.5, 3.0, 40)[:, None]
    assert sim.mutual_knn(X, Y, k=5) == 1.0
    assert sim.mutual_knn(X, decaying(40, 6, seed=11), k=5) < 0.5


def test_mutual_knn_matches_brute_force() -> None:
    X, Y = decaying(30, 4, seed=12), decaying(30, 7, seed=13)
    Y[:, :2] += 2 * X[:, :2]
    for k in (1, 3, 10, 29):
        assert sim.mutual_knn(X, Y, k=k) == pytest.approx(brute_mutual_knn(X, Y, k), abs=1e-15)
    assert 0.2 < sim.mutual_knn(X, Y, k=3) < 0.9


def test_mutual_knn_chunked_and_tie_break() -> None:
    X = decaying(23, 5, seed=14)
    full = knn._knn_sets(torch.from_numpy(X), 4, "X")
    np.testing.assert_array_equal(knn._knn_sets(torch.from_numpy(X), 4, "X", chunk=5).numpy(), full.numpy())
    # item 0 is exactly as similar to items 1 and 2 (angles +-10 degrees): the lower index wins
    T = on_circle([0, 10, -10, 90, 180])
    assert knn._knn_sets(torch.from_numpy(T), 1, "T")[0].tolist() == [1]
    assert knn._knn_sets(torch.from_numpy(T), 2, "T")[0].tolist() == [1, 2]


def reference_knn_sets(C: np.ndarray, k: int) -> list[list[int]]:
    """The k-NN sets by an explicit stable sort of the other items by (-similarity, index)."""
    n = len(C)
    return [sorted(sorted((j for j in range(n) if j != i), key=lambda j: (-C[i, j], j))[:k]) for i in range(n)]


def reference_mutual_knn(Cx: np.ndarray, Cy: np.ndarray, k: int) -> float:
    sx, sy = reference_knn_sets(Cx, k), reference_knn_sets(Cy, k)
    return sum(len(set(a) & set(b)) for a, b in zip(sx, sy)) / (len(Cx) * k)  # shared places / (n k)


def copies(n: int, d: int, m: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, d) rows that are positive multiples (1, 3, 0.7, 1000 or 0.1) of m random directions, and the
    (n, n) cosines those rows have by construction: one value per pair of directions, so copies tie
    exactly and, among other rows, the lower-index rule decides."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((m, d))
    g = rng.integers(0, m, n)
    scale = np.where(rng.random(n) < 0.4, 1.0, rng.choice([3.0, 0.7, 1e3, 0.1], n))
    unit = base / np.linalg.norm(base, axis=1, keepdims=True)
    return scale[:, None] * base[g], (unit @ unit.T)[g][:, g]


def test_mutual_knn_ties_between_copies_go_to_the_lower_index() -> None:
    """Copies of one direction (identical rows, positive multiples) are exactly as similar to every row,
    whatever the rounding of each copy's unit vector and of the matrix product: the lower index wins."""
    t = np.deg2rad([0, 20, 20, 20, 45, 90])
    X = np.stack([np.cos(t), np.sin(t)], axis=1) * np.array([1, 1, 3, 0.7, 1, 1])[:, None]
    # k = 1: 0 -> {1, 2, 3} tied -> 1; 1 -> {2, 3} (same direction) -> 2; 2 -> 1; 3 -> 1; 4 -> {1, 2, 3} -> 1; 5 -> 4
    assert knn._knn_sets(torch.from_numpy(X), 1, "X")[:, 0].tolist() == [1, 2, 1, 1, 1, 4]
    # k = 2: 0 -> {1, 2}; 1 -> {2, 3}; 2 -> {1, 3}; 3 -> {1, 2}; 4 -> {1, 2} (of 1, 2, 3 at 25 degrees); 5 -> {4, 1}
    assert knn._knn_sets(torch.from_numpy(X), 2, "X").tolist() == [[1, 2], [2, 3], [1, 3], [1, 2], [1, 2], [1, 4]]
    # re-ordering copies of one direction changes nothing, nor does scaling every row
    for Y in (X[[0, 3, 2, 1, 4, 5]], 3.0 * X, X[[0, 2, 1, 3, 4, 5]] * 0.1):
        for k in (1, 2, 3):
            assert sim.mutual_knn(X, Y, k=k) == 1.0
    for seed, (n, d, m) in enumerate([(47, 64, 20), (127, 576, 60), (60, 3, 25)]):
        (X, Cx), (Y, Cy) = copies(n, d, m, seed), copies(n, d + 5, m // 2, seed + 10)
        for k in (1, 4, 10):
            assert knn._knn_sets(torch.from_numpy(X), k, "X").tolist() == reference_knn_sets(Cx, k)
            assert knn._knn_sets(torch.from_numpy(X), k, "X", chunk=7).tolist() == reference_knn_sets(Cx, k)
            assert sim.mutual_knn(X, Y, k=k) == reference_mutual_knn(Cx, Cy, k)


def test_mutual_knn_null_breaks_ties_by_the_re_paired_index() -> None:
    """Every null value, on both lookup routes, is the reference score of X against the re-paired Y."""
    (X, Cx), (Y, Cy) = copies(40, 8, 15, 3), copies(40, 6, 9, 4)
    N, seed, k = 25, 7, 4
    perms = sim.permutations(40, N, seed)
    want = np.array([reference_mutual_knn(Cx, Cy[p][:, p], k) for p in perms])
    assert np.ptp(want) > 0.05
    np.testing.assert_array_equal(sim.mutual_knn_null(X, Y, N, seed, k=k, batch_size=6), want)
    kx, ny = knn._knn_sets(torch.from_numpy(X), k, "X"), knn._neighbours(torch.from_numpy(Y), k, "Y")
    assert ny.tied_rows.numel() > 0  # the test has ties to break
    for dense in (False, True):
        np.testing.assert_array_equal(knn._mutual_knn_null(kx, ny, perms, 4, dense=dense), want)
    summary, nulls = sim.compare_with_nulls(X, Y, N, seed, metrics=("mutual_knn",), knn_k=k)
    np.testing.assert_array_equal(nulls["mutual_knn"], want)
    assert summary["mutual_knn"]["score"] == reference_mutual_knn(Cx, Cy, k) == sim.mutual_knn(X, Y, k=k)


def test_mutual_knn_bad_input() -> None:
    X = decaying(6, 3, seed=15)
    for k in (0, 6, 2.5, True):
        with pytest.raises(ValueError, match="k must be"):
            sim.mutual_knn(X, X, k=k)
    Z = X.copy()
    Z[4] = 0.0
    with pytest.raises(ValueError, match="row 4 of Y is zero"):
        sim.mutual_knn(X, Z, k=2)


# ----------------------------------------------------------------------------- nulls vs naive

def test_nuclear_norms_fall_back_to_svdvals_where_the_gram_route_loses_precision(monkeypatch) -> None:
    """Planted singular values: spread (the Gram route) and half of them zero (eigenvalues of the Gram
    matrix then come out as +-1e-16, whose square roots are 1e-8 each): both within 1e-12 of the planted
    sums; without the guard the second is off by more than 1e-9."""
    rng = np.random.default_rng(0)
    orth = lambda n: np.linalg.qr(rng.normal(size=(n, n)))[0]  # noqa: E731
    spread, null = np.linspace(0.01, 1.0, 40), np.r_[np.linspace(0.01, 1.0, 20), np.zeros(20)]
    M = torch.from_numpy(np.stack([orth(40) @ np.diag(sv) @ orth(60)[:40] for sv in (spread, null)]))
    want = np.array([spread.sum(), null.sum()])
    np.testing.assert_allclose(procrustes._nuclear_norms(M).numpy(), want, rtol=0, atol=1e-12)
    np.testing.assert_allclose(procrustes._nuclear_norms(M.mT.contiguous()).numpy(), want, rtol=0, atol=1e-12)
    with monkeypatch.context() as m:  # the spread one never needs svdvals
        m.setattr(torch.linalg, "svdvals", lambda *a, **k: pytest.fail("svdvals called"))
        np.testing.assert_allclose(procrustes._nuclear_norms(M[:1]).numpy(), want[:1], rtol=0, atol=1e-12)
    monkeypatch.setattr(procrustes, "_NUCLEAR_ATOL", float("inf"))
    assert abs(float(procrustes._nuclear_norms(M)[1]) - want[1]) > 1e-9


@pytest.mark.parametrize("n, d_x, d_y", [(25, 4, 6), (9, 15, 11)])
def test_nulls_equal_naive_recomputation(n: int, d_x: int, d_y: int) -> None:
    X = decaying(n, d_x, seed=16)
    Y = np.sin(X[:, :1]) @ np.ones((1, d_y)) + decaying(n, d_y, seed=17)
    N, seed = 30, 5
    perms = sim.permutations(n, N, seed)
    naive = {
        "cka": [sim.linear_cka(X, Y[p]) for p in perms],
        # numpy's SVD of the centred, unit-norm cross product: no code shared with featlib's route
        "procrustes": [np.linalg.svd(centred_unit(X, d_x).T @ centred_unit(Y[p], d_y), compute_uv=False).sum()
                       for p in perms],
        "mutual_knn": [sim.mutual_knn(X, Y[p], k=3) for p in perms],
    }
    naive = {key: np.array(v) for key, v in naive.items()}
    assert np.ptp(naive["cka"]) > 0.05 and np.ptp(naive["mutual_knn"]) > 0.05
    for route in ("auto", "cross", "gram"):
        np.testing.assert_allclose(sim.cka_null(X, Y, N, seed, batch_size=7, route=route),
                                   naive["cka"], rtol=0, atol=1e-8)
    np.testing.assert_allclose(sim.procrustes_null(X, Y, N, seed, batch_size=4), naive["procrustes"],
                               rtol=0, atol=1e-9)
    np.testing.assert_allclose(sim.mutual_knn_null(X, Y, N, seed, k=3, batch_size=8), naive["mutual_knn"],
                               rtol=0, atol=1e-12)
    # the sorted-key route (used for large n) agrees with the dense membership matrix
    knn_x, knn_y = knn._knn_sets(torch.from_numpy(X), 3, "X"), knn._knn_sets(torch.from_numpy(Y), 3, "Y")
    np.testing.assert_array_equal(knn._mutual_knn_null(knn_x, knn_y, perms, 8, dense=False),
                                  knn._mutual_knn_null(knn_x, knn_y, perms, 8, dense=True))
    _, nulls = sim.compare_with_nulls(X, Y, N, seed, metrics=("cka", "mutual_knn", "procrustes"), knn_k=3)
    for key in naive:
        np.testing.assert_allclose(nulls[key], naive[key], rtol=0, atol=1e-8)


def test_cka_route_choice() -> None:
    assert cka._cka_route(1000, 50, 50) == "cross"        # many pairs, narrow: cross products
    assert cka._cka_route(100, 100, 200) == "gram"        # few pairs in wide spaces: Gram
    assert cka._cka_route(5000, 4096, 4096) == "cross"    # Gram cheaper, but (n, n) too large
    with pytest.raises(ValueError, match="route"):
        sim.cka_null(decaying(5, 2, 0), decaying(5, 2, 1), 3, 0, route="svd")


# ----------------------------------------------------------------------------- compare_with_nulls

def test_compare_all_metrics_share_permutations() -> None:
    X = decaying(40, 9, seed=18)
    Y = X @ np.random.default_rng(19).standard_normal((9, 7)) + 2 * decaying(40, 7, seed=20)
    summary, nulls = sim.compare_with_nulls(X, Y, n_shuffles=60, seed=3)
    json.dumps(summary)
    assert list(summary) == ["n", *sim.METRICS] and list(nulls) == list(sim.METRICS)
    assert sim.METRICS == ("svcca", "svcca_heldout", "rsa", "cka", "cka_debiased", "mutual_knn", "procrustes")
    for key in ("rsa", "cka", "procrustes"):
        assert set(summary[key]) == {"score", "null_mean", "null_std", "p"}
    assert set(summary["svcca"]) == {"score", "null_mean", "null_std", "p", "k_x", "k_y"}
    assert set(summary["mutual_knn"]) == {"score", "null_mean", "null_std", "p", "k"}
    assert summary["mutual_knn"]["k"] == 10
    assert all(v.shape == (60,) for v in nulls.values())
    # observed scores are the public functions; nulls are the public nulls (same permutations)
    assert summary["cka"]["score"] == sim.linear_cka(X, Y)
    assert summary["mutual_knn"]["score"] == sim.mutual_knn(X, Y, k=10)
    assert summary["procrustes"]["score"] == sim.procrustes_similarity(X, Y)
    np.testing.assert_array_equal(nulls["cka"], sim.cka_null(X, Y, 60, 3))
    np.testing.assert_array_equal(nulls["mutual_knn"], sim.mutual_knn_null(X, Y, 60, 3, k=10))
    np.testing.assert_array_equal(nulls["procrustes"], sim.procrustes_null(X, Y, 60, 3))
    assert summary["svcca"]["score"] == sim.svcca(X, Y).score and summary["rsa"]["score"] == sim.rsa(X, Y)
    np.testing.assert_array_equal(nulls["svcca"], sim.svcca_null(X, Y, 60, 3))
    np.testing.assert_array_equal(nulls["rsa"], sim.rsa_null(X, Y, 60, 3))
    assert sim.compare(X, Y, 60, 3, metrics=("svcca", "rsa")) == {k: summary[k] for k in ("n", "svcca", "rsa")}
    assert sim.compare(X, Y, 60, 3) == summary
    assert sim.compare(X, Y, 60, 3, metrics=["procrustes", "cka"], knn_k=3) == {
        "n": 40, "procrustes": summary["procrustes"], "cka": summary["cka"]}


def test_compare_planted_structure_all_significant() -> None:
    rng = np.random.default_rng(23)
    X = decaying(60, 10, seed=24)
    Y = X @ isometry(10, 12, seed=25) + 0.01 * rng.standard_normal((60, 12))
    summary = sim.compare(X, Y, n_shuffles=200, seed=0)
    for key in sim.METRICS:
        s = summary[key]
        assert s["p"] == pytest.approx(1 / 201), key  # held-out CCA too: Simes of ten 1/201
        assert s["score"] > s["null_mean"] + 5 * s["null_std"], key
    assert summary["cka"]["score"] > 0.99 and summary["procrustes"]["score"] > 0.99
    assert summary["mutual_knn"]["score"] > 0.8


def test_compare_independent_not_significant() -> None:
    X, Y = decaying(60, 10, seed=26), decaying(60, 8, seed=27)
    summary = sim.compare(X, Y, n_shuffles=200, seed=0)
    for key in sim.METRICS:
        assert summary[key]["p"] > 0.05, (key, summary[key])
        assert abs(summary[key]["score"] - summary[key]["null_mean"]) < 3 * summary[key]["null_std"], key


def test_compare_small_n_and_bad_metrics() -> None:
    X, Y = decaying(5, 3, seed=28), decaying(5, 4, seed=29)
    summary = sim.compare(X, Y, n_shuffles=20, seed=0, knn_k=10)
    knn = summary["mutual_knn"]                            # k = 10 >= (5 - 1)/2: not scorable, k not shrunk
    assert knn["score"] is None and knn["p"] is None and knn["k"] == 10 and "k/(n - 1)" in knn["reason"]
    with pytest.raises(ValueError, match="metrics"):
        sim.compare(X, Y, 5, 0, metrics=("svcca", "cca"))
    with pytest.raises(ValueError, match="metrics"):
        sim.compare(X, Y, 5, 0, metrics=())
    with pytest.raises(ValueError, match="knn_k"):
        sim.compare(X, Y, 5, 0, knn_k=0)
