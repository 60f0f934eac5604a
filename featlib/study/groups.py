"""Notebook 06: semantic subspaces — the pairs of one concept group (months, emotions, countries, ...)
scored with SVCCA, RSA and debiased CKA against re-pairings and against random same-size sets of pairs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from .. import matching
from ..subspaces import GROUP_METRICS, group_features, group_mask, resolve_groups, score_group
from .codes import top_token_strings
from .core import Study
from .pairs import Match

if TYPE_CHECKING:
    import pandas as pd


def subspace_scores(study: Study, m: Match) -> "pd.DataFrame":
    """SVCCA, RSA and debiased CKA of every concept group's pairs of one matching, with both nulls (see :mod:`featlib.subspaces`).

    The candidates are the many-to-one pairs above the correlation threshold (every B feature with
    its best A partner; one-to-one would discard most of a small group). A pair belongs to a group
    when both features join it, which already requires concept tokens, so the generic non-concept
    and shared-token filters are not applied on top. A group with fewer than
    ``max(3, subspaces.min_features)`` pairs, or whose pairs all share one feature on a side (no
    variance there), is not scorable: its scores are NaN.
    """
    import pandas as pd

    cfg = study.cfg
    a, b = m.comparison.a, m.comparison.b
    top_a, top_b = top_token_strings(study, a), top_token_strings(study, b)
    candidates = matching.threshold(m.many_to_one, cfg.matching["min_r"])
    X_all, Y_all = study.decoder_rows(a, candidates.idx_a), study.decoder_rows(b, candidates.idx_b)
    sub, sim = cfg.subspaces, cfg.similarity
    rows = []
    for name, keywords in tqdm(resolve_groups(sub["groups"]).items(), desc="concept groups"):
        members = np.flatnonzero(group_mask(candidates, top_a, top_b, keywords))
        row: dict[str, Any] = {"comparison": m.comparison.name, "kind": m.comparison.kind, "group": name, "keywords": len(keywords),
                               "features A": int(group_features(top_a, keywords).sum()),
                               "features B": int(group_features(top_b, keywords).sum()), "pairs": len(members)}
        scored = len(members) >= max(3, sub["min_features"]) and all(
            len(np.unique(idx[members])) > 1 for idx in (candidates.idx_a, candidates.idx_b))
        s = score_group(X_all, Y_all, members, sim["n_shuffles"], sub["n_random_sets"], sub["seed"], sim["variance"]) if scored else {}
        row["scorable"] = scored
        for metric in GROUP_METRICS:
            sc = s.get(metric, {})
            num = {k: np.nan if sc.get(k) is None else sc[k] for k in ("score", "null_mean", "null_std", "p", "random_set_mean", "random_set_p")}
            row |= {metric: num["score"], f"{metric} null (re-pair)": num["null_mean"],
                    f"{metric} null sd (re-pair)": num["null_std"], f"{metric} p (re-pair)": num["p"],
                    f"{metric} null (random set)": num["random_set_mean"], f"{metric} p (random set)": num["random_set_p"],
                    f"{metric} not scorable": sc.get("reason", "")}
        rows.append(row)
    return pd.DataFrame(rows)
