"""Notebook 06: semantic subspaces — the pairs of one concept group (months, emotions, countries, ...)
scored with SVCCA, RSA and debiased CKA against re-pairings and against random same-size sets of pairs.

Two kinds of groups, scored the same way: *single-token* groups, whose features join through their
top-activating tokens (:mod:`featlib.subspaces`), and *phrase* groups, whose features join through their
selectivity for phrases of one or more words in context (:mod:`featlib.phrases`); for phrase groups also how
the groups sit relative to each other in each SAE (:func:`phrase_interactions`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from .. import matching, phrases, sparse_rows
from ..phrases import Interaction, Members, UnitText
from ..subspaces import GROUP_METRICS, group_features, resolve_groups, score_group
from .codes import sae_codes, top_token_strings
from .core import Side, Study
from .pairs import Match

if TYPE_CHECKING:
    import pandas as pd


def _group_rows(
    study: Study,
    m: Match,
    membership: dict[str, tuple[np.ndarray, np.ndarray]],
    extra: dict[str, dict[str, Any]],
    kind: str,
) -> pd.DataFrame:
    """One row per group: its pairs among the many-to-one pairs above the threshold (both features members:
    ``membership[group]`` = bool masks (d_A,), (d_B,)) and their scores with both nulls; ``extra`` columns first."""
    import pandas as pd

    cfg = study.cfg
    a, b = m.comparison.a, m.comparison.b
    candidates = matching.threshold(m.many_to_one, cfg.matching.min_r)
    X_all, Y_all = study.decoder_rows(a, candidates.idx_a), study.decoder_rows(b, candidates.idx_b)
    sub, sim = cfg.subspaces, cfg.similarity
    rows = []
    for name, (in_a, in_b) in tqdm(membership.items(), desc=f"{kind} groups"):
        members = np.flatnonzero(in_a[candidates.idx_a] & in_b[candidates.idx_b])
        row: dict[str, Any] = {
            "comparison": m.comparison.name,
            "kind": m.comparison.kind,
            "group": name,
            "members": kind,
            **extra[name],
            "features A": int(in_a.sum()),
            "features B": int(in_b.sum()),
            "pairs": len(members),
        }
        scored = len(members) >= max(3, sub.min_features) and all(
            len(np.unique(idx[members])) > 1 for idx in (candidates.idx_a, candidates.idx_b)
        )
        s = (
            score_group(X_all, Y_all, members, sim.n_shuffles, sub.n_random_sets, sub.seed, sim.variance)
            if scored
            else {}
        )
        row["scorable"] = scored
        for metric in GROUP_METRICS:
            sc = s.get(metric, {})
            num = {
                k: np.nan if sc.get(k) is None else sc[k]
                for k in ("score", "null_mean", "null_std", "p", "random_set_mean", "random_set_p")
            }
            row |= {
                metric: num["score"],
                f"{metric} null (re-pair)": num["null_mean"],
                f"{metric} null sd (re-pair)": num["null_std"],
                f"{metric} p (re-pair)": num["p"],
                f"{metric} null (random set)": num["random_set_mean"],
                f"{metric} p (random set)": num["random_set_p"],
                f"{metric} not scorable": sc.get("reason", ""),
            }
        rows.append(row)
    return pd.DataFrame(rows)


def subspace_scores(study: Study, m: Match) -> pd.DataFrame:
    """SVCCA, RSA and debiased CKA of every single-token concept group's pairs of one matching, with both nulls
    (see :mod:`featlib.subspaces`).

    The candidates are the many-to-one pairs above the correlation threshold (every B feature with
    its best A partner; one-to-one would discard most of a small group). A pair belongs to a group
    when both features join it, which already requires concept tokens, so the generic non-concept
    and shared-token filters are not applied on top. A group with fewer than
    ``max(3, subspaces.min_features)`` pairs, or whose pairs all share one feature on a side (no
    variance there), is not scorable: its scores are NaN.
    """
    top_a, top_b = top_token_strings(study, m.comparison.a), top_token_strings(study, m.comparison.b)
    groups = resolve_groups(study.cfg.subspaces.groups)
    membership = {g: (group_features(top_a, kw), group_features(top_b, kw)) for g, kw in groups.items()}
    return _group_rows(study, m, membership, {g: {"keywords": len(kw)} for g, kw in groups.items()}, "tokens")


# ---- phrase groups ---------------------------------------------------------------------------------------------


def unit_text(study: Study, model_id: str) -> UnitText:
    """The eval text of ``model_id`` and its units' places in it (the same for its random re-initialisation)."""
    return UnitText.of(study.eval_acts(model_id), study.token_strings(model_id))


