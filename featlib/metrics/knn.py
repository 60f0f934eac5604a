"""Mutual k-nearest-neighbour alignment of paired rows; registers ``mutual_knn``.

Mutual k-NN (Huh et al. 2024, "The Platonic Representation Hypothesis"): for each
item ``i`` take its ``k`` nearest neighbours ``N_X(i)``, ``N_Y(i)`` under *cosine*
similarity of the raw (uncentred) rows, excluding ``i`` itself; the score is
``mean_i |N_X(i) & N_Y(i)| / k`` in [0, 1] (about ``k / (n - 1)`` for unrelated
data). Ties at the ``k``-th similarity go to the lower item index, so the sets are
deterministic: rows with the same direction (identical rows, positive multiples of one row: unit
vectors equal to within :data:`SAME_DIRECTION_ULPS` ulps in every coordinate) are one direction whose
similarities are computed once, so they tie exactly with one another whatever the rounding of the
product would give each copy; other similarities tie when their float64 values are equal. The null
resolves ties in ``Y`` by the *re-paired* indices, so every null value equals the score of ``X``
against the re-paired ``Y``. The published pipeline L2-normalises rows
(so its inner-product neighbours are cosine neighbours, as here) but first clamps
activations at their 95% absolute quantile and breaks ties by ``argsort`` order;
neither is done here. Zero rows make cosine undefined (ValueError); ``1 <= k <= n-1``.
Null: the k-NN sets are computed once and Y's re-paired by relabelling (see :func:`mutual_knn_null`).
Not scorable when ``k >= (n - 1) / 2`` with ``k = knn_k`` (the chance level ``k / (n - 1)`` is at
least 1/2; ``k`` is not shrunk to ``n - 1``, where every score is 1).
"""

from __future__ import annotations

from dataclasses import dataclass
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


#: Unit rows whose coordinates all agree to within this many float64 ulps (of 1) have the same direction.
SAME_DIRECTION_ULPS = 8


def _directions(Z: torch.Tensor) -> torch.Tensor:
    """``(n,)`` int64: for each unit row of ``Z`` ``(n, d)``, the lowest index of a row with its direction.

    Rows ``i``, ``j`` have the same direction when ``max |Z_i - Z_j| <= SAME_DIRECTION_ULPS * eps``;
    a row joins the lowest-index representative it is that close to. Candidates are found in one
    sorted projection (rows that close project within ``delta`` of each other), so the cost is
    ``O(n d + n log n)`` plus a comparison within each run of close projections.
    """
    n, d = Z.shape
    eps = torch.finfo(F64).eps
    tol = SAME_DIRECTION_ULPS * eps
    w = torch.randn(d, generator=torch.Generator().manual_seed(0), dtype=F64)
    v = Z @ w
    delta = float(w.abs().sum()) * tol + 4 * d * eps * float(w.norm())  # |v_i - v_j| bound + dot rounding
    order = torch.argsort(v)
    cut = torch.nonzero(v[order].diff() > delta).flatten() + 1
    rep = torch.arange(n)
    for run in torch.tensor_split(order, cut.tolist()):
        if len(run) < 2:
            continue
        rest = run.sort().values
        while len(rest) > 1:
            same = (Z[rest] - Z[rest[0]]).abs().amax(1) <= tol
            rep[rest[same]] = rest[0]
            rest = rest[~same]
    return rep


@dataclass(frozen=True, eq=False)
class Neighbours:
    """Cosine k-NN sets of one side, with what re-pairing needs to break its ties by the new indices.

    ``sets`` ``(n, k)`` int64, each row ascending: the ``k`` most similar other rows, ties at the
    ``k``-th similarity to the lower index. A row whose ``k``-th similarity is shared by more
    candidates than it has places left is *tied*: ``tied_rows`` ``(t,)`` are those rows, ``need``
    ``(t,)`` the places left to their tied candidates and ``tied_cols`` ``(E,)`` the candidates of
    each tied row in turn (``group`` ``(E,)``: the position in ``tied_rows``; ascending within one).
    """

    sets: torch.Tensor
    tied_rows: torch.Tensor
    need: torch.Tensor
    tied_cols: torch.Tensor
    group: torch.Tensor


