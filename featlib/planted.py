"""A planted-truth benchmark of the calibrated scale (issue 13, item 4).

Two synthetic "models" share a known fraction ``s`` of their features; each goes through the chain's
own steps (SAE training with :func:`featlib.saes.train_sae`, codes packed as sparse rows, streamed
correlation matching with :func:`featlib.correlation.correlate`, one-to-one, threshold) and every
metric of :mod:`featlib.similarity`, calibrated between a floor and a ceiling with
:func:`featlib.calibration.calibrate_pairs`. Since the truth is known, the response of each metric's
calibrated score to ``s`` shows what the scale can and cannot tell.

The synthetic world (everything seeded from ``PlantedParams.seed``)
-------------------------------------------------------------------
* ``n_tokens`` units. A model has ``n_features`` true features; feature ``f`` has a sparse
  non-negative latent activation over the units (it fires on a unit with probability ``fire_prob``,
  independently, with an exponential magnitude of mean 1: about ``fire_prob · n_features`` features
  per unit) and a unit-norm decoder direction ``u_f`` in the model's residual space of width ``d``.
  Activations ``x = Σ_f latent_f · u_f + noise · N(0, I_d)`` (float32).
* **Model A** (width ``d_a``): independent latents, directions uniform on the sphere.
* **Model B at share s** (width ``d_b``): ``round(s · n_features)`` of its features copy A's features
  (a fixed random order of A's features, so the shared set at a smaller ``s`` is a subset of that at a
  larger one): the *latent activations are identical* (the same concept fires on the same units) and
  the direction is ``M u_f / |M u_f|`` with one fixed linear map ``M = Q (I + distortion · G / √d_a)``,
  ``Q`` a random ``d_b × d_a`` matrix with orthonormal columns and ``G`` standard normal. B's other
  features are model-specific: their own latents and random directions. B's own random draws are the
  same for every ``s`` (only the copied features change), so the curves over ``s`` use common random
  numbers.
* **Ceiling** (seed ceiling): A against itself, A's SAE against a second SAE of A trained with another
  seed.
* **Floor** (random-model floor): A against an independent "random model" sharing nothing. It is *the
  s = 0 construction of B with another seed* (B's widths, independent latents and directions, its own
  SAE seed): the synthetic analogue of a random re-initialisation, so the cross score at ``s = 0`` and
  the floor have the same distribution (a test checks the s = 0 cross mean lies inside the floor
  interval). Only A's ceiling is measured (B changes with ``s``); the real study also averages in B's.

A's SAEs are trained once and reused for every ``s``; each ``s`` trains one SAE of B (same torch seed
for every ``s``).

Matching and what differs from the chain
----------------------------------------
The chain's matching (:func:`featlib.study.pairs.matching_artifact`): the best A partner of every
active B feature (many-to-one), one-to-one, then ``r > min_r``. The concept-token filters (punctuation
top tokens, a shared top token) do not apply: synthetic units have no tokens. **The threshold is
``min_r = 0`` here, not the profiles' 0.1**: independent latents correlate at ``|r| ~ 1/√n_tokens``,
so at 0.1 the s = 0 world and the floor keep (almost) no pairs, the calibration cannot subsample them at
one size, and the pairs kept at ``0 < s`` are (almost) only the planted ones, so ``s`` shows in the
*number* of pairs rather than their geometry. With ``min_r = 0`` every ``s`` keeps about the same number
of pairs (one per A feature that is some B feature's best partner) and ``s`` sets the share of planted
correspondences among them (reported as ``planted``: the share of final pairs whose two SAE latents'
nearest true features (decoder cosine) are a planted A→B copy, or the same feature for the ceiling).
Sizes are chosen so that the final pairs number about ``d`` (``n ≈ d``, the regime in which plain
SVCCA is degenerate): SAEs of expansion 1 (``d_a`` and ``d_b`` latents) on ``n_features = d_a`` true
features. With ``d_a = 80``, ``d_b = 96`` the comparisons keep about 50-75 pairs (the s = 0 world and
the floor fewest: one pair per A latent that is some B latent's chance best partner), so the
calibration draws ``m ≈ 25-29`` pairs, enough for mutual k-NN with ``k = 10`` (scorable from 22 pairs);
at ``d_a = 64`` the floor kept about 41 pairs and mutual k-NN was not scorable. torch runs on one thread
during :func:`run` (restored after): the matrices are tiny, and on a shared 2-core machine two threads
made SAE training 8-60 times slower.

Decoder rows are ``W_dec`` rows in float64, as :meth:`featlib.study.core.Study.decoder_rows` gives
them. Raw scores (:func:`featlib.similarity.scores`) are of all final pairs of a comparison, so they
differ in ``n``; the calibrated scores are at one size ``m`` (see :mod:`featlib.calibration`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp
import torch

from . import calibration, matching, similarity, sparse_rows
from .calibration import Calibration
from .correlation import correlate

if TYPE_CHECKING:
    import pandas as pd

SHARES = (0.0, 0.25, 0.5, 0.75, 1.0)
# roles in the seed sequences: np.random.default_rng([seed, role]) for the worlds, role + 100 for SAEs
_A, _MAP, _B, _FLOOR, _ORDER = 0, 1, 2, 3, 4
_SAE_A, _SAE_CEILING, _SAE_B, _SAE_FLOOR = 100, 101, 102, 103


def default_sae() -> dict[str, Any]:
    """The SAE training parameters of :func:`featlib.saes.train_sae` used here (small, fast on a CPU)."""
    return dict(architecture="topk", expansion=1, k=4, lr=3e-3, batch_size=256, epochs=20, b_dec_init="zeros")


@dataclass(frozen=True)
class PlantedParams:
    """Sizes and seeds of the planted benchmark (defaults: the test size, about 20-30 s on 2 shared CPU cores)."""

    shares: tuple[float, ...] = SHARES
    n_tokens: int = 8192
    d_a: int = 80
    d_b: int = 96
    n_features: int = 80  # true features per model
    fire_prob: float = 0.06  # each feature fires on a unit with this probability
    noise: float = 0.05  # std of the isotropic Gaussian noise per coordinate
    distortion: float = 0.1  # B's map of shared directions: Q (I + distortion · G / sqrt(d_a))
    sae: dict[str, Any] = field(default_factory=default_sae)
    min_r: float = 0.0  # matching threshold (r > min_r), see the module doc
    chunk_tokens: int = 4096  # units per chunk of the streamed correlation
    fraction: float = 0.5  # calibration: pairs per draw = fraction * the fewest final pairs
    draws: int = 50  # half-sample replicates
    inner: int = 4  # subsets of m pairs averaged per replicate (calibration.inner_draws)
    variance: float = 0.99
    knn_k: int = 10
    heldout_splits: int = 10
    metrics: tuple[str, ...] | None = None  # None: every metric of featlib.similarity.METRICS
    seed: int = 0


@dataclass(frozen=True)
class Model:
    """One synthetic model: ``acts`` (n_tokens, d) float32 activations, ``latents`` (n_tokens, n_features)
    float32 true feature activations, ``directions`` (n_features, d) float64 unit rows, ``source``
    (n_features,) int64: the A feature a feature copies, -1 where it is model-specific (A: -1 throughout)."""

    acts: np.ndarray
    latents: np.ndarray
    directions: np.ndarray
    source: np.ndarray

    @property
    def d(self) -> int:
        return self.acts.shape[1]


def _rng(p: PlantedParams, role: int) -> np.random.Generator:
    return np.random.default_rng([p.seed, role])


def _sae_seed(p: PlantedParams, role: int) -> int:
    return int(_rng(p, role).integers(2**31 - 1))


def _features(
    rng: np.random.Generator, n_tokens: int, n_features: int, d: int, fire_prob: float
) -> tuple[np.ndarray, np.ndarray]:
    """(latents (n_tokens, n_features) float32, directions (n_features, d) float64 unit rows)."""
    fires = rng.random((n_tokens, n_features)) < fire_prob
    latents = (fires * rng.exponential(1.0, (n_tokens, n_features))).astype(np.float32)
    directions = rng.standard_normal((n_features, d))
    return latents, directions / np.linalg.norm(directions, axis=1, keepdims=True)


def _activations(rng: np.random.Generator, latents: np.ndarray, directions: np.ndarray, noise: float) -> np.ndarray:
    x = latents.astype(np.float64) @ directions + noise * rng.standard_normal((len(latents), directions.shape[1]))
    return x.astype(np.float32)


def model_a(p: PlantedParams) -> Model:
    """Model A: ``n_features`` independent features in width ``d_a`` (see the module doc)."""
    rng = _rng(p, _A)
    latents, directions = _features(rng, p.n_tokens, p.n_features, p.d_a, p.fire_prob)
    return Model(
        _activations(rng, latents, directions, p.noise), latents, directions, np.full(p.n_features, -1, dtype=np.int64)
    )


def shared_map(p: PlantedParams) -> np.ndarray:
    """(d_b, d_a) the fixed linear map of shared directions: ``Q (I + distortion · G / sqrt(d_a))``."""
    rng = _rng(p, _MAP)
    Q, _ = np.linalg.qr(rng.standard_normal((p.d_b, p.d_a)))
    return Q @ (np.eye(p.d_a) + p.distortion * rng.standard_normal((p.d_a, p.d_a)) / np.sqrt(p.d_a))


def model_b(p: PlantedParams, a: Model, share: float, *, floor: bool = False) -> Model:
    """Model B of width ``d_b`` sharing ``round(share · n_features)`` of A's features (identical latents,
    directions mapped by :func:`shared_map`); the rest model-specific. ``floor=True``: the same
    construction with another seed (use ``share = 0``: the random-model floor)."""
    if not 0 <= share <= 1:
        raise ValueError(f"share must be in [0, 1], got {share}")
    rng = _rng(p, _FLOOR if floor else _B)
    latents, directions = _features(rng, p.n_tokens, p.n_features, p.d_b, p.fire_prob)
    source = np.full(p.n_features, -1, dtype=np.int64)
    n_shared = int(round(share * p.n_features))
    if n_shared:
        copied = _rng(p, _ORDER).permutation(p.n_features)[:n_shared]  # fixed order: nested over s
        mapped = a.directions[copied] @ shared_map(p).T
        latents[:, :n_shared] = a.latents[:, copied]
        directions[:n_shared] = mapped / np.linalg.norm(mapped, axis=1, keepdims=True)
        source[:n_shared] = copied
    return Model(_activations(rng, latents, directions, p.noise), latents, directions, source)


def synthetic_activations(p: PlantedParams, share: float) -> tuple[np.ndarray, np.ndarray]:
    """(A's activations (n_tokens, d_a), B's at ``share`` (n_tokens, d_b)), float32, rows the same units."""
    a = model_a(p)
    return a.acts, model_b(p, a, share).acts


# ---- the chain's steps on synthetic activations ------------------------------------------------


@dataclass(frozen=True)
class Encoded:
    """A model with one trained SAE: its codes (n_tokens, d_sae) as sparse rows, its decoder
    (d_sae, d) float64 and each latent's nearest true feature by decoder cosine (d_sae,)."""

    model: Model
    codes: sp.csr_array
    W_dec: np.ndarray
    feature: np.ndarray
    explained_variance: float


