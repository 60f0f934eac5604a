"""Pearson correlation of every feature of A with every feature of B, streamed over tokens.

The study needs, for every feature of model B, its best-correlated feature of model A over the
same tokens (and optionally its top-m partners). With published SAEs that is 32,768 × 32,768
correlations over 10^5–10^6 tokens: too much to hold as dense activations. :func:`correlate` never
holds more than one chunk of tokens:

* it accumulates sufficient statistics chunk by chunk: per feature the count, sum, sum of squares,
  minimum and maximum, and the cross-products ``sum_t a_t b_t^T``, with totals in float64;
* **sparse path** (TopK codes, a few non-zeros per token): each chunk is turned into (index, value)
  pairs and only the co-active products are added (``n * k_a * k_b`` scatter-adds per chunk instead
  of ``n * d_a * d_b`` multiply-adds);
* **dense path** (e.g. ReLU pre-activations): each chunk is centred on its own mean, its centred
  values are multiplied in float32 by BLAS in place into a buffer (added to the float64 accumulator
  every 8,192 tokens), and the chunks' centred sums are merged in float64 with the pairwise update of
  Chan, Golub & LeVeque (1979), ``C += C_j + n n_j / (n + n_j) (m_j - m)(m'_j - m')^T``, so no
  ``E[ab] - E[a]E[b]`` cancels whatever the chunk sizes and offsets (a first chunk of one token
  included); per-feature sums are float32 cascade sums within a chunk, merged the same way;
* **bounded memory**: the cross-product accumulator is ``d_a × block`` float64 with ``block`` chosen
  so it fits ``max_bytes``; if B does not fit in one block the token stream is read once per block
  (``chunks`` is a callable returning a fresh iterator), and each block's correlations are reduced
  to best / top-m partners and dropped. The full ``d_a × d_b`` matrix is kept only if asked.

Conventions: population standard deviation; a feature that is constant over the tokens (e.g. never
fires) is *inactive*: its correlations are exactly 0, it is never anybody's best partner, and no
NaN appears; correlations are signed (``absolute=True`` ranks partners by |r| instead).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch

from .matching import Matches

F64 = torch.float64


@dataclass(frozen=True)
class SparseCodes:
    """A chunk of sparse codes: token t has values ``val[t]`` at feature indices ``idx[t]``.

    ``idx`` (n, k) int64 and ``val`` (n, k) float32; padding entries have value 0. ``d`` is the number
    of features.
    """

    idx: torch.Tensor
    val: torch.Tensor
    d: int

    def __len__(self) -> int:
        return int(self.idx.shape[0])

    @staticmethod
    def from_dense(codes: torch.Tensor) -> SparseCodes:
        """(n, d) dense codes -> the same codes as (n, max non-zeros per token) index/value pairs."""
        k = max(1, int((codes != 0).sum(1).max())) if len(codes) else 1
        val, idx = torch.topk(codes.abs(), k, dim=1, sorted=False)
        return SparseCodes(idx, codes.gather(1, idx).float(), codes.shape[1])

    def to_dense(self) -> torch.Tensor:
        out = torch.zeros(len(self), self.d, dtype=torch.float32)
        return out.scatter_add_(1, self.idx, self.val.float())


Chunk = torch.Tensor | SparseCodes
ChunkPairs = Callable[[], Iterable[tuple[Chunk, Chunk]]]


@dataclass
class CorrelationResult:
    """Best partners in A of every B feature, and per-feature statistics.

    ``best_a`` (d_b,) int64 (-1 for inactive B features or when A has no active feature), ``best_r``
    (d_b,) float32 (0 where ``best_a`` is -1), ``top_a`` / ``top_r`` (d_b, m) the m best partners in
    descending order, ``active_a`` (d_a,) / ``active_b`` (d_b,) bool, ``std_a`` / ``std_b``
    population standard deviations (float64), ``n_tokens``, ``passes`` over the token stream,
    ``method`` ("sparse" or "dense") and ``matrix`` (d_a, d_b) float32 if ``keep_matrix``.
    """

    best_a: np.ndarray
    best_r: np.ndarray
    top_a: np.ndarray
    top_r: np.ndarray
    active_a: np.ndarray
    active_b: np.ndarray
    std_a: np.ndarray
    std_b: np.ndarray
    n_tokens: int
    passes: int
    method: str
    matrix: torch.Tensor | None = None

    def matches(self) -> Matches:
        """Many-to-one matches: every active B feature with its best A partner, sorted by B index."""
        idx_b = np.flatnonzero(self.best_a >= 0)
        return Matches(self.best_a[idx_b], idx_b.astype(np.int64), self.best_r[idx_b])


def _merge_weights(n: int, n_j: int) -> tuple[float, float]:
    """``(n_j / (n + n_j), n n_j / (n + n_j))``: the weights of Chan et al.'s update of a mean and of a
    centred sum when a chunk of ``n_j`` tokens joins ``n``."""
    total = n + n_j
    return n_j / total, n * n_j / total


def _chunk_moments(centred: torch.Tensor, ref: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The chunk's mean ``(d,)`` float64 and its sums ``(d,)`` of ``x - ref`` (``centred``, float32
    cascade sums added in float64)."""
    s = centred.sum(0).to(F64)
    return ref.to(F64) + s / len(centred), s


