"""Match SAE features across two models by activation correlation.

Conventions
-----------
* Codes are dense ``(n_tokens, d_sae)`` tensors of SAE feature activations
  (mostly zeros); model A and model B read the *same* token stream, so row
  ``t`` of both code matrices refers to the same token.
* Correlations are Pearson correlations over tokens, shaped ``(d_a, d_b)``
  (rows index A features, columns index B features). Statistics are
  accumulated in float64 and the result is returned as float32. Standard
  deviations are population ones (``ddof=0``); this does not change ``r``.
* A feature is *active* when it is not constant over the tokens seen
  (e.g. it never fires). Any correlation involving an inactive feature is
  exactly 0, never NaN.
* Matches are stored as parallel numpy arrays ``idx_a``, ``idx_b`` (int64)
  and ``r`` (float32).
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

import numpy as np
import torch


class CorrelationAccumulator:
    """Streaming Pearson correlation between the features of two code matrices.

    Only sufficient statistics are kept (float64): the token count, per-feature
    sums, sums of squares, minima and maxima, and the cross-product ``a^T b``
    of shape ``(d_a, d_b)``.
    """

    def __init__(self, d_a: int, d_b: int) -> None:
        f64 = torch.float64
        self.d_a, self.d_b = d_a, d_b
        self.n = 0
        self.sum_a, self.sum_b = torch.zeros(d_a, dtype=f64), torch.zeros(d_b, dtype=f64)
        self.sumsq_a, self.sumsq_b = torch.zeros(d_a, dtype=f64), torch.zeros(d_b, dtype=f64)
        self.min_a, self.min_b = torch.full((d_a,), np.inf, dtype=f64), torch.full((d_b,), np.inf, dtype=f64)
        self.max_a, self.max_b = -self.min_a.clone(), -self.min_b.clone()
        self.cross = torch.zeros(d_a, d_b, dtype=f64)

    def update(self, a: torch.Tensor, b: torch.Tensor) -> None:
        """Add a chunk of tokens: ``a`` is ``(n, d_a)``, ``b`` is ``(n, d_b)``."""
        if (a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[0]
                or a.shape[1] != self.d_a or b.shape[1] != self.d_b):
            raise ValueError(
                f"expected a (n, {self.d_a}) and b (n, {self.d_b}) with equal n, "
                f"got a {tuple(a.shape)} and b {tuple(b.shape)}")
        if a.shape[0] == 0:
            return
        a, b = a.detach().to("cpu", torch.float64), b.detach().to("cpu", torch.float64)
        self.n += a.shape[0]
        self.sum_a += a.sum(0)
        self.sum_b += b.sum(0)
        self.sumsq_a += (a * a).sum(0)
        self.sumsq_b += (b * b).sum(0)
        self.min_a = torch.minimum(self.min_a, a.min(0).values)
        self.min_b = torch.minimum(self.min_b, b.min(0).values)
        self.max_a = torch.maximum(self.max_a, a.max(0).values)
        self.max_b = torch.maximum(self.max_b, b.max(0).values)
        self.cross += a.T @ b

    def _check_seen(self) -> None:
        if self.n == 0:
            raise ValueError("no tokens seen; call update() before correlation()")

    def _std(self, s: torch.Tensor, sq: torch.Tensor) -> torch.Tensor:
        self._check_seen()
        mean = s / self.n
        return (sq / self.n - mean * mean).clamp_min(0.0).sqrt()

    @property
    def std_a(self) -> torch.Tensor:
        """Population std of each A feature, ``(d_a,)`` float64."""
        return self._std(self.sum_a, self.sumsq_a)

    @property
    def std_b(self) -> torch.Tensor:
        """Population std of each B feature, ``(d_b,)`` float64."""
        return self._std(self.sum_b, self.sumsq_b)

    @property
    def active_a(self) -> torch.Tensor:
        """Bool mask ``(d_a,)`` of A features that were not constant."""
        self._check_seen()
        return self.max_a > self.min_a

    @property
    def active_b(self) -> torch.Tensor:
        """Bool mask ``(d_b,)`` of B features that were not constant."""
        self._check_seen()
        return self.max_b > self.min_b

    def correlation(self) -> torch.Tensor:
        """Pearson correlation ``(d_a, d_b)`` float32; 0 wherever a feature is constant."""
        self._check_seen()
        n = self.n
        cov = self.cross / n - torch.outer(self.sum_a / n, self.sum_b / n)
        denom = torch.outer(self.std_a, self.std_b)
        valid = torch.outer(self.active_a, self.active_b) & (denom > 0)
        corr = torch.where(valid, cov / torch.where(valid, denom, 1.0), 0.0)
        return corr.clamp(-1.0, 1.0).to(torch.float32)


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


def best_partners(corr: torch.Tensor, active_b: torch.Tensor | None = None) -> Matches:
    """For every (active) B feature, its A feature of highest signed correlation.

    ``corr`` is ``(d_a, d_b)``; ``active_b`` an optional bool mask ``(d_b,)``.
    Ties go to the lowest A index. Output is sorted by ``idx_b``.
    """
    best = torch.argmax(corr, dim=0)  # first maximal index on ties
    idx_b = torch.arange(corr.shape[1])
    if active_b is not None:
        idx_b = idx_b[active_b.to(torch.bool).cpu()]
    idx_a = best.cpu()[idx_b]
    r = corr.cpu()[idx_a, idx_b]
    return Matches(idx_a.numpy().astype(np.int64), idx_b.numpy().astype(np.int64),
                   r.numpy().astype(np.float32))


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
