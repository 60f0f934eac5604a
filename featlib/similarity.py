"""Compare the geometry of paired feature decoder vectors of two models.

Metrics (:data:`METRICS`, in summary order): SVCCA, held-out CCA, RSA, linear CKA, debiased linear CKA,
mutual k-nearest-neighbour alignment and Procrustes similarity. Each is defined, with its null and its
not-scorable rule, in its family's module of :mod:`featlib.metrics` (``cca``, ``rsa``, ``cka``, ``knn``,
``procrustes``), which registers it (:class:`featlib.metrics.Metric`); this module runs any registered
metric by name (:func:`compare_with_nulls`, :func:`scores`), and an unregistered name is a ValueError.
Its single-metric functions (:func:`svcca`, :func:`rsa`, :func:`linear_cka`, ...) are re-exported here.

Conventions
-----------
* ``X`` is ``(n, d_x)`` and ``Y`` is ``(n, d_y)``: row ``i`` of ``X`` and row ``i``
  of ``Y`` are a matched pair (e.g. decoder vectors of matched features). The
  widths may differ; ``n`` must agree. The single-metric functions need ``n >= 3``
  (debiased CKA 4, held-out CCA 8); :func:`compare_with_nulls` and :func:`scores` take
  any ``n`` and report a metric that is degenerate at that ``n`` as not scorable.
* Inputs may be numpy arrays or torch tensors (any dtype or device). Everything is
  computed on the CPU in float64; results are Python floats or numpy arrays.
* Every metric is "higher = more similar", so one p-value convention applies.
* Nulls re-pair the data by permuting the rows of ``Y`` relative to ``X``. The
  permutations come from :func:`permutations`, so the same seed gives the same
  re-pairings for every metric (held-out CCA re-pairs its test halves only, with
  ``permutations(n_test, n_shuffles, seed)``, and combines per-split p-values: see
  :mod:`featlib.metrics.cca`). p-values are ``(1 + #(null >= observed - tol)) / (1 + N)`` with
  ``tol = 1e-9 * max(1, |observed|)``: null values equal to the observed score up to
  rounding count as ties, so a degenerate metric whose every re-pairing reproduces the
  observed score gets ``p = 1`` (with an exact ``>=``, rounding alone could give any p).
  ``null_std`` is the population standard deviation (``ddof=0``).

Not scorable
------------
A metric with too few pairs for its value to mean anything is reported by
:func:`compare_with_nulls` as not scorable (no score, no p-value, a one-line reason from
:func:`not_scorable`) and by :func:`scores` as NaN. One rule per metric (its module has it): fewer
pairs than its ``min_pairs`` (SVCCA, linear CKA, Procrustes 3; RSA, debiased CKA 4; held-out CCA 8),
then its own rule (SVCCA: ``max(k_x, k_y) > n / 2``; held-out CCA: no split scored; debiased CKA: a
side's unbiased self-HSIC is 0; mutual k-NN: ``k >= (n - 1) / 2``).

Null computations reuse everything that does not depend on the pairing
(:class:`featlib.metrics.common.Pair`): the centred SVD of each side (both CKAs, Procrustes,
held-out CCA, SVCCA), the k-NN sets (mutual k-NN), the truncated bases (SVCCA), the distance ranks
(RSA) and the ``<K, L[p][:, p]>`` values (both CKAs).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from .metrics import METRIC_NAMES, METRICS, SUBSET_METRICS, Metric, registry
from .metrics.cca import (
    HELDOUT_MIN_PAIRS,
    HELDOUT_SPLITS,
    HeldoutCCAResult,
    SVCCAResult,
    canonical_correlations,
    heldout_cca,
    heldout_cca_null,
    heldout_p_value,
    pca_truncate,
    svcca,
    svcca_null,
)
from .metrics.cka import cka_null, debiased_cka, debiased_cka_null, linear_cka
from .metrics.common import TIE_TOL, ArrayLike, Pair, check_count, check_pair, check_variance, p_value, permutations
from .metrics.knn import KNN_DENSE_MAX, KNN_K, mutual_knn, mutual_knn_null
from .metrics.procrustes import procrustes_distance, procrustes_null, procrustes_similarity
from .metrics.rsa import DISTANCE_DECIMALS, correlation_distances, rsa, rsa_null

__all__ = [
    "METRICS",
    "METRIC_NAMES",
    "SUBSET_METRICS",
    "HELDOUT_SPLITS",
    "KNN_K",
    "HELDOUT_MIN_PAIRS",
    "KNN_DENSE_MAX",
    "DISTANCE_DECIMALS",
    "TIE_TOL",
    "SVCCAResult",
    "HeldoutCCAResult",
    "canonical_correlations",
    "pca_truncate",
    "svcca",
    "svcca_null",
    "heldout_cca",
    "heldout_cca_null",
    "heldout_p_value",
    "rsa",
    "rsa_null",
    "correlation_distances",
    "linear_cka",
    "cka_null",
    "debiased_cka",
    "debiased_cka_null",
    "mutual_knn",
    "mutual_knn_null",
    "procrustes_similarity",
    "procrustes_distance",
    "procrustes_null",
    "permutations",
    "p_value",
    "not_scorable",
    "metric_versions",
    "compare_with_nulls",
    "compare",
    "scores",
    "random_subset_null",
]


def metric_versions(metrics: Sequence[str] = METRICS) -> dict[str, int]:
    """``{name: version}`` of ``metrics`` (registered; default :data:`METRICS`): the metric set and code
    versions that the geometry and calibration cache keys record."""
    return registry.versions(tuple(metrics))


def _summary(observed: float, null: np.ndarray, p: float) -> dict[str, float]:
    """Observed score, null mean / population std ``(N,)`` and p-value as Python floats."""
    return {"score": float(observed), "null_mean": float(null.mean()), "null_std": float(null.std()), "p": float(p)}


# ----------------------------------------------------------------------------- not scorable


def _not_scorable(m: Metric, n: int, **extra: Any) -> str | None:
    if n < m.min_pairs:
        return f"{m.display} needs at least {m.min_pairs} pairs, got {n}"
    return m.rule(n, **extra) if m.rule is not None else None


def not_scorable(metric: str, n: int, **extra: Any) -> str | None:
    """Why ``metric`` is not scorable with ``n`` pairs, as one line, or None when it is.

    The rules are those of the metric's module: fewer than its ``min_pairs`` pairs, then its own
    rule. ``extra`` holds what a rule needs besides ``n``: ``k_x`` and ``k_y`` (components kept) for
    ``"svcca"`` when ``n >= 3``, ``k`` for ``"mutual_knn"``, optionally ``splits_scored`` for
    ``"svcca_heldout"`` and ``self_hsic_zero`` (a side's unbiased HSIC with itself is 0) for
    ``"cka_debiased"``; other keys are ignored. An unregistered ``metric`` is a ValueError.
    """
    return _not_scorable(registry.get(metric), n, **extra)


# ----------------------------------------------------------------------------- all metrics


def _extra(pair: Pair, m: Metric) -> dict[str, Any]:
    """The summary extras of ``m`` for ``pair`` (also what its rule needs)."""
    return m.extra(pair) if m.extra is not None else {}


def _reason(pair: Pair, m: Metric) -> str | None:
    """:func:`not_scorable` of ``m`` for ``pair`` (with its checks once ``n`` reaches ``min_pairs``)."""
    checks = _extra(pair, m)
    if m.checks is not None and pair.n >= m.min_pairs:
        checks |= m.checks(pair)
    return _not_scorable(m, pair.n, **checks)


def _check_args(metrics: Sequence[str], variance: float, knn_k: int, n_splits: int) -> tuple[Metric, ...]:
    """The registered metrics named by ``metrics`` (non-empty, de-duplicated), the other arguments checked."""
    if isinstance(metrics, str):
        metrics = (metrics,)
    metrics = tuple(dict.fromkeys(metrics))
    if not metrics:
        raise ValueError(f"metrics must name at least one metric; registered metrics: {', '.join(registry.names())}")
    resolved = tuple(registry.get(m) for m in metrics)
    check_count(knn_k, "knn_k")
    check_variance(variance)
    check_count(n_splits, "n_splits")
    return resolved


def compare_with_nulls(
    X: ArrayLike,
    Y: ArrayLike,
    n_shuffles: int = 1000,
    seed: int = 0,
    variance: float = 0.99,
    metrics: Sequence[str] = METRICS,
    knn_k: int = KNN_K,
    heldout_splits: int = HELDOUT_SPLITS,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Similarity metrics of ``X`` ``(n, d_x)`` vs ``Y`` ``(n, d_y)`` with re-pairing nulls.

    ``metrics`` names registered metrics (default: :data:`METRICS`, all of featlib's). Every null except
    held-out CCA's uses the same ``permutations(n, n_shuffles, seed)``; held-out CCA
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
    Xt, Yt = check_pair(X, Y, 0)
    if n_shuffles < 1:
        raise ValueError(f"n_shuffles must be >= 1, got {n_shuffles}")
    resolved = _check_args(metrics, variance, knn_k, heldout_splits)
    n = Xt.shape[0]
    pair = Pair(Xt, Yt, variance, knn_k, heldout_splits, seed)
    summary: dict[str, Any] = {"n": int(n)}
    nulls: dict[str, np.ndarray] = {}
    for m in resolved:
        extra, reason = _extra(pair, m), _reason(pair, m)
        if reason is not None:
            summary[m.name] = {"score": None, "null_mean": None, "null_std": None, "p": None, "reason": reason, **extra}
            continue
        observed, null = m.score(pair), m.null(pair, n_shuffles)
        p = p_value(observed, null) if m.p_value is None else m.p_value(pair, observed, null)
        nulls[m.name] = null
        summary[m.name] = {**_summary(observed, null, p), **extra}
    return summary, nulls


def compare(
    X: ArrayLike,
    Y: ArrayLike,
    n_shuffles: int = 1000,
    seed: int = 0,
    variance: float = 0.99,
    metrics: Sequence[str] = METRICS,
    knn_k: int = KNN_K,
    heldout_splits: int = HELDOUT_SPLITS,
) -> dict[str, Any]:
    """JSON-serialisable summary of :func:`compare_with_nulls` (null arrays left out).

    ``{"n", metric: entry}``, one entry per requested metric. A scorable entry is
    ``{score, null_mean, null_std, p}`` plus the metric's extras: ``svcca``: ``k_x``, ``k_y``;
    ``svcca_heldout``: ``n_splits``, ``n_train``, ``n_test``, ``splits_scored``, ``k_x``,
    ``k_y`` (medians over the scored splits); ``mutual_knn``: ``k``; ``rsa``, ``cka``,
    ``cka_debiased``, ``procrustes``: none. Held-out CCA's ``p`` is :func:`heldout_p_value`
    (Simes' combination of the per-split p-values); its ``null_mean`` and ``null_std`` describe the
    mean over splits of the test-half re-pairings (a null too narrow to read p off).
    A not-scorable entry has ``None`` for the four numbers, a ``reason`` and the extras
    known (``svcca``: ``k_x``, ``k_y`` when ``n >= 3``; ``svcca_heldout``: ``n_splits``,
    ``n_train``, ``n_test`` and, when ``n >= 8``, ``splits_scored``).
    """
    return compare_with_nulls(X, Y, n_shuffles, seed, variance, metrics, knn_k, heldout_splits)[0]


def scores(
    X: ArrayLike,
    Y: ArrayLike,
    variance: float = 0.99,
    knn_k: int = KNN_K,
    metrics: Sequence[str] = METRICS,
    heldout_splits: int = HELDOUT_SPLITS,
    seed: int = 0,
) -> dict[str, float]:
    """Observed scores ``{metric: float}`` of ``X`` ``(n, d_x)`` vs ``Y`` ``(n, d_y)``, without nulls.

    The scores of :func:`compare_with_nulls` with the same arguments (held-out CCA's splits
    seeded by ``seed``), NaN where a metric is not scorable (:func:`not_scorable`); any ``n``
    is accepted. For repeated subsampling: one centred SVD per side serves SVCCA, both
    CKAs, Procrustes and held-out CCA, and ``<K, L>`` both CKAs. Raises ValueError on
    NaN/inf input, on a side with zero variance (``n >= 3``) and on bad arguments.
    """
    Xt, Yt = check_pair(X, Y, 0)
    resolved = _check_args(metrics, variance, knn_k, heldout_splits)
    pair = Pair(Xt, Yt, variance, knn_k, heldout_splits, seed)
    return {m.name: float("nan") if _reason(pair, m) else m.score(pair) for m in resolved}


def random_subset_null(
    X_all: ArrayLike,
    Y_all: ArrayLike,
    n: int,
    n_samples: int,
    seed: int,
    variance: float = 0.99,
    metrics: Sequence[str] = ("svcca", "rsa"),
) -> dict[str, np.ndarray]:
    """Scores ``{metric: (n_samples,)}`` of random same-size sets of real pairs.

    Each sample draws ``n`` distinct rows (``default_rng(seed).choice``, without
    replacement) shared by ``X_all`` ``(N, d_x)`` and ``Y_all`` ``(N, d_y)``. ``metrics`` name
    metrics that can be drawn (:data:`SUBSET_METRICS`: a registered metric's ``subsets``); each value
    is the plain score (SVCCA also where ``k > n/2``, as for the observed set it is compared with), NaN
    for a draw on which the metric is otherwise not scorable (debiased CKA: a side's unbiased self-HSIC
    is 0). A metric that needs more than ``n`` pairs raises ValueError.
    """
    Xt, Yt = check_pair(X_all, Y_all)
    if not 3 <= n <= Xt.shape[0]:
        raise ValueError(f"n must be in [3, {Xt.shape[0]}], got {n}")
    check_variance(variance)
    metrics = tuple(dict.fromkeys(metrics))
    drawable = tuple(m for m in registry.names() if registry.get(m).subsets)
    if any(m not in drawable for m in metrics):
        raise ValueError(f"metrics must be a subset of {drawable}, got {metrics!r}")
    resolved = tuple(registry.get(m) for m in metrics)
    for m in resolved:
        if n < m.min_pairs:
            raise ValueError(_not_scorable(m, n))
    rng = np.random.default_rng(seed)
    out = {m: np.empty(n_samples) for m in metrics}
    for s in tqdm(range(n_samples), desc="random subsets", disable=n_samples < 50, position=0, leave=False):
        idx = torch.from_numpy(np.sort(rng.choice(Xt.shape[0], size=n, replace=False)))
        pair = Pair(Xt[idx], Yt[idx], variance, KNN_K, HELDOUT_SPLITS)
        for m in resolved:
            out[m.name][s] = np.nan if m.subsets == "scorable" and _reason(pair, m) else m.score(pair)
    return out
