"""Notebooks 03–06: the calibrated scale — every cross-model score between its random-model floor and its
seed ceiling, measured through the same chain at the same layers (see :mod:`featlib.calibration` for
the method: every comparison's expected score at one number of pairs, interval from half-sample replicates)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from .. import calibration, similarity, step
from ..calibration import Band, Calibration
from .core import Comparison, Study
from .pairs import match, matching_artifact

if TYPE_CHECKING:
    import pandas as pd

VERSION = 2  # 2: half-sample replicates, each the mean of inner subsets


@dataclass(frozen=True)
class CalibrationParams:
    """What the ``calibration`` step computes with, and what its cache key hashes (``asdict``): the
    ``calibration`` settings, the metrics with their code versions (from :mod:`featlib.metrics`) and their
    settings."""

    fraction: float  # of the fewest pairs, per draw
    draws: int  # half-sample replicates
    inner: int  # subsets of m pairs averaged per replicate (calibration.inner_draws)
    seed: int  # of the replicates (calibration.seed); subset i of replicate b seeds held-out CCA's splits
    variance: float  # SVCCA's explained-variance rule (similarity.variance)
    knn_k: int = similarity.KNN_K  # mutual k-NN's neighbours
    heldout_splits: int = similarity.HELDOUT_SPLITS  # held-out CCA's random half splits
    metrics: dict[str, int] = field(default_factory=similarity.metric_versions, hash=False)  # {name: version}

    def settings(self) -> dict[str, Any]:
        """The keyword arguments of :func:`featlib.calibration.calibrate_pairs` these parameters stand for."""
        return asdict(self) | {"metrics": tuple(self.metrics)}


def calibration_params(study: Study, draws: int) -> CalibrationParams:
    """The :class:`CalibrationParams` of ``study`` with ``draws`` draws."""
    cal = study.cfg.calibration
    return CalibrationParams(
        fraction=cal.fraction, draws=draws, inner=cal.inner_draws, seed=cal.seed, variance=study.cfg.similarity.variance
    )


def calibration_artifact(study: Study, cell: Comparison, draws: int) -> step.Artifact | None:
    """The cached calibration of the cross ``cell`` with ``draws`` draws (inputs: the matchings of the
    cell, its ceilings and its floors; parameters: :class:`CalibrationParams`);
    None unless the cell has a ceiling and a floor for each of its models in ``references.models``
    (:meth:`Study.has_references`)."""
    if not study.has_references(cell):
        return None
    refs = study.references(cell)
    ceilings, floors = [c for c in refs if c.kind == "seed"], [c for c in refs if c.kind == "random_init"]
    params = calibration_params(study, draws)
    comps = [cell, *ceilings, *floors]

    def produce(tmp: Path) -> None:
        matches = [match(study, c) for c in comps]
        rows = [
            (study.decoder_rows(m.comparison.a, m.pairs.idx_a), study.decoder_rows(m.comparison.b, m.pairs.idx_b))
            for m in matches
        ]
        nc = len(ceilings)
        cals = calibration.calibrate_pairs(rows[0], rows[1 : 1 + nc], rows[1 + nc :], **params.settings())
        step.write_json(tmp / "calibration.json", {k: asdict(c) for k, c in cals.items()})

    inputs = {f"matching_{i}": matching_artifact(study, c) for i, c in enumerate(comps)}
    return step.run(
        "calibration", asdict(params), inputs, produce, version=VERSION, meta={"comparisons": [c.name for c in comps]}
    )


def calibrate(study: Study, cell: Comparison, draws: int | None = None) -> dict[str, Calibration]:
    """{metric: :class:`featlib.calibration.Calibration`} of the cross ``cell`` (``draws`` default
    ``calibration.draws``); {} when the cell has no ceiling or floor."""
    art = calibration_artifact(study, cell, draws or study.cfg.calibration.draws)
    if art is None:
        return {}
    out = {}
    stored = art.json("calibration.json")
    for metric, d in sorted(stored.items(), key=lambda kv: similarity.METRICS.index(kv[0])):
        bands = {
            k: Band(*(np.nan if v is None else v for v in (d[k]["mean"], d[k]["lo"], d[k]["hi"])))
            for k in ("cross", "ceiling", "floor", "null", "calibrated")
        }
        out[metric] = Calibration(metric, d["m"], d["draws"], **bands, verdict=d["verdict"])
    return out


def calibration_table(study: Study, cell: Comparison, draws: int | None = None) -> pd.DataFrame:
    """:func:`featlib.calibration.calibration_table` of one cell, with the cell's name first (no rows when
    the cell has no ceiling or floor)."""
    table = calibration.calibration_table(calibrate(study, cell, draws))
    table.insert(0, "comparison", cell.name)
    return table


def calibrated_grid(study: Study, comparison: Comparison) -> pd.DataFrame:
    """The calibration of every cell of ``comparison``'s layer grid that has a ceiling and a floor, with
    ``calibration.grid_draws`` draws (one row per cell and metric, with the layers and relative depths; no
    rows when no cell has both)."""
    import pandas as pd

    parts = []
    a, b = comparison.a.model, comparison.b.model
    for cell in tqdm(study.grid(comparison), desc="calibrating layer pairs"):
        t = calibration_table(study, cell, study.cfg.calibration.grid_draws)
        t.insert(1, "layer A", cell.a.layer)
        t.insert(2, "layer B", cell.b.layer)
        t.insert(3, "depth A", study.relative_depth(a, cell.a.layer))
        t.insert(4, "depth B", study.relative_depth(b, cell.b.layer))
        parts.append(t)
    return pd.concat([p for p in parts if len(p)] or parts[:1], ignore_index=True)
