"""Notebooks 04–05: the geometry of a comparison's paired decoder vectors — SVCCA, RSA, linear CKA,
mutual k-NN and Procrustes similarity, each against random re-pairings of the same rows — at one
layer pair (04) and over every layer pair (05)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from .. import similarity, step
from .core import Comparison, Study
from .pairs import Match, match

if TYPE_CHECKING:
    import pandas as pd

VERSION = 3
METRICS = similarity.METRICS
METRIC_NAMES = {"svcca": "SVCCA", "rsa": "RSA", "cka": "linear CKA", "mutual_knn": "mutual k-NN",
                "procrustes": "Procrustes similarity"}
MIN_PAIRS = 3  # fewer pairs: not scorable


@dataclass(frozen=True)
class Score:
    """One metric of one comparison beside its re-pairing null."""

    score: float
    null_mean: float
    null_std: float
    p: float  # (1 + #null >= score) / (1 + shuffles)
    extra: dict[str, int] = field(default_factory=dict)  # SVCCA: k_x, k_y (components kept); mutual k-NN: k


@dataclass(frozen=True)
class Geometry:
    """The five metrics of one matching's pairs; ``scores`` is empty when there are fewer than
    :data:`MIN_PAIRS` pairs (not scorable: no number, no p-value)."""

    comparison: Comparison
    n: int  # pairs
    n_shuffles: int
    seed: int
    scores: dict[str, Score]
    artifact: step.Artifact

    @property
    def scorable(self) -> bool:
        return bool(self.scores)

    def nulls(self) -> dict[str, np.ndarray]:
        """{metric: (n_shuffles,)} the re-pairing null scores."""
        return self.artifact.arrays("nulls.npz")

    def table(self) -> "pd.DataFrame":
        """One row per metric: score, null mean and std, p."""
        import pandas as pd

        return pd.DataFrame({m: {"score": s.score, "null_mean": s.null_mean, "null_std": s.null_std, "p": s.p}
                             for m, s in self.scores.items()}).T


def compare_pairs(study: Study, m: Match, n_shuffles: int | None = None) -> Geometry:
    """The five metrics of ``m``'s final pairs with ``n_shuffles`` re-pairings (default
    ``similarity.n_shuffles``), cached (inputs: the matching; parameters: variance, shuffles, seed)."""
    sim = study.cfg.similarity
    params = {"variance": sim["variance"], "n_shuffles": n_shuffles or sim["n_shuffles"], "seed": sim["seed"]}
    c = m.comparison

    def produce(tmp: Path) -> None:
        summary, nulls = {}, {}
        if len(m.pairs) >= MIN_PAIRS:
            X, Y = study.decoder_rows(c.a, m.pairs.idx_a), study.decoder_rows(c.b, m.pairs.idx_b)
            summary, nulls = similarity.compare_with_nulls(X, Y, params["n_shuffles"], params["seed"], params["variance"])
            summary.pop("n")
        step.write_json(tmp / "summary.json", summary)
        np.savez(tmp / "nulls.npz", **nulls)

    art = step.run("similarity", params, {"matching": m.artifact}, produce, version=VERSION,
                   meta={"comparison": c.name})
    scores = {}
    for metric, s in art.json("summary.json").items():
        core = {k: s.pop(k) for k in ("score", "null_mean", "null_std", "p")}
        scores[metric] = Score(**core, extra=s)
    return Geometry(c, len(m.pairs), params["n_shuffles"], params["seed"], scores, art)


def layer_grid(study: Study, comparison: Comparison) -> "pd.DataFrame":
    """Matching and the five metrics with ``similarity.layerwise_shuffles`` re-pairings for every layer of
    side A x every layer of side B (one row per cell; NaN where not scorable)."""
    import pandas as pd

    rows = []
    a, b = comparison.a.model, comparison.b.model
    for cell in tqdm(study.grid(comparison), desc="layer pairs"):
        g = compare_pairs(study, match(study, cell), study.cfg.similarity["layerwise_shuffles"])
        row: dict[str, Any] = {"comparison": comparison.kind, "layer A": cell.a.layer, "layer B": cell.b.layer,
                               "depth A": study.relative_depth(a, cell.a.layer),
                               "depth B": study.relative_depth(b, cell.b.layer), "pairs": g.n}
        for metric in METRICS:
            s = g.scores.get(metric)
            row |= {metric: s.score if s else np.nan, f"{metric} null": s.null_mean if s else np.nan,
                    f"{metric} p": s.p if s else np.nan}
        rows.append(row)
    return pd.DataFrame(rows)


def grid_matrix(grid: "pd.DataFrame", column: str) -> np.ndarray:
    """(layers of A, layers of B) float matrix of one column of :func:`layer_grid`."""
    return grid.pivot(index="layer A", columns="layer B", values=column).to_numpy(dtype=float)


def geometry_table(geoms: list[Geometry]) -> "pd.DataFrame":
    """Tidy rows (comparison, metric, score, null mean, null std, p, pairs); "not scorable" rows carry NaN."""
    import pandas as pd

    rows = []
    for g in geoms:
        for metric in METRICS:
            s = g.scores.get(metric)
            rows.append({"comparison": g.comparison.name, "metric": metric, "pairs": g.n,
                         "score": s.score if s else np.nan, "null_mean": s.null_mean if s else np.nan,
                         "null_std": s.null_std if s else np.nan, "p": s.p if s else np.nan,
                         "scorable": s is not None, "shuffles": g.n_shuffles})
    return pd.DataFrame(rows)
