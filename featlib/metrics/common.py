"""What every metric family shares: input conversion and checks, the centred SVD, the SVCCA variance rule,
the seeded re-pairings, the p-value, and :class:`Pair` (a validated pair with its settings and the
intermediates computed once and shared between metrics).

Conventions (see :mod:`featlib.similarity`): ``X`` ``(n, d_x)`` and ``Y`` ``(n, d_y)`` are matched row by
row; inputs are numpy arrays or torch tensors, converted to float64 CPU tensors; results are Python floats
or numpy arrays.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

ArrayLike = np.ndarray | torch.Tensor
F64 = torch.float64


def to_tensor(A: ArrayLike, name: str) -> torch.Tensor:
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


def check_pair(X: ArrayLike, Y: ArrayLike, min_n: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate a matched pair: ``X`` ``(n, d_x)``, ``Y`` ``(n, d_y)`` with ``n >= min_n``."""
    Xt, Yt = to_tensor(X, "X"), to_tensor(Y, "Y")
    if Xt.shape[0] != Yt.shape[0]:
        raise ValueError(
            "X and Y must have the same number of rows (matched pairs), "
            f"got X {tuple(Xt.shape)} and Y {tuple(Yt.shape)}"
        )
    if Xt.shape[0] < min_n:
        raise ValueError(f"need at least {min_n} pairs, got n={Xt.shape[0]}")
    return Xt, Yt


def check_variance(variance: float) -> None:
    if not 0.0 < variance <= 1.0:
        raise ValueError(f"variance must be in (0, 1], got {variance}")


def check_count(value: int, name: str) -> None:
    """``value`` must be a positive integer (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def centred_svd(Xt: torch.Tensor, name: str, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``U`` ``(n, m)`` and ``s`` ``(m,)`` (descending) of the thin SVD of the column-centred
    ``Xt``, ``m = min(n, d)``.

    Computed from the eigendecomposition of the smaller of ``Xc Xc^T`` and ``Xc^T Xc``
    (about twice as fast as ``torch.linalg.svd`` for ``n ~ d``). Powers ``s_i^2`` at most
    ``max(n, d) * eps * s_1^2`` are rounding noise and set to 0; when ``n > d`` their columns
    of ``U`` are 0 (no metric keeps a component of zero power).
    """
    if Xt.numel() == 0 or bool((Xt == Xt[:1]).all()):
        raise ValueError(f"{name} has zero variance (all rows identical or empty); {what} is undefined")
    Xc = Xt - Xt.mean(dim=0, keepdim=True)
    n, d = Xc.shape
    power, E = torch.linalg.eigh(Xc @ Xc.T if n <= d else Xc.T @ Xc)
    power, E = power.flip(0), E.flip(1)
    s = torch.where(power > max(n, d) * torch.finfo(F64).eps * power[0], power, 0.0).sqrt()
    return (E, s) if n <= d else (torch.where(s > 0, Xc @ E / s, 0.0), s)


def centred_factor(Xt: torch.Tensor, name: str, metric: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``A = U S`` ``(n, m)`` and ``s`` ``(m,)`` from the thin SVD ``Xc = U S V^T``, ``m = min(n, d)``.

    For any ``B`` ``(n, e)``, ``Xc^T B = V (A^T B)`` with orthonormal ``V``, so the
    singular values (hence Frobenius and nuclear norms) of ``Xc^T B`` and ``A^T B``
    agree; ``A A^T = Xc Xc^T``.
    """
    U, s = centred_svd(Xt, name, metric)
    return U * s, s


def n_components(power: torch.Tensor, variance: float) -> int:
    """Fewest leading components whose cumulative fraction of ``power`` (descending, ``>= 0``)
    reaches ``variance``; components of zero power are never counted."""
    fraction = torch.cumsum(power, 0) / power.sum()
    return min(int((fraction < variance).sum()) + 1, int((power > 0).sum()))


def identity(n: int) -> np.ndarray:
    """The identity re-pairing ``(1, n)``: the observed score via the null code path."""
    return np.arange(n, dtype=np.int64)[None]


def batch(batch_size: int | None, per_shuffle: int) -> int:
    """Shuffles per batch: ``batch_size`` or about 4M intermediate entries."""
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 or None, got {batch_size}")
    return batch_size or max(1, 2**22 // max(1, per_shuffle))


def permutations(n: int, n_shuffles: int, seed: int) -> np.ndarray:
    """``(n_shuffles, n)`` int64 permutations: ``default_rng(seed).permutation(n)``, in order."""
    if n_shuffles < 0:
        raise ValueError(f"n_shuffles must be >= 0, got {n_shuffles}")
    rng = np.random.default_rng(seed)
    out = np.empty((n_shuffles, n), dtype=np.int64)
    for s in range(n_shuffles):
        out[s] = rng.permutation(n)
    return out


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


class Pair:
    """A validated pair ``X`` ``(n, d_x)``, ``Y`` ``(n, d_y)`` (float64 CPU tensors) with the settings of
    the metrics (``variance``: the SVCCA variance rule; ``knn_k``: mutual k-NN's k; ``n_splits`` and
    ``seed``: held-out CCA's splits, ``seed`` also the re-pairings') and the pairing-independent
    intermediates, each computed on first use (:meth:`once`) and shared between metrics: one centred
    SVD per side (:meth:`svd`, :meth:`factors`) serves SVCCA, both CKAs, Procrustes and held-out CCA."""

    def __init__(
        self, Xt: torch.Tensor, Yt: torch.Tensor, variance: float, knn_k: int, n_splits: int, seed: int = 0
    ) -> None:
        self.X, self.Y, self.n = Xt, Yt, Xt.shape[0]
        self.variance, self.knn_k, self.n_splits, self.seed = variance, int(knn_k), int(n_splits), seed
        self._memo: dict[str, Any] = {}

    def once(self, key: str, make: Callable[[], Any]) -> Any:
        """``make()``, computed on the first call with ``key`` and remembered."""
        if key not in self._memo:
            self._memo[key] = make()
        return self._memo[key]

    def svd(self, what: str) -> Any:
        """``((U_x, s_x), (U_y, s_y))``: :func:`centred_svd` of each side (``what`` names the metric in the
        zero-variance error of the first caller)."""
        return self.once("svd", lambda: (centred_svd(self.X, "X", what), centred_svd(self.Y, "Y", what)))

    def factors(self, what: str) -> Any:
        """``((A, s_x), (B, s_y))``: the centred factors ``U S`` of each side (:func:`centred_factor`)."""
        return self.once("factors", lambda: tuple((U * s, s) for U, s in self.svd(what)))

    def perms(self, n_shuffles: int) -> np.ndarray:
        """``permutations(n, n_shuffles, seed)``: the re-pairings every null shares."""
        return self.once(f"perms {n_shuffles}", lambda: permutations(self.n, n_shuffles, self.seed))
