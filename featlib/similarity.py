"""Compare the geometry of paired feature decoder vectors of two models.

Metrics: SVCCA, RSA, linear CKA, mutual k-nearest-neighbour alignment and Procrustes.

Conventions
-----------
* ``X`` is ``(n, d_x)`` and ``Y`` is ``(n, d_y)``: row ``i`` of ``X`` and row ``i``
  of ``Y`` are a matched pair (e.g. decoder vectors of matched features). The
  widths may differ; ``n`` must agree and be at least 3.
* Inputs may be numpy arrays or torch tensors (any dtype or device). Everything is
  computed on the CPU in float64; results are Python floats or numpy arrays.
* SVCCA: columns are centred, each side is truncated to the fewest principal
  components whose cumulative explained-variance *fraction* reaches ``variance``,
  and the score is the plain mean of the canonical correlations between the two
  truncated subspaces.
* RSA: the dissimilarity of items ``i < j`` is ``1 - pearson(row_i, row_j)``
  (``scipy.spatial.distance.pdist(X, "correlation")``, condensed order); the two
  condensed vectors are compared with Spearman's rho (ties get average ranks).
* Nulls re-pair the data by permuting the rows of ``Y`` relative to ``X``. The
  permutations come from :func:`permutations`, so the same seed gives the same
  re-pairings for every metric. p-values are ``(1 + #(null >= observed)) / (1 + N)``;
  ``null_std`` is the population standard deviation (``ddof=0``).

Further metrics (all "higher = more similar", so the same p-value convention applies)
------------------------------------------------------------------------------------
* Linear CKA (Kornblith et al. 2019): with column-centred ``Xc``, ``Yc``,
  ``||Xc^T Yc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)``, in [0, 1]. This is the
  biased-HSIC ("Gretton") estimator ``tr(K H L H) / sqrt(tr(K H K H) tr(L H L H))``
  with ``K = X X^T``, ``L = Y Y^T`` and ``H = I - 11^T / n``; it equals
  ``repsim.cka(..., kernel_type="linear", estimator="gretton")``. It is *not* the
  unbiased-HSIC ("Song") variant, and unlike the Platonic-representation code it adds
  no ``1e-6`` to the denominator. Invariant to orthogonal maps and isotropic scaling
  of either side. Undefined (ValueError) when a side has zero variance.
* Mutual k-NN (Huh et al. 2024, "The Platonic Representation Hypothesis"): for each
  item ``i`` take its ``k`` nearest neighbours ``N_X(i)``, ``N_Y(i)`` under *cosine*
  similarity of the raw (uncentred) rows, excluding ``i`` itself; the score is
  ``mean_i |N_X(i) & N_Y(i)| / k`` in [0, 1] (about ``k / (n - 1)`` for unrelated
  data). Ties at the ``k``-th similarity (exact float equality) go to the lower item
  index, so the sets are deterministic. The published pipeline L2-normalises rows
  (so its inner-product neighbours are cosine neighbours, as here) but first clamps
  activations at their 95% absolute quantile and breaks ties by ``argsort`` order;
  neither is done here. Zero rows make cosine undefined (ValueError); ``1 <= k <= n-1``.
* Procrustes: centre the columns, scale each side to unit Frobenius norm and
  (implicitly) zero-pad the narrower side. The similarity is the nuclear norm
  ``s = ||Xc^T Yc||_*`` in [0, 1] (the cosine of the "angular Procrustes" distance of
  Williams et al. 2021, ``arccos(s)``); the distance is the size-and-shape distance
  ``d = min_Q ||Xc - Yc Q||_F = sqrt(max(0, 2 - 2 s))`` over orthogonal ``Q``, in
  [0, sqrt(2)]. ``scipy.spatial.procrustes`` additionally fits a scale, so its
  "disparity" is ``1 - s^2`` (``d^2 = 2 - 2 s``). The *similarity* ``s`` is what
  :func:`compare_with_nulls` reports and permutes. Zero padding never changes ``s``
  (zero columns add zero rows/columns to ``Xc^T Yc``), so it is not materialised.

Null computations reuse everything that does not depend on the pairing: the centred
SVD of each side (CKA, Procrustes), the k-NN sets (mutual k-NN), the truncated bases
(SVCCA) and the distance ranks (RSA). For CKA and Procrustes each side is replaced by
``A = U S`` (``(n, min(n, d))``, from ``Xc = U S V^T``): ``Xc^T Yc[p]`` and
``A^T B[p]`` differ only by orthonormal factors, so their Frobenius and nuclear
norms agree and each shuffle works with ``min(n, d)`` columns. The CKA null then uses
the cheaper of ``||A^T B[p]||_F^2`` and the centred-Gram form ``<K, L[p][:, p]>`` (see
:func:`cka_null`); the mutual k-NN null relabels Y's fixed neighbour sets (see
:func:`mutual_knn_null`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence, Union

import numpy as np
import torch
from scipy.spatial.distance import pdist
from scipy.stats import rankdata
from tqdm import tqdm

ArrayLike = Union[np.ndarray, torch.Tensor]
F64 = torch.float64


def _to_tensor(A: ArrayLike, name: str) -> torch.Tensor:
    """Return ``A`` as a finite 2-D float64 CPU tensor ``(n, d)``."""
    if isinstance(A, torch.Tensor):
        t = A.detach().to(device="cpu", dtype=F64)
    else:
        t = torch.as_tensor(np.asarray(A, dtype=np.float64))
    if t.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n, d), got shape {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or inf")
    return t


def _check_pair(X: ArrayLike, Y: ArrayLike) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate a matched pair: ``X`` ``(n, d_x)``, ``Y`` ``(n, d_y)`` with ``n >= 3``."""
    Xt, Yt = _to_tensor(X, "X"), _to_tensor(Y, "Y")
    if Xt.shape[0] != Yt.shape[0]:
        raise ValueError("X and Y must have the same number of rows (matched pairs), "
                         f"got X {tuple(Xt.shape)} and Y {tuple(Yt.shape)}")
    if Xt.shape[0] < 3:
        raise ValueError(f"need at least 3 pairs, got n={Xt.shape[0]}")
    return Xt, Yt