def train_side(model: Model, p: PlantedParams, seed: int) -> Encoded:
    """Train an SAE on ``model``'s activations (:func:`featlib.saes.train_sae`) and encode them."""
    from .saes import train_sae

    sae = train_sae(model.acts, p.sae, seed)
    chunks = []
    sse = 0.0
    with torch.inference_mode():
        for start in range(0, len(model.acts), p.chunk_tokens):
            x = torch.from_numpy(model.acts[start : start + p.chunk_tokens])
            z = sae.encode(x).float()
            sse += float(((sae.decode(z).float() - x) ** 2).sum())
            chunks.append(z)
        W = sae.W_dec.detach().double().numpy()
    codes = sparse_rows.pack(chunks, W.shape[0])
    centred = model.acts - model.acts.mean(axis=0, dtype=np.float64)
    cos = (W / np.maximum(np.linalg.norm(W, axis=1, keepdims=True), 1e-12)) @ model.directions.T
    return Encoded(model, codes, W, cos.argmax(axis=1), 1 - sse / float((centred**2).sum()))


@dataclass(frozen=True)
class Pairs:
    """The final pairs of one comparison: ``X`` (n, d_x) and ``Y`` (n, d_y) decoder rows, the matches,
    the funnel (as in the chain, without the token filters), and the share of planted pairs."""

    X: np.ndarray
    Y: np.ndarray
    matches: matching.Matches
    funnel: dict[str, int]
    planted: float

    @property
    def n(self) -> int:
        return len(self.matches)

    @property
    def median_r(self) -> float:
        return float(np.median(self.matches.r)) if self.n else np.nan