class _FeatureStats:
    """Count, min and max per feature, and its moments (float64): for dense chunks the mean and the
    centred sum of squares, merged chunk by chunk; for sparse chunks the sum and the sum of squares."""

    def __init__(self, d: int) -> None:
        self.n = 0
        self.dense = False
        self.sum = torch.zeros(d, dtype=F64)  # sparse: sum; dense: mean
        self.sumsq = torch.zeros(d, dtype=F64)  # sparse: sum of squares; dense: centred sum of squares
        self.min = torch.full((d,), np.inf, dtype=F64)
        self.max = torch.full((d,), -np.inf, dtype=F64)

    def update_dense(self, x: torch.Tensor, centred: torch.Tensor, ref: torch.Tensor) -> None:
        """Add a dense chunk ``x`` ``(n_j, d)`` float32, given ``centred = x - ref`` (``ref`` ``(d,)``)."""
        self.dense = True
        if not len(x):
            return
        mean_j, s = _chunk_moments(centred, ref)
        m2_j = (centred.square().sum(0).to(F64) - s * s / len(x)).clamp_min(0)
        w_mean, w_m2 = _merge_weights(self.n, len(x))
        delta = mean_j - self.sum
        self.sumsq += m2_j + w_m2 * delta * delta
        self.sum += w_mean * delta
        self.min = torch.minimum(self.min, x.amin(0).to(F64))  # amin/amax: ~7x faster than aminmax
        self.max = torch.maximum(self.max, x.amax(0).to(F64))
        self.n += len(x)

    def update(self, x: SparseCodes) -> None:
        """Add a chunk of sparse codes."""
        n = len(x)
        idx, val = x.idx.reshape(-1), x.val.reshape(-1).to(F64)
        self.sum.index_add_(0, idx, val)
        self.sumsq.index_add_(0, idx, val * val)
        nz = val != 0
        self.max.scatter_reduce_(0, idx[nz], val[nz], "amax")
        self.min.scatter_reduce_(0, idx[nz], val[nz], "amin")
        fires = torch.zeros_like(self.sum).index_add_(0, idx[nz], torch.ones_like(val[nz]))
        silent = fires < n  # some token has 0 for this feature
        self.max = torch.where(silent, self.max.clamp_min(0), self.max)
        self.min = torch.where(silent, self.min.clamp_max(0), self.min)
        self.n += n

    @property
    def mean(self) -> torch.Tensor:
        return self.sum if self.dense else self.sum / self.n

    @property
    def std(self) -> torch.Tensor:
        if self.dense:
            return (self.sumsq / self.n).sqrt()
        return (self.sumsq / self.n - self.mean**2).clamp_min(0).sqrt()

    @property
    def active(self) -> torch.Tensor:
        return (self.max > self.min) & (self.std > 0)


def _check(a: Chunk, b: Chunk, d_a: int, d_b: int) -> None:
    wa = a.d if isinstance(a, SparseCodes) else a.shape[1]
    wb = b.d if isinstance(b, SparseCodes) else b.shape[1]
    if len(a) != len(b) or wa != d_a or wb != d_b:
        raise ValueError(
            f"expected chunks of shape (n, {d_a}) and (n, {d_b}) for the same n tokens, got ({len(a)}, {wa}) "
            f"and ({len(b)}, {wb}). Both models must read the same token stream."
        )


def _choose_method(a: Chunk, b: Chunk, d_a: int, block: int) -> str:
    """Sparse when the co-active products per token are far fewer than a dense row of the block."""
    ka = a.idx.shape[1] if isinstance(a, SparseCodes) else int((a != 0).sum(1).max())
    kb = b.idx.shape[1] if isinstance(b, SparseCodes) else int((b != 0).sum(1).max())
    return "sparse" if 64 * ka * kb < d_a * block else "dense"


def _as(x: Chunk, method: str) -> Chunk:
    if method == "sparse":
        return x if isinstance(x, SparseCodes) else SparseCodes.from_dense(x)
    return x.to_dense() if isinstance(x, SparseCodes) else x.float()


FLUSH_TOKENS = 8192


#: Most pending rank-one corrections of the dense path before they are added to the float64 total.
_MAX_PENDING = 64


