"""Compare the geometry of paired feature decoder vectors of two models.

Metrics (:data:`METRICS`): SVCCA, held-out CCA, RSA, linear CKA, debiased linear CKA, mutual
k-nearest-neighbour alignment and Procrustes.

Conventions
-----------
* ``X`` is ``(n, d_x)`` and ``Y`` is ``(n, d_y)``: row ``i`` of ``X`` and row ``i``
  of ``Y`` are a matched pair (e.g. decoder vectors of matched features). The
  widths may differ; ``n`` must agree. The single-metric functions need ``n >= 3``
  (debiased CKA 4, held-out CCA 8); :func:`compare_with_nulls` and :func:`scores` take
  any ``n`` and report a metric that is degenerate at that ``n`` as not scorable.
* Inputs may be numpy arrays or torch tensors (any dtype or device). Everything is
  computed on the CPU in float64; results are Python floats or numpy arrays.
* SVCCA: columns are centred, each side is truncated to the fewest principal
  components whose cumulative explained-variance *fraction* reaches ``variance``,
  and the score is the plain mean of the canonical correlations between the two
  truncated subspaces.
* RSA: the dissimilarity of items ``i < j`` is ``1 - pearson(row_i, row_j)``
  (``scipy.spatial.distance.pdist(X, "correlation")``, condensed order, rounded to
  12 decimals so that exact ties stay ties); the two condensed vectors are compared
  with Spearman's rho (ties get average ranks).
* Nulls re-pair the data by permuting the rows of ``Y`` relative to ``X``. The
  permutations come from :func:`permutations`, so the same seed gives the same
  re-pairings for every metric (held-out CCA re-pairs its test halves only, with
  ``permutations(n_test, n_shuffles, seed)``, and combines per-split p-values; see
  below). p-values are ``(1 + #(null >= observed - tol)) / (1 + N)`` with
  ``tol = 1e-9 * max(1, |observed|)``: null values equal to the observed score up to
  rounding count as ties, so a degenerate metric whose every re-pairing reproduces the
  observed score gets ``p = 1`` (with an exact ``>=``, rounding alone could give any p).
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
  of either side. Undefined (ValueError) when a side has zero variance. Its chance
  level is not 0 and grows as ``n`` shrinks relative to the widths.
* Debiased linear CKA (Kornblith et al. 2019, with the unbiased HSIC estimator of
  Song et al. 2012): with ``K~``, ``L~`` the Gram matrices ``K``, ``L`` with zeroed diagonals,
  ``HSIC_1(K, L) = [tr(K~ L~) + (1^T K~ 1)(1^T L~ 1) / ((n-1)(n-2)) - 2/(n-2) 1^T K~ L~ 1]
  / (n (n-3))`` and the score is ``HSIC_1(K, L) / sqrt(HSIC_1(K, K) HSIC_1(L, L))``.
  ``HSIC_1`` is an inner product of U-centred Gram matrices (Szekely & Rizzo 2014), so
  the score lies in [-1, 1]; it is about 0 for unrelated data at any ``n`` (it can be
  negative) and needs ``n >= 4``. ``HSIC_1`` is exactly invariant to translating the rows
  of either side (a shift adds ``f_i + f_j + c`` to the off-diagonal of ``K``, which U-centring
  removes), so it is computed from the *centred* data, as in Kornblith et al.'s
  feature-space code: then ``K 1 = 0``, ``K~ 1 = -diag(K)``, ``1^T K~ 1 = -tr K`` and
  ``n (n-3) HSIC_1(K, L) = <K, L> - n/(n-2) diag(K).diag(L) + tr K tr L / ((n-1)(n-2))``.
  ``HSIC_1`` equals ``repsim.hsic(..., kernel_type="linear", estimator="song")``;
  ``repsim.cka(..., estimator="song")`` is a different quantity (it divides by the
  *biased* self-HSICs, so it is not 1 for identical inputs).
* Held-out CCA (cross-validated SVCCA): split ``s`` of ``n_splits`` takes row ``s`` of
  ``permutations(n, n_splits, seed)``; its first ``n_train = n // 2`` entries are the
  train pairs, the other ``n_test = n - n_train`` the test pairs. On the train pairs each
  side is centred with its train mean and truncated by the SVCCA variance rule, capped at
  ``(n_train - 1) // 2`` components; CCA between the two truncated train subspaces gives
  ``min(k_x, k_y)`` pairs of canonical directions ``a_i``, ``b_i`` in feature space; the test
  rows, centred with the train means, are projected on them, and the split's score is the
  mean over components of the Pearson correlations of the paired test projections (0 for
  a projection that is constant on the test rows). The score is the mean over splits, in
  [-1, 1]. In-sample canonical correlations approach 1 for unrelated data once ``k_x + k_y``
  nears ``n``; held-out ones stay about 0. The cap: generic subspaces of dimensions ``k_x``,
  ``k_y`` of the ``(n_train - 1)``-dimensional space of centred train vectors share
  ``max(0, k_x + k_y - n_train + 1)`` dimensions, whose canonical correlations are 1 whatever
  the data and whose canonical directions are arbitrary (set by rounding); with both at
  most ``(n_train - 1) // 2`` CCA is generically non-degenerate. Train components with power
  at most ``1e-10`` times the side's total power (over all ``n`` pairs) are numerical zeros and
  never kept; a split whose train half is constant on a side keeps no component and is
  skipped (``splits_scored`` counts the others). Only Gram products of the rows enter, so
  each side is replaced by its centred factor ``U S`` (an isometric image of the centred
  rows). Null: each split keeps its fitted directions and only its test rows of ``Y`` are
  re-paired, by row ``j`` of ``permutations(n_test, n_shuffles, seed)`` for shuffle ``j`` (all
  splits): per split an exact permutation test given its train half. The reported null is
  the mean over splits (the chance level), but the p-value is ``min(1, 2 mean_s p_s)`` of the
  per-split p-values (:func:`heldout_p_value`): overlapping splits give positively
  correlated scores, so the mean's null is too narrow, and p read off it rejected unrelated
  data 3.5 times too often at the 5 % level (simulated, ``n = 60`` to ``100``).
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

Not scorable
------------
A metric with too few pairs for its value to mean anything is reported by
:func:`compare_with_nulls` as not scorable (no score, no p-value, a one-line reason from
:func:`not_scorable`) and by :func:`scores` as NaN. One rule per metric:

* SVCCA: ``n < 3`` or ``max(k_x, k_y) > n / 2``: the canonical correlations of unrelated
  subspaces grow with ``k / n`` and reach 1 at ``k_x + k_y >= n - 1``, so the chance level
  saturates.
* Held-out CCA: ``n < 8`` (train and test halves of at least 4 pairs), or no split scored.
* RSA: ``n < 4``. Linear CKA and Procrustes: ``n < 3``.
* Debiased CKA: ``n < 4``, or a side's ``HSIC_1`` with itself is 0 (its U-centred Gram matrix
  vanishes, e.g. when all rows but one are identical, as many-to-one pairs can make them).
* Mutual k-NN: ``k >= (n - 1) / 2`` with ``k = knn_k`` (the chance level ``k / (n - 1)`` is at
  least 1/2; ``k`` is not shrunk to ``n - 1``, where every score is 1).

Null computations reuse everything that does not depend on the pairing: the centred
SVD of each side (both CKAs, Procrustes, held-out CCA), the k-NN sets (mutual k-NN), the
truncated bases (SVCCA) and the distance ranks (RSA). For CKA and Procrustes each side is
replaced by ``A = U S`` (``(n, min(n, d))``, from ``Xc = U S V^T``): ``Xc^T Yc[p]`` and
``A^T B[p]`` differ only by orthonormal factors, so their Frobenius and nuclear
norms agree and each shuffle works with ``min(n, d)`` columns. The CKA null then uses
the cheaper of ``||A^T B[p]||_F^2`` and the centred-Gram form ``<K, L[p][:, p]>`` (see
:func:`cka_null`), which the debiased CKA null shares (only ``<K, L[p][:, p]>`` and
``diag(K).diag(L)[p]`` change with the pairing); the mutual k-NN null relabels Y's fixed
neighbour sets (see :func:`mutual_knn_null`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence, Union

import numpy as np
import torch
from scipy.spatial.distance import squareform
from scipy.stats import rankdata
from tqdm import tqdm

ArrayLike = Union[np.ndarray, torch.Tensor]
F64 = torch.float64

#: Metrics of :func:`compare_with_nulls` and :func:`scores`, in summary order.
METRICS: tuple[str, ...] = ("svcca", "svcca_heldout", "rsa", "cka", "cka_debiased", "mutual_knn",
                            "procrustes")
#: Display names of :data:`METRICS`.
METRIC_NAMES: dict[str, str] = {"svcca": "SVCCA", "svcca_heldout": "held-out CCA", "rsa": "RSA",
                                "cka": "linear CKA", "cka_debiased": "debiased CKA",
                                "mutual_knn": "mutual k-NN", "procrustes": "Procrustes similarity"}


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


def _check_pair(X: ArrayLike, Y: ArrayLike, min_n: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate a matched pair: ``X`` ``(n, d_x)``, ``Y`` ``(n, d_y)`` with ``n >= min_n``."""
    Xt, Yt = _to_tensor(X, "X"), _to_tensor(Y, "Y")
    if Xt.shape[0] != Yt.shape[0]:
        raise ValueError("X and Y must have the same number of rows (matched pairs), "
                         f"got X {tuple(Xt.shape)} and Y {tuple(Yt.shape)}")
    if Xt.shape[0] < min_n:
        raise ValueError(f"need at least {min_n} pairs, got n={Xt.shape[0]}")
    return Xt, Yt


