"""Notebooks 04–05: the geometry of a comparison's paired decoder vectors — SVCCA and held-out CCA,
RSA, linear and debiased CKA, mutual k-NN and Procrustes similarity, each against random re-pairings of
the same rows — at one layer pair (04) and over every layer pair (05). A metric that is degenerate for
the number of pairs (:func:`featlib.similarity.not_scorable`) is reported as not scorable, with the
reason, never as a number with a p-value."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from .. import similarity, step
from .core import Comparison, Side, Study
from .pairs import Match, match

if TYPE_CHECKING:
    import pandas as pd

VERSION = 4
METRICS = similarity.METRICS
METRIC_NAMES = similarity.METRIC_NAMES
MIN_PAIRS = 3  # fewer pairs: no metric is scorable


@dataclass(frozen=True)
class GeometryParams:
    """What the ``similarity`` step computes with, and what its cache key hashes (``asdict``): the metrics
    with their code versions (from :mod:`featlib.metrics`), their settings, the re-pairings and the seed."""

    variance: float  # SVCCA's explained-variance rule (similarity.variance)
    n_shuffles: int  # re-pairings per null
    seed: int  # of the re-pairings and of held-out CCA's splits (similarity.seed)
    knn_k: int = similarity.KNN_K  # mutual k-NN's neighbours
    heldout_splits: int = similarity.HELDOUT_SPLITS  # held-out CCA's random half splits
    metrics: dict[str, int] = field(default_factory=similarity.metric_versions, hash=False)  # {name: version}


def geometry_params(study: Study, n_shuffles: int | None = None) -> GeometryParams:
    """The :class:`GeometryParams` of ``study`` with ``n_shuffles`` re-pairings (default ``similarity.n_shuffles``)."""
    sim = study.cfg.similarity
    return GeometryParams(variance=sim.variance, n_shuffles=n_shuffles or sim.n_shuffles, seed=sim.seed)


@dataclass(frozen=True)
class Score:
    """One metric of one comparison beside its re-pairing null; NaN with a ``reason`` when not scorable."""

    score: float
    null_mean: float
    null_std: float
    p: float  # (1 + #null >= score) / (1 + shuffles), ties within rounding counted
    extra: dict[str, Any] = field(default_factory=dict)  # SVCCA: k_x, k_y (components kept); mutual k-NN: k
    reason: str = ""  # why the metric is not scorable here ("" = scorable)

    @property
    def scorable(self) -> bool:
        return not self.reason


@dataclass(frozen=True)
class Geometry:
    """Every metric of one matching's pairs (:data:`METRICS`), each a :class:`Score`."""

    comparison: Comparison
    n: int  # pairs
    n_shuffles: int
    seed: int
    scores: dict[str, Score]
    artifact: step.Artifact

    @property
    def scorable(self) -> bool:
        """Whether any metric is scorable."""
        return any(s.scorable for s in self.scores.values())

    def nulls(self) -> dict[str, np.ndarray]:
        """{metric: (n_shuffles,)} the re-pairing null scores of the scorable metrics."""
        return self.artifact.arrays("nulls.npz")

    def table(self) -> pd.DataFrame:
        """One row per metric: score, null mean and std, p, and the reason when not scorable."""
        import pandas as pd

        return pd.DataFrame(
            {
                m: {
                    "score": s.score,
                    "null_mean": s.null_mean,
                    "null_std": s.null_std,
                    "p": s.p,
                    "not scorable": s.reason,
                }
                for m, s in self.scores.items()
            }
        ).T