class _Cross:
    """The centred cross-products of one block of B features, (d_a, hi - lo), accumulated in float64.

    Sparse chunks scatter-add their co-active (uncentred) products. A dense chunk, centred on its own
    mean, goes through one in-place float32 BLAS product (``addmm_``) into a buffer that is added to the
    float64 total every ``FLUSH_TOKENS`` tokens; its mean joins the running means by Chan et al.'s
    update, whose rank-one terms are added to the total in float64 (one product for up to
    ``_MAX_PENDING`` of them). The dense total is then ``sum_t (a_t - mean_a)(b_t - mean_b)^T``.
    """

    def __init__(self, d_a: int, lo: int, hi: int) -> None:
        self.lo, self.hi = lo, hi
        self.total = torch.zeros(d_a, hi - lo, dtype=F64)
        self.buf: torch.Tensor | None = None
        self.pending = 0
        self.centred = False  # dense chunks: the total is centred
        self.n = 0
        self.mean_a = torch.zeros(d_a, dtype=F64)
        self.mean_b = torch.zeros(hi - lo, dtype=F64)
        self.u: list[torch.Tensor] = []  # pending rank-one terms u v^T
        self.v: list[torch.Tensor] = []

    def add_sparse(self, a: SparseCodes, b: SparseCodes) -> None:
        width = self.hi - self.lo
        keep = (b.idx >= self.lo) & (b.idx < self.hi)
        bv = torch.where(keep, b.val, 0).to(F64)
        bi = torch.where(keep, b.idx - self.lo, 0)
        flat = (a.idx[:, :, None] * width + bi[:, None, :]).reshape(-1)
        self.total.view(-1).index_add_(0, flat, (a.val.to(F64)[:, :, None] * bv[:, None, :]).reshape(-1))

    def add_dense(self, xa: torch.Tensor, ra: torch.Tensor, xb: torch.Tensor, rb: torch.Tensor) -> None:
        """Add a dense chunk given centred ``xa = a - ra`` ``(n_j, d_a)`` and ``xb = b - rb`` ``(n_j, d_b)``."""
        self.centred = True
        n_j = len(xa)
        if not n_j:
            return
        if self.buf is None:
            self.buf = torch.zeros(self.total.shape, dtype=torch.float32)
        xb = xb[:, self.lo : self.hi]
        (mean_a, sa), (mean_b, sb) = _chunk_moments(xa, ra), _chunk_moments(xb, rb[self.lo : self.hi])
        w_mean, w_cross = _merge_weights(self.n, n_j)
        da, db = mean_a - self.mean_a, mean_b - self.mean_b
        # sum_t (a_t - mean_j)(b_t - mean_j)^T = xa^T xb - sa sb^T / n_j, and the merge adds w da db^T
        self.u += [sa / -n_j, w_cross * da]
        self.v += [sb, db]
        self.mean_a += w_mean * da
        self.mean_b += w_mean * db
        self.n += n_j
        for i in range(0, n_j, FLUSH_TOKENS):  # a long chunk is split: float32 sums stay short
            self.buf.addmm_(xa[i : i + FLUSH_TOKENS].T, xb[i : i + FLUSH_TOKENS])
            self.pending += min(FLUSH_TOKENS, n_j - i)
            if self.pending >= FLUSH_TOKENS:
                self._flush()
        if len(self.u) >= _MAX_PENDING:
            self._flush()

    def _flush(self) -> None:
        if self.buf is not None and self.pending:
            self.total += self.buf
            self.buf.zero_()
        if self.u:
            self.total.addmm_(torch.stack(self.u, 1), torch.stack(self.v, 0))
            self.u, self.v = [], []
        self.pending = 0

    def result(self) -> torch.Tensor:
        self._flush()
        self.buf = None
        return self.total