def _check_variance(variance: float) -> None:
    if not 0.0 < variance <= 1.0:
        raise ValueError(f"variance must be in (0, 1], got {variance}")


def _centred_svd(Xt: torch.Tensor, name: str, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``U`` ``(n, m)`` and ``s`` ``(m,)`` (descending) of the thin SVD of the column-centred
    ``Xt``, ``m = min(n, d)``.

    Computed from the eigendecomposition of the smaller of ``Xc Xc^T`` and ``Xc^T Xc``
    (about twice as fast as ``torch.linalg.svd`` for ``n ~ d``). Powers ``s_i^2`` at most
    ``max(n, d) * eps * s_1^2`` are rounding noise and set to 0; when ``n > d`` their columns
    of ``U`` are 0 (no metric keeps a component of zero power).
    """
    if Xt.numel() == 0 or bool((Xt == Xt[:1]).all()):
        raise ValueError(f"{name} has zero variance (all rows identical or empty); "
                         f"{what} is undefined")
    Xc = Xt - Xt.mean(dim=0, keepdim=True)
    n, d = Xc.shape
    power, E = torch.linalg.eigh(Xc @ Xc.T if n <= d else Xc.T @ Xc)
    power, E = power.flip(0), E.flip(1)
    s = torch.where(power > max(n, d) * torch.finfo(F64).eps * power[0], power, 0.0).sqrt()
    return (E, s) if n <= d else (torch.where(s > 0, Xc @ E / s, 0.0), s)


def _n_components(power: torch.Tensor, variance: float) -> int:
    """Fewest leading components whose cumulative fraction of ``power`` (descending, ``>= 0``)
    reaches ``variance``; components of zero power are never counted."""
    fraction = torch.cumsum(power, 0) / power.sum()
    return min(int((fraction < variance).sum()) + 1, int((power > 0).sum()))


def _truncate(U: torch.Tensor, s: torch.Tensor, variance: float) -> tuple[torch.Tensor, int]:
    """The leading ``k`` columns ``(n, k)`` of ``U`` by the variance rule on ``s^2``, and ``k``."""
    k = _n_components(s.square(), variance)
    return U[:, :k], k


def _pca_basis(Xt: torch.Tensor, variance: float, name: str = "X") -> tuple[torch.Tensor, int]:
    """Orthonormal basis ``(n, k)`` of the top-``k`` centred principal components."""
    _check_variance(variance)
    return _truncate(*_centred_svd(Xt, name, "PCA truncation"), variance)


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
        raise ValueError(f"row {int(constant[0])} of {name} has zero variance, so its "
                         f"correlation distance is undefined (zero-variance rows: "
                         f"{constant[:10].tolist()})")
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


def _rsa_null(rx: torch.Tensor, ry: torch.Tensor, perms: np.ndarray) -> np.ndarray:
    """RSA ``(N,)`` of centred rank vectors ``(m,)``, Y's items permuted by ``perms`` ``(N, n)``.

    A re-pairing ``p`` gives ``sum_{i<j} rx[i, j] ry[p_i, p_j]`` over the upper triangle
    (:func:`featlib.null_kernels.rsa_null_sums`: compiled, one shuffle per thread). The ranks are
    doubled, ``2 (rank - mean)``: integers (average ranks of ties are halves), so float32 holds them
    exactly while they stay below 2^24 (n <= 5,793 items; float64 beyond), which halves the memory
    the gathers read; every product and sum is float64.
    """
    from . import null_kernels

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
    U, s = _centred_svd(Xt, name, metric)
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


def _gram_inner(A: torch.Tensor, B: torch.Tensor, perms: np.ndarray, batch_size: int | None,
                route: str = "auto") -> torch.Tensor:
    """``<K, L[p][:, p]> = ||A^T B[p]||_F^2`` ``(N,)`` of factors ``A`` ``(n, r_x)``, ``B`` ``(n, r_y)``.

    ``K = A A^T`` and ``L = B B^T``; one value per row ``p`` of ``perms`` ``(N, n)``, computed
    either as ``||A^T B[p]||_F^2`` ("cross", ``n r_x r_y`` multiply-adds per shuffle) or as
    ``<K, L[p][:, p]>`` ("gram", ``n^2`` gathered entries per shuffle).
    """
    n, rx, ry = A.shape[0], A.shape[1], B.shape[1]
    if route == "auto":
        route = _cka_route(n, rx, ry)
    if route not in ("cross", "gram"):
        raise ValueError(f"route must be 'auto', 'cross' or 'gram', got {route!r}")
    P, out = torch.from_numpy(perms), torch.empty(len(perms), dtype=F64)
    if route == "gram":
        K, L = A @ A.T, B @ B.T                                      # (n, n) each
        b = _batch(batch_size, n * n)
        for start in range(0, len(P), b):
            p = P[start:start + b]                                   # (b, n)
            Lp = L[p[:, :, None], p[:, None, :]]                     # (b, n, n)
            out[start:start + len(p)] = (Lp * K).sum((1, 2))
    else:
        b = _batch(batch_size, n * ry + rx * ry)
        for start in range(0, len(P), b):
            p = P[start:start + b]
            out[start:start + len(p)] = (A.T @ B[p]).square().sum((1, 2))   # (b, r_x, r_y)
    return out


def _cka_null(A: torch.Tensor, sx: torch.Tensor, B: torch.Tensor, sy: torch.Tensor,
              perms: np.ndarray, batch_size: int | None, route: str = "auto",
              inner: torch.Tensor | None = None) -> np.ndarray:
    """Linear CKA ``(N,)`` of factors ``A`` ``(n, r_x)``, ``B`` ``(n, r_y)``, rows of ``B`` permuted.

    The denominator ``||S_x^2||_F ||S_y^2||_F`` is permutation invariant; the numerator is
    :func:`_gram_inner` (passed as ``inner`` when already computed).
    """
    inner = _gram_inner(A, B, perms, batch_size, route) if inner is None else inner
    return (inner / (sx.square().norm() * sy.square().norm())).numpy()


def linear_cka(X: ArrayLike, Y: ArrayLike) -> float:
    """Linear CKA of ``X`` ``(n, d_x)`` and ``Y`` ``(n, d_y)`` in [0, 1]; see the module notes."""
    Xt, Yt = _check_pair(X, Y)
    (A, sx), (B, sy) = _centred_factor(Xt, "X", "CKA"), _centred_factor(Yt, "Y", "CKA")
    return float(_cka_null(A, sx, B, sy, _identity(Xt.shape[0]), None, "cross")[0])


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


# ----------------------------------------------------------------------------- debiased CKA

#: ``HSIC_1(K, K)`` at most this fraction of ``||K||_F^2 / (n (n - 3))`` is 0 up to rounding.
_HSIC_TOL = 1e-12


def _hsic_terms(A: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``diag(K)`` ``(n,)``, ``tr K`` and ``n (n - 3) HSIC_1(K, K)`` of a centred factor ``A`` ``(n, r)``
    with singular values ``s`` (``K = A A^T``); the last is 0 when at most :data:`_HSIC_TOL`
    ``||K||_F^2`` (the U-centred ``K`` vanishes: all off-diagonal centred Gram entries are
    ``f_i + f_j + c``, e.g. orthonormal rows, or all rows but one identical)."""
    n = A.shape[0]
    k, tr, kk = A.square().sum(1), s.square().sum(), s.square().square().sum()   # kk = ||K||_F^2
    h = kk - n / (n - 2) * k @ k + tr**2 / ((n - 1) * (n - 2))
    return k, tr, torch.where(h > _HSIC_TOL * kk, h, 0.0)


def _debiased_cka_null(A: torch.Tensor, sx: torch.Tensor, B: torch.Tensor, sy: torch.Tensor,
                       perms: np.ndarray, batch_size: int | None, route: str = "auto",
                       inner: torch.Tensor | None = None) -> np.ndarray:
    """Debiased CKA ``(N,)`` of centred factors ``A`` ``(n, r_x)``, ``B`` ``(n, r_y)``, ``B`` permuted.

    With ``k = diag(K)``, ``l = diag(L)`` (:func:`_hsic_terms`):
    ``n (n - 3) HSIC_1(K, L[p][:, p]) = <K, L[p][:, p]> - n/(n-2) k.l[p] + tr K tr L / ((n-1)(n-2))``.
    Only the first two terms depend on ``p``: :func:`_gram_inner` (shared with linear CKA,
    passed as ``inner`` when already computed) and a gather. Raises ValueError when a
    side's ``HSIC_1`` with itself is 0 up to rounding.
    """
    n = A.shape[0]
    (k, trk, hx), (l, trl, hy) = _hsic_terms(A, sx), _hsic_terms(B, sy)
    if not (hx > 0 and hy > 0):
        raise ValueError("the unbiased HSIC of a side with itself is 0 up to rounding (e.g. "
                         "orthonormal rows, or all rows but one identical); debiased CKA is undefined")
    inner = _gram_inner(A, B, perms, batch_size, route) if inner is None else inner
    kl = l[torch.from_numpy(perms)] @ k                             # (N,)
    return ((inner - n / (n - 2) * kl + trk * trl / ((n - 1) * (n - 2))) / (hx * hy).sqrt()).numpy()


def debiased_cka(X: ArrayLike, Y: ArrayLike) -> float:
    """Debiased linear CKA of ``X`` ``(n, d_x)``, ``Y`` ``(n, d_y)`` in [-1, 1], ``n >= 4``; see the module."""
    Xt, Yt = _check_pair(X, Y, 4)
    (A, sx), (B, sy) = _centred_factor(Xt, "X", "CKA"), _centred_factor(Yt, "Y", "CKA")
    return float(_debiased_cka_null(A, sx, B, sy, _identity(Xt.shape[0]), None, "cross")[0])


def debiased_cka_null(X: ArrayLike, Y: ArrayLike, n_shuffles: int, seed: int,
                      batch_size: int | None = None, route: str = "auto") -> np.ndarray:
    """Debiased CKA values ``(n_shuffles,)`` of ``X`` against row-permuted ``Y``.

    The SVDs, diagonals, traces and self-HSICs are computed once; per shuffle only
    ``<K, L[perm][:, perm]>`` (as in :func:`cka_null`, same ``route`` and ``batch_size``) and
    ``diag(K).diag(L)[perm]`` change.
    """
    Xt, Yt = _check_pair(X, Y, 4)
    (A, sx), (B, sy) = _centred_factor(Xt, "X", "CKA"), _centred_factor(Yt, "Y", "CKA")
    perms = permutations(Xt.shape[0], n_shuffles, seed)
    return _debiased_cka_null(A, sx, B, sy, perms, batch_size, route)


# ----------------------------------------------------------------------------- held-out CCA

#: Train-half components with power at most this fraction of the side's total power (all ``n``
#: pairs) are numerical zeros: held-out CCA never keeps them.
_POWER_TOL = 1e-10
#: Fewest pairs for held-out CCA: train and test halves of at least 4.
HELDOUT_MIN_PAIRS = 8


def _split_pca(F: torch.Tensor, K: torch.Tensor | None, tr: torch.Tensor, te: torch.Tensor,
               variance: float, tol: float, cap: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Train scores ``(m, k)`` (orthonormal columns) and test scores ``(n_test, k)`` of one side.

    ``F`` ``(n, r)`` is the side's centred factor; rows ``tr`` ``(m,)`` are centred with their
    mean, ``k`` is the variance rule on the train powers, at most ``cap`` and counting only
    powers above ``tol``; test rows ``te`` are centred with the train mean. With ``K = F F^T``
    ``(n, n)`` (given when ``m <= r``) this is an eigendecomposition of the double-centred
    ``(m, m)`` train Gram block, else of the ``(r, r)`` train scatter matrix.
    """
    if K is not None:
        Ktr, Kte = K[tr][:, tr], K[te][:, tr]                          # (m, m), (n_test, m)
        row = Ktr.mean(1)                                              # x_i . mu
        lam, E = torch.linalg.eigh(Ktr - row[:, None] - row + row.mean())
        lam, E = lam.flip(0), E.flip(1)
        k = _kept(lam, variance, tol, cap)
        return E[:, :k], (Kte - Kte.mean(1, keepdim=True) - row + row.mean()) @ (E[:, :k] / lam[:k])
    mu = F[tr].mean(0)
    Ftr = F[tr] - mu
    lam, V = torch.linalg.eigh(Ftr.T @ Ftr)
    lam, V = lam.flip(0), V.flip(1)
    k = _kept(lam, variance, tol, cap)
    W = V[:, :k] / lam[:k].sqrt()                                      # (r, k) directions
    return Ftr @ W, (F[te] - mu) @ W


def _kept(lam: torch.Tensor, variance: float, tol: float, cap: int) -> int:
    """Components kept of descending powers ``lam``: the variance rule, at most ``cap``, all ``> tol``."""
    above = int((lam > tol).sum())
    return min(_n_components(lam.clamp(min=0), variance), above, cap) if above else 0


def _unit_columns(T: torch.Tensor) -> torch.Tensor:
    """Columns of ``T`` ``(m, c)`` centred and scaled to unit norm (constant columns become 0)."""
    T = T - T.mean(0)
    norm = T.norm(dim=0)
    return T / torch.where(norm > 0, norm, 1.0)


@dataclass(frozen=True, eq=False)
class _Splits:
    """Fitted held-out CCA splits: per scored split the test canonical variates ``(zx / c, zy)``
    ``(n_test, c)`` (unit columns), and ``k_x``, ``k_y`` ``(n_splits,)`` (0 for a skipped split)."""

    z: list[tuple[torch.Tensor, torch.Tensor] | None]
    k_x: np.ndarray
    k_y: np.ndarray
    n_train: int
    n_test: int

    @property
    def scored(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [z for z in self.z if z is not None]

    def split_scores(self) -> np.ndarray:
        """``(n_splits,)`` mean test correlation per split, NaN for a skipped split."""
        return np.array([np.nan if z is None else float((z[0] * z[1]).sum()) for z in self.z])

    @property
    def score(self) -> float:
        """Mean of the scored splits' scores (NaN when none was scored)."""
        return float(np.nanmean(self.split_scores())) if self.scored else float("nan")

    def nulls(self, perms: np.ndarray) -> np.ndarray:
        """``(n_splits, N)``: each split's score with its test rows of ``Y`` re-paired by each
        row of ``perms`` ``(N, n_test)`` (NaN rows for skipped splits): ``sum_i S[i, p_i]``
        with ``S = (zx / c) zy^T`` ``(n_test, n_test)``."""
        P, rows = torch.from_numpy(perms), torch.arange(perms.shape[1])
        out = np.full((len(self.z), len(P)), np.nan)
        for s, z in enumerate(self.z):
            if z is not None:
                out[s] = (z[0] @ z[1].T)[rows, P].sum(1).numpy()
        return out


def _fit_splits(A: torch.Tensor, sx: torch.Tensor, B: torch.Tensor, sy: torch.Tensor,
                variance: float, n_splits: int, seed: int) -> _Splits:
    """Held-out CCA splits of centred factors ``A`` ``(n, r_x)``, ``B`` ``(n, r_y)``; see the module."""
    n = A.shape[0]
    m = n // 2
    cap = (m - 1) // 2
    sides = [(F, F @ F.T if m <= F.shape[1] else None, _POWER_TOL * float(s.square().sum()))
             for F, s in ((A, sx), (B, sy))]
    z: list[tuple[torch.Tensor, torch.Tensor] | None] = []
    ks = np.zeros((2, n_splits), dtype=np.int64)
    for i, perm in enumerate(torch.from_numpy(permutations(n, n_splits, seed))):
        tr, te = perm[:m], perm[m:]
        (Ux, Tx), (Uy, Ty) = (_split_pca(F, K, tr, te, variance, tol, cap) for F, K, tol in sides)
        ks[:, i] = Ux.shape[1], Uy.shape[1]
        if not ks[:, i].all():
            z.append(None)
            continue
        P, _, Qh = torch.linalg.svd(Ux.T @ Uy, full_matrices=False)   # (k_x, c), (c, k_y)
        zx, zy = _unit_columns(Tx @ P), _unit_columns(Ty @ Qh.T)
        z.append((zx / zx.shape[1], zy))
    return _Splits(z, ks[0], ks[1], m, n - m)


@dataclass(frozen=True, eq=False)
class HeldoutCCAResult:
    """Held-out CCA: ``score`` is the mean of ``split_scores`` ``(n_splits,)`` over the scored
    splits (NaN for a skipped split; ``score`` NaN when none was scored); ``k_x``, ``k_y``
    ``(n_splits,)`` are the components kept per split (0: skipped)."""

    score: float
    split_scores: np.ndarray
    k_x: np.ndarray
    k_y: np.ndarray
    n_train: int
    n_test: int


def _check_splits(n_splits: int) -> None:
    if isinstance(n_splits, bool) or not isinstance(n_splits, (int, np.integer)) or n_splits < 1:
        raise ValueError(f"n_splits must be a positive integer, got {n_splits!r}")


def _heldout_splits(X: ArrayLike, Y: ArrayLike, variance: float, n_splits: int,
                    seed: int) -> _Splits:
    Xt, Yt = _check_pair(X, Y, HELDOUT_MIN_PAIRS)
    _check_variance(variance)
    _check_splits(n_splits)
    A, sx = _centred_factor(Xt, "X", "held-out CCA")
    B, sy = _centred_factor(Yt, "Y", "held-out CCA")
    return _fit_splits(A, sx, B, sy, variance, n_splits, seed)


def heldout_cca(X: ArrayLike, Y: ArrayLike, variance: float = 0.99, n_splits: int = 10,
                seed: int = 0) -> HeldoutCCAResult:
    """Held-out CCA of ``X`` ``(n, d_x)`` and ``Y`` ``(n, d_y)``, ``n >= 8``; see the module notes.

    Split ``s`` trains on the first ``n // 2`` entries of row ``s`` of
    ``permutations(n, n_splits, seed)`` and tests on the rest. Each side keeps at most
    ``(n // 2 - 1) // 2`` train components (so the train-half CCA is not degenerate) and
    all ``min(k_x, k_y)`` canonical components are averaged.
    """
    sp = _heldout_splits(X, Y, variance, n_splits, seed)
    return HeldoutCCAResult(sp.score, sp.split_scores(), sp.k_x, sp.k_y, sp.n_train, sp.n_test)


def heldout_cca_null(X: ArrayLike, Y: ArrayLike, n_shuffles: int, seed: int, variance: float = 0.99,
                     n_splits: int = 10) -> np.ndarray:
    """Per-split held-out CCA ``(n_splits, n_shuffles)``, each split's test rows of ``Y`` re-paired.

    The splits and their canonical directions are those of ``heldout_cca(X, Y, variance,
    n_splits, seed)``; shuffle ``j`` permutes every split's test rows of ``Y`` by row ``j`` of
    ``permutations(n_test, n_shuffles, seed)``: per split one ``(n_test, n_test)`` matrix of
    test-variate products, then a gather per shuffle. Rows of skipped splits are NaN. Use
    :func:`heldout_p_value`, not :func:`p_value` of the mean over splits (see there).
    """
    sp = _heldout_splits(X, Y, variance, n_splits, seed)
    return sp.nulls(permutations(sp.n_test, n_shuffles, seed))


def heldout_p_value(split_scores: np.ndarray, split_nulls: np.ndarray) -> float:
    """p-value of held-out CCA: ``min(1, 2 * mean_s p_s)`` over the scored splits.

    ``p_s = p_value(split_scores[s], split_nulls[s])`` (``(n_splits,)`` and ``(n_splits, N)``,
    NaN for skipped splits) is an exact permutation p-value given split ``s``'s train half.
    The splits share pairs, so their scores are positively correlated (about 0.25 for
    unrelated data), and the mean of independently re-paired split scores spreads about
    half as much as the observed mean: reading p off that null rejects about 3.5 times
    too often at the 5 % level. Twice the mean of p-values is valid under any dependence
    (Rueschendorf 1982; Vovk & Wang 2020).
    """
    used = ~np.isnan(split_scores)
    if not used.any():
        raise ValueError("held-out CCA: no split was scored")
    p = [p_value(t, null) for t, null in zip(split_scores[used], split_nulls[used])]
    return min(1.0, 2.0 * float(np.mean(p)))


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


#: The Gram route of :func:`_nuclear_norms` is kept where its error bound is below this (else svdvals):
#: the nulls' exactness target (equal to a naive recomputation to 1e-9).
_NUCLEAR_ATOL = 1e-9
#: Factor columns (singular values of a centred side) below this share of the largest are dropped: centring
#: leaves one such null direction whenever n <= d, and it would send every shuffle to svdvals.
_RANK_RTOL = 1e-12


def _nuclear_norms(M: torch.Tensor, route: str = "gram") -> torch.Tensor:
    """Nuclear norms ``(b,)`` of float64 matrices ``M`` ``(b, r, c)``: the sum of the square roots of the
    eigenvalues of the smaller Gram matrix (``M M^T`` or ``M^T M``; forming it and ``eigvalsh`` take 19 ms
    where ``svdvals`` of ``M`` takes 75, at 512 x 768 on 2 cores), or ``svdvals`` where that could be off by more than
    :data:`_NUCLEAR_ATOL`. Each eigenvalue of the float64 Gram matrix is off by at most about
    ``m eps lambda_max`` (``m = max(r, c)``: its products' length and the eigensolver's backward error),
    its square root by that over ``2 sqrt(lambda_i)``: the bound summed over ``i`` decides. Measured on
    re-paired low-rank-plus-noise data: at 5,000 pairs, widths 512/768, error 1e-16 against svdvals,
    bound 9e-11 (singular values spanning 2,000x); at 1,000 pairs, 576/640, error 1e-16, bound 4e-10.
    ``route="svd"``: svdvals for every matrix (the route before this one; for the bench)."""
    if route not in ("gram", "svd"):
        raise ValueError(f"route must be 'gram' or 'svd', got {route!r}")
    if route == "svd":
        return torch.linalg.svdvals(M).sum(-1)
    G = M @ M.mT if M.shape[1] <= M.shape[2] else M.mT @ M
    ev = torch.linalg.eigvalsh(G)                                    # ascending
    eps, top = torch.finfo(M.dtype).eps, ev[:, -1:].clamp(min=torch.finfo(M.dtype).tiny)
    bound = max(M.shape[1:]) * eps * top[:, 0] * (0.5 / ev.clamp(min=eps * eps * top).sqrt()).sum(-1)
    out = ev.clamp(min=0).sqrt().sum(-1)
    unsure = bound > _NUCLEAR_ATOL
    if unsure.any():
        out[unsure] = torch.linalg.svdvals(M[unsure]).sum(-1)
    return out


def _procrustes_null(A: torch.Tensor, B: torch.Tensor, perms: np.ndarray,
                     batch_size: int | None, route: str = "gram") -> np.ndarray:
    """Nuclear norms ``(N,)`` of ``A^T B[p]`` ``(r_x, r_y)`` (unit factors), clipped to <= 1."""
    A, B = (F[:, F.norm(dim=0) > _RANK_RTOL * F.norm(dim=0).max()] for F in (A, B))
    n, rx, ry = A.shape[0], A.shape[1], B.shape[1]
    P, out = torch.from_numpy(perms), torch.empty(len(perms), dtype=F64)
    b = _batch(batch_size, n * ry + rx * ry)
    for start in range(0, len(P), b):
        p = P[start:start + b]
        out[start:start + len(p)] = _nuclear_norms(A.T @ B[p], route)
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
                    batch_size: int | None = None, route: str = "gram") -> np.ndarray:
    """Procrustes similarities ``(n_shuffles,)`` of ``X`` against row-permuted ``Y``.

    Centring, scaling and the SVD reduction are done once; each shuffle is one product
    ``A^T B[perm]`` of the reduced factors (``(min(n, d_x), min(n, d_y))``) and the square roots of the
    eigenvalues of its smaller Gram matrix (:func:`_nuclear_norms`, with an svdvals fallback;
    ``route="svd"``: svdvals throughout).
    """
    Xt, Yt = _check_pair(X, Y)
    A, B = _unit_factor(Xt, "X"), _unit_factor(Yt, "Y")
    return _procrustes_null(A, B, permutations(Xt.shape[0], n_shuffles, seed), batch_size, route)


#: Relative tolerance of a tie in :func:`p_value`.
TIE_TOL = 1e-9


def p_value(observed: float, null: np.ndarray) -> float:
    """One-sided permutation p-value ``(1 + #(null >= observed - tol)) / (1 + len(null))``.

    ``tol = 1e-9 * max(1, |observed|)`` (:data:`TIE_TOL`): null values equal to the observed
    score up to rounding count as ties.
    """
    null = np.asarray(null, dtype=np.float64).ravel()
    tol = TIE_TOL * max(1.0, abs(float(observed)))
    return float((1 + np.count_nonzero(null >= observed - tol)) / (1 + null.size))


def _summary(observed: float, null: np.ndarray) -> dict[str, float]:
    """Observed score, null mean / population std ``(N,)`` and p-value as Python floats."""
    return {"score": float(observed), "null_mean": float(null.mean()),
            "null_std": float(null.std()), "p": p_value(observed, null)}


# ----------------------------------------------------------------------------- not scorable

#: Fewest pairs per metric (SVCCA, held-out CCA and mutual k-NN have a further rule).
_MIN_PAIRS = {"svcca": 3, "svcca_heldout": HELDOUT_MIN_PAIRS, "rsa": 4, "cka": 3, "cka_debiased": 4,
              "mutual_knn": 0, "procrustes": 3}


def not_scorable(metric: str, n: int, **extra: Any) -> str | None:
    """Why ``metric`` is not scorable with ``n`` pairs, as one line, or None when it is.

    The rules are those of the module notes. ``extra`` holds what a rule needs besides
    ``n``: ``k_x`` and ``k_y`` (components kept) for ``"svcca"`` when ``n >= 3``, ``k`` for
    ``"mutual_knn"``, optionally ``splits_scored`` for ``"svcca_heldout"`` and ``self_hsic_zero``
    (a side's unbiased HSIC with itself is 0) for ``"cka_debiased"``; other keys are ignored.
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    if metric == "mutual_knn":
        k = extra["k"]
        return (f"mutual k-NN uses k = {k} neighbours of {n} pairs: k >= (n - 1)/2, so the chance "
                "level k/(n - 1) is at least 1/2") if 2 * k >= n - 1 else None
    if n < _MIN_PAIRS[metric]:
        return f"{METRIC_NAMES[metric]} needs at least {_MIN_PAIRS[metric]} pairs, got {n}"
    if metric == "svcca" and max(extra["k_x"], extra["k_y"]) > n / 2:
        return (f"SVCCA keeps k = {max(extra['k_x'], extra['k_y'])} components of {n} pairs: "
                "k > n/2, chance level saturates")
    if metric == "svcca_heldout" and extra.get("splits_scored") == 0:
        return "held-out CCA: no split has a train half with variance on both sides"
    if metric == "cka_debiased" and extra.get("self_hsic_zero"):
        return ("debiased CKA: the unbiased HSIC of a side with itself is 0 (e.g. all rows but "
                "one identical), so the ratio is undefined")
    return None


# ----------------------------------------------------------------------------- all metrics

class _Pair:
    """Pairing-independent intermediates of a validated pair ``X`` ``(n, d_x)``, ``Y`` ``(n, d_y)``,
    computed on first use and shared between metrics: one centred SVD per side serves SVCCA,
    both CKAs, Procrustes and held-out CCA; the ``<K, L[p][:, p]>`` values serve both CKAs."""

    def __init__(self, Xt: torch.Tensor, Yt: torch.Tensor, variance: float, knn_k: int = 10,
                 n_splits: int = 10, seed: int = 0) -> None:
        self.X, self.Y, self.n = Xt, Yt, Xt.shape[0]
        self.variance, self.knn_k, self.n_splits, self.seed = variance, int(knn_k), int(n_splits), seed
        self._memo: dict[str, Any] = {}

    def _once(self, key: str, make: Callable[[], Any]) -> Any:
        if key not in self._memo:
            self._memo[key] = make()
        return self._memo[key]

    def svd(self, what: str) -> Any:
        return self._once("svd", lambda: (_centred_svd(self.X, "X", what),
                                          _centred_svd(self.Y, "Y", what)))

    def factors(self, what: str) -> Any:
        return self._once("factors", lambda: tuple((U * s, s) for U, s in self.svd(what)))

    def bases(self) -> Any:
        return self._once("bases", lambda: tuple(_truncate(U, s, self.variance)
                                                 for U, s in self.svd("SVCCA")))

    def splits(self) -> _Splits:
        (A, sx), (B, sy) = self.factors("held-out CCA")
        return self._once("splits", lambda: _fit_splits(A, sx, B, sy, self.variance, self.n_splits,
                                                        self.seed))

    def heldout_nulls(self, n_shuffles: int) -> np.ndarray:
        sp = self.splits()
        return self._once("heldout nulls",
                          lambda: sp.nulls(permutations(sp.n_test, n_shuffles, self.seed)))

    def inner(self, key: str, perms: np.ndarray, route: str) -> torch.Tensor:
        (A, _), (B, _) = self.factors("CKA")
        return self._once(f"inner {key}", lambda: _gram_inner(A, B, perms, None, route))

    def extra(self, metric: str) -> dict[str, Any]:
        """The summary extras of ``metric`` (also what :func:`not_scorable` needs)."""
        if metric == "svcca" and self.n >= _MIN_PAIRS["svcca"]:
            (_, kx), (_, ky) = self.bases()
            return {"k_x": kx, "k_y": ky}
        if metric == "mutual_knn":
            return {"k": self.knn_k}
        if metric != "svcca_heldout":
            return {}
        m = self.n // 2
        out: dict[str, Any] = {"n_splits": self.n_splits, "n_train": m, "n_test": self.n - m}
        if self.n >= HELDOUT_MIN_PAIRS:
            sp = self.splits()
            out["splits_scored"] = len(sp.scored)
            if sp.scored:
                used = sp.k_x > 0
                out |= {"k_x": float(np.median(sp.k_x[used])),
                        "k_y": float(np.median(sp.k_y[used]))}
        return out

    def reason(self, metric: str) -> str | None:
        """:func:`not_scorable` of ``metric`` for this pair."""
        checks = self.extra(metric)
        if metric == "cka_debiased" and self.n >= _MIN_PAIRS[metric]:
            checks["self_hsic_zero"] = not all(_hsic_terms(F, s)[2] > 0 for F, s in self.factors("CKA"))
        return not_scorable(metric, self.n, **checks)

    def evaluate(self, metric: str, n_shuffles: int) -> tuple[float, np.ndarray | None]:
        """Observed score of ``metric`` and its ``(n_shuffles,)`` re-pairing null (None for 0).

        Held-out CCA's null is the mean over scored splits of :meth:`_Splits.nulls`.
        """
        ident = _identity(self.n)
        perms = (self._once("perms", lambda: permutations(self.n, n_shuffles, self.seed))
                 if n_shuffles else None)

        def via(f: Callable[[np.ndarray], np.ndarray]) -> tuple[float, np.ndarray | None]:
            return float(f(ident)[0]), (f(perms) if perms is not None else None)

        if metric == "svcca":
            (Ux, _), (Uy, _) = self.bases()
            return float(_cancorr(Ux, Uy).mean()), (None if perms is None else
                                                    _svcca_null(Ux, Uy, perms, 256))
        if metric == "svcca_heldout":
            sp = self.splits()
            return sp.score, (None if perms is None else
                              np.nanmean(self.heldout_nulls(n_shuffles), axis=0))
        if metric == "rsa":
            rx, ry = self._once("ranks", lambda: (_centred_ranks(self.X.numpy(), "X"),
                                                   _centred_ranks(self.Y.numpy(), "Y")))
            return _pearson(rx, ry), (None if perms is None else _rsa_null(rx, ry, perms))
        if metric in ("cka", "cka_debiased"):
            (A, sx), (B, sy) = self.factors("CKA")
            f = _cka_null if metric == "cka" else _debiased_cka_null
            observed = float(f(A, sx, B, sy, ident, None, "cross", self.inner("observed", ident, "cross"))[0])
            if perms is None:
                return observed, None
            return observed, f(A, sx, B, sy, perms, None, "auto", self.inner("null", perms, "auto"))
        if metric == "mutual_knn":
            kx, ky = self._once("knn", lambda: (_knn_sets(self.X, self.knn_k, "X"),
                                                _knn_sets(self.Y, self.knn_k, "Y")))
            return via(lambda p: _mutual_knn_null(kx, ky, p, None))
        A, B = self._once("unit", lambda: tuple(F / s.norm() for F, s in self.factors("Procrustes")))
        return via(lambda p: _procrustes_null(A, B, p, None))


def _check_args(metrics: Sequence[str], variance: float, knn_k: int, n_splits: int) -> tuple[str, ...]:
    """Validated, de-duplicated ``metrics`` (a non-empty subset of :data:`METRICS`)."""
    if isinstance(metrics, str):
        metrics = (metrics,)
    metrics = tuple(dict.fromkeys(metrics))
    unknown = [m for m in metrics if m not in METRICS]
    if unknown or not metrics:
        raise ValueError(f"metrics must be a non-empty subset of {METRICS}, got {metrics!r}")
    if isinstance(knn_k, bool) or not isinstance(knn_k, (int, np.integer)) or knn_k < 1:
        raise ValueError(f"knn_k must be a positive integer, got {knn_k!r}")
    _check_variance(variance)
    _check_splits(n_splits)
    return metrics


def compare_with_nulls(X: ArrayLike, Y: ArrayLike, n_shuffles: int = 1000, seed: int = 0,
                       variance: float = 0.99, metrics: Sequence[str] = METRICS, knn_k: int = 10,
                       heldout_splits: int = 10) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Similarity metrics of ``X`` ``(n, d_x)`` vs ``Y`` ``(n, d_y)`` with re-pairing nulls.

    ``metrics`` is any subset of :data:`METRICS` (default: all). Every null except held-out
    CCA's uses the same ``permutations(n, n_shuffles, seed)``; held-out CCA
    (``heldout_splits`` splits, seeded by ``seed``) re-pairs its test halves with
    ``permutations(n_test, n_shuffles, seed)``. Every observed score is computed by the
    same code as its null (with the identity pairing) and equals the single-metric function.
    Mutual k-NN uses ``k = knn_k``. Any ``n`` is accepted: a metric that is degenerate at
    ``n`` pairs (:func:`not_scorable`) gets ``{"score": None, "null_mean": None,
    "null_std": None, "p": None, "reason": str, **extras}`` and no null.

    Returns ``(summary, nulls)``: the JSON-serialisable summary of :func:`compare`
    and ``{metric: (n_shuffles,)}`` null arrays of the scorable metrics. The ``svcca`` and
    ``rsa`` entries of a scorable metric are exactly those of the SVCCA/RSA-only version
    of this function.
    """
    Xt, Yt = _check_pair(X, Y, 0)
    if n_shuffles < 1:
        raise ValueError(f"n_shuffles must be >= 1, got {n_shuffles}")
    metrics = _check_args(metrics, variance, knn_k, heldout_splits)
    n = Xt.shape[0]
    pair = _Pair(Xt, Yt, variance, knn_k, heldout_splits, seed)
    summary: dict[str, Any] = {"n": int(n)}
    nulls: dict[str, np.ndarray] = {}
    for metric in metrics:
        extra, reason = pair.extra(metric), pair.reason(metric)
        if reason is not None:
            summary[metric] = {"score": None, "null_mean": None, "null_std": None, "p": None,
                               "reason": reason, **extra}
            continue
        observed, nulls[metric] = pair.evaluate(metric, n_shuffles)
        summary[metric] = {**_summary(observed, nulls[metric]), **extra}
        if metric == "svcca_heldout":
            summary[metric]["p"] = heldout_p_value(pair.splits().split_scores(),
                                                   pair.heldout_nulls(n_shuffles))
    return summary, nulls


def compare(X: ArrayLike, Y: ArrayLike, n_shuffles: int = 1000, seed: int = 0,
            variance: float = 0.99, metrics: Sequence[str] = METRICS,
            knn_k: int = 10, heldout_splits: int = 10) -> dict[str, Any]:
    """JSON-serialisable summary of :func:`compare_with_nulls` (null arrays left out).

    ``{"n", metric: entry}``, one entry per requested metric. A scorable entry is
    ``{score, null_mean, null_std, p}`` plus the metric's extras: ``svcca``: ``k_x``, ``k_y``;
    ``svcca_heldout``: ``n_splits``, ``n_train``, ``n_test``, ``splits_scored``, ``k_x``,
    ``k_y`` (medians over the scored splits); ``mutual_knn``: ``k``; ``rsa``, ``cka``,
    ``cka_debiased``, ``procrustes``: none. Held-out CCA's ``p`` is :func:`heldout_p_value`
    (twice the mean per-split p-value); its ``null_mean`` and ``null_std`` describe the
    mean over splits of the test-half re-pairings (a null too narrow to read p off).
    A not-scorable entry has ``None`` for the four numbers, a ``reason`` and the extras
    known (``svcca``: ``k_x``, ``k_y`` when ``n >= 3``; ``svcca_heldout``: ``n_splits``,
    ``n_train``, ``n_test`` and, when ``n >= 8``, ``splits_scored``).
    """
    return compare_with_nulls(X, Y, n_shuffles, seed, variance, metrics, knn_k, heldout_splits)[0]


def scores(X: ArrayLike, Y: ArrayLike, variance: float = 0.99, knn_k: int = 10,
           metrics: Sequence[str] = METRICS, heldout_splits: int = 10,
           seed: int = 0) -> dict[str, float]:
    """Observed scores ``{metric: float}`` of ``X`` ``(n, d_x)`` vs ``Y`` ``(n, d_y)``, without nulls.

    The scores of :func:`compare_with_nulls` with the same arguments (held-out CCA's splits
    seeded by ``seed``), NaN where a metric is not scorable (:func:`not_scorable`); any ``n``
    is accepted. For repeated subsampling: one centred SVD per side serves SVCCA, both
    CKAs, Procrustes and held-out CCA, and ``<K, L>`` both CKAs. Raises ValueError on
    NaN/inf input, on a side with zero variance (``n >= 3``) and on bad arguments.
    """
    Xt, Yt = _check_pair(X, Y, 0)
    metrics = _check_args(metrics, variance, knn_k, heldout_splits)
    pair = _Pair(Xt, Yt, variance, knn_k, heldout_splits, seed)
    return {m: float("nan") if pair.reason(m) else pair.evaluate(m, 0)[0] for m in metrics}


#: Metrics :func:`random_subset_null` can draw.
SUBSET_METRICS: tuple[str, ...] = ("svcca", "rsa", "cka", "cka_debiased", "procrustes")


def random_subset_null(X_all: ArrayLike, Y_all: ArrayLike, n: int, n_samples: int, seed: int,
                       variance: float = 0.99,
                       metrics: Sequence[str] = ("svcca", "rsa")) -> dict[str, np.ndarray]:
    """Scores ``{metric: (n_samples,)}`` of random same-size sets of real pairs.

    Each sample draws ``n`` distinct rows (``default_rng(seed).choice``, without
    replacement) shared by ``X_all`` ``(N, d_x)`` and ``Y_all`` ``(N, d_y)``. ``metrics`` is a
    subset of :data:`SUBSET_METRICS`; each value is the plain score (SVCCA also where
    ``k > n/2``, as for the observed set it is compared with), NaN for a draw on which the
    metric is otherwise not scorable (debiased CKA: a side's unbiased self-HSIC is 0). A
    metric that needs more than ``n`` pairs raises ValueError.
    """
    Xt, Yt = _check_pair(X_all, Y_all)
    if not 3 <= n <= Xt.shape[0]:
        raise ValueError(f"n must be in [3, {Xt.shape[0]}], got {n}")
    _check_variance(variance)
    metrics = tuple(dict.fromkeys(metrics))
    if any(m not in SUBSET_METRICS for m in metrics):
        raise ValueError(f"metrics must be a subset of {SUBSET_METRICS}, got {metrics!r}")
    for reason in (not_scorable(m, n) for m in metrics if m != "svcca"):
        if reason:
            raise ValueError(reason)
    rng = np.random.default_rng(seed)
    out = {m: np.empty(n_samples) for m in metrics}
    for s in tqdm(range(n_samples), desc="random subsets", disable=n_samples < 50,
                  position=0, leave=False):
        idx = torch.from_numpy(np.sort(rng.choice(Xt.shape[0], size=n, replace=False)))
        pair = _Pair(Xt[idx], Yt[idx], variance)
        for m in metrics:
            out[m][s] = np.nan if m != "svcca" and pair.reason(m) else pair.evaluate(m, 0)[0]
    return out
