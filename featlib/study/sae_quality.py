"""Notebook 02: every SAE of the profile, trained or loaded, and measured on the eval units."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from .. import step
from ..saes import evaluate
from .core import Side, Study

if TYPE_CHECKING:
    import pandas as pd

VERSION = 3


def sae_metrics(study: Study, side: Side) -> dict[str, Any]:
    """:func:`featlib.saes.evaluate` of ``side``'s SAE on the eval units (cached; inputs: the SAE and the
    eval activations, whose key covers the model; parameter: ``sae.ce_batches``)."""
    acts = study.eval_acts(side.model)
    ce_batches = study.cfg.sae["ce_batches"]

    def produce(tmp: Path) -> None:
        m = evaluate(study.sae(side), study.models[side.model], acts, side.layer, ce_batches)
        step.write_json(tmp / "metrics.json", m)

    art = step.run("sae_metrics", {"ce_batches": ce_batches}, {"sae": study.sae_input(side), "eval": acts.key},
                   produce, version=VERSION)
    return art.json("metrics.json")


def sae_table(study: Study, sides: list[Side] | None = None) -> "pd.DataFrame":
    """Metrics of SAEs, one row per side (default: the profile's SAE at every model and layer, then the
    comparisons' other SAEs, e.g. the second seed's)."""
    import pandas as pd

    if sides is None:
        sides = [Side(mid, L) for mid in study.ids for L in study.cfg.layers[mid]]
        sides += [s for c in study.comparisons for s in (c.a, c.b) if s not in sides]
    rows = [{"model": s.model, "layer": s.layer, "sae": "profile" if s.seed is None else f"seed {s.seed}", **sae_metrics(study, s)}
            for s in tqdm(sides, desc="SAEs")]
    return pd.DataFrame(rows)
