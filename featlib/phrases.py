"""Multi-token semantic subspaces: concept groups whose members are *phrases* of one or more words.

A single-token group (:mod:`featlib.subspaces`) drops every concept that is not one token, and with two
tokenizers the same word can be one token in one model and three in the other. Here a group is a list of
phrases ("united states", "supreme court", "twenty-five", "new year", ...; the default groups and their
sources are ``featlib/data/phrase_groups.yaml``), and membership is decided per model, on the model's own
units, from where the phrases occur in the eval text:

* **Occurrences.** A phrase occurs where its words appear in a row's text, case-insensitive, between
  non-word characters, with any whitespace between its words; longer phrases win over their prefixes
  ("new york city" before "new york"). An occurrence *covers* the units whose character spans overlap it
  (the tokens of a token stream, or the aligned units of :mod:`featlib.alignment`, whose spans are text
  offsets every model shares).
* **A feature's activation over an occurrence** follows one *rule*: ``last``, the code at the unit holding
  the phrase's last character (where a causal model has read the whole phrase), ``max`` or ``mean`` over
  the covered units.
* **Controls**: for every occurrence, ``n_controls`` windows of as many units at random places (seeded) of
  the eval text that cover no occurrence of the group, read by the same rule.
* **Selectivity** of a feature for a group: the AUROC of its activations on the occurrences against the
  controls (average ranks for ties; 0.5 = chance, 1 = above every control).
* **Null and threshold**: the occurrence/control labels permuted ``n_shuffles`` times; the threshold is the
  ``1 - alpha`` quantile of the *largest* AUROC over all features per permutation (family-wise over the
  dictionary). A feature is a **member** when its AUROC exceeds both that threshold and ``min_auroc``; the
  ``max_features`` most selective members are kept.

A group's **subspace** in one model is the span of its members' decoder rows. Across models the paired
subspace is scored like a single-token group (pairs of the matching whose features are both members,
:func:`featlib.subspaces.score_group`, with its not-scorable guard). How groups sit *relative to each other*
(:func:`interaction_matrix`): the mean squared cosine of the principal angles between two groups'
subspaces, a group x group matrix per model, compared across models by the Pearson correlation of the
two matrices' off-diagonal entries, against random same-size feature sets (:func:`interaction_agreement`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import yaml
from scipy.stats import rankdata

from .config import Phrases
from .similarity import p_value

PHRASE_GROUPS = Path(__file__).with_name("data") / "phrase_groups.yaml"
RULES: tuple[str, ...] = ("last", "max", "mean")
#: Fewest groups with members on both sides for an interaction agreement (3 off-diagonal pairs of groups).
MIN_INTERACTION_GROUPS = 3


def default_groups() -> dict[str, list[str]]:
    """``{group: [phrase, ...]}`` of ``featlib/data/phrase_groups.yaml`` (each group there also names its sources)."""
    raw = yaml.safe_load(PHRASE_GROUPS.read_text())
    return {name: list(entry["phrases"]) for name, entry in raw["groups"].items()}


def resolve_groups(groups: str | dict[str, list[str]]) -> dict[str, list[str]]:
    """``"default"`` -> :func:`default_groups`; a mapping is validated. Phrases are lower-cased, whitespace collapsed.

    Raises ValueError for a group without phrases (it could never select a feature)."""
    raw = default_groups() if groups == "default" else groups
    if not isinstance(raw, dict) or not raw:
        raise ValueError(
            f"subspaces.phrases.groups must be 'default' or a non-empty mapping of group -> phrases, got {groups!r}"
        )
    out = {}
    for name, phrases in raw.items():
        clean = sorted({" ".join(str(p).lower().split()) for p in phrases if str(p).strip()})
        if not clean:
            raise ValueError(f"phrase group {name!r} has no phrases. Fix: add phrases or remove the group.")
        out[name] = clean
    return out


# ---- where the phrases occur ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class UnitText:
    """The eval text and where each unit sits in it: ``texts`` (one per row) and ``spans`` (n_units, 3) int64
    (row, first char, end char), units in row order."""

    texts: list[str]
    spans: np.ndarray

    @classmethod
    def of(cls, acts: Any, token_strings: list[str]) -> UnitText:
        """From an :class:`~featlib.activations.Activations`: its aligned spans, or for a token stream the row texts
        rebuilt from the token strings (``token_strings[i]``: token i decoded alone), BOS left out."""
        if acts.spans is not None:
            return cls(list(acts.texts), np.asarray(acts.spans, dtype=np.int64))
        texts, spans = [], np.zeros((acts.n_units, 3), dtype=np.int64)
        for row, (toks, units) in enumerate(zip(acts.tokens, acts.unit_index)):
            pieces = [token_strings[t] if u >= 0 else "" for t, u in zip(toks.tolist(), units.tolist())]
            ends = np.cumsum([len(p) for p in pieces])
            starts = ends - [len(p) for p in pieces]
            keep = units >= 0
            spans[units[keep]] = np.stack([np.full(keep.sum(), row), starts[keep], ends[keep]], axis=1)
            texts.append("".join(pieces))
        return cls(texts, spans)


@dataclass(frozen=True)
class Occurrences:
    """Where one group's phrases occur: per occurrence, the phrase (index into the group's phrases) and the
    units it covers (ascending; the last holds the phrase's last character)."""

    phrase: np.ndarray  # (m,) int64
    units: list[np.ndarray]  # m arrays of unit ids

    def __len__(self) -> int:
        return len(self.units)

    @property
    def covered(self) -> np.ndarray:
        """(n,) every unit some occurrence covers."""
        return np.unique(np.concatenate(self.units)) if self.units else np.zeros(0, np.int64)


def phrase_pattern(phrases: list[str]) -> re.Pattern[str]:
    """One case-insensitive pattern of all ``phrases`` between non-word characters, longest first, any
    whitespace between words (``re.escape`` of each word)."""
    parts = [r"\s+".join(map(re.escape, p.split())) for p in sorted(phrases, key=lambda p: (-len(p), p))]
    return re.compile(r"(?<!\w)(?:" + "|".join(parts) + r")(?!\w)", re.IGNORECASE)


def find_occurrences(ut: UnitText, phrases: list[str]) -> Occurrences:
    """Every occurrence of ``phrases`` in ``ut``'s texts with the units it covers (occurrences that cover no
    unit, e.g. in text no unit stores, are left out)."""
    pattern, index = phrase_pattern(phrases), {p: i for i, p in enumerate(phrases)}
    rows = ut.spans[:, 0]
    bounds = np.searchsorted(rows, np.arange(len(ut.texts) + 1))  # units of row r: bounds[r]:bounds[r + 1]
    which, covered = [], []
    for r, text in enumerate(ut.texts):
        lo, hi = bounds[r], bounds[r + 1]
        starts, ends = ut.spans[lo:hi, 1], ut.spans[lo:hi, 2]
        for m in pattern.finditer(text):
            units = lo + np.flatnonzero((ends > m.start()) & (starts < m.end()))
            if len(units):
                which.append(index[" ".join(m.group(0).lower().split())])
                covered.append(units.astype(np.int64))
    return Occurrences(np.array(which, dtype=np.int64), covered)


def control_windows(ut: UnitText, occ: Occurrences, n_controls: int, seed: int) -> list[np.ndarray]:
    """``n_controls`` windows per occurrence, each of as many consecutive units of one row as the occurrence
    covers, at random places that cover no unit of any occurrence (seeded; ``default_rng(seed)``)."""
    rng = np.random.default_rng(seed)
    n, rows = len(ut.spans), ut.spans[:, 0]
    taken = np.r_[0, np.cumsum(np.isin(np.arange(n), occ.covered))]  # covered units before each position
    starts: dict[int, np.ndarray] = {}  # window length -> every allowed first unit
    out: list[np.ndarray] = []
    for units in occ.units:
        length = len(units)
        if length not in starts:
            s = np.arange(n - length + 1)
            starts[length] = s[(rows[s + length - 1] == rows[s]) & (taken[s + length] == taken[s])]
        if not len(starts[length]):
            raise ValueError(
                f"no window of {length} units of the eval text avoids the group's occurrences. "
                "Fix: use more eval text (data.n_eval_tokens) or fewer phrases."
            )
        out.extend(np.arange(s, s + length) for s in rng.choice(starts[length], n_controls))
    return out


def span_codes(codes: sp.csr_array, windows: list[np.ndarray], rule: str) -> sp.csr_array:
    """(len(windows), d) a feature's activation over each window of units by ``rule`` (see the module doc)."""
    if rule not in RULES:
        raise ValueError(
            f"subspaces.phrases.rule = {rule!r} is not allowed; allowed: {', '.join(RULES)}. "
            "Fix: set it to one of them."
        )
    codes = sp.csr_array(codes)
    if rule == "last":
        return codes[np.array([w[-1] for w in windows], dtype=np.int64)]
    if rule == "mean":
        lengths = np.array([len(w) for w in windows])
        avg = sp.csr_array(
            (np.repeat(1.0 / lengths, lengths), np.concatenate(windows), np.r_[0, np.cumsum(lengths)]),
            shape=(len(windows), codes.shape[0]),
        )
        return sp.csr_array(avg @ codes)
    return sp.csr_array(sp.vstack([codes[w].max(axis=0).reshape(1, -1) for w in windows], format="csr"))


# ---- which features belong to a group -----------------------------------------------------------------------


@dataclass(frozen=True)
class Members:
    """The member features of one group in one SAE, most selective first."""

    features: np.ndarray  # (k,) int64
    auroc: np.ndarray  # (k,) float64
    threshold: float  # the family-wise null's 1 - alpha quantile of the largest AUROC (NaN: too few occurrences)
    occurrences: int
    phrases_found: int


def selectivity(on: sp.csr_array, off: sp.csr_array, n_shuffles: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(AUROC (d,), null (n_shuffles,)): each feature's AUROC of its activations ``on`` (m, d) the occurrences
    against ``off`` (c, d) the controls, and the largest AUROC over features for each random relabelling
    (``default_rng(seed)``). Features silent on every occurrence get 0.5 or less and are not ranked."""
    m, c, d = on.shape[0], off.shape[0], on.shape[1]
    auroc = np.full(d, 0.5)
    cand = np.flatnonzero(np.asarray((on != 0).sum(axis=0)).ravel() > 0)
    if not len(cand) or not m or not c:
        return auroc, np.full(n_shuffles, 0.5)
    ranks = rankdata(sp.vstack([on[:, cand], off[:, cand]]).toarray(), axis=0)  # (m + c, k), average ranks for ties
    base = m * (m + 1) / 2
    auroc[cand] = (ranks[:m].sum(axis=0) - base) / (m * c)
    rng = np.random.default_rng(seed)
    null = np.array(
        [((ranks[rng.permutation(m + c)[:m]].sum(axis=0) - base) / (m * c)).max() for _ in range(n_shuffles)]
    )
    return auroc, null


def members(codes: sp.csr_array, ut: UnitText, phrases: list[str], p: Phrases) -> Members:
    """The member features of the group of ``phrases`` in the SAE whose eval codes are ``codes`` (n_units, d),
    with ``p`` = ``subspaces.phrases`` (``rule``, ``n_controls``, ``min_auroc``, ``max_features``,
    ``n_shuffles``, ``alpha``, ``min_occurrences``, ``seed``). A group with fewer than ``min_occurrences``
    occurrences has no members."""
    occ = find_occurrences(ut, phrases)
    found = len(np.unique(occ.phrase))
    if len(occ) < p.min_occurrences:
        return Members(np.zeros(0, np.int64), np.zeros(0), float("nan"), len(occ), found)
    controls = control_windows(ut, occ, p.n_controls, p.seed)
    auroc, null = selectivity(
        span_codes(codes, occ.units, p.rule), span_codes(codes, controls, p.rule), p.n_shuffles, p.seed
    )
    threshold = float(np.quantile(null, 1 - p.alpha))
    keep = np.flatnonzero((auroc > threshold) & (auroc > p.min_auroc))
    keep = keep[np.lexsort((keep, -auroc[keep]))][: p.max_features]
    return Members(keep.astype(np.int64), auroc[keep], threshold, len(occ), found)


# ---- how groups sit relative to each other --------------------------------------------------------------------


def _basis(rows: np.ndarray) -> np.ndarray:
    """Orthonormal basis (d, r) of the span of ``rows`` (k, d), from the eigenvectors of their (k, k) Gram matrix
    (directions with squared singular value above 1e-12 of the largest; k is small, d is not)."""
    rows = np.asarray(rows, np.float64)
    lam, vec = np.linalg.eigh(rows @ rows.T)
    keep = lam > 1e-12 * max(lam.max(initial=0.0), 1e-300)
    return rows.T @ vec[:, keep] / np.sqrt(lam[keep])


def interaction_matrix(decoder: np.ndarray, groups: list[np.ndarray]) -> np.ndarray:
    """(G, G) mean squared cosine of the principal angles between the spans of each group's decoder rows
    (``decoder`` (d_sae, d_model), ``groups`` feature ids per group): ``||Q_g^T Q_h||_F^2 / min(r_g, r_h)``, 1 on
    the diagonal; NaN for a group without members."""
    bases = [_basis(decoder[f]) if len(f) else None for f in groups]
    G = len(groups)
    out = np.full((G, G), np.nan)
    for i in range(G):
        for j in range(i, G):
            bi, bj = bases[i], bases[j]
            if bi is not None and bj is not None and bi.shape[1] and bj.shape[1]:
                out[i, j] = out[j, i] = np.linalg.norm(bi.T @ bj) ** 2 / min(bi.shape[1], bj.shape[1])
    return out


def _offdiag_corr(a: np.ndarray, b: np.ndarray) -> float:
    iu = np.triu_indices(len(a), 1)
    x, y = a[iu], b[iu]
    if np.std(x) == 0 or np.std(y) == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


@dataclass(frozen=True)
class Interaction:
    """Group x group matrices of two SAEs over the groups with members in both, and their agreement."""

    groups: list[str]
    a: np.ndarray  # (G, G)
    b: np.ndarray  # (G, G)
    agreement: float  # Pearson r of the off-diagonal entries (NaN: not scorable)
    null: np.ndarray  # (n_sets,) the same for random same-size feature sets
    p: float  # one-sided, +1 correction (NaN: not scorable)
    reason: str  # why it is not scorable ("" when it is)


def interaction_agreement(
    dec_a: np.ndarray,
    dec_b: np.ndarray,
    names: list[str],
    groups_a: list[np.ndarray],
    groups_b: list[np.ndarray],
    pool_a: np.ndarray,
    pool_b: np.ndarray,
    n_sets: int,
    seed: int,
) -> Interaction:
    """Do the groups sit alike relative to each other in both SAEs? The matrices of :func:`interaction_matrix`
    over the groups with members on both sides, their off-diagonal Pearson r, and the same for ``n_sets`` draws
    of random feature sets of the same sizes (features of ``pool_a`` / ``pool_b``, e.g. the active ones,
    without replacement within a draw; ``default_rng(seed)``). Fewer than :data:`MIN_INTERACTION_GROUPS`
    groups, or matrices without variance off the diagonal, are not scorable."""
    keep = [i for i in range(len(names)) if len(groups_a[i]) and len(groups_b[i])]
    kept = [names[i] for i in keep]
    ga, gb = [groups_a[i] for i in keep], [groups_b[i] for i in keep]
    ma, mb = interaction_matrix(dec_a, ga), interaction_matrix(dec_b, gb)
    if len(keep) < MIN_INTERACTION_GROUPS:
        return Interaction(
            kept,
            ma,
            mb,
            float("nan"),
            np.zeros(0),
            float("nan"),
            f"{len(keep)} groups have members in both SAEs; an agreement needs at least {MIN_INTERACTION_GROUPS}",
        )
    observed = _offdiag_corr(ma, mb)
    if not np.isfinite(observed):
        return Interaction(
            kept, ma, mb, float("nan"), np.zeros(0), float("nan"), "the matrices do not vary off the diagonal"
        )
    rng = np.random.default_rng(seed)

    def draw(pool: np.ndarray, sizes: list[int]) -> list[np.ndarray]:
        return [rng.choice(pool, k, replace=False) for k in sizes]

    null = np.array(
        [
            _offdiag_corr(
                interaction_matrix(dec_a, draw(pool_a, [len(g) for g in ga])),
                interaction_matrix(dec_b, draw(pool_b, [len(g) for g in gb])),
            )
            for _ in range(n_sets)
        ]
    )
    null = null[np.isfinite(null)]
    return Interaction(kept, ma, mb, observed, null, p_value(observed, null) if null.size else float("nan"), "")
