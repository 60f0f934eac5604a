"""Where a cross-model score sits between a floor and a ceiling.

A cross-model comparison (model A's SAE vs model B's) is read against two references that go
through the same chain (SAE training, codes, matching, filters) at the same layers:

* **ceilings**: each model against itself, its SAE against a second one trained with another seed
  (how alike can two dictionaries of one network be?);
* **floors**: each model against a seeded random re-initialisation of its own architecture, with
  its SAE trained identically (what token identity and architecture give without any learning).

Their final pairs differ in number and every metric's level depends on the number of pairs (SVCCA's
chance level grows with k / n), so all are scored at one size, ``m = ⌊fraction · n_min⌋`` pairs, ``n_min``
the fewest final pairs of the comparisons involved. A comparison's score is its **expected score at m
pairs**: the mean over m-subsets of its pairs. **Interval (half-sampling):** ``draws`` replicates; replicate
``b`` keeps a random half of each comparison's pairs (without replacement, seeded) and scores it as the mean
over ``inner`` subsets of m pairs of that half (one where the half is only m pairs). The spread of a statistic
over random halves of a sample approximates its sampling spread over whole samples, so the replicates carry
the uncertainty of each comparison's own pairs: a comparison with many pairs (the cross, the ceilings) is
known better than one with few (a random-model floor), which an interval made of single subsets of m pairs
(the method before) did not see — it gave every comparison the spread of a sample of ``n_min`` pairs.
Per replicate ``b``: ``cross_b``, ``ceiling_b`` (the mean over the ceilings: both models when both are
measured), ``floor_b`` (likewise) and ``null_b`` (the cross replicate with its rows of side B re-paired at
random within each subset: the re-pairing null at the same ``m``). A score is the mean over replicates, its
interval their 2.5 and 97.5 % points. The **calibrated score** is ``(cross − floor) / (ceiling − floor)`` of
the means (0 = the random-model floor, 1 = the seed ceiling); its interval the 2.5 and 97.5 % points of the
per-replicate ratios. ``fraction`` is at most 1/2 in a profile (a half must hold m pairs); ``fraction = 1``
scores every comparison on all its pairs in every replicate (no interval: for known answers).

Verdicts: *not scorable* (the metric is degenerate at ``m`` pairs in some draw, see
:func:`featlib.similarity.not_scorable`, or the ceiling is not above the floor), *not above the
random-model floor* (the cross mean is not above the floor's 97.5 % point), else *above the floor*.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from . import similarity
from .metrics import registry

if TYPE_CHECKING:
    import pandas as pd

Pairs = tuple[np.ndarray, np.ndarray]  # X (n, d_x), Y (n, d_y): row i of both is pair i
ROLES = ("cross", "ceiling", "floor", "null")
ABOVE, NOT_ABOVE, NOT_SCORABLE = "above the floor", "not above the random-model floor", "not scorable"


@dataclass(frozen=True)
class Band:
    """A score over subsampling draws: the mean and the 2.5–97.5 % interval (NaN: not scorable)."""

    mean: float
    lo: float
    hi: float

    @classmethod
    def of(cls, draws: np.ndarray) -> Band:
        """The band of ``draws`` ``(B,)``; NaN when any draw is NaN."""
        if draws.size == 0 or np.isnan(draws).any():
            return cls(np.nan, np.nan, np.nan)
        lo, hi = np.percentile(draws, [2.5, 97.5])
        return cls(float(draws.mean()), float(lo), float(hi))


@dataclass(frozen=True)
class Calibration:
    """One metric of one cell: cross, ceiling, floor and re-pairing null at ``m`` pairs, and the
    calibrated score with its interval and verdict."""

    metric: str
    m: int  # pairs per draw
    draws: int
    cross: Band
    ceiling: Band
    floor: Band
    null: Band
    calibrated: Band
    verdict: str  # ABOVE, NOT_ABOVE, or NOT_SCORABLE + ": " + the reason

    @property
    def scorable(self) -> bool:
        return not self.verdict.startswith(NOT_SCORABLE)

    @property
    def above_floor(self) -> bool:
        return self.verdict == ABOVE


def subsample_size(ns: Sequence[int], fraction: float) -> int:
    """``⌊fraction · min(ns)⌋``: the pairs per draw for comparisons of ``ns`` final pairs."""
    if not 0 < fraction <= 1:
        raise ValueError(f"calibration.fraction must be in (0, 1], got {fraction}")
    return int(fraction * min(ns))


def draw_scores(
    X: np.ndarray,
    Y: np.ndarray,
    m: int,
    draws: int,
    seed: int | Sequence[int],
    *,
    inner: int = 1,
    repair: bool = False,
    variance: float = 0.99,
    knn_k: int = similarity.KNN_K,
    heldout_splits: int = similarity.HELDOUT_SPLITS,
    metrics: Sequence[str] = similarity.METRICS,
) -> np.ndarray:
    """``(draws, len(metrics))`` replicate scores of the pairs ``X`` ``(n, d_x)``, ``Y`` ``(n, d_y)``: replicate
    ``b`` keeps a random half of the pairs (``max(n // 2, m)`` of them, without replacement) and averages the
    scores of ``inner`` subsets of ``m`` pairs of it (one subset where the half holds only ``m``), with
    ``numpy.random.default_rng(seed)``; with ``repair`` each subset's Y rows are also permuted (the re-pairing
    null). Held-out CCA's splits of subset ``i`` of replicate ``b`` are seeded with ``b · inner + i``. NaN where a
    metric is not scorable in some subset."""
    n = len(X)
    if not 0 <= m <= n:
        raise ValueError(f"cannot draw m = {m} of {n} pairs")
    if inner < 1:
        raise ValueError(f"calibration.inner_draws must be at least 1, got {inner}")
    out = np.full((draws, len(metrics)), np.nan)
    if m < 3:  # too few pairs for any metric
        return out
    rng = np.random.default_rng(seed)
    half = max(n // 2, m)
    subsets = inner if half > m else 1
    for b in range(draws):
        keep = rng.choice(n, size=half, replace=False)
        acc = np.empty((subsets, len(metrics)))
        for i in range(subsets):
            idx = keep[rng.choice(half, size=m, replace=False)]
            idy = idx[rng.permutation(m)] if repair else idx
            s = similarity.scores(
                X[idx],
                Y[idy],
                variance=variance,
                knn_k=knn_k,
                metrics=metrics,
                heldout_splits=heldout_splits,
                seed=b * inner + i,
            )
            acc[i] = [s[k] for k in metrics]
        out[b] = acc.mean(axis=0)
    return out


def summarise(
    metric: str, m: int, cross: np.ndarray, ceilings: list[np.ndarray], floors: list[np.ndarray], null: np.ndarray
) -> Calibration:
    """The :class:`Calibration` of one metric from its per-draw scores ``(B,)``: the cross draws, one
    array per ceiling and per floor (averaged per draw), and the re-pairing null draws."""
    ceiling, floor = np.mean(ceilings, axis=0), np.mean(floors, axis=0)
    bands = {"cross": Band.of(cross), "ceiling": Band.of(ceiling), "floor": Band.of(floor), "null": Band.of(null)}
    name = registry.display(metric)
    missing = [role for role, band in bands.items() if np.isnan(band.mean)]
    if missing:
        verdict = f"{NOT_SCORABLE}: {name} is degenerate at m = {m} pairs ({', '.join(missing)})"
    elif not bands["ceiling"].mean > bands["floor"].mean:
        top, bottom = bands["ceiling"].mean, bands["floor"].mean
        verdict = f"{NOT_SCORABLE}: the seed ceiling ({top:.3f}) is not above the floor ({bottom:.3f})"
    else:
        verdict = ABOVE if bands["cross"].mean > bands["floor"].hi else NOT_ABOVE
    if verdict.startswith(NOT_SCORABLE):
        calibrated = Band(np.nan, np.nan, np.nan)
    else:
        ratio = (cross - floor) / (ceiling - floor)
        point = (bands["cross"].mean - bands["floor"].mean) / (bands["ceiling"].mean - bands["floor"].mean)
        lo, hi = np.percentile(ratio, [2.5, 97.5])
        calibrated = Band(float(point), float(lo), float(hi))
    return Calibration(metric, m, len(cross), **bands, calibrated=calibrated, verdict=verdict)


def calibrate_pairs(
    cross: Pairs,
    ceilings: list[Pairs],
    floors: list[Pairs],
    *,
    fraction: float = 0.5,
    draws: int = 50,
    inner: int = 1,
    seed: int = 0,
    variance: float = 0.99,
    knn_k: int = similarity.KNN_K,
    heldout_splits: int = similarity.HELDOUT_SPLITS,
    metrics: Sequence[str] = similarity.METRICS,
) -> dict[str, Calibration]:
    """{metric: :class:`Calibration`} of the ``cross`` pairs between ``ceilings`` and ``floors`` (each a
    list of (X, Y) pair arrays; see the module doc for the method: ``draws`` replicates, each the mean of ``inner``
    subsets of a random half). Comparison ``i`` (cross 0, then the ceilings, then the floors) draws with
    ``default_rng([seed, i])``, the null with ``[seed, 2**31 - 1]``."""
    if not ceilings or not floors:
        raise ValueError("calibration needs at least one ceiling and one floor comparison")
    groups = [cross, *ceilings, *floors]
    m = subsample_size([len(x) for x, _ in groups], fraction)
    kw: dict[str, Any] = dict(
        inner=inner, variance=variance, knn_k=knn_k, heldout_splits=heldout_splits, metrics=metrics
    )
    scores = [draw_scores(x, y, m, draws, [seed, i], **kw) for i, (x, y) in enumerate(groups)]
    null = draw_scores(*cross, m, draws, [seed, 2**31 - 1], repair=True, **kw)
    nc = len(ceilings)
    return {
        k: summarise(
            k,
            m,
            scores[0][:, j],
            [s[:, j] for s in scores[1 : 1 + nc]],
            [s[:, j] for s in scores[1 + nc :]],
            null[:, j],
        )
        for j, k in enumerate(metrics)
    }


def calibration_table(cals: dict[str, Calibration]) -> pd.DataFrame:
    """One row per metric: m, each role's mean and interval, the calibrated score and interval, the verdict
    (no rows, the same columns, for no calibrations)."""
    import pandas as pd

    bands = ("null", "floor", "cross", "ceiling", "calibrated")
    columns = ["metric", "m", "draws", *(f"{b}{x}" for b in bands for x in ("", " lo", " hi")), "verdict"]
    rows = []
    for metric, c in cals.items():
        row = {"metric": metric, "m": c.m, "draws": c.draws}
        for role in bands:
            band = getattr(c, role)
            row |= {role: band.mean, f"{role} lo": band.lo, f"{role} hi": band.hi}
        rows.append(row | {"verdict": c.verdict})
    return pd.DataFrame(rows, columns=columns)
