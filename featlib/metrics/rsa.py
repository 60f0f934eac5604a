"""RSA (representational similarity analysis) of paired rows; registers ``rsa``.

The dissimilarity of items ``i < j`` is ``1 - pearson(row_i, row_j)``
(``scipy.spatial.distance.pdist(X, "correlation")``, condensed order, rounded to
12 decimals so that exact ties stay ties); the two condensed vectors are compared
with Spearman's rho (ties get average ranks). Null: distances and ranks are computed once and
Y's items re-paired (:func:`rsa_null`). Not scorable with ``n < 4`` pairs.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.spatial.distance import squareform
from scipy.stats import rankdata

from .common import ArrayLike, Pair, check_pair, permutations
from .registry import Metric, register

#: Decimals correlation distances are rounded to, so that distances equal in exact arithmetic tie.
DISTANCE_DECIMALS = 12


def correlation_distances(A: np.ndarray) -> np.ndarray:
    """``(n (n - 1) / 2,)`` float64 correlation distances ``1 - r`` of the rows of ``A`` ``(n, d)``, in
    ``pdist``'s condensed order: ``scipy.spatial.distance.pdist(A, "correlation")`` from one matrix product
    of the centred unit rows instead of a loop over pairs. Rounded to :data:`DISTANCE_DECIMALS` decimals:
    two float paths to one distance differ by ~1e-16, and without the rounding pairs that tie exactly
    (integer data, duplicated items) would be ranked apart."""
    Z = torch.from_numpy(np.asarray(A, dtype=np.float64))
    Z = Z - Z.mean(dim=1, keepdim=True)
    Z = Z / torch.linalg.vector_norm(Z, dim=1, keepdim=True)
    return np.round(1.0 - squareform((Z @ Z.T).numpy(), checks=False), DISTANCE_DECIMALS)


def _centred_ranks(A: np.ndarray, name: str) -> torch.Tensor:
    """Centred average ranks ``(n (n - 1) / 2,)`` of the condensed correlation distances."""
    constant = np.flatnonzero(np.all(A == A[:, :1], axis=1))
    if constant.size:
        raise ValueError(
            f"row {int(constant[0])} of {name} has zero variance, so its "
            f"correlation distance is undefined (zero-variance rows: "
            f"{constant[:10].tolist()})"
        )
    ranks = rankdata(correlation_distances(A))
    ranks -= ranks.mean()
    if not np.any(ranks):
        raise ValueError(f"all dissimilarities of {name} are equal; Spearman's rho is undefined")
    return torch.from_numpy(ranks)


def _pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    """Pearson correlation of two centred vectors."""
    return float(a @ b / (a.norm() * b.norm()))


def rsa(X: ArrayLike, Y: ArrayLike) -> float:
    """Spearman's rho of the correlation-distance RDMs of ``X`` ``(n, d_x)``, ``Y`` ``(n, d_y)``."""
    Xt, Yt = check_pair(X, Y)
    return _pearson(_centred_ranks(Xt.numpy(), "X"), _centred_ranks(Yt.numpy(), "Y"))


def _rsa_null(rx: torch.Tensor, ry: torch.Tensor, perms: np.ndarray) -> np.ndarray:
    """RSA ``(N,)`` of centred rank vectors ``(m,)``, Y's items permuted by ``perms`` ``(N, n)``.

    A re-pairing ``p`` gives ``sum_{i<j} rx[i, j] ry[p_i, p_j]`` over the upper triangle
    (:func:`featlib.null_kernels.rsa_null_sums`: compiled, one shuffle per thread). The ranks are
    doubled, ``2 (rank - mean)``: integers (average ranks of ties are halves), so float32 holds them
    exactly while they stay below 2^24 (n <= 5,793 items; float64 beyond), which halves the memory
    the gathers read; every product and sum is float64.
    """
    from .. import null_kernels

    n = perms.shape[1]
    m = n * (n - 1) // 2
    dtype = np.float32 if m < 2**24 else np.float64
    x2, y2 = ((2 * r).numpy().astype(dtype) for r in (rx, ry))
    sums = null_kernels.rsa_null_sums(x2, squareform(y2), np.ascontiguousarray(perms, dtype=np.int64))
    return sums / (4 * float(rx.norm() * ry.norm()))


def rsa_null(X: ArrayLike, Y: ArrayLike, n_shuffles: int, seed: int) -> np.ndarray:
    """RSA values ``(n_shuffles,)`` of ``X`` against row-permuted ``Y``.

    Distances and ranks are computed once; permuting the items of ``Y`` permutes its
    dissimilarity matrix, so each shuffle is a gather plus a dot product.
    """
    Xt, Yt = check_pair(X, Y)
    rx, ry = _centred_ranks(Xt.numpy(), "X"), _centred_ranks(Yt.numpy(), "Y")
    return _rsa_null(rx, ry, permutations(Xt.shape[0], n_shuffles, seed))


# ----------------------------------------------------------------------------- registered metric


def _ranks(pair: Pair) -> tuple[torch.Tensor, torch.Tensor]:
    return pair.once("ranks", lambda: (_centred_ranks(pair.X.numpy(), "X"), _centred_ranks(pair.Y.numpy(), "Y")))


def _rsa_score(pair: Pair) -> float:
    return _pearson(*_ranks(pair))


def _rsa_pair_null(pair: Pair, n_shuffles: int) -> np.ndarray:
    return _rsa_null(*_ranks(pair), pair.perms(n_shuffles))


register(Metric("rsa", "RSA", 4, _rsa_score, _rsa_pair_null, version=1, subsets="scorable"))
