"""SVCCA and held-out CCA (cross-validated SVCCA) of paired rows; registers ``svcca`` and ``svcca_heldout``.

* SVCCA: columns are centred, each side is truncated to the fewest principal
  components whose cumulative explained-variance *fraction* reaches ``variance``,
  and the score is the plain mean of the canonical correlations between the two
  truncated subspaces. Null: the truncated bases are computed once and the rows of
  Y's basis re-paired (:func:`svcca_null`).
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
  the mean over splits (the chance level), but the p-value is Simes' combination
  ``min_r S p_(r) / r`` of the ``S`` per-split p-values (:func:`heldout_p_value`): overlapping
  splits give positively correlated scores, so the mean's null is too narrow, and p read off it
  rejected unrelated data 3.5 times too often at the 5 % level (simulated, ``n = 60`` to ``100``);
  the earlier ``min(1, 2 mean_s p_s)`` never rejected them (0 of 200 below 0.05 at ``n = 100``).

Not scorable: SVCCA with ``n < 3`` or ``max(k_x, k_y) > n / 2`` (the canonical correlations of
unrelated subspaces grow with ``k / n`` and reach 1 at ``k_x + k_y >= n - 1``, so the chance level
saturates); held-out CCA with ``n < 8`` (train and test halves of at least 4 pairs), or when no
split scored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .common import (
    F64,
    ArrayLike,
    Pair,
    centred_factor,
    centred_svd,
    check_count,
    check_pair,
    check_variance,
    n_components,
    p_value,
    permutations,
    to_tensor,
)
from .registry import Metric, register

#: Fewest pairs for SVCCA.
SVCCA_MIN_PAIRS = 3
#: Held-out CCA's random half splits per score (the default of :func:`featlib.similarity.compare_with_nulls`,
#: of the geometry and calibration steps).
HELDOUT_SPLITS = 10


def _truncate(U: torch.Tensor, s: torch.Tensor, variance: float) -> tuple[torch.Tensor, int]:
    """The leading ``k`` columns ``(n, k)`` of ``U`` by the variance rule on ``s^2``, and ``k``."""
    k = n_components(s.square(), variance)
    return U[:, :k], k


def _pca_basis(Xt: torch.Tensor, variance: float, name: str = "X") -> tuple[torch.Tensor, int]:
    """Orthonormal basis ``(n, k)`` of the top-``k`` centred principal components."""
    check_variance(variance)
    return _truncate(*centred_svd(Xt, name, "PCA truncation"), variance)


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
    U, k = _pca_basis(to_tensor(X, "X"), variance)
    return U.numpy(), k


def _cancorr(Ux: torch.Tensor, Uy: torch.Tensor) -> torch.Tensor:
    """Singular values of ``Ux^T Uy`` ``(kx, ky)``, clipped to [0, 1], descending."""
    return torch.linalg.svdvals(Ux.T @ Uy).clamp(0.0, 1.0)


def canonical_correlations(Ux: ArrayLike, Uy: ArrayLike) -> np.ndarray:
    """Canonical correlations ``(min(kx, ky),)`` between two centred orthonormal bases.

    ``Ux`` is ``(n, kx)`` and ``Uy`` is ``(n, ky)``, both with centred orthonormal
    columns (as returned by :func:`pca_truncate`). Sorted descending.
    """
    Ut, Vt = to_tensor(Ux, "Ux"), to_tensor(Uy, "Uy")
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
    Xt, Yt = check_pair(X, Y)
    (Ux, kx), (Uy, ky) = _pca_basis(Xt, variance, "X"), _pca_basis(Yt, variance, "Y")
    rho = _cancorr(Ux, Uy)
    return SVCCAResult(float(rho.mean()), rho.numpy(), kx, ky, Xt.shape[0])


def _svcca_null(Ux: torch.Tensor, Uy: torch.Tensor, perms: np.ndarray, batch_size: int) -> np.ndarray:
    """SVCCA ``(N,)`` of ``Ux`` ``(n, kx)`` vs ``Uy[p]``, one per row ``p`` of ``perms`` ``(N, n)``."""
    P, out = torch.from_numpy(perms), torch.empty(len(perms), dtype=F64)
    for start in range(0, len(P), batch_size):
        idx = P[start : start + batch_size]  # (b, n)
        out[start : start + len(idx)] = _cancorr(Ux, Uy[idx]).mean(-1)  # (kx, n) @ (b, n, ky)
    return out.numpy()


def svcca_null(
    X: ArrayLike, Y: ArrayLike, n_shuffles: int, seed: int, variance: float = 0.99, batch_size: int = 256
) -> np.ndarray:
    """SVCCA scores ``(n_shuffles,)`` of ``X`` against row-permuted ``Y``.

    The truncated bases are computed once: permuting rows of ``Uy`` keeps it centred
    and orthonormal, so each shuffle is a batched ``svdvals(Ux^T Uy[perm])``.
    """
    Xt, Yt = check_pair(X, Y)
    (Ux, _), (Uy, _) = _pca_basis(Xt, variance, "X"), _pca_basis(Yt, variance, "Y")
    return _svcca_null(Ux, Uy, permutations(Xt.shape[0], n_shuffles, seed), batch_size)


#: Train-half components with power at most this fraction of the side's total power (all ``n``
#: pairs) are numerical zeros: held-out CCA never keeps them.
_POWER_TOL = 1e-10
#: Fewest pairs for held-out CCA: train and test halves of at least 4.
HELDOUT_MIN_PAIRS = 8


def _split_pca(
    F: torch.Tensor, K: torch.Tensor | None, tr: torch.Tensor, te: torch.Tensor, variance: float, tol: float, cap: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Train scores ``(m, k)`` (orthonormal columns) and test scores ``(n_test, k)`` of one side.

    ``F`` ``(n, r)`` is the side's centred factor; rows ``tr`` ``(m,)`` are centred with their
    mean, ``k`` is the variance rule on the train powers, at most ``cap`` and counting only
    powers above ``tol``; test rows ``te`` are centred with the train mean. With ``K = F F^T``
    ``(n, n)`` (given when ``m <= r``) this is an eigendecomposition of the double-centred
    ``(m, m)`` train Gram block, else of the ``(r, r)`` train scatter matrix.
    """
    if K is not None:
        Ktr, Kte = K[tr][:, tr], K[te][:, tr]  # (m, m), (n_test, m)
        row = Ktr.mean(1)  # x_i . mu
        lam, E = torch.linalg.eigh(Ktr - row[:, None] - row + row.mean())
        lam, E = lam.flip(0), E.flip(1)
        k = _kept(lam, variance, tol, cap)
        return E[:, :k], (Kte - Kte.mean(1, keepdim=True) - row + row.mean()) @ (E[:, :k] / lam[:k])
    mu = F[tr].mean(0)
    Ftr = F[tr] - mu
    lam, V = torch.linalg.eigh(Ftr.T @ Ftr)
    lam, V = lam.flip(0), V.flip(1)
    k = _kept(lam, variance, tol, cap)
    W = V[:, :k] / lam[:k].sqrt()  # (r, k) directions
    return Ftr @ W, (F[te] - mu) @ W