def match_sides(a: Encoded, b: Encoded, p: PlantedParams, same_model: bool = False) -> Pairs:
    """The chain's matching of two sides' codes: streamed correlation, best A partner of every active B
    latent, one-to-one, ``r > min_r``. ``same_model``: both sides encode one model (the ceiling), so a
    pair is planted when both latents find the same true feature; else when B's feature copies A's."""

    def chunks():
        return zip(sparse_rows.chunks(a.codes, p.chunk_tokens), sparse_rows.chunks(b.codes, p.chunk_tokens))

    res = correlate(chunks, a.codes.shape[1], b.codes.shape[1])
    m2o = res.matches()
    one = matching.one_to_one(m2o)
    final = matching.threshold(one, p.min_r)
    funnel = {
        "features_A": len(res.active_a),
        "features_B": len(res.active_b),
        "active_A": int(res.active_a.sum()),
        "active_B": int(res.active_b.sum()),
        "many_to_one": len(m2o),
        "one_to_one": len(one),
        "r_above_threshold": len(final),
    }
    fa, fb = a.feature[final.idx_a], b.feature[final.idx_b]
    truth = fa == (fb if same_model else b.model.source[fb])
    planted = float(truth.mean()) if len(final) else np.nan
    return Pairs(a.W_dec[final.idx_a], b.W_dec[final.idx_b], final, funnel, planted)


