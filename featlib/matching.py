"""Match SAE features across two models by activation correlation.

Conventions
-----------
* Correlations and best partners come from :func:`featlib.correlation.correlate`
  (streamed, population std, inactive features never matched, never NaN).
* Matches are stored as parallel numpy arrays ``idx_a``, ``idx_b`` (int64)
  and ``r`` (float32).
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Matches:
    """Feature pairs: ``idx_a``, ``idx_b`` (int64) and ``r`` (float32), all ``(m,)``."""

    idx_a: np.ndarray
    idx_b: np.ndarray
    r: np.ndarray

    def __len__(self) -> int:
        return len(self.idx_a)

    def subset(self, mask: np.ndarray) -> Matches:
        """Select pairs by a bool mask ``(m,)`` or an integer index array."""
        mask = np.asarray(mask)
        return Matches(self.idx_a[mask], self.idx_b[mask], self.r[mask])


def one_to_one(m: Matches) -> Matches:
    """Keep one pair per A feature: highest ``r``, ties to lowest ``idx_b``; sorted by ``idx_a``."""
    order = np.lexsort((m.idx_b, -m.r.astype(np.float64), m.idx_a))
    sorted_a = m.idx_a[order]
    first = np.ones(len(order), dtype=bool)
    first[1:] = sorted_a[1:] != sorted_a[:-1]
    return m.subset(order[first])


def threshold(m: Matches, min_r: float) -> Matches:
    """Keep pairs with ``r > min_r``."""
    return m.subset(m.r > min_r)


def top_activations(
    indptr: np.ndarray, indices: np.ndarray, values: np.ndarray, d: int, k: int = 5
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k strictly positive activations of every feature, from codes stored as sparse rows.

    ``indptr`` (n + 1,), ``indices`` / ``values`` (nnz,): token t's codes are at
    ``indptr[t]:indptr[t + 1]`` (see :func:`featlib.study.sae_codes`). Returns ``values`` (d, k)
    float32, descending, 0 where a feature has fewer than k positive activations, and ``positions``
    (d, k) int64 token indices, -1 there; ties go to the lowest position.
    """
    pos = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
    keep = values > 0
    f, v, p = np.asarray(indices)[keep], np.asarray(values, dtype=np.float32)[keep], pos[keep]
    order = np.lexsort((p, -v, f))  # by feature, then value descending, then position
    f, v, p = f[order], v[order], p[order]
    rank = np.arange(len(f)) - np.searchsorted(f, f)  # place within the feature's run
    sel = rank < k
    top_v = np.zeros((d, k), dtype=np.float32)
    top_p = np.full((d, k), -1, dtype=np.int64)
    top_v[f[sel], rank[sel]] = v[sel]
    top_p[f[sel], rank[sel]] = p[sel]
    return top_v, top_p


NON_CONCEPT_TOKENS = frozenset({".", "\n", "", " ", "-", ",", "!", "?", "<|endoftext|>", "<bos>", "<pad>"})


def is_non_concept(token_str: str) -> bool:
    """True for whitespace, punctuation/symbol-only and special (``<...>``) tokens."""
    t = token_str.strip()
    if not t or t in NON_CONCEPT_TOKENS:
        return True
    if len(t) >= 2 and t.startswith("<") and t.endswith(">"):
        return True
    return all(unicodedata.category(c)[0] in "PS" for c in t)


def concept_filter(
    m: Matches, top_tokens_a: list[list[str]], top_tokens_b: list[list[str]], require_shared: bool = True
) -> tuple[Matches, dict]:
    """Drop pairs whose top-activating tokens are non-concept (or missing).

    ``top_tokens_x[i]`` lists the top token strings of feature ``i``. With
    ``require_shared``, also require a shared top token (``.strip().lower()``).
    Returns the kept matches and ``{"non_concept": n1, "shared_token": n2}``,
    the number of pairs kept after each step.
    """

    def clean(tokens: list[str]) -> bool:
        return bool(tokens) and not any(is_non_concept(t) for t in tokens)

    def norm(tokens: list[str]) -> set[str]:
        return {t.strip().lower() for t in tokens}

    pairs = list(zip(m.idx_a.tolist(), m.idx_b.tolist()))
    keep = np.array([clean(top_tokens_a[i]) and clean(top_tokens_b[j]) for i, j in pairs], dtype=bool)
    counts = {"non_concept": int(keep.sum())}
    if require_shared:
        shared = np.array([bool(norm(top_tokens_a[i]) & norm(top_tokens_b[j])) for i, j in pairs], dtype=bool)
        keep &= shared
    counts["shared_token"] = int(keep.sum())
    return m.subset(keep), counts
