"""Notebook 06: semantic subspaces — the pairs of one concept group (months, emotions, countries, ...)
scored with SVCCA, RSA and debiased CKA against re-pairings and against random same-size sets of pairs.

Two kinds of groups, scored the same way: *single-token* groups, whose features join through their
top-activating tokens (:mod:`featlib.subspaces`), and *phrase* groups, whose features join through their
selectivity for phrases of one or more words in context (:mod:`featlib.phrases`); for phrase groups also how
the groups sit relative to each other in each SAE (:func:`phrase_interactions`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from .. import calibration, matching, phrases, similarity, sparse_rows, step
from ..calibration import NOT_SCORABLE, Band, Calibration, Pairs
from ..config import REFERENCE_KINDS
from ..phrases import Interaction, Members, UnitText
from ..subspaces import GROUP_METRICS, group_features, resolve_groups, score_group
from .codes import sae_codes, top_token_strings
from .core import Comparison, Side, Study
from .pairs import Match, match
from .scale import calibration_params

if TYPE_CHECKING:
    import pandas as pd


Membership = dict[str, tuple[np.ndarray, np.ndarray]]  # group -> bool masks over side A's, side B's features


def group_pairs(m: Match, min_r: float, membership: Membership) -> tuple[matching.Matches, dict[str, np.ndarray]]:
    """The candidates of ``m`` (its many-to-one pairs with r above ``min_r``) and, per group, the rows of the
    candidates whose two features are both members (``membership[group]``: bool masks (d_A,), (d_B,))."""
    candidates = matching.threshold(m.many_to_one, min_r)
    return candidates, {
        g: np.flatnonzero(in_a[candidates.idx_a] & in_b[candidates.idx_b]) for g, (in_a, in_b) in membership.items()
    }


def _group_rows(
    study: Study,
    m: Match,
    membership: Membership,
    extra: dict[str, dict[str, Any]],
    kind: str,
) -> pd.DataFrame:
    """One row per group: its pairs among the many-to-one pairs above the threshold (both features members:
    ``membership[group]`` = bool masks (d_A,), (d_B,)) and their scores with both nulls; ``extra`` columns first."""
    import pandas as pd

    cfg = study.cfg
    a, b = m.comparison.a, m.comparison.b
    candidates, by_group = group_pairs(m, cfg.matching.min_r, membership)
    X_all, Y_all = study.decoder_rows(a, candidates.idx_a), study.decoder_rows(b, candidates.idx_b)
    sub, sim = cfg.subspaces, cfg.similarity
    rows = []
    for name, (in_a, in_b) in tqdm(membership.items(), desc=f"{kind} groups"):
        members = by_group[name]
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
    (see :mod:`featlib.subspaces`), and, for a comparison the profile lists, each group on the calibrated scale
    (:func:`with_calibration`).

    The candidates are the many-to-one pairs above the correlation threshold (every B feature with
    its best A partner; one-to-one would discard most of a small group). A pair belongs to a group
    when both features join it, which already requires concept tokens, so the generic non-concept
    and shared-token filters are not applied on top. A group with fewer than
    ``max(3, subspaces.min_features)`` pairs, or whose pairs all share one feature on a side (no
    variance there), is not scorable: its scores are NaN.
    """
    groups = resolve_groups(study.cfg.subspaces.groups)
    table = _group_rows(
        study,
        m,
        token_membership(study, m.comparison),
        {g: {"keywords": len(kw)} for g, kw in groups.items()},
        "tokens",
    )
    return with_calibration(study, m, table, lambda c: token_membership(study, c), "tokens")


def token_membership(study: Study, comparison: Comparison) -> Membership:
    """Each single-token group's member features on both sides of ``comparison`` (a top token is a keyword)."""
    top_a, top_b = top_token_strings(study, comparison.a), top_token_strings(study, comparison.b)
    groups = resolve_groups(study.cfg.subspaces.groups)
    return {g: (group_features(top_a, kw), group_features(top_b, kw)) for g, kw in groups.items()}


# ---- concept groups on the calibrated scale ----------------------------------------------------------------------

GROUP_CALIBRATION_VERSION = 2  # 2: half-sample replicates (featlib.calibration)
ROLE_COLUMNS = ("calibrated", "calibrated lo", "calibrated hi", "calibrated verdict")
NO_REFERENCES = (
    f"{NOT_SCORABLE}: no ceiling and floor for this cell (references.run, references.models, references.layers)"
)