def _kept(lam: torch.Tensor, variance: float, tol: float, cap: int) -> int:
    """Components kept of descending powers ``lam``: the variance rule, at most ``cap``, all ``> tol``."""
    above = int((lam > tol).sum())
    return min(n_components(lam.clamp(min=0), variance), above, cap) if above else 0


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


def _fit_splits(
    A: torch.Tensor, sx: torch.Tensor, B: torch.Tensor, sy: torch.Tensor, variance: float, n_splits: int, seed: int
) -> _Splits:
    """Held-out CCA splits of centred factors ``A`` ``(n, r_x)``, ``B`` ``(n, r_y)``; see the module."""
    n = A.shape[0]
    m = n // 2
    cap = (m - 1) // 2
    sides = [
        (F, F @ F.T if m <= F.shape[1] else None, _POWER_TOL * float(s.square().sum())) for F, s in ((A, sx), (B, sy))
    ]
    z: list[tuple[torch.Tensor, torch.Tensor] | None] = []
    ks = np.zeros((2, n_splits), dtype=np.int64)
    for i, perm in enumerate(torch.from_numpy(permutations(n, n_splits, seed))):
        tr, te = perm[:m], perm[m:]
        (Ux, Tx), (Uy, Ty) = (_split_pca(F, K, tr, te, variance, tol, cap) for F, K, tol in sides)
        ks[:, i] = Ux.shape[1], Uy.shape[1]
        if not ks[:, i].all():
            z.append(None)
            continue
        P, _, Qh = torch.linalg.svd(Ux.T @ Uy, full_matrices=False)  # (k_x, c), (c, k_y)
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