def _pca_basis(Xt: torch.Tensor, variance: float, name: str = "X") -> tuple[torch.Tensor, int]:
    """Orthonormal basis ``(n, k)`` of the top-``k`` centred principal components."""
    if not 0.0 < variance <= 1.0:
        raise ValueError(f"variance must be in (0, 1], got {variance}")
    if Xt.numel() == 0 or bool((Xt == Xt[:1]).all()):
        raise ValueError(f"{name} has zero variance (all rows identical or empty); "
                         "PCA truncation is undefined")
    Xc = Xt - Xt.mean(dim=0, keepdim=True)
    U, s, _ = torch.linalg.svd(Xc, full_matrices=False)
    power = s.square()
    fraction = torch.cumsum(power, 0) / power.sum()
    k = min(int((fraction < variance).sum()) + 1, s.numel())
    return U[:, :k], k


def pca_truncate(X: ArrayLike, variance: float = 0.99) -> tuple[np.ndarray, int]:
    """Centre the columns of ``X`` ``(n, d)`` and keep the leading principal components.

    ``k`` is the smallest number of components whose cumulative explained-variance
    fraction ``cumsum(s_i^2) / sum(s^2)`` is ``>= variance`` (``variance=1`` keeps all).
    The original research code compared this *fraction* with ``0.99 * total
    variance`` (an absolute quantity), so the rule never triggered and ``k`` was
    always 1; this function fixes that bug.

    Returns the orthonormal left singular vectors ``U[:, :k]`` ``(n, k)`` (the PCA
    scores up to a per-column scale) and ``k``. Raises ValueError on zero variance.
    """
    U, k = _pca_basis(_to_tensor(X, "X"), variance)
    return U.numpy(), k


def _cancorr(Ux: torch.Tensor, Uy: torch.Tensor) -> torch.Tensor:
    """Singular values of ``Ux^T Uy`` ``(kx, ky)``, clipped to [0, 1], descending."""
    return torch.linalg.svdvals(Ux.T @ Uy).clamp(0.0, 1.0)


def canonical_correlations(Ux: ArrayLike, Uy: ArrayLike) -> np.ndarray:
    """Canonical correlations ``(min(kx, ky),)`` between two centred orthonormal bases.

    ``Ux`` is ``(n, kx)`` and ``Uy`` is ``(n, ky)``, both with centred orthonormal
    columns (as returned by :func:`pca_truncate`). Sorted descending.
    """
    Ut, Vt = _to_tensor(Ux, "Ux"), _to_tensor(Uy, "Uy")
    if Ut.shape[0] != Vt.shape[0]:
        raise ValueError(f"row mismatch: Ux {tuple(Ut.shape)} vs Uy {tuple(Vt.shape)}")
    return _cancorr(Ut, Vt).numpy()


