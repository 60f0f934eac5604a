"""Feature atlas computations: neighbourhood preservation, one-to-one assignment, seeded layouts."""

import itertools

import numpy as np
import pytest

from featlib import atlas


def test_neighbourhood_preservation_is_one_for_a_rotation_and_chance_for_noise():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((60, 16))
    Q, _ = np.linalg.qr(rng.standard_normal((16, 16)))
    same = atlas.neighbourhood_preservation(X, X @ Q, k=5, n_random=50, seed=0)
    assert same["score"] == pytest.approx(1.0) and same["p"] == pytest.approx(1 / 51)
    noise = atlas.neighbourhood_preservation(X, rng.standard_normal((60, 24)), k=5, n_random=50, seed=0)
    assert abs(noise["score"] - noise["chance"]) < 0.05 and noise["p"] > 0.05
    assert noise["null_mean"] == pytest.approx(5 / 59, abs=0.02)


def test_neighbourhood_preservation_counts_partners_by_hand():
    # Y swaps rows 1 and 2 of X, so every pair's nearest neighbour in A (k = 1) is paired with a
    # feature that is not its partner's nearest neighbour in B: nothing is preserved
    X = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [-1.0, 0.2]])
    Y = X[[0, 2, 1, 3]]
    res = atlas.neighbourhood_preservation(X, Y, k=1, n_random=10, seed=0)
    assert res["score"] == 0.0
    assert atlas.neighbourhood_preservation(X, X, k=1, n_random=10, seed=0)["score"] == 1.0


def test_hungarian_pairs_maximise_the_summed_correlation():
    rng = np.random.default_rng(1)
    corr = rng.uniform(-0.2, 0.9, (5, 5))
    pairs, r = atlas.hungarian_pairs(corr, min_r=-1)
    best = max(itertools.permutations(range(5)), key=lambda p: sum(corr[i, j] for i, j in enumerate(p)))
    assert sorted(map(tuple, pairs.tolist())) == [(i, j) for i, j in enumerate(best)]
    kept, _ = atlas.hungarian_pairs(corr, min_r=0.5)
    assert (corr[kept[:, 0], kept[:, 1]] > 0.5).all() and len(np.unique(kept[:, 0])) == len(kept)


@pytest.mark.slow
def test_umap_layout_is_seeded():
    W = np.random.default_rng(2).standard_normal((40, 8))
    a, b = atlas.umap_xy(W, seed=42), atlas.umap_xy(W, seed=42)
    assert a.shape == (40, 2) and np.array_equal(a, b)
    with pytest.raises(ValueError, match="at least 4 features"):
        atlas.umap_xy(W[:3], seed=0)


@pytest.mark.slow
def test_numba_parallel_code_runs_on_the_work_queue_not_an_openmp_pool():
    """numba's OpenMP workers spin beside torch's and made later torch operations up to 80x slower."""
    import os
    import subprocess
    import sys

    from featlib.config import REPO

    code = ("import numba, numpy as np\nfrom featlib import atlas\natlas.numba_workqueue()\n"
            "@numba.njit(parallel=True)\ndef f(x):\n    s = 0.0\n    for i in numba.prange(len(x)):\n        s += x[i]\n    return s\n"
            "f(np.ones(1000))\nprint(numba.threading_layer())")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_THREADING_LAYER"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "workqueue"
