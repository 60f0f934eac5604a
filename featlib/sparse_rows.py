"""SAE codes as sparse rows: one CSR matrix (``scipy.sparse.csr_array``) of shape (n_units, d_sae)
per SAE and layer, row t holding unit t's non-zero codes (at most k for TopK SAEs).

``pack`` builds it from dense code chunks in unit order; ``chunks`` replays it as the padded
:class:`featlib.correlation.SparseCodes` chunks the correlation engine reads; ``restrict`` keeps a
subset of features (renumbered).
"""

from __future__ import annotations

from typing import Iterable, Iterator

import numpy as np
import scipy.sparse as sp
import torch

from .correlation import SparseCodes


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