@dataclass(frozen=True, eq=False)
class SVCCAResult:
    """SVCCA of ``n`` pairs: ``score`` is the mean of ``correlations`` ``(min(k_x, k_y),)``."""

    score: float
    correlations: np.ndarray
    k_x: int
    k_y: int
    n: int


def svcca(X: ArrayLike, Y: ArrayLike, variance: float = 0.99) -> SVCCAResult:
    """SVCCA of ``X`` ``(n, d_x)`` and ``Y`` ``(n, d_y)``; see the module conventions."""
    Xt, Yt = _check_pair(X, Y)
    (Ux, kx), (Uy, ky) = _pca_basis(Xt, variance, "X"), _pca_basis(Yt, variance, "Y")
    rho = _cancorr(Ux, Uy)
    return SVCCAResult(float(rho.mean()), rho.numpy(), kx, ky, Xt.shape[0])


def _centred_ranks(A: np.ndarray, name: str) -> torch.Tensor:
    """Centred average ranks ``(n (n - 1) / 2,)`` of the condensed correlation distances."""
    constant = np.flatnonzero(np.all(A == A[:, :1], axis=1))
    if constant.size:
        raise ValueError(f"row {int(constant[0])} of {name} has zero variance, so its "
                         f"correlation distance is undefined (zero-variance rows: "
                         f"{constant[:10].tolist()})")
    ranks = rankdata(pdist(A, "correlation"))
    ranks -= ranks.mean()
    if not np.any(ranks):
        raise ValueError(f"all dissimilarities of {name} are equal; Spearman's rho is undefined")
    return torch.from_numpy(ranks)


def _pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    """Pearson correlation of two centred vectors."""
    return float(a @ b / (a.norm() * b.norm()))


def rsa(X: ArrayLike, Y: ArrayLike) -> float:
    """Spearman's rho of the correlation-distance RDMs of ``X`` ``(n, d_x)``, ``Y`` ``(n, d_y)``."""
    Xt, Yt = _check_pair(X, Y)
    return _pearson(_centred_ranks(Xt.numpy(), "X"), _centred_ranks(Yt.numpy(), "Y"))


def permutations(n: int, n_shuffles: int, seed: int) -> np.ndarray:
    """``(n_shuffles, n)`` int64 permutations: ``default_rng(seed).permutation(n)``, in order."""
    if n_shuffles < 0:
        raise ValueError(f"n_shuffles must be >= 0, got {n_shuffles}")
    rng = np.random.default_rng(seed)
    out = np.empty((n_shuffles, n), dtype=np.int64)
    for s in range(n_shuffles):
        out[s] = rng.permutation(n)
    return out


def _svcca_null(Ux: torch.Tensor, Uy: torch.Tensor, perms: np.ndarray,
                batch_size: int) -> np.ndarray:
    """SVCCA ``(N,)`` of ``Ux`` ``(n, kx)`` vs ``Uy[p]``, one per row ``p`` of ``perms`` ``(N, n)``."""
    P, out = torch.from_numpy(perms), torch.empty(len(perms), dtype=F64)
    for start in range(0, len(P), batch_size):
        idx = P[start:start + batch_size]                       # (b, n)
        out[start:start + len(idx)] = _cancorr(Ux, Uy[idx]).mean(-1)  # (kx, n) @ (b, n, ky)
    return out.numpy()


def svcca_null(X: ArrayLike, Y: ArrayLike, n_shuffles: int, seed: int,
               variance: float = 0.99, batch_size: int = 256) -> np.ndarray:
    """SVCCA scores ``(n_shuffles,)`` of ``X`` against row-permuted ``Y``.

    The truncated bases are computed once: permuting rows of ``Uy`` keeps it centred
    and orthonormal, so each shuffle is a batched ``svdvals(Ux^T Uy[perm])``.
    """
    Xt, Yt = _check_pair(X, Y)
    (Ux, _), (Uy, _) = _pca_basis(Xt, variance, "X"), _pca_basis(Yt, variance, "Y")
    return _svcca_null(Ux, Uy, permutations(Xt.shape[0], n_shuffles, seed), batch_size)


def _square(v: torch.Tensor, n: int) -> torch.Tensor:
    """(n, n) symmetric matrix holding the condensed vector ``v`` (m,) off the diagonal, 0 on it."""
    i, j = (torch.from_numpy(t) for t in np.triu_indices(n, 1))   # condensed order
    M = torch.zeros(n, n, dtype=F64)
    M[i, j] = v
    M[j, i] = v
    return M


