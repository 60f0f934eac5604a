"""Compare the geometry of paired feature decoder vectors of two models (SVCCA, RSA).

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
  re-pairings for both metrics. p-values are ``(1 + #(null >= observed)) / (1 + N)``;
  ``null_std`` is the population standard deviation (``ddof=0``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Union

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


def _rsa_null(rx: torch.Tensor, ry: torch.Tensor, perms: np.ndarray,
              batch_size: int | None) -> np.ndarray:
    """RSA ``(N,)`` of centred rank vectors ``(m,)``, Y's items permuted by ``perms`` ``(N, n)``."""
    n, m = perms.shape[1], rx.numel()
    batch_size = batch_size or max(1, 2**22 // m)
    i, j = (torch.from_numpy(v) for v in np.triu_indices(n, 1))   # condensed order
    P, out = torch.from_numpy(perms), torch.empty(len(perms), dtype=F64)
    scale = rx.norm() * ry.norm()                                 # permutation invariant
    for start in range(0, len(P), batch_size):
        p = P[start:start + batch_size]                           # (b, n)
        lo, hi = torch.minimum(p[:, i], p[:, j]), torch.maximum(p[:, i], p[:, j])
        idx = n * lo - lo * (lo + 1) // 2 + (hi - lo - 1)         # (b, m) condensed index
        out[start:start + len(p)] = ry[idx] @ rx / scale
    return out.numpy()


def rsa_null(X: ArrayLike, Y: ArrayLike, n_shuffles: int, seed: int,
             batch_size: int | None = None) -> np.ndarray:
    """RSA values ``(n_shuffles,)`` of ``X`` against row-permuted ``Y``.

    Distances and ranks are computed once; permuting the items of ``Y`` permutes
    its condensed vector, so each shuffle is a gather plus a dot product.
    ``batch_size=None`` picks about 4M gathered entries per batch.
    """
    Xt, Yt = _check_pair(X, Y)
    rx, ry = _centred_ranks(Xt.numpy(), "X"), _centred_ranks(Yt.numpy(), "Y")
    return _rsa_null(rx, ry, permutations(Xt.shape[0], n_shuffles, seed), batch_size)


def p_value(observed: float, null: np.ndarray) -> float:
    """One-sided permutation p-value ``(1 + #(null >= observed)) / (1 + len(null))``."""
    null = np.asarray(null, dtype=np.float64).ravel()
    return float((1 + np.count_nonzero(null >= observed)) / (1 + null.size))


def _summary(observed: float, null: np.ndarray) -> dict[str, float]:
    """Observed score, null mean / population std ``(N,)`` and p-value as Python floats."""
    return {"score": float(observed), "null_mean": float(null.mean()),
            "null_std": float(null.std()), "p": p_value(observed, null)}


def compare_with_nulls(X: ArrayLike, Y: ArrayLike, n_shuffles: int = 1000, seed: int = 0,
                       variance: float = 0.99) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """SVCCA and RSA of ``X`` ``(n, d_x)`` vs ``Y`` ``(n, d_y)`` with re-pairing nulls.

    Returns ``(summary, nulls)``: the JSON-serialisable summary of :func:`compare`
    and ``{"svcca": (n_shuffles,), "rsa": (n_shuffles,)}`` null arrays.
    """
    Xt, Yt = _check_pair(X, Y)
    if n_shuffles < 1:
        raise ValueError(f"n_shuffles must be >= 1, got {n_shuffles}")
    n = Xt.shape[0]
    perms = permutations(n, n_shuffles, seed)
    (Ux, kx), (Uy, ky) = _pca_basis(Xt, variance, "X"), _pca_basis(Yt, variance, "Y")
    rx, ry = _centred_ranks(Xt.numpy(), "X"), _centred_ranks(Yt.numpy(), "Y")
    nulls = {"svcca": _svcca_null(Ux, Uy, perms, 256), "rsa": _rsa_null(rx, ry, perms, None)}
    summary = {
        "n": int(n),
        "svcca": {**_summary(float(_cancorr(Ux, Uy).mean()), nulls["svcca"]), "k_x": kx, "k_y": ky},
        "rsa": _summary(_pearson(rx, ry), nulls["rsa"]),
    }
    return summary, nulls


def compare(X: ArrayLike, Y: ArrayLike, n_shuffles: int = 1000, seed: int = 0,
            variance: float = 0.99) -> dict[str, Any]:
    """JSON-serialisable summary of :func:`compare_with_nulls` (null arrays left out).

    ``{"n", "svcca": {score, null_mean, null_std, p, k_x, k_y},
    "rsa": {score, null_mean, null_std, p}}``.
    """
    return compare_with_nulls(X, Y, n_shuffles, seed, variance)[0]


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
    for s in tqdm(range(n_samples), desc="random subsets", disable=n_samples < 50):
        idx = torch.from_numpy(np.sort(rng.choice(Xt.shape[0], size=n, replace=False)))
        out["svcca"][s] = svcca(Xt[idx], Yt[idx], variance).score
        out["rsa"][s] = rsa(Xt[idx], Yt[idx])
    return out
