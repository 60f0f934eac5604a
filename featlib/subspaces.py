"""Semantic subspaces: the features of one concept group, compared across models.

A feature *joins* a concept group when one of its top-activating tokens (over the eval text, in
context), lower-cased and stripped, equals one of the group's keywords. A matched pair (many-to-one,
r above the threshold) belongs to a group when both of its features join it. For each group we
compare the paired decoder vectors with SVCCA, RSA and debiased CKA (:data:`GROUP_METRICS`) against
two nulls: random re-pairings within the group, and random same-size sets of matched pairs drawn from
all such pairs of the layer pair. A metric that is degenerate at the group's size
(:func:`featlib.similarity.not_scorable`, e.g. SVCCA keeping more than n/2 components) is reported
with ``None`` for every number and a ``reason``, never as a number with a p-value.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import similarity
from .matching import Matches

_MONTHS = "january february march april may june july august september october november december"
_DAYS = "monday tuesday wednesday thursday friday saturday sunday"

CONCEPT_GROUPS: dict[str, list[str]] = {
    "Time": (
        "time times year years month months week weeks day days today tomorrow yesterday hour hours minute "
        "minutes second seconds decade decades century centuries era age ages moment moments period periods "
        "past present future now then soon later early late earlier before after during since until always "
        "never once ago annual annually daily weekly yearly long short morning evening night nights tonight "
        "recent recently modern ancient generation generations history historic season seasons"
    ).split(),
    "Calendar": (
        _MONTHS + " " + _DAYS + " holiday holidays christmas thanksgiving easter anniversary "
        "birthday calendar date dates spring summer autumn fall winter weekend fiscal"
    ).split(),
    "People/Roles": (
        "president presidents senator senators congressman congresswoman governor governors mayor judge judges "
        "soldier soldiers teacher teachers worker workers farmer farmers doctor doctors nurse nurses officer "
        "officers citizen citizens leader leaders member members secretary speaker chairman king queen "
        "children child parents mother father wife husband family families"
    ).split(),
    "Nature": (
        "water river rivers sea seas ocean oceans lake lakes mountain mountains forest forests tree trees land "
        "lands soil earth air wind rain snow storm storms fire sun moon star stars sky weather climate "
        "nature natural wildlife animals plants coast island islands desert valley"
    ).split(),
    "Emotions": (
        "hope hopes fear fears love joy pride proud anger angry sad sadness grief happy happiness courage "
        "anxiety worry concern concerns faith trust confidence despair gratitude grateful compassion sympathy "
        "shame honor glory peace frustration optimism hopeful fearful afraid ashamed"
    ).split(),
    "MonthNames": _MONTHS.split(),
    "Countries": (
        "america mexico canada china japan russia germany france britain england spain italy india israel "
        "iran iraq cuba korea vietnam egypt afghanistan pakistan ukraine brazil"
    ).split(),
    "Biology": (
        "health disease diseases cancer virus medical medicine body blood brain heart cell cells gene genes "
        "genetic dna birth life living species food hunger breath drugs vaccine vaccines hospital hospitals "
        "infection"
    ).split(),
}


def resolve_groups(groups: str | dict[str, list[str]]) -> dict[str, set[str]]:
    """``"default"`` -> :data:`CONCEPT_GROUPS`; a mapping is validated. Keywords are lower-cased.

    Raises ValueError for an empty group (no keywords): it could never select a feature.
    """
    raw = CONCEPT_GROUPS if groups == "default" else groups
    if not isinstance(raw, dict) or not raw:
        raise ValueError(
            f"subspaces.groups must be 'default' or a non-empty mapping of group -> keywords, got {groups!r}"
        )
    out = {}
    for name, words in raw.items():
        kw = {str(w).strip().lower() for w in words if str(w).strip()}
        if not kw:
            raise ValueError(f"concept group {name!r} has no keywords. Fix: add keywords or remove the group.")
        out[name] = kw
    return out


def group_features(top_tokens: list[list[str]], keywords: set[str]) -> np.ndarray:
    """(d_sae,) bool: features one of whose top-activating tokens is a keyword."""
    return np.array([any(t.strip().lower() in keywords for t in toks) for toks in top_tokens], dtype=bool)


def group_mask(pairs: Matches, top_a: list[list[str]], top_b: list[list[str]], keywords: set[str]) -> np.ndarray:
    """(len(pairs),) bool: the pairs whose features both join the group."""
    in_a, in_b = group_features(top_a, keywords), group_features(top_b, keywords)
    return in_a[pairs.idx_a] & in_b[pairs.idx_b]


#: Metrics of :func:`score_group`, in order.
GROUP_METRICS: tuple[str, ...] = ("svcca", "rsa", "cka_debiased")


def score_group(
    X_all: np.ndarray,
    Y_all: np.ndarray,
    members: np.ndarray,
    n_shuffles: int,
    n_random_sets: int,
    seed: int,
    variance: float,
) -> dict[str, Any]:
    """Scores of one group's pairs (rows ``members`` of the paired decoder matrices) with both nulls.

    X_all (n_pairs, d_A), Y_all (n_pairs, d_B): decoder vectors of all final pairs of the layer pair.
    Returns ``{"n": int, metric: entry}`` for each of :data:`GROUP_METRICS`: the entry of
    :func:`featlib.similarity.compare` (``score``, ``null_mean``, ``null_std``, ``p``; SVCCA also ``k_x``,
    ``k_y``) plus ``random_set_mean`` and ``random_set_p`` over the random sets on which the metric
    is defined; a metric not scorable for the group has ``None`` for all six numbers and a ``reason``.
    """
    X, Y = X_all[members], Y_all[members]
    out = similarity.compare(X, Y, n_shuffles, seed, variance, metrics=GROUP_METRICS)
    scorable = [m for m in GROUP_METRICS if out[m]["score"] is not None]
    rand = (
        similarity.random_subset_null(X_all, Y_all, len(members), n_random_sets, seed, variance, metrics=scorable)
        if scorable
        else {}
    )
    for metric in GROUP_METRICS:
        r = rand.get(metric, np.empty(0))
        r = r[~np.isnan(r)]  # draws where the metric is undefined
        out[metric]["random_set_mean"] = float(r.mean()) if r.size else None
        out[metric]["random_set_p"] = similarity.p_value(out[metric]["score"], r) if r.size else None
    return out