# ---- the benchmark --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reference:
    """The ceiling or the floor: its pairs' count, median r, planted share and raw scores (all pairs)."""

    n: int
    median_r: float
    planted: float
    raw: dict[str, float]


@dataclass(frozen=True)
class ShareResult:
    """One share ``s``: final pairs ``n``, their median r, the planted share among them, B's SAE explained
    variance, each metric's raw score (all ``n`` pairs) and its :class:`featlib.calibration.Calibration`."""

    share: float
    n: int
    median_r: float
    planted: float
    funnel: dict[str, int]
    explained_variance: float
    raw: dict[str, float]
    calibration: dict[str, Calibration]


@dataclass(frozen=True)
class PlantedResult:
    params: PlantedParams
    metrics: tuple[str, ...]
    shares: list[ShareResult]
    ceiling: Reference
    floor: Reference
    explained_variance: dict[str, float]  # the SAEs of A, A's second seed and the floor model
    seconds: float

    def at(self, share: float) -> ShareResult:
        """The result of share ``share``."""
        for r in self.shares:
            if np.isclose(r.share, share):
                return r
        raise KeyError(f"share {share} was not run (shares: {[r.share for r in self.shares]})")


def _raw(pairs: Pairs, p: PlantedParams, metrics: Sequence[str]) -> dict[str, float]:
    if pairs.n < 3:
        return {k: np.nan for k in metrics}
    return similarity.scores(
        pairs.X,
        pairs.Y,
        variance=p.variance,
        knn_k=p.knn_k,
        metrics=metrics,
        heldout_splits=p.heldout_splits,
        seed=p.seed,
    )