def correlate(
    chunks: ChunkPairs,
    d_a: int,
    d_b: int,
    *,
    top_m: int = 1,
    max_bytes: int = 3 << 30,
    keep_matrix: bool = False,
    method: str = "auto",
    absolute: bool = False,
    progress: Callable[[Iterable], Iterable] | None = None,
) -> CorrelationResult:
    """Stream ``chunks()`` — pairs of (n, d_a) and (n, d_b) codes of the same tokens — into correlations.

    ``chunks`` may yield dense tensors or :class:`SparseCodes`; it is called once per block of B
    features (see module docstring), so it must replay the same tokens each time. ``method`` is
    "auto", "sparse" or "dense". ``max_bytes`` bounds the cross-product accumulator: 12 bytes per
    A × B pair of a block (float64 total plus a float32 buffer or, at the end, the float32
    correlations); 3 GiB hold 16,384 × 16,384 features in one pass. ``progress`` wraps each pass (e.g. a tqdm partial).
    """
    block = int(max(1, min(d_b, max_bytes // (12 * max(d_a, 1)))))
    wrap = progress or (lambda it: it)
    stats_a: _FeatureStats | None = None
    stats_b: _FeatureStats | None = None
    chosen = method
    best_a = np.full(d_b, -1, dtype=np.int64)
    best_r = np.zeros(d_b, dtype=np.float32)
    m = min(top_m, d_a)
    top_a = np.full((d_b, m), -1, dtype=np.int64)
    top_r = np.zeros((d_b, m), dtype=np.float32)
    matrix = torch.zeros(d_a, d_b, dtype=torch.float32) if keep_matrix else None
    passes = 0
    for lo in range(0, d_b, block):
        hi = min(d_b, lo + block)
        acc = _Cross(d_a, lo, hi)
        first_pass = stats_a is None
        for a, b in wrap(chunks()):
            _check(a, b, d_a, d_b)
            if chosen == "auto":
                chosen = _choose_method(a, b, d_a, block)
            a, b = _as(a, chosen), _as(b, chosen)  # both dense tensors or both SparseCodes
            if stats_a is None or stats_b is None:
                stats_a, stats_b = _FeatureStats(d_a), _FeatureStats(d_b)
            if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
                ra, rb = (a.mean(0), b.mean(0)) if len(a) else (a.new_zeros(d_a), b.new_zeros(d_b))
                xa, xb = a - ra, b - rb  # each chunk centred on its own mean
                if first_pass:
                    stats_a.update_dense(a, xa, ra)
                    stats_b.update_dense(b, xb, rb)
                acc.add_dense(xa, ra, xb, rb)
            elif isinstance(a, SparseCodes) and isinstance(b, SparseCodes):
                if first_pass:
                    stats_a.update(a)
                    stats_b.update(b)
                acc.add_sparse(a, b)
        if stats_a is None or stats_b is None or stats_a.n == 0:
            raise ValueError("no tokens: the chunk stream was empty. Fix: check the activations and token counts.")
        cross, centred = acc.result(), acc.centred
        del acc
        act_a, act_b = stats_a.active, stats_b.active[lo:hi]
        # in place, so the peak stays at the float64 block plus one float32 copy
        cross.mul_(1 / stats_a.n)
        if not centred:  # sparse: E[ab] - E[a]E[b]
            cross.addr_(stats_a.mean, stats_b.mean[lo:hi], alpha=-1)
        cross.div_(torch.where(act_a, stats_a.std, 1)[:, None]).div_(torch.where(act_b, stats_b.std[lo:hi], 1)[None, :])
        cross[~act_a] = 0
        cross[:, ~act_b] = 0
        corr = cross.clamp_(-1, 1).float()
        del cross
        if matrix is not None:
            matrix[:, lo:hi] = corr
        score = corr.abs() if absolute else corr
        score[~act_a] = -np.inf  # an inactive feature is nobody's partner
        if m == 1:
            idx = score.argmax(0, keepdim=True)  # ties -> lowest index
            vals = score.gather(0, idx)
        else:
            vals, idx = torch.topk(score, m, dim=0)
        ok = torch.isfinite(vals) & act_b[None, :]
        r = torch.where(ok, corr.gather(0, idx), 0)  # the signed r, also when partners are ranked by |r|
        top_a[lo:hi] = torch.where(ok, idx, -1).T.numpy()
        top_r[lo:hi] = r.T.numpy()
        passes += 1
    if stats_a is None or stats_b is None:
        raise ValueError(f"no features to correlate (d_b = {d_b}). Fix: pass the width of B's codes.")
    best_a[:] = top_a[:, 0]
    best_r[:] = top_r[:, 0]
    return CorrelationResult(
        best_a=best_a,
        best_r=best_r,
        top_a=top_a,
        top_r=top_r,
        active_a=stats_a.active.numpy(),
        active_b=stats_b.active.numpy(),
        std_a=stats_a.std.numpy(),
        std_b=stats_b.std.numpy(),
        n_tokens=stats_a.n,
        passes=passes,
        method=chosen,
        matrix=matrix,
    )


def dense_reference(a: torch.Tensor, b: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    """(d_a, d_b) float32 correlations the way the original research code computes them.

    Holds both (n, d) activation matrices in memory, z-scores every feature (population std; a
    constant feature becomes all zeros) and multiplies the z-scores in chunks of A features. It is
    the plain reference :func:`correlate` is checked and benchmarked against.
    """

    def zscore(x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        std = x.std(0, unbiased=False)
        return torch.where(std > 0, (x - x.mean(0)) / torch.where(std > 0, std, 1), 0)

    za, zb = zscore(a), zscore(b)
    out = torch.empty(a.shape[1], b.shape[1])
    for i in range(0, a.shape[1], chunk):
        out[i : i + chunk] = za[:, i : i + chunk].T @ zb / len(a)
    return out.clamp(-1, 1)