def _rsa_null(rx: torch.Tensor, ry: torch.Tensor, perms: np.ndarray) -> np.ndarray:
    """RSA ``(N,)`` of centred rank vectors ``(m,)``, Y's items permuted by ``perms`` ``(N, n)``.

    With both rank vectors laid out as symmetric (n, n) matrices, a re-pairing ``p`` gives
    ``sum_{i<j} rx[i, j] ry[p_i, p_j] = <RX, RY[p][:, p]> / 2``: two contiguous row/column gathers
    and one dot product per shuffle.
    """
    n = perms.shape[1]
    RX, RY = _square(rx, n).view(-1), _square(ry, n)
    scale = 2 * rx.norm() * ry.norm()                               # permutation invariant
    out = torch.empty(len(perms), dtype=F64)
    for s, p in enumerate(torch.from_numpy(perms)):
        out[s] = torch.dot(RY.index_select(0, p).index_select(1, p).view(-1), RX) / scale
    return out.numpy()


def rsa_null(X: ArrayLike, Y: ArrayLike, n_shuffles: int, seed: int) -> np.ndarray:
    """RSA values ``(n_shuffles,)`` of ``X`` against row-permuted ``Y``.

    Distances and ranks are computed once; permuting the items of ``Y`` permutes its
    dissimilarity matrix, so each shuffle is a gather plus a dot product.
    """
    Xt, Yt = _check_pair(X, Y)
    rx, ry = _centred_ranks(Xt.numpy(), "X"), _centred_ranks(Yt.numpy(), "Y")
    return _rsa_null(rx, ry, permutations(Xt.shape[0], n_shuffles, seed))


