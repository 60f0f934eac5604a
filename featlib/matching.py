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
import torch


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


class TopActivations:
    """Streaming top-k strictly positive activations (and their token positions) per feature.

    Ordering is by value descending, ties to the lowest position, so merging
    chunks gives the same result as one global sort.
    """

    def __init__(self, d: int, k: int = 5) -> None:
        self.d, self.k = d, k
        self._values = torch.full((d, k), -np.inf, dtype=torch.float32)
        self._positions = torch.full((d, k), -1, dtype=torch.int64)

    def update(self, codes: torch.Tensor, positions: torch.Tensor) -> None:
        """Add ``codes`` ``(n, d)`` observed at global token ``positions`` ``(n,)`` int64."""
        if codes.ndim != 2 or codes.shape[1] != self.d or positions.shape != (codes.shape[0],):
            raise ValueError(f"expected codes (n, {self.d}) and positions (n,), "
                             f"got {tuple(codes.shape)} and {tuple(positions.shape)}")
        codes = codes.detach().to("cpu", torch.float32).T  # (d, n)
        pos = positions.to("cpu", torch.int64).expand_as(codes)
        positive = codes > 0
        vals = torch.cat([self._values, torch.where(positive, codes, -np.inf)], dim=1)
        pos = torch.cat([self._positions, torch.where(positive, pos, -1)], dim=1)
        # Two stable sorts: by position ascending, then by value descending.
        order = torch.sort(pos, dim=1, stable=True).indices
        vals, pos = vals.gather(1, order), pos.gather(1, order)
        order = torch.sort(vals, dim=1, descending=True, stable=True).indices[:, : self.k]
        self._values, self._positions = vals.gather(1, order), pos.gather(1, order)

    @property
    def values(self) -> torch.Tensor:
        """Top activation values ``(d, k)``, descending; 0 where unfilled."""
        return torch.where(self._positions >= 0, self._values, 0.0)

    @property
    def positions(self) -> torch.Tensor:
        """Token positions ``(d, k)`` of the top activations; -1 where unfilled."""
        return self._positions.clone()


NON_CONCEPT_TOKENS = frozenset(
    {'.', '\n', '', ' ', '-', ',', '!', '?', '<|endoftext|>', '<bos>', '<pad>'})


def is_non_concept(token_str: str) -> bool:
    """True for whitespace, punctuation/symbol-only and special (``<...>``) tokens."""
    t = token_str.strip()
    if not t or t in NON_CONCEPT_TOKENS:
        return True
    if len(t) >= 2 and t.startswith("<") and t.endswith(">"):
        return True
    return all(unicodedata.category(c)[0] in "PS" for c in t)


def concept_filter(m: Matches, top_tokens_a: list[list[str]], top_tokens_b: list[list[str]],
                   require_shared: bool = True) -> tuple[Matches, dict]:
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
    keep = np.array([clean(top_tokens_a[i]) and clean(top_tokens_b[j]) for i, j in pairs],
                    dtype=bool)
    counts = {"non_concept": int(keep.sum())}
    if require_shared:
        shared = np.array([bool(norm(top_tokens_a[i]) & norm(top_tokens_b[j])) for i, j in pairs],
                          dtype=bool)
        keep &= shared
    counts["shared_token"] = int(keep.sum())
    return m.subset(keep), counts
