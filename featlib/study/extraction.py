"""Notebook 01: what every model read and stored — tokens, units, layers — and a sample of the units."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ..activations import Activations
from .core import Study

if TYPE_CHECKING:
    import pandas as pd


def extraction_table(study: Study) -> pd.DataFrame:
    """Per model: size, extracted layers with their relative depths, and per split the tokens each model
    read and the units stored (all tokens with one tokenizer; aligned positions or words otherwise)."""
    import pandas as pd

    rows = []
    for mid, lm in study.models.items():
        layers = study.cfg.layers[mid]
        row = {
            "model": mid,
            "layers in model": lm.n_layers,
            "d_model": lm.d_model,
            "parameters": sum(p.numel() for p in lm.model.parameters()),
            "extracted layers": layers,
            "relative depths": [round(study.relative_depth(mid, L), 2) for L in layers],
        }
        for split, acts in study.acts[mid].items():
            read = int((acts.lengths - 1).sum())
            row |= {
                f"{split} tokens read": read,
                f"{split} units": acts.n_units,
                f"{split} units/tokens": acts.n_units / read,
            }
        rows.append(row)
    return pd.DataFrame(rows)


def residual_norms(study: Study) -> pd.DataFrame:
    """Mean L2 norm of the residual stream over the eval units, one row per model and layer."""
    import pandas as pd

    return pd.DataFrame(
        [
            {
                "model": mid,
                "layer": L,
                "depth": study.relative_depth(mid, L),
                "mean norm": study.eval_acts(mid).mean_norm(L),
            }
            for mid in study.ids
            for L in study.cfg.layers[mid]
        ]
    )


def unit_sample(study: Study, n: int = 12) -> pd.DataFrame:
    """``n`` eval units as every model reads them: the unit's text and, per model, the tokens read since
    the previous unit. The sample starts a little before the first unit some model reaches in
    several tokens (at unit 0 when every unit is one token, as with a shared tokenizer)."""
    import pandas as pd

    def since_previous(acts: Activations, u: int) -> np.ndarray:
        seq_len, pos = acts.tokens.shape[1], acts.positions
        start = (
            pos[u - 1] + 1 if u > 0 and pos[u - 1] // seq_len == pos[u] // seq_len else pos[u] // seq_len * seq_len + 1
        )
        return acts.tokens.reshape(-1)[start : pos[u] + 1]

    acts = {m: study.eval_acts(m) for m in study.ids}
    n_units = acts[study.ids[0]].n_units
    first = next((u for u in range(n_units) if any(len(since_previous(a, u)) > 1 for a in acts.values())), 0)
    rows = []
    for u in range(max(0, first - n // 2), min(n_units, max(0, first - n // 2) + n)):
        row: dict[str, Any] = {"unit": u}
        for mid, a in acts.items():
            tok, ids = study.models[mid].tokenizer, since_previous(a, u)
            row.setdefault(
                "text", tok.decode([int(ids[-1])]) if a.spans is None else a.unit_strings(np.array([u]), [])[0]
            )
            row[f"{mid} tokens"] = " | ".join(repr(tok.decode([int(t)])) for t in ids)
        rows.append(row)
    return pd.DataFrame(rows)


def same_units(study: Study) -> bool:
    """True if every model's eval units are the same places in the same text (same tokens, or same spans)."""
    first = [study.eval_acts(m) for m in study.ids]
    if any(acts.n_units != first[0].n_units for acts in first):
        return False
    if first[0].spans is None:  # one token stream: every model stores its tokens
        return all(_same(acts.tokens, first[0].tokens) for acts in first)
    return all(_same(acts.spans, first[0].spans) and acts.texts == first[0].texts for acts in first)


def _same(x: np.ndarray | None, y: np.ndarray | None) -> bool:
    return x is not None and y is not None and np.array_equal(x, y)