def phrase_members(study: Study, side: Side, rule: str | None = None) -> dict[str, Members]:
    """Each phrase group's member features in ``side``'s SAE (:func:`featlib.phrases.members` with
    ``subspaces.phrases``, its ``rule`` replaced by ``rule`` if given)."""
    p = study.cfg.subspaces.phrases
    p = p.model_copy(update={"rule": rule}) if rule else p
    if (side, p.rule) not in study.phrase_memo:
        ut, codes = unit_text(study, side.model), sae_codes(study, side)
        study.phrase_memo[side, p.rule] = {
            g: phrases.members(codes, ut, ph, p) for g, ph in phrases.resolve_groups(p.groups).items()
        }
    return study.phrase_memo[side, p.rule]


def phrase_rules(study: Study, m: Match) -> pd.DataFrame:
    """Per phrase group and side of ``m``: occurrences, phrases found, and the members under each rule of
    :data:`featlib.phrases.RULES`, with their overlap (Jaccard) with the profile's rule."""
    import pandas as pd

    chosen = study.cfg.subspaces.phrases.rule
    rows = []
    for side in (m.comparison.a, m.comparison.b):
        by_rule = {r: phrase_members(study, side, r) for r in phrases.RULES}
        for g, mem in by_rule[chosen].items():
            row = {"side": side.name, "group": g, "occurrences": mem.occurrences, "phrases found": mem.phrases_found}
            for r in phrases.RULES:
                f, ref = set(by_rule[r][g].features.tolist()), set(mem.features.tolist())
                row[f"members ({r})"] = len(f)
                if r != chosen:
                    row[f"overlap {r} / {chosen}"] = len(f & ref) / len(f | ref) if f | ref else np.nan
            rows.append(row)
    return pd.DataFrame(rows)


def phrase_scores(study: Study, m: Match) -> pd.DataFrame:
    """:func:`subspace_scores` for the phrase groups (``subspaces.phrases``): a feature belongs to a group when
    it is one of the group's most selective features for its phrases in context (:mod:`featlib.phrases`)."""
    p = study.cfg.subspaces.phrases
    mem = {s: phrase_members(study, s) for s in (m.comparison.a, m.comparison.b)}
    d = {s: int(study.sae(s).W_dec.shape[0]) for s in mem}
    membership, extra = {}, {}
    for g, ph in phrases.resolve_groups(p.groups).items():
        masks = []
        for s in mem:
            mask = np.zeros(d[s], dtype=bool)
            mask[mem[s][g].features] = True
            masks.append(mask)
        membership[g] = (masks[0], masks[1])
        first = mem[m.comparison.a][g]
        extra[g] = {"phrases": len(ph), "phrases found": first.phrases_found, "occurrences": first.occurrences}
    return _group_rows(study, m, membership, extra, "phrases")


def phrase_interactions(study: Study, m: Match) -> Interaction:
    """How the phrase groups sit relative to each other in both SAEs of ``m`` (:func:`featlib.phrases.interaction_agreement`:
    the spans of each group's member decoder rows, against random same-size sets of each SAE's active features)."""
    p = study.cfg.subspaces.phrases
    sides = (m.comparison.a, m.comparison.b)
    mem = [phrase_members(study, s) for s in sides]
    names = list(mem[0])
    dec = [study.sae(s).W_dec.detach().double().cpu().numpy() for s in sides]
    pools = [np.flatnonzero(sparse_rows.active_features(sae_codes(study, s))) for s in sides]
    return phrases.interaction_agreement(
        dec[0],
        dec[1],
        names,
        [mem[0][g].features for g in names],
        [mem[1][g].features for g in names],
        pools[0],
        pools[1],
        p.n_random_sets,
        p.seed,
    )


def interaction_table(interactions: list[tuple[Match, Interaction]]) -> pd.DataFrame:
    """One row per comparison: the groups with members in both SAEs, the interaction agreement, its null and p."""
    import pandas as pd

    return pd.DataFrame(
        [
            {
                "comparison": m.comparison.name,
                "kind": m.comparison.kind,
                "groups": len(i.groups),
                "agreement (r)": i.agreement,
                "null mean": float(i.null.mean()) if i.null.size else np.nan,
                "null 95th percentile": float(np.quantile(i.null, 0.95)) if i.null.size else np.nan,
                "p": i.p,
                "not scorable": i.reason,
            }
            for m, i in interactions
        ]
    )