def _batch(batch_size: int | None, per_shuffle: int) -> int:
    """Shuffles per batch: ``batch_size`` or about 4M intermediate entries."""
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 or None, got {batch_size}")
    return batch_size or max(1, 2**22 // max(1, per_shuffle))


def _centred_factor(Xt: torch.Tensor, name: str, metric: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``A = U S`` ``(n, m)`` and ``s`` ``(m,)`` from the thin SVD ``Xc = U S V^T``, ``m = min(n, d)``.

    For any ``B`` ``(n, e)``, ``Xc^T B = V (A^T B)`` with orthonormal ``V``, so the
    singular values (hence Frobenius and nuclear norms) of ``Xc^T B`` and ``A^T B``
    agree; ``A A^T = Xc Xc^T``.
    """
    if Xt.numel() == 0 or bool((Xt == Xt[:1]).all()):
        raise ValueError(f"{name} has zero variance (all rows identical or empty); "
                         f"{metric} is undefined")
    Xc = Xt - Xt.mean(dim=0, keepdim=True)
    U, s, _ = torch.linalg.svd(Xc, full_matrices=False)
    return U * s, s


def _identity(n: int) -> np.ndarray:
    """The identity re-pairing ``(1, n)``: the observed score via the null code path."""
    return np.arange(n, dtype=np.int64)[None]


# ----------------------------------------------------------------------------- linear CKA

#: Cost of one gathered ``(n, n)`` Gram entry in units of one matmul multiply-add (CPU,
#: measured: the Gram route is a memory-bound gather, the cross route a BLAS matmul).
_GATHER_COST = 128
#: Largest ``n * n`` for which the automatic choice may build the two ``(n, n)`` Gram matrices.
_GRAM_MAX_ENTRIES = 2**24


def _cka_route(n: int, r_x: int, r_y: int) -> str:
    """The cheaper CKA null route: ``"gram"`` (``n^2`` gathers per shuffle, each weighted
    :data:`_GATHER_COST`) when that beats ``"cross"`` (``n r_x r_y`` multiply-adds) and the
    Gram matrices stay within :data:`_GRAM_MAX_ENTRIES` entries, else ``"cross"``."""
    cheaper = _GATHER_COST * n * n < n * r_x * r_y
    return "gram" if cheaper and n * n <= _GRAM_MAX_ENTRIES else "cross"


def _cka_null(A: torch.Tensor, sx: torch.Tensor, B: torch.Tensor, sy: torch.Tensor,
              perms: np.ndarray, batch_size: int | None, route: str = "auto") -> np.ndarray:
    """Linear CKA ``(N,)`` of factors ``A`` ``(n, r_x)``, ``B`` ``(n, r_y)``, rows of ``B`` permuted.

    The denominator ``||S_x^2||_F ||S_y^2||_F`` is permutation invariant. The numerator
    ``||Xc^T Yc[p]||_F^2`` is computed either as ``||A^T B[p]||_F^2`` ("cross",
    ``n r_x r_y`` multiply-adds per shuffle) or as ``<K, L[p][:, p]>`` with the centred
    Gram matrices ``K = A A^T``, ``L = B B^T`` ("gram", ``n^2`` per shuffle).
    """
    n, rx, ry = A.shape[0], A.shape[1], B.shape[1]
    if route == "auto":
        route = _cka_route(n, rx, ry)
    if route not in ("cross", "gram"):
        raise ValueError(f"route must be 'auto', 'cross' or 'gram', got {route!r}")
    denom = sx.square().norm() * sy.square().norm()
    P, out = torch.from_numpy(perms), torch.empty(len(perms), dtype=F64)
    if route == "gram":
        K, L = A @ A.T, B @ B.T                                      # (n, n) each
        b = _batch(batch_size, n * n)
        for start in range(0, len(P), b):
            p = P[start:start + b]                                   # (b, n)
            Lp = L[p[:, :, None], p[:, None, :]]                     # (b, n, n)
            out[start:start + len(p)] = (Lp * K).sum((1, 2)) / denom
    else:
        b = _batch(batch_size, n * ry + rx * ry)
        for start in range(0, len(P), b):
            p = P[start:start + b]
            M = A.T @ B[p]                                           # (b, r_x, r_y)
            out[start:start + len(p)] = M.square().sum((1, 2)) / denom
    return out.numpy()


def linear_cka(X: ArrayLike, Y: ArrayLike) -> float:
    """Linear CKA of ``X`` ``(n, d_x)`` and ``Y`` ``(n, d_y)`` in [0, 1]; see the module notes."""
    Xt, Yt = _check_pair(X, Y)
    (A, sx), (B, sy) = _centred_factor(Xt, "X", "CKA"), _centred_factor(Yt, "Y", "CKA")
    return float(_cka_null(A, sx, B, sy, _identity(Xt.shape[0]), None)[0])


def cka_null(X: ArrayLike, Y: ArrayLike, n_shuffles: int, seed: int,
             batch_size: int | None = None, route: str = "auto") -> np.ndarray:
    """Linear CKA values ``(n_shuffles,)`` of ``X`` against row-permuted ``Y``.

    Centring, the SVD of each side and the denominator are computed once. Per shuffle
    only ``||Xc^T Yc[perm]||_F^2`` is needed; ``route="auto"`` picks the cheaper of
    the cross-product route (``||A^T B[perm]||_F^2`` with the ``(n, r)`` factors,
    ``r = min(n, d)``: ``n r_x r_y`` multiply-adds per shuffle) and the Gram route
    (``<K, L[perm][:, perm]>`` with ``(n, n)`` centred Gram matrices: ``n^2`` gathered
    entries, each costing about ``_GATHER_COST = 128`` multiply-adds on CPU), i.e. the
    Gram route when ``r_x r_y > 128 n`` (few pairs in wide spaces) and ``n <= 4096``
    (memory); ``"cross"`` / ``"gram"`` force one. Both agree up to rounding.
    ``batch_size=None`` picks about 4M intermediate entries per batch.
    """
    Xt, Yt = _check_pair(X, Y)
    (A, sx), (B, sy) = _centred_factor(Xt, "X", "CKA"), _centred_factor(Yt, "Y", "CKA")
    return _cka_null(A, sx, B, sy, permutations(Xt.shape[0], n_shuffles, seed), batch_size, route)


# ----------------------------------------------------------------------------- mutual k-NN

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
        raise ValueError(f"row {int(zero[0])} of {name} is zero, so its cosine similarity is "
                         f"undefined (zero rows: {zero[:10].tolist()})")
    Z = Xt / norms[:, None]
    chunk = chunk or max(1, 2**22 // n)
    out = torch.empty((n, k), dtype=torch.int64)
    for start in range(0, n, chunk):
        rows = torch.arange(start, min(start + chunk, n))
        S = Z[rows] @ Z.T                                            # (c, n)
        S[torch.arange(len(rows)), rows] = -torch.inf                # exclude self
        kth = S.topk(k, dim=1).values[:, -1:]                        # (c, 1) k-th largest
        above = S > kth
        tied = S == kth
        need = k - above.sum(1, keepdim=True)                        # tied slots to fill
        member = above | (tied & (tied.cumsum(1) <= need))           # lowest tied indices
        out[start:start + len(rows)] = torch.nonzero(member)[:, 1].view(len(rows), k)
    return out


def _mutual_knn_null(knn_x: torch.Tensor, knn_y: torch.Tensor, perms: np.ndarray,
                     batch_size: int | None, dense: bool | None = None) -> np.ndarray:
    """Mutual k-NN ``(N,)`` of k-NN sets ``(n, k)``, Y's items re-paired by ``perms`` ``(N, n)``.

    With ``Y' = Y[p]``, ``N_Y'(i) = p^{-1}[N_Y(p[i])]``, so ``j in N_X(i)`` is shared iff
    ``p[j] in N_Y(p[i])``: a lookup of ``(p[i], p[j])`` in Y's membership relation,
    either a dense ``(n, n)`` boolean matrix or (``n^2 > KNN_DENSE_MAX``) a binary
    search in the sorted flat keys ``a * n + b``.
    """
    n, k = knn_x.shape
    dense = n * n <= KNN_DENSE_MAX if dense is None else dense
    keys = (torch.arange(n)[:, None] * n + knn_y).flatten()         # sorted: rows, then columns
    if dense:
        member = torch.zeros(n * n, dtype=torch.bool)
        member[keys] = True
    P, out = torch.from_numpy(perms), torch.empty(len(perms), dtype=F64)
    b = _batch(batch_size, n * k)
    for start in range(0, len(P), b):
        p = P[start:start + b]                                       # (b, n)
        q = (p[:, :, None] * n + p[:, knn_x]).flatten(1)             # (b, n k) keys (p[i], p[j])
        if dense:
            hits = member[q]
        else:
            pos = torch.searchsorted(keys, q).clamp_(max=keys.numel() - 1)
            hits = keys[pos] == q
        out[start:start + len(p)] = hits.sum(1, dtype=F64) / (n * k)
    return out.numpy()


def mutual_knn(X: ArrayLike, Y: ArrayLike, k: int = 10) -> float:
    """Mutual k-NN alignment of ``X`` ``(n, d_x)`` and ``Y`` ``(n, d_y)`` in [0, 1].

    ``mean_i |N_X(i) & N_Y(i)| / k`` with cosine k-NN sets excluding ``i``; see the
    module notes. Requires ``1 <= k <= n - 1``.
    """
    Xt, Yt = _check_pair(X, Y)
    k = _check_k(k, Xt.shape[0])
    knn_x, knn_y = _knn_sets(Xt, k, "X"), _knn_sets(Yt, k, "Y")
    return float(_mutual_knn_null(knn_x, knn_y, _identity(Xt.shape[0]), None)[0])


def mutual_knn_null(X: ArrayLike, Y: ArrayLike, n_shuffles: int, seed: int, k: int = 10,
                    batch_size: int | None = None) -> np.ndarray:
    """Mutual k-NN values ``(n_shuffles,)`` of ``X`` against row-permuted ``Y``.

    The k-NN sets are computed once per side; a shuffle relabels Y's sets, so each
    one costs ``n k`` index lookups. Exactly equal to ``mutual_knn(X, Y[perm], k)``
    unless ``Y`` has ties at a ``k``-th neighbour (the tie is then broken by the
    original labels rather than the permuted ones).
    """
    Xt, Yt = _check_pair(X, Y)
    k = _check_k(k, Xt.shape[0])
    knn_x, knn_y = _knn_sets(Xt, k, "X"), _knn_sets(Yt, k, "Y")
    return _mutual_knn_null(knn_x, knn_y, permutations(Xt.shape[0], n_shuffles, seed), batch_size)


# ----------------------------------------------------------------------------- Procrustes

def _unit_factor(Xt: torch.Tensor, name: str) -> torch.Tensor:
    """Centred factor ``A`` ``(n, min(n, d))`` scaled to unit Frobenius norm."""
    A, s = _centred_factor(Xt, name, "Procrustes")
    return A / s.norm()


def _procrustes_null(A: torch.Tensor, B: torch.Tensor, perms: np.ndarray,
                     batch_size: int | None) -> np.ndarray:
    """Nuclear norms ``(N,)`` of ``A^T B[p]`` ``(r_x, r_y)`` (unit factors), clipped to <= 1."""
    n, rx, ry = A.shape[0], A.shape[1], B.shape[1]
    P, out = torch.from_numpy(perms), torch.empty(len(perms), dtype=F64)
    b = _batch(batch_size, n * ry + rx * ry)
    for start in range(0, len(P), b):
        p = P[start:start + b]
        out[start:start + len(p)] = torch.linalg.svdvals(A.T @ B[p]).sum(-1)
    return out.clamp_(max=1.0).numpy()


def procrustes_similarity(X: ArrayLike, Y: ArrayLike) -> float:
    """Procrustes similarity ``||Xc^T Yc||_*`` in [0, 1] of unit-norm centred ``X``, ``Y``.

    ``X`` is ``(n, d_x)``, ``Y`` ``(n, d_y)``; 1 iff ``Yc`` is an isometric image of ``Xc``
    up to scale. ``arccos`` of it is the angular Procrustes distance.
    """
    Xt, Yt = _check_pair(X, Y)
    A, B = _unit_factor(Xt, "X"), _unit_factor(Yt, "Y")
    return float(_procrustes_null(A, B, _identity(Xt.shape[0]), None)[0])


def procrustes_distance(X: ArrayLike, Y: ArrayLike) -> float:
    """Procrustes size-and-shape distance ``sqrt(max(0, 2 - 2 s))`` in [0, sqrt(2)].

    ``s`` is :func:`procrustes_similarity`; equals ``min_Q ||Xc - Yc Q||_F`` over
    orthogonal ``Q`` after centring, unit Frobenius scaling and zero padding.
    """
    return float(np.sqrt(max(0.0, 2.0 - 2.0 * procrustes_similarity(X, Y))))


def procrustes_null(X: ArrayLike, Y: ArrayLike, n_shuffles: int, seed: int,
                    batch_size: int | None = None) -> np.ndarray:
    """Procrustes similarities ``(n_shuffles,)`` of ``X`` against row-permuted ``Y``.

    Centring, scaling and the SVD reduction are done once; each shuffle is a batched
    ``svdvals(A^T B[perm]).sum()`` of ``(min(n, d_x), min(n, d_y))`` matrices.
    """
    Xt, Yt = _check_pair(X, Y)
    A, B = _unit_factor(Xt, "X"), _unit_factor(Yt, "Y")
    return _procrustes_null(A, B, permutations(Xt.shape[0], n_shuffles, seed), batch_size)


def p_value(observed: float, null: np.ndarray) -> float:
    """One-sided permutation p-value ``(1 + #(null >= observed)) / (1 + len(null))``."""
    null = np.asarray(null, dtype=np.float64).ravel()
    return float((1 + np.count_nonzero(null >= observed)) / (1 + null.size))


def _summary(observed: float, null: np.ndarray) -> dict[str, float]:
    """Observed score, null mean / population std ``(N,)`` and p-value as Python floats."""
    return {"score": float(observed), "null_mean": float(null.mean()),
            "null_std": float(null.std()), "p": p_value(observed, null)}


#: Metrics of :func:`compare_with_nulls`, in summary order.
METRICS: tuple[str, ...] = ("svcca", "rsa", "cka", "mutual_knn", "procrustes")


def compare_with_nulls(X: ArrayLike, Y: ArrayLike, n_shuffles: int = 1000, seed: int = 0,
                       variance: float = 0.99, metrics: Sequence[str] = METRICS,
                       knn_k: int = 10) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Similarity metrics of ``X`` ``(n, d_x)`` vs ``Y`` ``(n, d_y)`` with re-pairing nulls.

    ``metrics`` is any subset of :data:`METRICS` (default: all five). Every null uses
    the same ``permutations(n, n_shuffles, seed)``, and every observed score is
    computed by the same code as its null (with the identity pairing). For
    ``mutual_knn`` the neighbourhood size is ``min(knn_k, n - 1)``, reported as ``k``
    (with ``k = n - 1`` every score, observed or null, is 1 and ``p = 1``).

    Returns ``(summary, nulls)``: the JSON-serialisable summary of :func:`compare`
    and ``{metric: (n_shuffles,)}`` null arrays. The ``svcca`` and ``rsa`` entries
    are exactly those of the SVCCA/RSA-only version of this function.
    """
    Xt, Yt = _check_pair(X, Y)
    if n_shuffles < 1:
        raise ValueError(f"n_shuffles must be >= 1, got {n_shuffles}")
    if isinstance(metrics, str):
        metrics = (metrics,)
    metrics = tuple(dict.fromkeys(metrics))
    unknown = [m for m in metrics if m not in METRICS]
    if unknown or not metrics:
        raise ValueError(f"metrics must be a non-empty subset of {METRICS}, got {metrics!r}")
    if isinstance(knn_k, bool) or not isinstance(knn_k, (int, np.integer)) or knn_k < 1:
        raise ValueError(f"knn_k must be a positive integer, got {knn_k!r}")
    n = Xt.shape[0]
    perms, ident = permutations(n, n_shuffles, seed), _identity(n)
    summary: dict[str, Any] = {"n": int(n)}
    nulls: dict[str, np.ndarray] = {}
    for metric in metrics:
        extra: dict[str, int] = {}
        if metric == "svcca":
            (Ux, kx), (Uy, ky) = _pca_basis(Xt, variance, "X"), _pca_basis(Yt, variance, "Y")
            nulls[metric] = _svcca_null(Ux, Uy, perms, 256)
            observed, extra = float(_cancorr(Ux, Uy).mean()), {"k_x": kx, "k_y": ky}
        elif metric == "rsa":
            rx, ry = _centred_ranks(Xt.numpy(), "X"), _centred_ranks(Yt.numpy(), "Y")
            nulls[metric] = _rsa_null(rx, ry, perms)
            observed = _pearson(rx, ry)
        elif metric == "cka":
            (A, sx), (B, sy) = _centred_factor(Xt, "X", "CKA"), _centred_factor(Yt, "Y", "CKA")
            nulls[metric] = _cka_null(A, sx, B, sy, perms, None)
            observed = float(_cka_null(A, sx, B, sy, ident, None)[0])
        elif metric == "mutual_knn":
            k = min(int(knn_k), n - 1)
            knn_x, knn_y = _knn_sets(Xt, k, "X"), _knn_sets(Yt, k, "Y")
            nulls[metric] = _mutual_knn_null(knn_x, knn_y, perms, None)
            observed, extra = float(_mutual_knn_null(knn_x, knn_y, ident, None)[0]), {"k": k}
        else:  # procrustes
            A, B = _unit_factor(Xt, "X"), _unit_factor(Yt, "Y")
            nulls[metric] = _procrustes_null(A, B, perms, None)
            observed = float(_procrustes_null(A, B, ident, None)[0])
        summary[metric] = {**_summary(observed, nulls[metric]), **extra}
    return summary, nulls


def compare(X: ArrayLike, Y: ArrayLike, n_shuffles: int = 1000, seed: int = 0,
            variance: float = 0.99, metrics: Sequence[str] = METRICS,
            knn_k: int = 10) -> dict[str, Any]:
    """JSON-serialisable summary of :func:`compare_with_nulls` (null arrays left out).

    ``{"n", "svcca": {score, null_mean, null_std, p, k_x, k_y},
    "rsa" | "cka" | "procrustes": {score, null_mean, null_std, p},
    "mutual_knn": {score, null_mean, null_std, p, k}}``, one entry per requested metric.
    """
    return compare_with_nulls(X, Y, n_shuffles, seed, variance, metrics, knn_k)[0]


def random_subset_null(X_all: ArrayLike, Y_all: ArrayLike, n: int, n_samples: int, seed: int,
                       variance: float = 0.99) -> dict[str, np.ndarray]:
    """SVCCA scores and RSA ``(n_samples,)`` of random same-size sets of real pairs.

    Each sample draws ``n`` distinct rows (``default_rng(seed).choice``, without
    replacement) shared by ``X_all`` ``(N, d_x)`` and ``Y_all`` ``(N, d_y)``.
    """
    Xt, Yt = _check_pair(X_all, Y_all)
    if not 3 <= n <= Xt.shape[0]:
        raise ValueError(f"n must be in [3, {Xt.shape[0]}], got {n}")
    rng = np.random.default_rng(seed)
    out = {"svcca": np.empty(n_samples), "rsa": np.empty(n_samples)}
    for s in tqdm(range(n_samples), desc="random subsets", disable=n_samples < 50,
                  position=0, leave=False):
        idx = torch.from_numpy(np.sort(rng.choice(Xt.shape[0], size=n, replace=False)))
        out["svcca"][s] = svcca(Xt[idx], Yt[idx], variance).score
        out["rsa"][s] = rsa(Xt[idx], Yt[idx])
    return out