def _reference(pairs: Pairs, p: PlantedParams, metrics: Sequence[str]) -> Reference:
    return Reference(pairs.n, pairs.median_r, pairs.planted, _raw(pairs, p, metrics))


@contextmanager
def _one_thread() -> Iterator[None]:
    """torch on one thread inside, restored after: the matrices here are tiny (64-80 wide), and on a
    shared 2-core machine two threads made SAE training 8-60 times slower than one (measured)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run(p: PlantedParams = PlantedParams(), progress: bool = False) -> PlantedResult:
    """Train, match and score the planted worlds of every share in ``p.shares`` (see the module doc;
    torch runs on one thread meanwhile). ``progress``: print a line per stage."""
    with _one_thread():
        return _run(p, progress)


def _run(p: PlantedParams, progress: bool) -> PlantedResult:
    t0 = time.perf_counter()
    metrics = tuple(p.metrics or similarity.METRICS)
    say = print if progress else (lambda *a, **k: None)
    a = model_a(p)
    side_a = train_side(a, p, _sae_seed(p, _SAE_A))
    side_a2 = train_side(a, p, _sae_seed(p, _SAE_CEILING))
    ceiling = match_sides(side_a, side_a2, p, same_model=True)
    side_f = train_side(model_b(p, a, 0.0, floor=True), p, _sae_seed(p, _SAE_FLOOR))
    floor = match_sides(side_a, side_f, p)
    say(f"planted: ceiling {ceiling.n} pairs, floor {floor.n} pairs ({time.perf_counter() - t0:.0f} s)")
    kw: dict[str, Any] = dict(
        fraction=p.fraction,
        draws=p.draws,
        inner=p.inner,
        seed=p.seed,
        variance=p.variance,
        knn_k=p.knn_k,
        heldout_splits=p.heldout_splits,
        metrics=metrics,
    )
    out = []
    for s in p.shares:
        side_b = train_side(model_b(p, a, s), p, _sae_seed(p, _SAE_B))
        cross = match_sides(side_a, side_b, p)
        cals = calibration.calibrate_pairs((cross.X, cross.Y), [(ceiling.X, ceiling.Y)], [(floor.X, floor.Y)], **kw)
        out.append(
            ShareResult(
                float(s),
                cross.n,
                cross.median_r,
                cross.planted,
                cross.funnel,
                side_b.explained_variance,
                _raw(cross, p, metrics),
                cals,
            )
        )
        say(f"planted: s = {s:g}: {cross.n} pairs ({time.perf_counter() - t0:.0f} s)")
    ev = {
        "A": side_a.explained_variance,
        "A (ceiling seed)": side_a2.explained_variance,
        "floor model": side_f.explained_variance,
    }
    return PlantedResult(
        p, metrics, out, _reference(ceiling, p, metrics), _reference(floor, p, metrics), ev, time.perf_counter() - t0
    )


def response_table(result: PlantedResult) -> pd.DataFrame:
    """One row per share × metric: pairs ``n`` and their median r and planted share, the raw score (all
    pairs), the pairs per draw ``m``, the null, floor, cross and ceiling means at ``m``, the calibrated
    score with its 2.5–97.5 % interval, and the verdict; the raw ceiling and floor scores of all their
    pairs are the ``raw ceiling`` / ``raw floor`` columns."""
    import pandas as pd

    rows = []
    for r in result.shares:
        for k in result.metrics:
            c = r.calibration[k]
            rows.append(
                {
                    "share": r.share,
                    "metric": k,
                    "n": r.n,
                    "median r": r.median_r,
                    "planted": r.planted,
                    "raw": r.raw[k],
                    "raw floor": result.floor.raw[k],
                    "raw ceiling": result.ceiling.raw[k],
                    "m": c.m,
                    "null": c.null.mean,
                    "floor": c.floor.mean,
                    "floor hi": c.floor.hi,
                    "cross": c.cross.mean,
                    "ceiling": c.ceiling.mean,
                    "calibrated": c.calibrated.mean,
                    "calibrated lo": c.calibrated.lo,
                    "calibrated hi": c.calibrated.hi,
                    "verdict": c.verdict,
                }
            )
    return pd.DataFrame(rows)


def can_tell_apart(result: PlantedResult, s1: float = 0.25, s2: float = 0.5) -> dict[str, bool]:
    """{metric: whether its calibrated intervals at shares ``s1`` and ``s2`` do not overlap} (False where
    either is not scorable)."""
    a, b = result.at(s1).calibration, result.at(s2).calibration
    out = {}
    for k in result.metrics:
        x, y = a[k].calibrated, b[k].calibrated
        ok = all(np.isfinite(v) for v in (x.lo, x.hi, y.lo, y.hi))
        out[k] = bool(ok and (x.hi < y.lo or y.hi < x.lo))
    return out


def response_figure(result: PlantedResult, s1: float = 0.25, s2: float = 0.5) -> Any:
    """Left: each metric's calibrated score against the planted share ``s`` (mean and 2.5–97.5 % interval
    over the draws; 0 = random-model floor, 1 = seed ceiling), legend marking the metrics whose intervals
    at ``s1`` and ``s2`` do not overlap. Right: the share of planted correspondences among the final
    pairs and their number ``n`` against ``s``. Returns the matplotlib figure (not saved)."""
    import matplotlib.pyplot as plt

    shares = np.array([r.share for r in result.shares])
    apart = can_tell_apart(result, s1, s2) if {s1, s2} <= set(shares.tolist()) else {}
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [2.2, 1]})
    width = 0.03
    for j, k in enumerate(result.metrics):
        cal = [r.calibration[k].calibrated for r in result.shares]
        mean = np.array([c.mean for c in cal])
        if not np.isfinite(mean).any():
            ax.plot([], [], " ", label=f"{similarity.METRIC_NAMES.get(k, k)}: not scorable")
            continue
        lo, hi = np.array([c.lo for c in cal]), np.array([c.hi for c in cal])
        x = shares + (j - (len(result.metrics) - 1) / 2) * width / 2
        mark = f" (tells {s1:g} from {s2:g})" if apart.get(k) else ""
        ax.errorbar(
            x,
            mean,
            yerr=[mean - lo, hi - mean],
            marker="o",
            ms=4,
            capsize=3,
            lw=1.2,
            label=similarity.METRIC_NAMES.get(k, k) + mark,
        )
    ax.axhline(0, color="C3", lw=0.8, ls="--")
    ax.axhline(1, color="C2", lw=0.8, ls="--")
    ax.set_xlabel("planted share s of B's features copied from A")
    ax.set_ylabel("calibrated score (0 = random-model floor, 1 = seed ceiling)")
    p = result.params
    ns = [r.n for r in result.shares]
    m = result.shares[0].calibration[result.metrics[0]].m
    ax.set_title(
        f"calibrated response to the planted share (d_A = {p.d_a}, d_B = {p.d_b}; "
        f"n = {min(ns)}–{max(ns)} pairs, m = {m} per draw)",
        fontsize=9,
    )
    ax.set_xticks(shares)
    ax.legend(fontsize=7, loc="upper left")
    ax2.plot(shares, [r.planted for r in result.shares], "o-", color="C0", label="planted share of final pairs")
    ax2.plot(shares, shares, ":", color="0.5", label="s")
    ax2.set_xlabel("planted share s")
    ax2.set_ylabel("share of final pairs that are planted")
    ax2.set_ylim(-0.05, 1.05)
    ax2.set_xticks(shares)
    twin = ax2.twinx()
    twin.plot(shares, ns, "s--", color="C1", label="final pairs n")
    twin.set_ylabel("final pairs n", color="C1")
    twin.set_ylim(0, max(ns) * 1.15)
    h1, l1 = ax2.get_legend_handles_labels()
    h2, l2 = twin.get_legend_handles_labels()
    ax2.legend(h1 + h2, l1 + l2, fontsize=7, loc="lower right")
    ax2.set_title("what the matching keeps", fontsize=9)
    fig.tight_layout()
    return fig
