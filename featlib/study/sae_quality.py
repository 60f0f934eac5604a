"""Notebook 02: every SAE of the profile, trained or loaded, and measured on the eval units."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from .. import step
from ..saes import LossBaselines, evaluate
from .codes import codes_artifact, sae_codes
from .core import Side, Study

if TYPE_CHECKING:
    import pandas as pd

VERSION = 4  # 4: measured on the cached codes (decoded sparse), not a second encoding


@dataclass(frozen=True)
class MetricsParams:
    """The parameter of an SAE's metrics (its step's key): the next-token loss is measured on ``ce_batches`` x 8
    eval rows (``sae.ce_batches``)."""

    ce_batches: int


def sae_metrics(study: Study, side: Side) -> dict[str, Any]:
    """:func:`featlib.saes.evaluate` of ``side``'s SAE on the eval units (cached; inputs: the SAE, the eval
    activations, whose key covers the model, and the SAE's cached codes of them, which notebooks 03-05 read
    too; parameters: :class:`MetricsParams`)."""
    acts = study.acts_of(side)
    p = MetricsParams(study.cfg.sae.ce_batches)

    lm = study.model_of(side)

    def produce(tmp: Path) -> None:
        baselines = study.ce_baselines.setdefault((lm.fingerprint, acts.key, p.ce_batches), LossBaselines())
        m = evaluate(
            study.sae(side),
            lm,
            acts,
            side.layer,
            p.ce_batches,
            codes=sae_codes(study, side),
            chunk_tokens=study.cfg.matching.chunk_tokens,
            baselines=baselines,
        )
        step.write_json(tmp / "metrics.json", m)

    inputs = {"sae": study.sae_input(side), "eval": acts.key, "codes": codes_artifact(study, side)}
    art = step.run("sae_metrics", asdict(p), inputs, produce, version=VERSION)
    return art.json("metrics.json")


def sae_label(side: Side) -> str:
    """``profile``, ``seed N`` or ``random init``: which SAE of its model and layer ``side`` is."""
    return "random init" if side.random_init else "profile" if side.seed is None else f"seed {side.seed}"


def sae_table(study: Study, sides: list[Side] | None = None) -> pd.DataFrame:
    """Metrics of SAEs, one row per side (default: the profile's SAE at every model and layer, then the
    ceilings' and floors' SAEs: the second seed's, the random re-initialisation's). The SAEs not cached
    yet are trained first, in parallel where the machine allows (:meth:`Study.train_saes`)."""
    import pandas as pd

    if sides is None:
        sides = [Side(mid, L) for mid in study.ids for L in study.cfg.layers[mid]]
        sides += study.reference_sides()
    study.train_saes(sides)
    rows = [
        {"model": s.model, "layer": s.layer, "sae": sae_label(s), **sae_metrics(study, s)}
        for s in tqdm(sides, desc="SAEs")
    ]
    return pd.DataFrame(rows)
