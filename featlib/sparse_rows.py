"""SAE codes as sparse rows: one CSR matrix (``scipy.sparse.csr_array``) of shape (n_units, d_sae)
per SAE and layer, row t holding unit t's non-zero codes (at most k for TopK SAEs).

``pack`` builds it from dense code chunks in unit order; ``chunks`` replays it as the padded
:class:`featlib.correlation.SparseCodes` chunks the correlation engine reads; ``restrict`` keeps a
subset of features (renumbered); ``active_features`` says which features vary.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import scipy.sparse as sp
import torch

from .correlation import CorrelationResult, SparseCodes
from .correlation import correlate as streamed_correlate


def pack(chunks: Iterable[torch.Tensor], d: int) -> sp.csr_array:
    """(n_i, d) dense code chunks, in unit order -> the (sum n_i, d) float32 CSR matrix of their non-zeros."""
    blocks = [sp.csr_array(z.numpy().astype(np.float32, copy=False)) for z in chunks]
    if not blocks:
        return sp.csr_array((0, d), dtype=np.float32)
    out = sp.vstack(blocks, format="csr")
    out.sort_indices()
    return out


def chunks(codes: sp.csr_array, chunk_tokens: int) -> Iterator[SparseCodes]:
    """Consecutive row chunks of ``codes`` as :class:`SparseCodes` (idx, val) of shape (rows, max non-zeros
    per row), rows with fewer non-zeros padded with (feature 0, value 0)."""
    indptr = codes.indptr
    for start in range(0, codes.shape[0], chunk_tokens):
        ptr = indptr[start : start + chunk_tokens + 1]
        n, lo = len(ptr) - 1, ptr[0]
        per_row = np.diff(ptr)
        row = np.repeat(np.arange(n), per_row)
        slot = np.arange(ptr[-1] - lo) - (ptr[:-1] - lo)[row]
        idx = np.zeros((n, max(1, int(per_row.max(initial=0)))), dtype=np.int64)
        val = np.zeros(idx.shape, dtype=np.float32)
        idx[row, slot] = codes.indices[lo : ptr[-1]]
        val[row, slot] = codes.data[lo : ptr[-1]]
        yield SparseCodes(torch.from_numpy(idx), torch.from_numpy(val), codes.shape[1])


def lookup(features: np.ndarray, d: int) -> torch.Tensor:
    """(d,) int64 map of a feature to its place in ``features``, -1 for the others (for :func:`restrict`)."""
    out = torch.full((d,), -1, dtype=torch.long)
    out[torch.as_tensor(np.asarray(features, dtype=np.int64))] = torch.arange(len(features))
    return out


def restrict(chunk: SparseCodes, lookup: torch.Tensor, n: int) -> SparseCodes:
    """The codes of a subset of ``n`` features: ``lookup`` (see :func:`lookup`) renumbers them."""
    idx = lookup[chunk.idx]
    keep = idx >= 0
    return SparseCodes(torch.where(keep, idx, 0), torch.where(keep, chunk.val, 0), n)


def _feature_stats(codes: sp.csr_array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per feature of (n, d) ``codes``: mean and population std (float64, summed in row order as the
    streamed engine does) and whether it varies (``active``: max > min and std > 0)."""
    n, d = codes.shape
    x = codes.data.astype(np.float64)
    mean = np.bincount(codes.indices, weights=x, minlength=d) / n
    std = np.sqrt(np.clip(np.bincount(codes.indices, weights=x * x, minlength=d) / n - mean**2, 0, None))
    cols = codes.tocsc()
    cols.sort_indices()
    fires = np.diff(cols.indptr)
    starts = cols.indptr[:-1][fires > 0]
    hi, lo = np.zeros(d), np.zeros(d)
    hi[fires > 0] = np.maximum.reduceat(cols.data, starts)
    lo[fires > 0] = np.minimum.reduceat(cols.data, starts)
    silent = fires < n  # some unit reads 0 for this feature
    hi, lo = np.where(silent, np.maximum(hi, 0), hi), np.where(silent, np.minimum(lo, 0), lo)
    return mean, std, (hi > lo) & (std > 0)


def active_features(codes: sp.csr_array) -> np.ndarray:
    """(d,) bool: the features of (n, d) ``codes`` that vary over the units (max > min and std > 0): the ones
    correlation matching can pair."""
    return _feature_stats(codes)[2]


def _block_ends(codes_a: sp.csr_array, codes_b: sp.csr_array, max_entries: int) -> list[int]:
    """Ends of consecutive blocks of B features whose co-active products with A (bounded by the sum
    over units of nnz_A(t) * nnz_B,block(t)) stay within ``max_entries``."""
    unit = np.repeat(np.arange(codes_b.shape[0]), np.diff(codes_b.indptr))
    cost = np.bincount(codes_b.indices, weights=np.diff(codes_a.indptr)[unit], minlength=codes_b.shape[1])
    cum = np.cumsum(cost)
    ends: list[int] = []
    base = 0
    while (ends[-1] if ends else 0) < codes_b.shape[1]:
        start = ends[-1] if ends else 0
        end = int(np.searchsorted(cum, base + max_entries, side="right"))
        end = min(codes_b.shape[1], max(end, start + 1))
        ends.append(end)
        base = int(cum[end - 1])
    return ends


