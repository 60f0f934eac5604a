"""Linear CKA and debiased linear CKA of paired rows; registers ``cka`` and ``cka_debiased``.

* Linear CKA (Kornblith et al. 2019): with column-centred ``Xc``, ``Yc``,
  ``||Xc^T Yc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)``, in [0, 1]. This is the
  biased-HSIC ("Gretton") estimator ``tr(K H L H) / sqrt(tr(K H K H) tr(L H L H))``
  with ``K = X X^T``, ``L = Y Y^T`` and ``H = I - 11^T / n``; it equals
  ``repsim.cka(..., kernel_type="linear", estimator="gretton")``. It is *not* the
  unbiased-HSIC ("Song") variant, and unlike the Platonic-representation code it adds
  no ``1e-6`` to the denominator. Invariant to orthogonal maps and isotropic scaling
  of either side. Undefined (ValueError) when a side has zero variance. Its chance
  level is not 0 and grows as ``n`` shrinks relative to the widths. Not scorable with ``n < 3``.
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
  *biased* self-HSICs, so it is not 1 for identical inputs). Not scorable with ``n < 4``, or
  when a side's ``HSIC_1`` with itself is 0 (its U-centred Gram matrix vanishes, e.g. when all
  rows but one are identical, as many-to-one pairs can make them).

Nulls: each side is replaced by ``A = U S`` (``(n, min(n, d))``, from ``Xc = U S V^T``):
``Xc^T Yc[p]`` and ``A^T B[p]`` differ only by orthonormal factors, so their Frobenius norms agree
and each shuffle works with ``min(n, d)`` columns. The CKA null uses the cheaper of
``||A^T B[p]||_F^2`` and the centred-Gram form ``<K, L[p][:, p]>`` (see :func:`cka_null`), which the
debiased CKA null shares (only ``<K, L[p][:, p]>`` and ``diag(K).diag(L)[p]`` change with the pairing).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .common import F64, ArrayLike, Pair, batch, centred_factor, check_pair, identity, permutations
from .registry import Metric, register

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


def _gram_inner(
    A: torch.Tensor, B: torch.Tensor, perms: np.ndarray, batch_size: int | None, route: str = "auto"
) -> torch.Tensor:
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
        K, L = A @ A.T, B @ B.T  # (n, n) each
        b = batch(batch_size, n * n)
        for start in range(0, len(P), b):
            p = P[start : start + b]  # (b, n)
            Lp = L[p[:, :, None], p[:, None, :]]  # (b, n, n)
            out[start : start + len(p)] = (Lp * K).sum((1, 2))
    else:
        b = batch(batch_size, n * ry + rx * ry)
        for start in range(0, len(P), b):
            p = P[start : start + b]
            out[start : start + len(p)] = (A.T @ B[p]).square().sum((1, 2))  # (b, r_x, r_y)
    return out


def _cka_null(
    A: torch.Tensor,
    sx: torch.Tensor,
    B: torch.Tensor,
    sy: torch.Tensor,
    perms: np.ndarray,
    batch_size: int | None,
    route: str = "auto",
    inner: torch.Tensor | None = None,
) -> np.ndarray:
    """Linear CKA ``(N,)`` of factors ``A`` ``(n, r_x)``, ``B`` ``(n, r_y)``, rows of ``B`` permuted.

    The denominator ``||S_x^2||_F ||S_y^2||_F`` is permutation invariant; the numerator is
    :func:`_gram_inner` (passed as ``inner`` when already computed).
    """
    inner = _gram_inner(A, B, perms, batch_size, route) if inner is None else inner
    return (inner / (sx.square().norm() * sy.square().norm())).numpy()


def linear_cka(X: ArrayLike, Y: ArrayLike) -> float:
    """Linear CKA of ``X`` ``(n, d_x)`` and ``Y`` ``(n, d_y)`` in [0, 1]; see the module notes."""
    Xt, Yt = check_pair(X, Y)
    (A, sx), (B, sy) = centred_factor(Xt, "X", "CKA"), centred_factor(Yt, "Y", "CKA")
    return float(_cka_null(A, sx, B, sy, identity(Xt.shape[0]), None, "cross")[0])


def cka_null(
    X: ArrayLike, Y: ArrayLike, n_shuffles: int, seed: int, batch_size: int | None = None, route: str = "auto"
) -> np.ndarray:
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
    Xt, Yt = check_pair(X, Y)
    (A, sx), (B, sy) = centred_factor(Xt, "X", "CKA"), centred_factor(Yt, "Y", "CKA")
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
    k, tr, kk = A.square().sum(1), s.square().sum(), s.square().square().sum()  # kk = ||K||_F^2
    h = kk - n / (n - 2) * k @ k + tr**2 / ((n - 1) * (n - 2))
    return k, tr, torch.where(h > _HSIC_TOL * kk, h, 0.0)


def _debiased_cka_null(
    A: torch.Tensor,
    sx: torch.Tensor,
    B: torch.Tensor,
    sy: torch.Tensor,
    perms: np.ndarray,
    batch_size: int | None,
    route: str = "auto",
    inner: torch.Tensor | None = None,
) -> np.ndarray:
    """Debiased CKA ``(N,)`` of centred factors ``A`` ``(n, r_x)``, ``B`` ``(n, r_y)``, ``B`` permuted.

    With ``k = diag(K)``, ``l = diag(L)`` (:func:`_hsic_terms`):
    ``n (n - 3) HSIC_1(K, L[p][:, p]) = <K, L[p][:, p]> - n/(n-2) k.l[p] + tr K tr L / ((n-1)(n-2))``.
    Only the first two terms depend on ``p``: :func:`_gram_inner` (shared with linear CKA,
    passed as ``inner`` when already computed) and a gather. Raises ValueError when a
    side's ``HSIC_1`` with itself is 0 up to rounding.
    """
    n = A.shape[0]
    (k, trk, hx), (l, trl, hy) = _hsic_terms(A, sx), _hsic_terms(B, sy)  # noqa: E741  (l = diag(L))
    if not (hx > 0 and hy > 0):
        raise ValueError(
            "the unbiased HSIC of a side with itself is 0 up to rounding (e.g. "
            "orthonormal rows, or all rows but one identical); debiased CKA is undefined"
        )
    inner = _gram_inner(A, B, perms, batch_size, route) if inner is None else inner
    kl = l[torch.from_numpy(perms)] @ k  # (N,)
    return ((inner - n / (n - 2) * kl + trk * trl / ((n - 1) * (n - 2))) / (hx * hy).sqrt()).numpy()


def debiased_cka(X: ArrayLike, Y: ArrayLike) -> float:
    """Debiased linear CKA of ``X`` ``(n, d_x)``, ``Y`` ``(n, d_y)`` in [-1, 1], ``n >= 4``; see the module."""
    Xt, Yt = check_pair(X, Y, 4)
    (A, sx), (B, sy) = centred_factor(Xt, "X", "CKA"), centred_factor(Yt, "Y", "CKA")
    return float(_debiased_cka_null(A, sx, B, sy, identity(Xt.shape[0]), None, "cross")[0])


def debiased_cka_null(
    X: ArrayLike, Y: ArrayLike, n_shuffles: int, seed: int, batch_size: int | None = None, route: str = "auto"
) -> np.ndarray:
    """Debiased CKA values ``(n_shuffles,)`` of ``X`` against row-permuted ``Y``.

    The SVDs, diagonals, traces and self-HSICs are computed once; per shuffle only
    ``<K, L[perm][:, perm]>`` (as in :func:`cka_null`, same ``route`` and ``batch_size``) and
    ``diag(K).diag(L)[perm]`` change.
    """
    Xt, Yt = check_pair(X, Y, 4)
    (A, sx), (B, sy) = centred_factor(Xt, "X", "CKA"), centred_factor(Yt, "Y", "CKA")
    perms = permutations(Xt.shape[0], n_shuffles, seed)
    return _debiased_cka_null(A, sx, B, sy, perms, batch_size, route)


# ----------------------------------------------------------------------------- registered metrics


def _inner(pair: Pair, key: str, perms: np.ndarray, route: str) -> torch.Tensor:
    """:func:`_gram_inner` of the pair's factors, computed once per ``key`` for both CKAs."""
    (A, _), (B, _) = pair.factors("CKA")
    return pair.once(f"inner {key}", lambda: _gram_inner(A, B, perms, None, route))