def _heldout_splits(X: ArrayLike, Y: ArrayLike, variance: float, n_splits: int, seed: int) -> _Splits:
    Xt, Yt = check_pair(X, Y, HELDOUT_MIN_PAIRS)
    check_variance(variance)
    check_count(n_splits, "n_splits")
    A, sx = centred_factor(Xt, "X", "held-out CCA")
    B, sy = centred_factor(Yt, "Y", "held-out CCA")
    return _fit_splits(A, sx, B, sy, variance, n_splits, seed)


def heldout_cca(
    X: ArrayLike, Y: ArrayLike, variance: float = 0.99, n_splits: int = HELDOUT_SPLITS, seed: int = 0
) -> HeldoutCCAResult:
    """Held-out CCA of ``X`` ``(n, d_x)`` and ``Y`` ``(n, d_y)``, ``n >= 8``; see the module notes.

    Split ``s`` trains on the first ``n // 2`` entries of row ``s`` of
    ``permutations(n, n_splits, seed)`` and tests on the rest. Each side keeps at most
    ``(n // 2 - 1) // 2`` train components (so the train-half CCA is not degenerate) and
    all ``min(k_x, k_y)`` canonical components are averaged.
    """
    sp = _heldout_splits(X, Y, variance, n_splits, seed)
    return HeldoutCCAResult(sp.score, sp.split_scores(), sp.k_x, sp.k_y, sp.n_train, sp.n_test)


def heldout_cca_null(
    X: ArrayLike, Y: ArrayLike, n_shuffles: int, seed: int, variance: float = 0.99, n_splits: int = HELDOUT_SPLITS
) -> np.ndarray:
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
    """p-value of held-out CCA: Simes' combination ``min(1, min_r S p_(r) / r)`` of the ``S`` scored
    splits' p-values ``p_(1) <= ... <= p_(S)``.

    ``p_s = p_value(split_scores[s], split_nulls[s])`` (``(n_splits,)`` and ``(n_splits, N)``,
    NaN for skipped splits) is an exact permutation p-value given split ``s``'s train half.
    The splits share pairs, so their scores are positively correlated (0.19 to 0.32 for
    unrelated data, ``n = 12`` to ``200``), and the mean of independently re-paired split scores
    spreads about half as much as the observed mean: reading p off that null rejects about 3.5
    times too often at the 5 % level. Simes' test is exact for independent p-values and valid
    for positively dependent ones (PRDS: Sarkar 1998; Benjamini & Yekutieli 2001), such as
    one-sided tests of jointly Gaussian scores with non-negative correlations, which the splits'
    scores approximately are (assumed, not proven; the simulations check the level). On
    unrelated data it rejects 3.8 to 6.5 % at the 5 % level (400 sets each of six sizes,
    ``n = 12`` to ``200``, 1,000 shuffles); its median p is 0.59 to 0.66, not 0.5: the splits'
    agreement makes it conservative above the small levels. The earlier
    ``min(1, 2 mean_s p_s)``, valid under any dependence (Rueschendorf 1982; Vovk & Wang 2020),
    needs a mean p of 0.025 for p = 0.05, which correlated splits of unrelated data almost never
    reach: 0 of 2,400 below 0.05 in the same simulation (median p 0.97 to 1). A permutation
    test of the mean score that refits every split per re-pairing is exact too, but costs
    ``n_splits`` refits per shuffle (each an eigendecomposition of an ``(n / 2, n / 2)`` matrix:
    about 10 minutes for 1,000 pairs and 1,000 shuffles on one core).
    """
    used = ~np.isnan(split_scores)
    if not used.any():
        raise ValueError("held-out CCA: no split was scored")
    p = np.sort([p_value(t, null) for t, null in zip(split_scores[used], split_nulls[used])])
    return min(1.0, float(np.min(len(p) * p / np.arange(1, len(p) + 1))))


