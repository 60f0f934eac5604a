"""Compiled inner loops of the permutation nulls (numba), imported only when a null runs.

Kernels are compiled without numba's own thread pool (an OpenMP pool beside torch's keeps spinning
between calls and slowed torch's next operations threefold here); they release the GIL, and
:func:`rsa_null_sums` runs slices of the shuffles on plain threads, as many as torch uses. Each shuffle
is computed by one thread in a fixed order, so results do not depend on the number of threads.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(nogil=True, cache=True)
def rsa_cross_sums(rx_upper: np.ndarray, RY: np.ndarray, perms: np.ndarray) -> np.ndarray:
    """``(N,)`` float64: ``sum_{i<j} rx[i, j] * RY[p_i, p_j]`` for every row ``p`` of ``perms`` ``(N, n)``.

    ``rx_upper`` ``(n (n - 1) / 2,)`` is X's condensed upper triangle (row by row, as ``pdist`` lays it
    out), ``RY`` ``(n, n)`` Y's full symmetric matrix. Products and sums are in float64; a row of RY is
    read once per shuffle and its entries gathered by ``p`` (it stays in the cache).
    """
    N, n = perms.shape
    out = np.empty(N)
    for s in range(N):
        p = perms[s]
        acc = 0.0
        start = 0
        for i in range(n - 1):
            row = RY[p[i]]
            a0 = 0.0
            a1 = 0.0
            j = i + 1
            while j + 1 < n:  # two running sums: the adds of one do not wait on the other's
                a0 += np.float64(rx_upper[start + j - i - 1]) * np.float64(row[p[j]])
                a1 += np.float64(rx_upper[start + j - i]) * np.float64(row[p[j + 1]])
                j += 2
            if j < n:
                a0 += np.float64(rx_upper[start + j - i - 1]) * np.float64(row[p[j]])
            acc += a0 + a1
            start += n - i - 1
        out[s] = acc
    return out


def rsa_null_sums(rx_upper: np.ndarray, RY: np.ndarray, perms: np.ndarray) -> np.ndarray:
    """:func:`rsa_cross_sums` of ``perms`` split into one slice per thread (``torch.get_num_threads()``)."""
    from concurrent.futures import ThreadPoolExecutor

    import torch

    threads = max(1, min(torch.get_num_threads(), len(perms)))
    slices = np.array_split(np.arange(len(perms)), threads)
    with ThreadPoolExecutor(threads) as pool:
        parts = list(pool.map(lambda idx: rsa_cross_sums(rx_upper, RY, perms[idx]), slices))
    return np.concatenate(parts)
