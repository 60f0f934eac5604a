"""Causal transfer of steering directions from one model to another (notebook 09).

A matched pair (f in the *source* model, g in the *target*) gives a steering direction in the source:
f's decoder row. It is carried into the target's residual stream at the paired layer by a *method*:

* ``partner``: g's decoder row (uses the matching only);
* ``rotation``: the (semi-)orthogonal Procrustes map fitted on the unit decoder rows of *other* matched
  pairs (:func:`procrustes_map`; cross-fitted: never on the test pair's fold);
* ``affine``: the linear part of a ridge regression from the source's to the target's residuals on the
  aligned eval units (:func:`ridge_map`): a shift of the source residual by ``d`` moves the predicted
  target residual by ``d @ W``;
* ``universal``: the universal SAE's target decoder row of the concept whose source decoder row is
  nearest (cosine) to f's.

Every direction is scaled to unit norm and added, times one dose ``alpha`` per model and layer, to
``blocks.L.hook_resid_post`` at every position but BOS (:class:`Steerer`). The dose is the steering
size at which the model's own feature directions raise its clean next-token loss by ``loss_rise``
nats (the median over a sample of them; :func:`dose`), so every method is given the same size in the
same model. What steering does to *behaviour* is the lift of each next-token log-probability, averaged
over positions, read over the token strings both vocabularies share (:func:`shared_strings`).
Agreement between a source steering and a target steering is the Spearman correlation of their lifts
(:func:`spearman_matrix`) and the overlap of their ``top_n`` promoted strings.
"""

from __future__ import annotations

import math
from collections.abc import Sequence, Set
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.stats import rankdata

METHODS: tuple[str, ...] = ("partner", "rotation", "affine", "universal")
CONTROLS: tuple[str, ...] = ("random direction", "re-paired map")


# ---- maps between the two residual streams ---------------------------------------------------------------


def unit_rows(V: np.ndarray) -> np.ndarray:
    """(n, d) rows scaled to unit L2 norm (a zero row raises ValueError: it has no direction)."""
    V = np.asarray(V, dtype=np.float64)
    norms = np.linalg.norm(V, axis=1, keepdims=True)
    if (norms == 0).any():
        raise ValueError(f"{int((norms == 0).sum())} direction(s) have zero norm; a steering direction needs one")
    return V / norms