def _cka_score(f: Any) -> Any:
    """The observed score of ``f`` (:func:`_cka_null` or :func:`_debiased_cka_null`): the identity
    pairing by the cross route."""

    def score(pair: Pair) -> float:
        (A, sx), (B, sy) = pair.factors("CKA")
        ident = identity(pair.n)
        return float(f(A, sx, B, sy, ident, None, "cross", _inner(pair, "observed", ident, "cross"))[0])

    return score


def _cka_pair_null(f: Any) -> Any:
    """The re-pairing null of ``f`` by the cheaper route."""

    def null(pair: Pair, n_shuffles: int) -> np.ndarray:
        (A, sx), (B, sy) = pair.factors("CKA")
        perms = pair.perms(n_shuffles)
        return f(A, sx, B, sy, perms, None, "auto", _inner(pair, f"null {n_shuffles}", perms, "auto"))

    return null


def _self_hsic_zero(pair: Pair) -> dict[str, Any]:
    return {"self_hsic_zero": not all(_hsic_terms(F, s)[2] > 0 for F, s in pair.factors("CKA"))}


def _debiased_rule(n: int, **extra: Any) -> str | None:
    if extra.get("self_hsic_zero"):
        return (
            "debiased CKA: the unbiased HSIC of a side with itself is 0 (e.g. all rows but "
            "one identical), so the ratio is undefined"
        )
    return None


register(
    Metric("cka", "linear CKA", 3, _cka_score(_cka_null), _cka_pair_null(_cka_null), version=1, subsets="scorable")
)
register(
    Metric(
        "cka_debiased",
        "debiased CKA",
        4,
        _cka_score(_debiased_cka_null),
        _cka_pair_null(_debiased_cka_null),
        version=1,
        checks=_self_hsic_zero,
        rule=_debiased_rule,
        subsets="scorable",
    )
)