# ----------------------------------------------------------------------------- registered metrics


def _bases(pair: Pair) -> Any:
    """``((Ux, k_x), (Uy, k_y))``: the truncated bases of both sides."""
    return pair.once("bases", lambda: tuple(_truncate(U, s, pair.variance) for U, s in pair.svd("SVCCA")))


def _svcca_score(pair: Pair) -> float:
    (Ux, _), (Uy, _) = _bases(pair)
    return float(_cancorr(Ux, Uy).mean())


def _svcca_pair_null(pair: Pair, n_shuffles: int) -> np.ndarray:
    (Ux, _), (Uy, _) = _bases(pair)
    return _svcca_null(Ux, Uy, pair.perms(n_shuffles), 256)


def _svcca_extra(pair: Pair) -> dict[str, Any]:
    """``k_x``, ``k_y``: the components kept (from 3 pairs on)."""
    if pair.n < SVCCA_MIN_PAIRS:
        return {}
    (_, kx), (_, ky) = _bases(pair)
    return {"k_x": kx, "k_y": ky}


def _svcca_rule(n: int, **extra: Any) -> str | None:
    if max(extra["k_x"], extra["k_y"]) > n / 2:
        return (
            f"SVCCA keeps k = {max(extra['k_x'], extra['k_y'])} components of {n} pairs: "
            "k > n/2, chance level saturates"
        )
    return None


def _splits(pair: Pair) -> _Splits:
    (A, sx), (B, sy) = pair.factors("held-out CCA")
    return pair.once("splits", lambda: _fit_splits(A, sx, B, sy, pair.variance, pair.n_splits, pair.seed))


def _split_nulls(pair: Pair, n_shuffles: int) -> np.ndarray:
    """``(n_splits, n_shuffles)``: :meth:`_Splits.nulls` with ``permutations(n_test, n_shuffles, seed)``."""
    sp = _splits(pair)
    return pair.once(f"heldout nulls {n_shuffles}", lambda: sp.nulls(permutations(sp.n_test, n_shuffles, pair.seed)))


def _heldout_pair_null(pair: Pair, n_shuffles: int) -> np.ndarray:
    """The mean over scored splits of the per-split nulls (the chance level; not what p is read off)."""
    return np.nanmean(_split_nulls(pair, n_shuffles), axis=0)


def _heldout_pair_p(pair: Pair, observed: float, null: np.ndarray) -> float:
    return heldout_p_value(_splits(pair).split_scores(), _split_nulls(pair, len(null)))


def _heldout_extra(pair: Pair) -> dict[str, Any]:
    """``n_splits``, ``n_train``, ``n_test``; from 8 pairs on ``splits_scored`` and, when any, the median
    ``k_x``, ``k_y`` over the scored splits."""
    m = pair.n // 2
    out: dict[str, Any] = {"n_splits": pair.n_splits, "n_train": m, "n_test": pair.n - m}
    if pair.n >= HELDOUT_MIN_PAIRS:
        sp = _splits(pair)
        out["splits_scored"] = len(sp.scored)
        if sp.scored:
            used = sp.k_x > 0
            out |= {"k_x": float(np.median(sp.k_x[used])), "k_y": float(np.median(sp.k_y[used]))}
    return out


def _heldout_rule(n: int, **extra: Any) -> str | None:
    if extra.get("splits_scored") == 0:
        return "held-out CCA: no split has a train half with variance on both sides"
    return None


register(
    Metric(
        "svcca",
        "SVCCA",
        SVCCA_MIN_PAIRS,
        _svcca_score,
        _svcca_pair_null,
        version=1,
        extra=_svcca_extra,
        rule=_svcca_rule,
        uses=("variance",),
        subsets="plain",
    )
)
register(
    Metric(
        "svcca_heldout",
        "held-out CCA",
        HELDOUT_MIN_PAIRS,
        lambda pair: _splits(pair).score,
        _heldout_pair_null,
        version=2,
        p_value=_heldout_pair_p,
        extra=_heldout_extra,
        rule=_heldout_rule,
        uses=("variance", "n_splits", "seed"),
    )
)