def compare_pairs(study: Study, m: Match, n_shuffles: int | None = None) -> Geometry:
    """Every metric of ``m``'s final pairs with ``n_shuffles`` re-pairings (default
    ``similarity.n_shuffles``), cached (inputs: the matching; parameters: :class:`GeometryParams`)."""
    params = geometry_params(study, n_shuffles)
    c = m.comparison

    def produce(tmp: Path) -> None:
        n = len(m.pairs)
        summary = {k: {"reason": f"{n} pairs: fewer than {MIN_PAIRS}"} for k in params.metrics}
        nulls: dict[str, Any] = {}  # (n_shuffles,) arrays
        if n >= MIN_PAIRS:
            X, Y = study.decoder_rows(c.a, m.pairs.idx_a), study.decoder_rows(c.b, m.pairs.idx_b)
            summary, nulls = similarity.compare_with_nulls(
                X,
                Y,
                params.n_shuffles,
                params.seed,
                params.variance,
                metrics=tuple(params.metrics),
                knn_k=params.knn_k,
                heldout_splits=params.heldout_splits,
            )
            summary.pop("n")
        step.write_json(tmp / "summary.json", summary)
        np.savez(tmp / "nulls.npz", **nulls)

    art = step.run(
        "similarity", asdict(params), {"matching": m.artifact}, produce, version=VERSION, meta={"comparison": c.name}
    )
    scores = {}
    for metric, s in art.json("summary.json").items():
        core = {k: np.nan if s.get(k) is None else s[k] for k in ("score", "null_mean", "null_std", "p")}
        reason = s.pop("reason", "")
        scores[metric] = Score(**core, extra={k: v for k, v in s.items() if k not in core}, reason=reason)
    return Geometry(c, len(m.pairs), params.n_shuffles, params.seed, scores, art)


def _row(g: Geometry) -> dict[str, Any]:
    """Pairs and, per metric, score, null mean and p of one geometry (NaN where not scorable)."""
    row: dict[str, Any] = {"pairs": g.n}
    for metric, s in g.scores.items():
        row |= {metric: s.score, f"{metric} null": s.null_mean, f"{metric} p": s.p}
    return row


def layer_grid(study: Study, comparison: Comparison) -> pd.DataFrame:
    """Matching and every metric with ``similarity.layerwise_shuffles`` re-pairings for every layer of
    side A x every layer of side B (one row per cell; NaN where not scorable)."""
    import pandas as pd

    rows = []
    a, b = comparison.a.model, comparison.b.model
    for cell in tqdm(study.grid(comparison), desc="layer pairs"):
        g = compare_pairs(study, match(study, cell), study.cfg.similarity.layerwise_shuffles)
        rows.append(
            {
                "comparison": comparison.kind,
                "layer A": cell.a.layer,
                "layer B": cell.b.layer,
                "depth A": study.relative_depth(a, cell.a.layer),
                "depth B": study.relative_depth(b, cell.b.layer),
            }
            | _row(g)
        )
    return pd.DataFrame(rows)


def reference_grid(study: Study) -> pd.DataFrame:
    """The ceilings (``seed``) and floors (``random_init``) at every layer where they are computed, scored
    like :func:`layer_grid`'s cells (one row per comparison: its kind, model, layer and relative depth)."""
    import pandas as pd

    rows = []
    for side in tqdm(study.reference_sides(), desc="ceilings and floors"):
        c = Comparison("random_init" if side.random_init else "seed", Side(side.model, side.layer), side)
        g = compare_pairs(study, match(study, c), study.cfg.similarity.layerwise_shuffles)
        rows.append(
            {
                "comparison": c.kind,
                "model": side.model,
                "layer": side.layer,
                "depth": study.relative_depth(side.model, side.layer),
            }
            | _row(g)
        )
    columns = ["comparison", "model", "layer", "depth", "pairs"] + [
        f"{m}{x}" for m in METRICS for x in ("", " null", " p")
    ]
    return pd.DataFrame(rows, columns=columns)


def grid_matrix(grid: pd.DataFrame, column: str) -> np.ndarray:
    """(layers of A, layers of B) float matrix of one column of :func:`layer_grid`."""
    return grid.pivot(index="layer A", columns="layer B", values=column).to_numpy(dtype=float)


def geometry_table(geoms: list[Geometry]) -> pd.DataFrame:
    """Tidy rows (comparison, metric, pairs, score, null mean, null std, p, shuffles, not scorable: the
    reason); not scorable rows carry NaN."""
    import pandas as pd

    return pd.DataFrame(
        [
            {
                "comparison": g.comparison.name,
                "metric": metric,
                "pairs": g.n,
                "score": s.score,
                "null_mean": s.null_mean,
                "null_std": s.null_std,
                "p": s.p,
                "shuffles": g.n_shuffles,
                "not scorable": s.reason,
            }
            for g in geoms
            for metric, s in g.scores.items()
        ]
    )
