"""Mutual k-nearest-neighbour alignment of paired rows; registers ``mutual_knn``.

Mutual k-NN (Huh et al. 2024, "The Platonic Representation Hypothesis"): for each
item ``i`` take its ``k`` nearest neighbours ``N_X(i)``, ``N_Y(i)`` under *cosine*
similarity of the raw (uncentred) rows, excluding ``i`` itself; the score is
``mean_i |N_X(i) & N_Y(i)| / k`` in [0, 1] (about ``k / (n - 1)`` for unrelated
data). Ties at the ``k``-th similarity (exact float equality) go to the lower item
index, so the sets are deterministic. The published pipeline L2-normalises rows
(so its inner-product neighbours are cosine neighbours, as here) but first clamps
activations at their 95% absolute quantile and breaks ties by ``argsort`` order;
neither is done here. Zero rows make cosine undefined (ValueError); ``1 <= k <= n-1``.
Null: the k-NN sets are computed once and Y's re-paired by relabelling (see :func:`mutual_knn_null`).
Not scorable when ``k >= (n - 1) / 2`` with ``k = knn_k`` (the chance level ``k / (n - 1)`` is at
least 1/2; ``k`` is not shrunk to ``n - 1``, where every score is 1).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .common import F64, ArrayLike, Pair, batch, check_pair, identity, permutations
from .registry import Metric, register

#: Neighbours per item (the default of :func:`featlib.similarity.compare_with_nulls`, of the geometry and
#: calibration steps).
KNN_K = 10

#: Largest ``n * n`` for which the mutual k-NN null uses a dense boolean membership matrix.
KNN_DENSE_MAX = 2**26


def _check_k(k: int, n: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= n - 1:
        raise ValueError(f"k must be an integer in [1, n - 1] = [1, {n - 1}], got {k!r}")
    return int(k)


def _knn_sets(Xt: torch.Tensor, k: int, name: str, chunk: int | None = None) -> torch.Tensor:
    """Cosine k-NN sets ``(n, k)`` int64 (self excluded), each row sorted ascending.

    Ties at the ``k``-th similarity go to the lower index. Rows are processed in
    chunks of about 4M similarities.
    """
    n = Xt.shape[0]
    norms = Xt.norm(dim=1)
    zero = torch.nonzero(norms == 0).flatten()
    if zero.numel():
        raise ValueError(
            f"row {int(zero[0])} of {name} is zero, so its cosine similarity is "
            f"undefined (zero rows: {zero[:10].tolist()})"
        )
    Z = Xt / norms[:, None]
    chunk = chunk or max(1, 2**22 // n)
    out = torch.empty((n, k), dtype=torch.int64)
    for start in range(0, n, chunk):
        rows = torch.arange(start, min(start + chunk, n))
        S = Z[rows] @ Z.T  # (c, n)
        S[torch.arange(len(rows)), rows] = -torch.inf  # exclude self
        kth = S.topk(k, dim=1).values[:, -1:]  # (c, 1) k-th largest
        above = S > kth
        tied = S == kth
        need = k - above.sum(1, keepdim=True)  # tied slots to fill
        member = above | (tied & (tied.cumsum(1) <= need))  # lowest tied indices
        out[start : start + len(rows)] = torch.nonzero(member)[:, 1].view(len(rows), k)
    return out


def _mutual_knn_null(
    knn_x: torch.Tensor, knn_y: torch.Tensor, perms: np.ndarray, batch_size: int | None, dense: bool | None = None
) -> np.ndarray:
    """Mutual k-NN ``(N,)`` of k-NN sets ``(n, k)``, Y's items re-paired by ``perms`` ``(N, n)``.

    With ``Y' = Y[p]``, ``N_Y'(i) = p^{-1}[N_Y(p[i])]``, so ``j in N_X(i)`` is shared iff
    ``p[j] in N_Y(p[i])``: a lookup of ``(p[i], p[j])`` in Y's membership relation,
    either a dense ``(n, n)`` boolean matrix or (``n^2 > KNN_DENSE_MAX``) a binary
    search in the sorted flat keys ``a * n + b``.
    """
    n, k = knn_x.shape
    dense = n * n <= KNN_DENSE_MAX if dense is None else dense
    keys = (torch.arange(n)[:, None] * n + knn_y).flatten()  # sorted: rows, then columns
    if dense:
        member = torch.zeros(n * n, dtype=torch.bool)
        member[keys] = True
    P, out = torch.from_numpy(perms), torch.empty(len(perms), dtype=F64)
    b = batch(batch_size, n * k)
    for start in range(0, len(P), b):
        p = P[start : start + b]  # (b, n)
        q = (p[:, :, None] * n + p[:, knn_x]).flatten(1)  # (b, n k) keys (p[i], p[j])
        if dense:
            hits = member[q]
        else:
            pos = torch.searchsorted(keys, q).clamp_(max=keys.numel() - 1)
            hits = keys[pos] == q
        out[start : start + len(p)] = hits.sum(1, dtype=F64) / (n * k)
    return out.numpy()


def mutual_knn(X: ArrayLike, Y: ArrayLike, k: int = KNN_K) -> float:
    """Mutual k-NN alignment of ``X`` ``(n, d_x)`` and ``Y`` ``(n, d_y)`` in [0, 1].

    ``mean_i |N_X(i) & N_Y(i)| / k`` with cosine k-NN sets excluding ``i``; see the
    module notes. Requires ``1 <= k <= n - 1``.
    """
    Xt, Yt = check_pair(X, Y)
    k = _check_k(k, Xt.shape[0])
    knn_x, knn_y = _knn_sets(Xt, k, "X"), _knn_sets(Yt, k, "Y")
    return float(_mutual_knn_null(knn_x, knn_y, identity(Xt.shape[0]), None)[0])


def mutual_knn_null(
    X: ArrayLike, Y: ArrayLike, n_shuffles: int, seed: int, k: int = KNN_K, batch_size: int | None = None
) -> np.ndarray:
    """Mutual k-NN values ``(n_shuffles,)`` of ``X`` against row-permuted ``Y``.

    The k-NN sets are computed once per side; a shuffle relabels Y's sets, so each
    one costs ``n k`` index lookups. Exactly equal to ``mutual_knn(X, Y[perm], k)``
    unless ``Y`` has ties at a ``k``-th neighbour (the tie is then broken by the
    original labels rather than the permuted ones).
    """
    Xt, Yt = check_pair(X, Y)
    k = _check_k(k, Xt.shape[0])
    knn_x, knn_y = _knn_sets(Xt, k, "X"), _knn_sets(Yt, k, "Y")
    return _mutual_knn_null(knn_x, knn_y, permutations(Xt.shape[0], n_shuffles, seed), batch_size)


# ----------------------------------------------------------------------------- registered metric


def _pair_null_of(pair: Pair, perms: np.ndarray) -> np.ndarray:
    kx, ky = pair.once("knn", lambda: (_knn_sets(pair.X, pair.knn_k, "X"), _knn_sets(pair.Y, pair.knn_k, "Y")))
    return _mutual_knn_null(kx, ky, perms, None)


def _rule(n: int, **extra: Any) -> str | None:
    k = extra["k"]
    return (
        (
            f"mutual k-NN uses k = {k} neighbours of {n} pairs: k >= (n - 1)/2, so the chance "
            "level k/(n - 1) is at least 1/2"
        )
        if 2 * k >= n - 1
        else None
    )


register(
    Metric(
        "mutual_knn",
        "mutual k-NN",
        0,
        lambda pair: float(_pair_null_of(pair, identity(pair.n))[0]),
        lambda pair, n_shuffles: _pair_null_of(pair, pair.perms(n_shuffles)),
        version=1,
        extra=lambda pair: {"k": pair.knn_k},
        rule=_rule,
        uses=("knn_k",),
    )
)