def calibrate_group(
    cross: Pairs,
    ceilings: list[Pairs],
    floors: list[Pairs],
    names: list[str],
    *,
    fraction: float,
    metrics: tuple[str, ...] = GROUP_METRICS,
    **settings: Any,
) -> dict[str, Calibration]:
    """One concept group on the calibrated scale: :func:`featlib.calibration.calibrate_pairs` of its pairs in the
    cross comparison, in each ceiling and in each floor (``names``: theirs, in that order) at one ``m = ⌊fraction ·
    fewest pairs⌋`` — or, when ``m < 3`` (too few pairs for any metric), every metric not scorable, naming the
    comparison with the fewest pairs (no draws). A metric whose ceiling equals its floor in some draw (its per-draw
    ratio, hence the interval, undefined: at a few pairs RSA takes few values) is not scorable either. ``settings``:
    the other keyword arguments of ``calibrate_pairs`` (``draws``, ``seed``, ``variance``, ...)."""
    ns = [len(x) for x, _ in (cross, *ceilings, *floors)]
    m = calibration.subsample_size(ns, fraction)
    if m < 3:
        i = int(np.argmin(ns))
        why = (
            f"{NOT_SCORABLE}: {names[i]} has {ns[i]} pair{'' if ns[i] == 1 else 's'} of the group, so "
            f"m = ⌊{fraction:g} × {ns[i]}⌋ = {m} pairs per draw (at least 3 needed)"
        )
        none = Band(np.nan, np.nan, np.nan)
        return {k: Calibration(k, m, 0, none, none, none, none, none, verdict=why) for k in metrics}
    cals = calibration.calibrate_pairs(cross, ceilings, floors, fraction=fraction, metrics=metrics, **settings)
    for k, c in cals.items():  # a draw whose ceiling equals its floor (few pairs: RSA takes few values) has no ratio
        if c.scorable and not (np.isfinite(c.calibrated.lo) and np.isfinite(c.calibrated.hi)):
            why = (
                f"the seed ceiling equals the floor in some of the {c.draws} draws of m = {c.m} pairs (no ratio there)"
            )
            cals[k] = replace(c, calibrated=Band(np.nan, np.nan, np.nan), verdict=f"{NOT_SCORABLE}: {why}")
    return cals


def group_calibration(
    study: Study, m: Match, membership_of: Callable[[Comparison], Membership], kind: str
) -> dict[str, dict[str, Calibration]]:
    """{group: {metric: Calibration}} of every group of the listed comparison ``m`` (:func:`calibrate_group` of
    :data:`featlib.subspaces.GROUP_METRICS`, with ``calibration.fraction``, ``calibration.grid_draws`` draws and
    ``calibration.seed``): the group's pairs (:func:`group_pairs` of ``membership_of(comparison)``) in ``m``, in
    each of its ceilings and in each of its floors. {} when the cell has no ceiling and floor for its models
    (:meth:`Study.has_references`).

    A cached step, ``group_calibration``: its inputs are the matchings of the cell, its ceilings and its floors
    (their SAEs, codes and top units); its parameters those of the ``calibration`` step for these metrics
    (:class:`featlib.study.scale.CalibrationParams`), how many of the comparisons are ceilings, ``kind``, and
    the hash of each group's pairs (their two features' indices) in every comparison — so another membership
    (keywords, phrase settings, ``matching.min_r``) gives another key."""
    cell = m.comparison
    if not study.has_references(cell):
        return {}
    refs = study.references(cell)
    ceilings, floors = [c for c in refs if c.kind == "seed"], [c for c in refs if c.kind == "random_init"]
    comps, nc = [cell, *ceilings, *floors], len(ceilings)
    matches = [m, *(match(study, c) for c in comps[1:])]
    chosen = []  # per comparison: {group: (feature indices of side A, of side B) of its pairs}
    for mm in matches:
        cand, rows = group_pairs(mm, study.cfg.matching.min_r, membership_of(mm.comparison))
        chosen.append({g: (cand.idx_a[r], cand.idx_b[r]) for g, r in rows.items()})
    params = replace(
        calibration_params(study, study.cfg.calibration.grid_draws), metrics=similarity.metric_versions(GROUP_METRICS)
    )
    pairs_hash = step.stable_hash([{g: [a.tolist(), b.tolist()] for g, (a, b) in ch.items()} for ch in chosen])

    def produce(tmp: Path) -> None:
        out = {}
        for g in tqdm(chosen[0], desc=f"{kind} groups on the calibrated scale"):
            rows = [
                (study.decoder_rows(c.a, ch[g][0]), study.decoder_rows(c.b, ch[g][1])) for c, ch in zip(comps, chosen)
            ]
            cals = calibrate_group(
                rows[0], rows[1 : 1 + nc], rows[1 + nc :], [c.name for c in comps], **params.settings()
            )
            out[g] = {k: asdict(c) for k, c in cals.items()}
        step.write_json(tmp / "groups.json", out)

    art = step.run(
        "group_calibration",
        asdict(params) | {"ceilings": nc, "members": kind, "pairs": pairs_hash},
        {f"matching_{i}": mm.artifact for i, mm in enumerate(matches)},
        produce,
        version=GROUP_CALIBRATION_VERSION,
        meta={"comparisons": [c.name for c in comps], "groups": list(chosen[0])},
    )
    return {
        g: {k: _calibration_of(d) for k, d in by_metric.items()} for g, by_metric in art.json("groups.json").items()
    }