BYTES_PER_PAIR = 64  # the product (value, index), its row, r in float64 and float32, and their temporaries


def correlate(codes_a: sp.csr_array, codes_b: sp.csr_array, *, max_bytes: int = 3 << 30) -> CorrelationResult:
    """Best A partner of every B feature from two (n_units, d) code matrices of the same units.

    The same result as :func:`featlib.correlation.correlate` on these rows (same r to float32, same
    ties: lowest index), computed from one sparse product Bᵀ·A in float64 instead of a stream of
    scatter-adds. It rests on the codes being non-negative: a pair that never fires together then
    has r = -mean_a mean_b / (std_a std_b) <= 0, so a B feature whose best co-active r is positive
    has found its best partner among the co-active ones; the few others are scored against every A
    feature. Codes with negative values go to the streamed engine. ``max_bytes`` bounds the product and
    its temporaries (``BYTES_PER_PAIR`` per co-active pair; B features are taken in blocks when they do not fit).
    """
    if codes_a.shape[0] != codes_b.shape[0]:
        raise ValueError(
            f"codes of {codes_a.shape[0]} and {codes_b.shape[0]} units: both sides must code the "
            "same units. Fix: encode both sides on the same evaluation stream."
        )
    n, (d_a, d_b) = codes_a.shape[0], (codes_a.shape[1], codes_b.shape[1])
    if n == 0:
        raise ValueError("no units: the codes are empty. Fix: check the activations and token counts.")
    if (codes_a.data < 0).any() or (codes_b.data < 0).any():
        return streamed_correlate(
            lambda: zip(chunks(codes_a, 4096), chunks(codes_b, 4096)), d_a, d_b, max_bytes=max_bytes
        )
    mean_a, std_a, act_a = _feature_stats(codes_a)
    mean_b, std_b, act_b = _feature_stats(codes_b)
    a64 = codes_a.astype(np.float64)
    sa = np.where(act_a, std_a, 1.0)
    best_a = np.full(d_b, -1, dtype=np.int64)
    best_r = np.zeros(d_b, dtype=np.float32)
    lo = 0
    ends = _block_ends(codes_a, codes_b, max(1, max_bytes // BYTES_PER_PAIR))
    for hi in ends:
        cross = (codes_b[:, lo:hi].astype(np.float64).T @ a64).tocsr()  # (block, d_a): co-active sums, unit order
        cross.sort_indices()
        per_row = np.diff(cross.indptr)
        row = np.repeat(np.arange(hi - lo, dtype=np.int32), per_row)
        ia = cross.indices
        r64 = cross.data * (1 / n)
        r64 -= mean_a[ia] * np.repeat(mean_b[lo:hi], per_row)
        r64 /= sa[ia]
        sb = np.where(act_b[lo:hi], std_b[lo:hi], 1.0)
        r = np.clip(r64 / np.repeat(sb, per_row), -1, 1).astype(np.float32)
        r[~act_a[ia]] = -np.inf  # an inactive feature is nobody's partner
        top = np.full(hi - lo, -np.inf, dtype=np.float32)
        if len(r):
            top[per_row > 0] = np.maximum.reduceat(r, cross.indptr[:-1][per_row > 0])
        first = np.flatnonzero(r == top[row])
        row_first, at = np.unique(row[first], return_index=True)  # ties -> lowest A index (sorted rows)
        best_a[lo + row_first] = ia[first[at]]
        best_r[lo + row_first] = r[first[at]]
        for j in np.flatnonzero(act_b[lo:hi] & ~(top > 0)):
            # no positive co-active r: the best partner may be a feature that never fires with this one
            s = slice(cross.indptr[j], cross.indptr[j + 1])
            col = (-mean_a * mean_b[lo + j] / sa) / sb[j]  # r of a pair that never fires together
            col[ia[s]] = r64[s] / sb[j]
            col = np.clip(col, -1, 1).astype(np.float32)
            col[~act_a] = -np.inf
            i = int(np.argmax(col))
            best_a[lo + j], best_r[lo + j] = (i, col[i]) if np.isfinite(col[i]) else (-1, 0.0)
        del cross, row, r64, r, first
        lo = hi
    best_a[~act_b], best_r[~act_b] = -1, 0.0
    return CorrelationResult(
        best_a=best_a,
        best_r=best_r,
        top_a=best_a[:, None].copy(),
        top_r=best_r[:, None].copy(),
        active_a=act_a,
        active_b=act_b,
        std_a=std_a,
        std_b=std_b,
        n_tokens=n,
        passes=len(ends),
        method="csr",
    )