def procrustes_map(X: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """(d_x, d_y) map R with orthonormal rows (d_x <= d_y) or columns minimising ||X R - Y||_F.

    X (n, d_x), Y (n, d_y): paired rows. R = U V^T from the thin SVD X^T Y = U S V^T (Schönemann 1966);
    with d_x != d_y it is the semi-orthogonal solution (an isometry from the smaller space into the larger).
    """
    U, _, Vt = np.linalg.svd(np.asarray(X, np.float64).T @ np.asarray(Y, np.float64), full_matrices=False)
    return U @ Vt


def ridge_map(X: np.ndarray, Y: np.ndarray, ridge: float) -> np.ndarray:
    """(d_x, d_y) linear part W of the ridge regression Y ≈ X W + b on centred rows.

    X (n, d_x), Y (n, d_y). The penalty is ``ridge`` times the mean eigenvalue of X's centred
    covariance (trace / d_x), so ``ridge`` does not depend on the residual stream's scale.
    """
    X = np.asarray(X, np.float64)
    Y = np.asarray(Y, np.float64)
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    G = Xc.T @ Xc
    lam = ridge * np.trace(G) / G.shape[0]
    return np.linalg.solve(G + lam * np.eye(G.shape[0]), Xc.T @ Yc)


def nearest_rows(queries: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """(n,) index of the row of ``rows`` (m, d) with the highest cosine to each of ``queries`` (n, d)."""
    return np.argmax(unit_rows(queries) @ unit_rows(rows).T, axis=1)


def folds(n: int, k: int, seed: int) -> np.ndarray:
    """(n,) fold (0..k-1) of each of n items: a seeded permutation cut into k near-equal parts."""
    if n < k:
        raise ValueError(f"{n} test pairs cannot be split into {k} folds; lower transfer.folds or match more pairs")
    out = np.empty(n, dtype=np.int64)
    out[np.random.default_rng(seed).permutation(n)] = np.arange(n) % k
    return out


def cross_fitted_rotation(
    X: np.ndarray, Y: np.ndarray, test: np.ndarray, fold: np.ndarray, shuffle_seed: int | None = None
) -> np.ndarray:
    """(len(test), d_y) unit directions: each test row of X mapped by a Procrustes map fitted on every
    pair outside its fold (X (n, d_x), Y (n, d_y): decoder rows of all matched pairs; ``test`` indexes
    them; ``fold`` the fold of each test pair). ``shuffle_seed``: fit instead on randomly re-paired rows
    (the re-paired-map control)."""
    Xu, Yu = unit_rows(X), unit_rows(Y)
    out = np.zeros((len(test), Y.shape[1]))
    rng = np.random.default_rng(shuffle_seed)
    for k in np.unique(fold):
        train = np.setdiff1d(np.arange(len(X)), test[fold == k])
        Yt = Yu[train][rng.permutation(len(train))] if shuffle_seed is not None else Yu[train]
        out[fold == k] = Xu[test[fold == k]] @ procrustes_map(Xu[train], Yt)
    return unit_rows(out)


# ---- what the models' vocabularies share ------------------------------------------------------------------


def shared_strings(
    strings_a: Sequence[str],
    strings_b: Sequence[str],
    special_a: Set[int] = frozenset(),
    special_b: Set[int] = frozenset(),
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(ids_a, ids_b, strings): the decoded token strings both vocabularies hold, each with its first id.

    ``strings_x[i]`` is token i decoded on its own (the tokenizers' space markers, ``Ġ`` or ``▁``, are
    already spaces there). Special tokens, empty strings and partial UTF-8 bytes (U+FFFD) are left out.
    """

    def first_ids(strings: Sequence[str], special: Set[int]) -> dict[str, int]:
        out: dict[str, int] = {}
        for i, s in enumerate(strings):
            if i not in special and s and "\ufffd" not in s:
                out.setdefault(s, i)
        return out

    a, b = first_ids(strings_a, special_a), first_ids(strings_b, special_b)
    common = sorted(set(a) & set(b))
    return (np.array([a[s] for s in common], dtype=np.int64), np.array([b[s] for s in common], dtype=np.int64), common)


# ---- agreement ---------------------------------------------------------------------------------------------


def _standard_ranks(L: np.ndarray) -> np.ndarray:
    R = rankdata(np.asarray(L, np.float64), axis=1)
    R -= R.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(R, axis=1, keepdims=True)
    return np.divide(R, norm, out=np.zeros_like(R), where=norm > 0)


def spearman_matrix(La: np.ndarray, Lb: np.ndarray) -> np.ndarray:
    """(n_a, n_b) Spearman correlation of every row of La (n_a, S) with every row of Lb (n_b, S)
    (average ranks for ties, as :func:`scipy.stats.spearmanr`; a constant row correlates 0)."""
    return _standard_ranks(La) @ _standard_ranks(Lb).T


def top_overlap(La: np.ndarray, Lb: np.ndarray, n: int) -> np.ndarray:
    """(rows,) share of the ``n`` largest entries of each row of La (rows, S) that are among the ``n``
    largest of the same row of Lb."""
    ta = np.argpartition(-La, n - 1, axis=1)[:, :n]
    tb = np.argpartition(-Lb, n - 1, axis=1)[:, :n]
    return np.array([len(np.intersect1d(x, y)) / n for x, y in zip(ta, tb)])


def success(rho: np.ndarray, pool: Sequence[int], quantile: float) -> tuple[np.ndarray, np.ndarray]:
    """(success (M, n) bool, threshold (n,)) of transfers scored by ``rho`` (M, n, n): ``rho[m, i, j]``
    the agreement of the source steered by pair i's feature with the target steered by method m's
    direction for pair j. Pair i's threshold is the ``quantile`` of its agreement with the *other*
    pairs' directions (j != i) of the methods ``pool``; transfer i by m succeeds when
    ``rho[m, i, i]`` exceeds it."""
    M, n, _ = rho.shape
    off = ~np.eye(n, dtype=bool)
    null = np.concatenate([rho[m][off].reshape(n, n - 1) for m in pool], axis=1)
    thr = np.quantile(null, quantile, axis=1)
    diag = rho[:, np.arange(n), np.arange(n)]
    return diag > thr[None, :], thr


def derangement(n: int, seed: int) -> np.ndarray:
    """(n,) a seeded permutation with no fixed point (n >= 2): pair i's "random other" pair."""
    if n < 2:
        raise ValueError("a random other pair needs at least 2 pairs")
    rng = np.random.default_rng(seed)
    while True:
        p = rng.permutation(n)
        if not (p == np.arange(n)).any():
            return p


def wilson(successes: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval of a success rate (statsmodels' ``proportion_confint``); (nan, nan) for n = 0."""
    from statsmodels.stats.proportion import proportion_confint

    if n == 0:
        return math.nan, math.nan
    lo, hi = proportion_confint(successes, n, alpha=1 - level, method="wilson")
    rate = successes / n  # inside the interval; statsmodels' rounding can put lo a hair above 0 at 0 successes
    return min(float(lo), rate), max(float(hi), rate)


# ---- steering --------------------------------------------------------------------------------------------


def logits_from_resid(model: Any, resid: torch.Tensor) -> torch.Tensor:
    """(..., d_vocab) logits from the residual stream after the last block, as the model's own forward
    computes them (final norm, unembedding, logit soft-cap)."""
    from transformer_lens.utilities import apply_softcap

    x = model.ln_final(resid) if model.cfg.normalization_type is not None else resid
    return apply_softcap(model.unembed(x), model.cfg.output_logits_soft_cap)


@dataclass(frozen=True)
class Effects:
    """What steering did, per direction (n directions)."""

    lift: np.ndarray  # (n, S) mean log-probability lift of each shared string over steered positions
    loss_rise: np.ndarray  # (n,) clean next-token loss, steered minus clean (nats)
    feature_lift: np.ndarray  # (n,) mean code lift of each direction's own feature (NaN: none given)


class Steerer:
    """One model steered at one layer over fixed rows of held-out text.

    tokens (n_rows, T) int64, BOS in column 0, no padding. The clean residual after block ``layer`` is
    computed once; a steering runs only the blocks after it. ``vocab_ids`` (S,): the token ids whose
    log-probability lift is recorded. ``sae``: the SAE whose feature codes are read at the same hook.
    ``max_bytes`` bounds the logits of one batch of steered copies.
    """

    def __init__(
        self,
        model: Any,
        layer: int,
        tokens: np.ndarray,
        vocab_ids: np.ndarray,
        sae: Any = None,
        max_bytes: int = 1 << 30,
    ):
        if tokens.ndim != 2 or tokens.shape[1] < 3:
            raise ValueError(f"held-out rows must be (n_rows, T >= 3) tokens, got shape {tokens.shape}")
        self.model, self.layer, self.sae = model, layer, sae
        self.device = model.cfg.device
        self.tokens = torch.as_tensor(tokens, dtype=torch.long, device=self.device)
        self.vocab_ids = torch.as_tensor(vocab_ids, dtype=torch.long, device=self.device)
        self.batch = max(1, max_bytes // (2 * 4 * self.tokens.numel() * model.cfg.d_vocab))
        with torch.inference_mode():
            self.resid = model(self.tokens, stop_at_layer=layer + 1)  # (n_rows, T, d)
            lp = torch.log_softmax(self._logits(self.resid).float(), dim=-1)
            self.clean_lift = lp[:, 1:, :].mean(dim=(0, 1)).index_select(-1, self.vocab_ids)
            self.clean_loss = self._loss(lp)
            self.clean_codes = self._codes(self.resid) if sae is not None else None

    @property
    def d_model(self) -> int:
        return int(self.resid.shape[-1])

    def _logits(self, resid: torch.Tensor) -> torch.Tensor:
        n = self.model.cfg.n_layers
        x = resid if self.layer + 1 >= n else self.model(resid, start_at_layer=self.layer + 1, stop_at_layer=n)
        return logits_from_resid(self.model, x)

    def _loss(self, lp: torch.Tensor) -> torch.Tensor:
        """(...,) mean next-token loss of steered positions 1..T-2 predicting tokens 2..T-1 (lp: (..., n_rows, T, V))."""
        target = self.tokens[:, 2:].expand(*lp.shape[:-3], -1, -1).unsqueeze(-1)
        return -lp[..., 1:-1, :].gather(-1, target).squeeze(-1).mean(dim=(-1, -2))

    def _codes(self, resid: torch.Tensor) -> torch.Tensor:
        return self.sae.encode(resid[..., 1:, :].reshape(-1, resid.shape[-1]).to(self.sae.W_dec.dtype))

    @torch.inference_mode()
    def run(self, directions: np.ndarray, alpha: float, features: np.ndarray | None = None) -> Effects:
        """Steer by ``alpha`` times each unit direction of ``directions`` (n, d_model) in turn;
        ``features`` (n,): the SAE feature whose code lift is read for each (needs ``sae``)."""
        V = torch.as_tensor(unit_rows(directions), dtype=self.resid.dtype, device=self.device)
        lifts, losses, flifts = [], [], []
        for s in range(0, len(V), self.batch):
            v = V[s : s + self.batch]
            x = self.resid.unsqueeze(0).repeat(len(v), 1, 1, 1)  # (b, n_rows, T, d)
            x[:, :, 1:, :] += alpha * v[:, None, None, :]
            logits = self._logits(x.reshape(-1, *x.shape[2:])).float()
            lp = torch.log_softmax(logits, dim=-1).reshape(len(v), *self.tokens.shape, -1)
            loss = self._loss(lp)
            if not torch.isfinite(loss).all():
                raise ValueError(
                    f"steering by alpha = {alpha:.4g} makes the loss non-finite at layer {self.layer}. "
                    "Fix: lower transfer.loss_rise (a smaller dose)."
                )
            # the mean over rows and positions first, then the shared strings: index_select along the last axis
            # of the strided (b, n_rows, T - 1, V) slice was most of a steering's time (0.7 s per batch on tiny)
            lifts.append((lp[:, :, 1:, :].mean(dim=(1, 2)).index_select(-1, self.vocab_ids) - self.clean_lift).cpu())
            losses.append((loss - self.clean_loss).cpu())
            if features is not None:
                if self.clean_codes is None:
                    raise ValueError("reading features' code lifts needs the Steerer's sae. Fix: pass sae=.")
                z = self._codes(x).reshape(len(v), -1, self.clean_codes.shape[-1])
                f = torch.as_tensor(features[s : s + self.batch], device=z.device)
                idx = f[:, None, None].expand(-1, z.shape[1], 1)
                flifts.append(
                    (z.gather(-1, idx) - self.clean_codes[None].expand(len(v), -1, -1).gather(-1, idx))
                    .squeeze(-1)
                    .mean(dim=1)
                    .float()
                    .cpu()
                )
        return Effects(
            torch.cat(lifts).numpy(),
            torch.cat(losses).numpy().astype(np.float64),
            torch.cat(flifts).numpy().astype(np.float64) if features is not None else np.full(len(V), np.nan),
        )


def dose(
    steerer: Steerer, directions: np.ndarray, loss_rise: float, scale: float, factors: Sequence[float]
) -> dict[str, Any]:
    """The steering size at which the median loss rise over ``directions`` (n, d) reaches ``loss_rise`` nats.

    The median rise is measured at ``scale`` x each of ``factors`` (ascending) and interpolated
    linearly in log(size) between the last size below the target and the first at or above it.
    Raises ValueError, naming the fix, when no size reaches the target. Returns ``alpha`` and the
    measured curve (``sizes``, ``median_rise``).
    """
    sizes, rises = [], []
    for f in factors:
        a = scale * f
        sizes.append(a)
        rises.append(float(np.median(steerer.run(directions, a).loss_rise)))
        if rises[-1] >= loss_rise:
            break
    if rises[-1] < loss_rise:
        raise ValueError(
            f"steering at layer {steerer.layer} raises the loss by at most {max(rises):.3g} nats (sizes up to "
            f"{sizes[-1]:.4g}), never transfer.loss_rise = {loss_rise}. Fix: lower transfer.loss_rise."
        )
    if len(sizes) == 1:
        alpha = sizes[0]
    else:
        (a0, a1), (r0, r1) = sizes[-2:], rises[-2:]
        t = (loss_rise - r0) / (r1 - r0) if r1 > r0 else 1.0
        alpha = float(np.exp(np.log(a0) + t * (np.log(a1) - np.log(a0))))
    return {"alpha": alpha, "sizes": sizes, "median_rise": rises}


@torch.inference_mode()
def greedy_continuations(
    model: Any, layer: int, prompt: np.ndarray, directions: np.ndarray, alpha: float, n_new: int
) -> np.ndarray:
    """(n, n_new) greedy next tokens after ``prompt`` (P,) (BOS first) for each row of ``directions``
    (n, d_model): a zero row is the clean model, any other is steered by ``alpha`` times its unit
    direction at ``blocks.layer.hook_resid_post``, every position but BOS, the new ones included."""
    from .models import hook_name

    D = np.asarray(directions, np.float64)
    norms = np.linalg.norm(D, axis=1, keepdims=True)
    V = torch.as_tensor(
        np.divide(D, norms, out=np.zeros_like(D), where=norms > 0), dtype=torch.float32, device=model.cfg.device
    )
    toks = torch.as_tensor(prompt, dtype=torch.long, device=model.cfg.device).repeat(len(V), 1)

    def add(resid: torch.Tensor, hook: Any) -> torch.Tensor:
        resid[:, 1:, :] += alpha * V[:, None, :].to(resid.dtype)
        return resid

    n = model.cfg.n_layers
    with model.hooks(fwd_hooks=[(hook_name(layer), add)]):
        for _ in range(n_new):
            last = model(toks, stop_at_layer=n)[:, -1:, :]
            nxt = logits_from_resid(model, last)[:, -1, :].argmax(dim=-1, keepdim=True)
            toks = torch.cat([toks, nxt], dim=1)
    return toks[:, len(prompt) :].cpu().numpy()