def _calibration_of(d: dict[str, Any]) -> Calibration:
    """A :class:`Calibration` from its stored ``asdict`` (NaN may be stored as null)."""
    bands = {
        k: Band(*(np.nan if d[k][x] is None else d[k][x] for x in ("mean", "lo", "hi")))
        for k in ("cross", "ceiling", "floor", "null", "calibrated")
    }
    return Calibration(d["metric"], d["m"], d["draws"], **bands, verdict=d["verdict"])


def calibration_columns(
    table: pd.DataFrame, cals: dict[str, dict[str, Calibration]] | None, reason: str = NO_REFERENCES
) -> pd.DataFrame:
    """``table`` (one comparison's group rows) with the calibrated-scale columns: ``calibration m`` (pairs per
    draw), ``calibration draws``, and per metric of :data:`GROUP_METRICS` ``<metric> calibrated``, ``... lo``,
    ``... hi`` (the 2.5–97.5 % interval of the per-draw ratios) and ``... verdict`` (above the floor, not above
    the random-model floor, or not scorable: the reason). ``cals`` None: a ceiling or floor's own rows (no
    values, empty verdicts); {}: a listed comparison without ceiling and floor (``reason``)."""
    import pandas as pd

    out = table.copy()
    m, draws = [], []
    cols: dict[str, list[Any]] = {f"{k} {c}": [] for k in GROUP_METRICS for c in ROLE_COLUMNS}
    for g in out.group:
        by_metric = (cals or {}).get(g, {})
        first = next(iter(by_metric.values()), None)
        m.append(first.m if first else None)
        draws.append(first.draws if first else None)
        for k in GROUP_METRICS:
            c = by_metric.get(k)
            band = c.calibrated if c else Band(np.nan, np.nan, np.nan)
            cols[f"{k} calibrated"].append(band.mean)
            cols[f"{k} calibrated lo"].append(band.lo)
            cols[f"{k} calibrated hi"].append(band.hi)
            cols[f"{k} calibrated verdict"].append(c.verdict if c else ("" if cals is None else reason))
    out["calibration m"] = pd.array(m, dtype="Int64")  # <NA>: not calibrated (a reference's rows, no references)
    out["calibration draws"] = pd.array(draws, dtype="Int64")
    for name, values in cols.items():
        out[name] = values
    return out


def with_calibration(
    study: Study, m: Match, table: pd.DataFrame, membership_of: Callable[[Comparison], Membership], kind: str
) -> pd.DataFrame:
    """:func:`calibration_columns` of ``m``'s group table: each group on the calibrated scale
    (:func:`group_calibration`) for a comparison the profile lists, empty for a ceiling's or floor's own rows."""
    if m.comparison.kind in REFERENCE_KINDS:
        return calibration_columns(table, None)
    return calibration_columns(table, group_calibration(study, m, membership_of, kind))


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
    first = phrase_members(study, m.comparison.a)
    extra = {
        g: {"phrases": len(ph), "phrases found": first[g].phrases_found, "occurrences": first[g].occurrences}
        for g, ph in phrases.resolve_groups(p.groups).items()
    }
    table = _group_rows(study, m, phrase_membership(study, m.comparison), extra, "phrases")
    return with_calibration(study, m, table, lambda c: phrase_membership(study, c), "phrases")


def phrase_membership(study: Study, comparison: Comparison) -> Membership:
    """Each phrase group's member features on both sides of ``comparison`` (:func:`phrase_members`), as masks."""
    sides = (comparison.a, comparison.b)
    mem = {s: phrase_members(study, s) for s in sides}
    d = {s: int(study.sae(s).W_dec.shape[0]) for s in sides}
    membership = {}
    for g in phrases.resolve_groups(study.cfg.subspaces.phrases.groups):
        masks = []
        for s in sides:
            mask = np.zeros(d[s], dtype=bool)
            mask[mem[s][g].features] = True
            masks.append(mask)
        membership[g] = (masks[0], masks[1])
    return membership


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