def _neighbours(Xt: torch.Tensor, k: int, name: str, chunk: int | None = None) -> Neighbours:
    """:class:`Neighbours` of the rows of ``Xt`` ``(n, d)`` (self excluded); see the module notes.

    Similarities are those of the distinct directions (:func:`_directions`), gathered for every row,
    so rows of one direction get bit-identical columns. Rows are processed in chunks of about 4M
    similarities.
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
    rep = _directions(Z)
    reps, direction = torch.unique(rep, return_inverse=True)  # distinct directions, and each row's
    U = Z[reps]
    chunk = chunk or max(1, 2**22 // n)
    out = torch.empty((n, k), dtype=torch.int64)
    tied_rows, need_of, tied_cols, group = [], [], [], []
    t = 0
    for start in range(0, n, chunk):
        rows = torch.arange(start, min(start + chunk, n))
        S = (U[direction[rows]] @ U.T)[:, direction]  # (c, n): one value per pair of directions
        S[torch.arange(len(rows)), rows] = -torch.inf  # exclude self
        kth = S.topk(k, dim=1).values[:, -1:]  # (c, 1) k-th largest
        above = S > kth
        tied = S == kth
        need = k - above.sum(1, keepdim=True)  # tied slots to fill
        member = above | (tied & (tied.cumsum(1) <= need))  # lowest tied indices
        out[start : start + len(rows)] = torch.nonzero(member)[:, 1].view(len(rows), k)
        for r in torch.nonzero(tied.sum(1) > need[:, 0]).flatten().tolist():
            cols = torch.nonzero(tied[r]).flatten()
            tied_rows.append(start + r)
            need_of.append(int(need[r]))
            tied_cols.append(cols)
            group.append(torch.full((len(cols),), t, dtype=torch.int64))
            t += 1
    empty = torch.empty(0, dtype=torch.int64)
    return Neighbours(
        out,
        torch.tensor(tied_rows, dtype=torch.int64),
        torch.tensor(need_of, dtype=torch.int64),
        torch.cat(tied_cols) if tied_cols else empty,
        torch.cat(group) if group else empty,
    )


def _knn_sets(Xt: torch.Tensor, k: int, name: str, chunk: int | None = None) -> torch.Tensor:
    """Cosine k-NN sets ``(n, k)`` int64 (self excluded), each row sorted ascending (:func:`_neighbours`)."""
    return _neighbours(Xt, k, name, chunk).sets


class _Relation:
    """Membership of keys ``a * n + b`` (sorted, distinct): a dense boolean table or a binary search."""

    def __init__(self, keys: torch.Tensor, n: int, dense: bool) -> None:
        self.keys, self.table = keys, None
        if dense:
            self.table = torch.zeros(n * n, dtype=torch.bool)
            self.table[keys] = True

    def __call__(self, q: torch.Tensor) -> torch.Tensor:
        if self.table is not None:
            return self.table[q]
        if not self.keys.numel():
            return torch.zeros(q.shape, dtype=torch.bool)
        pos = torch.searchsorted(self.keys, q).clamp_(max=self.keys.numel() - 1)
        return self.keys[pos] == q


def _mutual_knn_null(
    knn_x: torch.Tensor,
    knn_y: torch.Tensor | Neighbours,
    perms: np.ndarray,
    batch_size: int | None,
    dense: bool | None = None,
) -> np.ndarray:
    """Mutual k-NN ``(N,)`` of k-NN sets ``(n, k)``, Y's items re-paired by ``perms`` ``(N, n)``.

    With ``Y' = Y[p]``, ``N_Y'(i) = p^{-1}[N_Y(p[i])]``, so ``j in N_X(i)`` is shared iff
    ``p[j] in N_Y(p[i])``: a lookup of ``(p[i], p[j])`` in Y's membership relation,
    either a dense ``(n, n)`` boolean matrix or (``n^2 > KNN_DENSE_MAX``) a binary
    search in the sorted flat keys ``a * n + b``. Given :class:`Neighbours` of Y, the places of a
    tied row ``a`` go to its tied candidates ``b`` of lowest *new* index ``p^{-1}[b]`` (a sort per
    shuffle of the tied candidates only), each shared iff ``(p^{-1}[a], p^{-1}[b])`` is in X's
    relation: exactly ``mutual_knn(X, Y[p])``. Given bare sets, ties keep Y's original choice.
    """
    sets_y, ties = (knn_y.sets, knn_y) if isinstance(knn_y, Neighbours) else (knn_y, None)
    if ties is not None and not ties.tied_rows.numel():
        ties = None
    n, k = knn_x.shape
    dense = n * n <= KNN_DENSE_MAX if dense is None else dense
    keys_y = (torch.arange(n)[:, None] * n + sets_y).flatten()  # sorted: rows, then columns
    if ties is not None:
        tie_keys = ties.tied_rows[ties.group] * n + ties.tied_cols
        keys_y = keys_y[~torch.isin(keys_y, tie_keys)]  # tied places are filled per shuffle
        in_x = _Relation((torch.arange(n)[:, None] * n + knn_x).flatten(), n, dense)
        starts = torch.searchsorted(ties.group, torch.arange(len(ties.tied_rows)))
        rank = torch.arange(len(ties.group)) - starts[ties.group]
        chosen = torch.nonzero(rank < ties.need[ties.group]).flatten()  # places after sorting by new index
    in_y = _Relation(keys_y, n, dense)
    P, out = torch.from_numpy(perms), torch.empty(len(perms), dtype=F64)
    b = batch(batch_size, n * k + (len(ties.group) if ties is not None else 0))
    for start in range(0, len(P), b):
        p = P[start : start + b]  # (b, n)
        q = (p[:, :, None] * n + p[:, knn_x]).flatten(1)  # (b, n k) keys (p[i], p[j])
        hits = in_y(q).sum(1, dtype=F64)
        if ties is not None:
            inv = torch.empty_like(p).scatter_(1, p, torch.arange(n).expand_as(p))  # new index of each item
            new = (ties.group * n + inv[:, ties.tied_cols]).sort(dim=1).values[:, chosen] % n  # (b, places)
            hits += in_x(inv[:, ties.tied_rows[ties.group[chosen]]] * n + new).sum(1, dtype=F64)
        out[start : start + len(p)] = hits / (n * k)
    return out.numpy()


def mutual_knn(X: ArrayLike, Y: ArrayLike, k: int = KNN_K) -> float:
    """Mutual k-NN alignment of ``X`` ``(n, d_x)`` and ``Y`` ``(n, d_y)`` in [0, 1].

    ``mean_i |N_X(i) & N_Y(i)| / k`` with cosine k-NN sets excluding ``i``; see the
    module notes. Requires ``1 <= k <= n - 1``.
    """
    Xt, Yt = check_pair(X, Y)
    k = _check_k(k, Xt.shape[0])
    knn_x, knn_y = _knn_sets(Xt, k, "X"), _neighbours(Yt, k, "Y")
    return float(_mutual_knn_null(knn_x, knn_y, identity(Xt.shape[0]), None)[0])


def mutual_knn_null(
    X: ArrayLike, Y: ArrayLike, n_shuffles: int, seed: int, k: int = KNN_K, batch_size: int | None = None
) -> np.ndarray:
    """Mutual k-NN values ``(n_shuffles,)`` of ``X`` against row-permuted ``Y``.

    The k-NN sets are computed once per side; a shuffle relabels Y's sets, so each
    one costs ``n k`` index lookups (and a sort of the candidates tied at a row's ``k``-th
    neighbour, if ``Y`` has any). Exactly equal to ``mutual_knn(X, Y[perm], k)``: ties in ``Y``
    go to the lower re-paired index.
    """
    Xt, Yt = check_pair(X, Y)
    k = _check_k(k, Xt.shape[0])
    knn_x, knn_y = _knn_sets(Xt, k, "X"), _neighbours(Yt, k, "Y")
    return _mutual_knn_null(knn_x, knn_y, permutations(Xt.shape[0], n_shuffles, seed), batch_size)


# ----------------------------------------------------------------------------- registered metric


def _pair_null_of(pair: Pair, perms: np.ndarray) -> np.ndarray:
    kx, ky = pair.once("knn", lambda: (_knn_sets(pair.X, pair.knn_k, "X"), _neighbours(pair.Y, pair.knn_k, "Y")))
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
        version=2,
        extra=lambda pair: {"k": pair.knn_k},
        rule=_rule,
        uses=("knn_k",),
    )
)
