"""Checks of the coursework exercises (``exercises/``; the instructor's guide is docs/coursework.md).

Each ``check_<function>(fn, study=None)`` calls a student's ``fn`` on cases with known answers, first on
fresh random data (seeded), then, given the tiny profile's :class:`~featlib.study.Study`, on the study's
own data, and compares every output with featlib's implementation. It returns a :class:`CheckResult`: a
pass, or the *first* difference found, in one line that names the case and the kind of difference (not
implemented yet, an exception, the shape, a known convention mistake, or a value), never featlib's
numbers. A convention mistake is recognised by what it outputs: each case carries the outputs of the
usual wrong implementations (the input of block L for its output, one canonical correlation for all of
them, the first pair kept for the best, a p-value without the +1, ...) with the hint to show.

:data:`CHECKS` maps each exercise function's name to its check (the tests run every check on its stub,
which must fail, and on its solution, which must pass). :func:`steering_setup` prepares exercise 5's
experiment (the models, held-out rows, shared vocabulary and doses of notebook 09).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp
import torch
from scipy.spatial.distance import pdist
from scipy.stats import pearsonr, spearmanr

from . import matching, similarity, subspaces, transfer
from .correlation import correlate, dense_reference
from .models import hook_name

if TYPE_CHECKING:
    from .study import Comparison, Study


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one check: ``passed``, and one line saying what passed or the first difference."""

    function: str
    passed: bool
    message: str

    def __bool__(self) -> bool:
        return self.passed

    def __repr__(self) -> str:
        return f"{'✓' if self.passed else '✗'} {self.function}: {self.message}"


@dataclass
class Case:
    """One call of the student's function and what featlib gives for it.

    ``call(fn)`` returns the student's output; ``expected`` is featlib's (an array, a number, or a tuple of
    them named by ``parts``); ``mistakes`` maps a hint to what a known wrong implementation outputs.
    Integer and bool outputs must be equal, floating ones close (``rtol``, ``atol``).
    """

    label: str
    call: Callable[[Callable[..., Any]], Any]
    expected: Any
    mistakes: dict[str, Any] = field(default_factory=dict)
    parts: tuple[str, ...] = ()
    rtol: float = 1e-4
    atol: float = 1e-5
    nan_hint: str = ""


def _call_with(*args: Any) -> Callable[[Callable[..., Any]], Any]:
    """A :attr:`Case.call` that applies the student's function to ``args`` (bound now, not when it is called)."""
    return lambda fn: fn(*args)


def _array(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        x = x.double() if x.is_floating_point() else x
        return x.numpy()
    return np.asarray(x)


def _split(x: Any, parts: tuple[str, ...]) -> list[Any] | None:
    """``x`` as a list of ``len(parts)`` outputs (a tuple, or an object with those attributes), None if it is neither."""
    if all(hasattr(x, p) for p in parts):
        return [getattr(x, p) for p in parts]
    if isinstance(x, (tuple, list)) and len(x) == len(parts):
        return list(x)
    return None


def _where(i: tuple[int, ...]) -> str:
    return f"[{', '.join(map(str, i))}]" if i else ""


def difference(got: Any, expected: Any, case: Case) -> str | None:
    """The first difference between ``got`` and ``expected`` as a phrase (None: they agree)."""
    if case.parts:
        pieces = _split(got, case.parts)
        if pieces is None:
            return f"type: expected a tuple ({', '.join(case.parts)}), got {type(got).__name__}"
        for name, g, e in zip(case.parts, pieces, expected):
            diff = difference(g, e, replace(case, expected=e, parts=(), mistakes={}))
            if diff is not None:
                return f"{name}: {diff}"
        return None
    try:
        g = _array(got)
    except (TypeError, ValueError, RuntimeError):
        return f"type: expected numbers, got {type(got).__name__}"
    e = _array(expected)
    if g.shape != e.shape:
        return f"shape: got {g.shape}, expected {e.shape}"
    if g.dtype.kind not in "biuf":
        return f"type: expected numbers, got dtype {g.dtype}"
    if e.dtype.kind in "biu":
        bad = g != e
    else:
        bad = ~np.isclose(g.astype(np.float64), e.astype(np.float64), rtol=case.rtol, atol=case.atol)
    if not bad.any():
        return None
    i = tuple(int(v) for v in np.argwhere(bad)[0])
    n_bad = f"{int(bad.sum())} of {bad.size} entries differ" if bad.size > 1 else "it differs from featlib's"
    if g.dtype.kind == "f" and np.isnan(g[i]):
        return f"value: NaN at {_where(i)} ({n_bad}){'; ' + case.nan_hint if case.nan_hint else ''}"
    shown = f"{g[i]:.6g}" if g.dtype.kind == "f" else str(g[i])
    return f"value: got {shown} at {_where(i) or 'the output'} ({n_bad})"


def run(function: str, fn: Callable[..., Any], cases: Iterable[Case]) -> CheckResult:
    """Check ``fn`` on ``cases`` (made one at a time: a study case is built only if the earlier cases pass)."""
    labels = []
    for case in cases:
        try:
            got = case.call(fn)
        except NotImplementedError:
            return CheckResult(
                function,
                False,
                f"not implemented yet: replace `raise NotImplementedError` in {function} with your code",
            )
        except Exception as exc:  # the student's code failed: report it as the first difference
            first = (str(exc).strip().splitlines() or [""])[0]
            return CheckResult(function, False, f"{case.label}: raised {type(exc).__name__}: {first}")
        diff = difference(got, case.expected, case)
        if diff is not None:
            for hint, wrong in case.mistakes.items():
                if difference(got, wrong, case) is None:
                    return CheckResult(function, False, f"{case.label}: convention: {hint}")
            return CheckResult(function, False, f"{case.label}: {diff}")
        labels.append(case.label)
    return CheckResult(function, True, f"passed all {len(labels)} cases ({'; '.join(labels)})")


# ---- exercise 1: recording the residual stream -------------------------------------------------------------


def random_model(seed: int = 0, n_layers: int = 3) -> Any:
    """A small randomly initialised transformer-lens ``HookedTransformer`` (d_model 32, vocabulary 50, context 16)."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(
        n_layers=n_layers,
        d_model=32,
        n_heads=4,
        d_head=8,
        d_mlp=64,
        n_ctx=16,
        d_vocab=50,
        act_fn="gelu_new",
        normalization_type="LN",
        seed=seed,
    )
    return HookedTransformer(cfg).eval()


def _cached(model: Any, tokens: torch.Tensor, name: str) -> torch.Tensor:
    with torch.inference_mode():
        return model.run_with_cache(tokens, names_filter=[name])[1][name]


LAYER_HINT = "layer L is the output of block L (blocks.L.hook_resid_post = Hugging Face hidden_states[L + 1]); "


def _layer_mistakes(
    model: Any, tokens: torch.Tensor, layer: int, keep: Callable[[torch.Tensor], Any] = lambda x: x
) -> dict[str, Any]:
    """What reading the wrong hook gives (``keep`` selects what the case compares)."""

    def at(name: str) -> Any:
        return keep(_cached(model, tokens, name))

    out = {
        LAYER_HINT + "yours is its input (hook_resid_pre, hidden_states[L])": at(f"blocks.{layer}.hook_resid_pre"),
        LAYER_HINT + "yours is the residual between its attention and its MLP (hook_resid_mid)": at(
            f"blocks.{layer}.hook_resid_mid"
        ),
    }
    if layer + 1 < model.cfg.n_layers:
        out[LAYER_HINT + "yours is the output of block L + 1"] = at(hook_name(layer + 1))
    return out


def _residual_cases(study: Study | None) -> Iterator[Case]:
    """Random models at their first and last layer, then the study's model A on two eval rows (against the cached activations)."""
    for seed, layer in ((0, 0), (1, 2)):
        model = random_model(seed)
        tokens = torch.from_numpy(np.random.default_rng(seed).integers(0, 50, (2, 12)))
        yield Case(
            f"random model {seed}, layer {layer}",
            _call_with(model, tokens, layer),
            _cached(model, tokens, hook_name(layer)),
            _layer_mistakes(model, tokens, layer),
        )
    if study is None:
        return
    mid, layer = study.focus.a.model, study.focus.a.layer
    acts, model = study.eval_acts(mid), study.models[mid].model
    width = int(acts.lengths[:2].min())
    tokens = torch.from_numpy(acts.tokens[:2, :width])
    units = acts.unit_index[:2, :width]
    keep = units >= 0

    def stored(x: Any) -> np.ndarray:
        return _array(x)[keep]

    yield Case(
        f"the study's model {mid}, layer {layer}, two eval rows (against the cached activations)",
        lambda fn: stored(fn(model, tokens, layer)),
        acts.layer(layer)[units[keep]],
        _layer_mistakes(model, tokens, layer, stored),
        atol=1e-4,
    )


def check_record_resid(fn: Callable[..., Any], study: Study | None = None) -> CheckResult:
    """Exercise 1: ``fn(model, tokens (batch, pos), layer) -> (batch, pos, d_model)``, the residual after block
    ``layer`` read by a hook."""
    return run("record_resid", fn, _residual_cases(study))


def check_resid_by_blocks(fn: Callable[..., Any], study: Study | None = None) -> CheckResult:
    """Exercise 1: the same residual computed by running the embeddings and blocks by hand."""
    return run("resid_by_blocks", fn, _residual_cases(study))


def explained_variance(sae: Any, x: np.ndarray) -> float:
    """``1 - sum|x - x_hat|^2 / sum|x - mean(x)|^2`` of ``sae``'s reconstruction of ``x`` (n, d_model) (02's definition)."""
    from .saes import decode_sparse

    xt = torch.as_tensor(np.asarray(x), dtype=sae.W_dec.dtype)
    with torch.inference_mode():
        x_hat = decode_sparse(sae, sae.encode(xt))
    return float(1 - ((xt - x_hat) ** 2).sum() / ((xt - xt.mean(0)) ** 2).sum())


# ---- exercise 2: correlation matching ------------------------------------------------------------------------


def random_codes(n: int, d_a: int, d_b: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sparse non-negative codes (n, d_a), (n, d_b) with planted structure: B features copying A features
    (with noise), a dead (never firing) feature on each side, and a B feature that fires only where no A
    feature does (so it correlates negatively with every A feature)."""
    rng = np.random.default_rng(seed)
    a = rng.exponential(1.0, (n, d_a)) * (rng.random((n, d_a)) < 0.05)
    b = rng.exponential(1.0, (n, d_b)) * (rng.random((n, d_b)) < 0.05)
    for j in range(d_b // 3):  # B feature j: a noisy copy of A feature j
        b[:, j] = a[:, j % d_a] * rng.uniform(0.5, 2.0) + 0.3 * b[:, j]
    a[:, 3] = 0.0
    b[:, 4] = 0.0
    silent = a.sum(1) == 0
    b[:, 5] = silent * rng.exponential(1.0, n)
    return torch.from_numpy(a).float(), torch.from_numpy(b).float()


def chunk_pairs(
    a: torch.Tensor | sp.csr_array, b: torch.Tensor | sp.csr_array, size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(a, b) — dense tensors or sparse codes (n, d_a), (n, d_b) — as consecutive dense row chunks of ``size``
    (the last one shorter): a one-pass stream."""

    def dense(x: Any) -> torch.Tensor:
        return torch.from_numpy(x.toarray()) if sp.issparse(x) else x

    for start in range(0, a.shape[0], size):
        rows = slice(start, start + size)
        yield dense(a[rows]), dense(b[rows])


MIXED_HINT = (
    "Pearson's r uses the same normalisation (1/n, or 1/(n - 1)) for the covariance and both standard "
    "deviations; yours mixes them"
)
NAN_HINT = "a feature that never fires (or is constant) has standard deviation 0: its r is 0 by convention, never NaN"


def _study_codes(study: Study, n_features: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense codes (n_units, n_features): the first ``n_features`` features of both sides of the study's cross comparison."""
    from .study import sae_codes

    comp = study.comparison("cross")
    a, b = (torch.from_numpy(sae_codes(study, s)[:, :n_features].toarray()) for s in (comp.a, comp.b))
    return a, b


def _pearson_case(label: str, a: torch.Tensor, b: torch.Tensor, size: int) -> Case:
    r = dense_reference(a, b)
    n = len(a)
    return Case(
        label,
        lambda fn: fn(chunk_pairs(a, b, size), a.shape[1], b.shape[1]),
        r,
        {MIXED_HINT: r * n / (n - 1), MIXED_HINT + " (the other way round)": r * (n - 1) / n},
        atol=1e-4,
        nan_hint=NAN_HINT,
    )


def check_streamed_pearson(fn: Callable[..., Any], study: Study | None = None) -> CheckResult:
    """Exercise 2: ``fn(chunk_pairs, d_a, d_b) -> (d_a, d_b)`` Pearson correlations from one pass over the chunks."""

    def cases() -> Iterator[Case]:
        a, b = random_codes(3000, 40, 30, seed=0)
        yield _pearson_case("random codes, 3,000 tokens in chunks of 700", a, b, 700)
        if study is not None:
            a, b = _study_codes(study, 256)
            yield _pearson_case(
                f"the study's codes, first 256 features of each side, {len(a):,} tokens in chunks of 4,096", a, b, 4096
            )

    return run("streamed_pearson", fn, cases())


def _best_partner_mistakes(r: np.ndarray, active_a: np.ndarray, active_b: np.ndarray) -> dict[str, Any]:
    def partners(score: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, ...]:
        idx_b = np.flatnonzero(cols).astype(np.int64)
        idx_a = score[:, idx_b].argmax(0).astype(np.int64)
        return idx_a, idx_b, r[idx_a, idx_b].astype(np.float32)

    masked = np.where(active_a[:, None], r, -np.inf)
    a_rows = np.flatnonzero(active_a).astype(np.int64)
    best_b = r[a_rows].argmax(1).astype(np.int64)
    return {
        "an inactive B feature (never fires) has no partner: leave it out": partners(masked, np.ones_like(active_b)),
        "an inactive A feature is nobody's partner (its r is 0 by convention, which can beat negative ones)": partners(
            r, active_b
        ),
        "the best partner has the highest r, not the highest |r|": partners(
            np.where(active_a[:, None], np.abs(r), -np.inf), active_b
        ),
        "many-to-one gives every active B feature its best A partner, not every A feature its best B": (
            a_rows,
            best_b,
            r[a_rows, best_b].astype(np.float32),
        ),
    }


def _partners_case(label: str, a: torch.Tensor, b: torch.Tensor) -> Case:
    res = correlate(lambda: iter([(a, b)]), a.shape[1], b.shape[1], keep_matrix=True, method="dense")
    assert res.matrix is not None  # keep_matrix=True
    r = res.matrix.numpy()
    m = res.matches()
    return Case(
        label,
        lambda fn: fn(r.copy(), res.active_a.copy(), res.active_b.copy()),
        (m.idx_a, m.idx_b, m.r),
        _best_partner_mistakes(r, res.active_a, res.active_b),
        parts=("idx_a", "idx_b", "r"),
    )


def check_best_partners(fn: Callable[..., Any], study: Study | None = None) -> CheckResult:
    """Exercise 2: ``fn(r (d_a, d_b), active_a (d_a,), active_b (d_b,)) -> (idx_a, idx_b, r)`` many-to-one partners."""

    def cases() -> Iterator[Case]:
        yield _partners_case(
            "random codes with a dead and an anti-correlated feature", *random_codes(3000, 40, 30, seed=1)
        )
        if study is not None:
            yield _partners_case("the study's codes, first 256 features of each side", *_study_codes(study, 256))

    return run("best_partners", fn, cases())


def _one_to_one_case(label: str, m: matching.Matches) -> Case:
    ref = matching.one_to_one(m)
    first = np.unique(m.idx_a, return_index=True)[1]  # the first pair of every A feature, in B order
    order = np.lexsort((m.idx_b, m.r.astype(np.float64), m.idx_a))
    last = np.ones(len(order), bool)
    last[:-1] = m.idx_a[order][1:] != m.idx_a[order][:-1]
    return Case(
        label,
        lambda fn: fn(m.idx_a.copy(), m.idx_b.copy(), m.r.copy()),
        (ref.idx_a, ref.idx_b, ref.r),
        {
            "one-to-one keeps each A feature's pair with the highest r; yours keeps its first pair "
            "(the original code's defect)": (m.idx_a[first], m.idx_b[first], m.r[first]),
            "one-to-one keeps each A feature's pair with the highest r; yours keeps the lowest": (
                m.idx_a[order][last],
                m.idx_b[order][last],
                m.r[order][last],
            ),
        },
        parts=("idx_a", "idx_b", "r"),
    )


def check_one_to_one(fn: Callable[..., Any], study: Study | None = None) -> CheckResult:
    """Exercise 2: ``fn(idx_a, idx_b, r) -> (idx_a, idx_b, r)``, one pair per A feature: the highest r (ties: the
    lowest idx_b), sorted by idx_a."""

    def cases() -> Iterator[Case]:
        rng = np.random.default_rng(2)
        idx_b = np.arange(60, dtype=np.int64)
        idx_a = rng.integers(0, 15, 60).astype(np.int64)
        r = rng.choice([0.2, 0.4, 0.6, 0.8], 60).astype(np.float32)  # ties on purpose
        yield _one_to_one_case("random many-to-one pairs with tied r", matching.Matches(idx_a, idx_b, r))
        if study is not None:
            from .study import match

            yield _one_to_one_case(
                "the study's cross matching (many-to-one pairs)", match(study, study.comparison("cross")).many_to_one
            )

    return run("one_to_one", fn, cases())


# ---- exercise 3: SVCCA, RSA, nulls and p-values --------------------------------------------------------------


def planted_pair(n: int, d_x: int, d_y: int, seed: int, noise: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """(n, d_x), (n, d_y): X with a decaying spectrum, Y a random linear image of X plus noise."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d_x)) * (0.8 ** np.arange(d_x)) + 1.0
    Y = X @ rng.standard_normal((d_x, d_y)) + noise * rng.standard_normal((n, d_y))
    return X, Y


def _svcca_variant(
    X: np.ndarray, Y: np.ndarray, variance: float, squared: bool = True, centre: bool = True
) -> np.ndarray:
    """Canonical correlations of a *variant* of SVCCA (the wrong ones a check recognises)."""

    def basis(A: np.ndarray) -> np.ndarray:
        A = A - A.mean(0) if centre else A
        U, s, _ = np.linalg.svd(A, full_matrices=False)
        p = s**2 if squared else s
        k = int(np.searchsorted(np.cumsum(p) / p.sum(), variance - 1e-12) + 1)
        return U[:, :k]

    return np.linalg.svd(basis(X).T @ basis(Y), compute_uv=False).clip(0, 1)


def _study_pairs(study: Study) -> tuple[np.ndarray, np.ndarray]:
    """Decoder rows (n, d_A), (n, d_B) of the final pairs of the study's cross matching."""
    from .study import match

    comp = study.comparison("cross")
    pairs = match(study, comp).pairs
    return study.decoder_rows(comp.a, pairs.idx_a), study.decoder_rows(comp.b, pairs.idx_b)


def _svcca_case(label: str, X: np.ndarray, Y: np.ndarray) -> Case:
    ref = similarity.svcca(X, Y, 0.99)
    return Case(
        label,
        lambda fn: fn(X.copy(), Y.copy(), 0.99),
        ref.score,
        {
            (
                "SVCCA averages all min(k_x, k_y) canonical correlations; yours keeps only the first "
                "(the original code's defect)"
            ): ref.correlations[0],
            (
                "the 99 % rule counts explained variance, the squared singular values; yours counts the singular values"
            ): _svcca_variant(X, Y, 0.99, squared=False).mean(),
            "centre the columns before the SVD (SVCCA compares centred subspaces)": _svcca_variant(
                X, Y, 0.99, centre=False
            ).mean(),
        },
        rtol=1e-6,
        atol=1e-8,
    )


def check_svcca(fn: Callable[..., Any], study: Study | None = None) -> CheckResult:
    """Exercise 3: ``fn(X (n, d_x), Y (n, d_y), variance) -> float`` SVCCA with the variance rule."""

    def cases() -> Iterator[Case]:
        yield _svcca_case("planted linear pair, 200 x 20 and 200 x 30", *planted_pair(200, 20, 30, seed=0))
        if study is not None:
            yield _svcca_case("the study's cross pairs (decoder rows)", *_study_pairs(study))

    return run("svcca", fn, cases())


def _rsa_case(label: str, X: np.ndarray, Y: np.ndarray) -> Case:
    dx, dy = pdist(X, "correlation"), pdist(Y, "correlation")
    return Case(
        label,
        lambda fn: fn(X.copy(), Y.copy()),
        similarity.rsa(X, Y),
        {
            "RSA compares the two dissimilarity vectors with Spearman's rho (ranks), not Pearson's r": pearsonr(dx, dy)[
                0
            ],
            "the dissimilarity is 1 - Pearson r of two rows (correlation distance), not the Euclidean distance": spearmanr(
                pdist(X), pdist(Y)
            )[0],
            "the dissimilarity is 1 - Pearson r of two rows, which centres each row; yours is the cosine distance": spearmanr(
                pdist(X, "cosine"), pdist(Y, "cosine")
            )[0],
        },
        rtol=1e-6,
        atol=1e-8,
    )


def check_rsa(fn: Callable[..., Any], study: Study | None = None) -> CheckResult:
    """Exercise 3: ``fn(X (n, d_x), Y (n, d_y)) -> float`` RSA (correlation distances, Spearman)."""

    def cases() -> Iterator[Case]:
        yield _rsa_case("planted linear pair, 60 items", *planted_pair(60, 10, 12, seed=1, noise=2.0))
        if study is not None:
            yield _rsa_case("the study's cross pairs (decoder rows)", *_study_pairs(study))

    return run("rsa", fn, cases())


def _null_case(label: str, X: np.ndarray, Y: np.ndarray, metric: str, n_shuffles: int, seed: int) -> Case:
    perms = similarity.permutations(len(X), n_shuffles, seed)
    if metric == "svcca":
        score, null = (lambda X, Y: similarity.svcca(X, Y).score), similarity.svcca_null(X, Y, n_shuffles, seed)
    else:
        score, null = similarity.rsa, similarity.rsa_null(X, Y, n_shuffles, seed)
    observed = score(X, Y)
    return Case(
        label,
        lambda fn: fn(score, X.copy(), Y.copy(), perms.copy()),
        null,
        {
            "re-pair by permuting the rows of one side only (X[p] with Y[p] is the same pairing)": np.full(
                n_shuffles, observed
            ),
            "row p of perms re-pairs row i of X with row perms[p, i] of Y; yours permutes the columns": np.zeros(
                n_shuffles
            ),
        },
        rtol=1e-6,
        atol=1e-8,
    )


def check_null_scores(fn: Callable[..., Any], study: Study | None = None) -> CheckResult:
    """Exercise 3: ``fn(score, X, Y, perms (N, n)) -> (N,)`` the score of X against each re-pairing of Y."""

    def cases() -> Iterator[Case]:
        X, Y = planted_pair(40, 6, 8, seed=2)
        yield _null_case("planted pair, SVCCA, 50 re-pairings", X, Y, "svcca", 50, 0)
        yield _null_case("planted pair, RSA, 50 re-pairings", X, Y, "rsa", 50, 1)
        if study is not None:
            yield _null_case("the study's cross pairs, SVCCA, 100 re-pairings", *_study_pairs(study), "svcca", 100, 0)

    return run("null_scores", fn, cases())


def _p_case(label: str, observed: float, null: np.ndarray) -> Case:
    n = len(null)
    return Case(
        label,
        lambda fn: fn(observed, null.copy()),
        similarity.p_value(observed, null),
        {
            (
                "count the observed score itself as one re-pairing: p = (1 + #(null >= observed)) / (1 + N), never 0"
            ): np.count_nonzero(null >= observed) / n,
            "a re-pairing that ties the observed score counts against it: null >= observed, not >": (
                1 + np.count_nonzero(null > observed)
            )
            / (1 + n),
        },
        rtol=1e-12,
        atol=0.0,
    )


def check_p_value(fn: Callable[..., Any], study: Study | None = None) -> CheckResult:
    """Exercise 3: ``fn(observed, null (N,)) -> float`` the one-sided permutation p-value with the +1 correction."""

    def cases() -> Iterator[Case]:
        null = np.round(np.random.default_rng(3).normal(0.3, 0.1, 99), 2)
        yield _p_case("a score inside its null, with ties", float(null[10]), null)
        yield _p_case("a score above every re-pairing", 0.99, null)
        if study is not None:
            X, Y = _study_pairs(study)
            yield _p_case(
                "the study's cross pairs, RSA against 200 re-pairings",
                similarity.rsa(X, Y),
                similarity.rsa_null(X, Y, 200, 0),
            )

    return run("p_value", fn, cases())


# ---- exercise 4: concept groups --------------------------------------------------------------------------------

TOKENS_TOY = [
    [" January", "Jan", " the"],
    ["MAY", " of"],
    [" may", " might"],
    ["", " ."],
    [" Mayor", " city"],
    [" june ", "x"],
]


def _joins_case(label: str, top_tokens: list[list[str]], keywords: set[str]) -> Case:
    return Case(
        label,
        lambda fn: np.asarray(fn([list(t) for t in top_tokens], set(keywords))),
        subspaces.group_features(top_tokens, keywords),
        {
            'compare lower-cased tokens ("MAY" joins the group of "may")': np.array(
                [any(t.strip() in keywords for t in ts) for ts in top_tokens]
            ),
            'strip the token\'s leading space first: BPE tokens carry it (" January")': np.array(
                [any(t.lower() in keywords for t in ts) for ts in top_tokens]
            ),
            'a token joins when it *equals* a keyword, not when it contains one (" Mayor" is not "may")': np.array(
                [any(k in t.strip().lower() for t in ts for k in keywords if t.strip()) for ts in top_tokens]
            ),
        },
    )


def check_joins_group(fn: Callable[..., Any], study: Study | None = None) -> CheckResult:
    """Exercise 4: ``fn(top_tokens: list of (k,) token strings per feature, keywords: set) -> (d,) bool``."""

    def cases() -> Iterator[Case]:
        yield _joins_case("hand-made top tokens and months", TOKENS_TOY, set(subspaces.CONCEPT_GROUPS["MonthNames"]))
        if study is not None:
            from .study import top_token_strings

            top = top_token_strings(study, study.comparison("cross").a)
            for group in ("MonthNames", "Countries"):
                yield _joins_case(f"the study's model A features, {group}", top, set(subspaces.CONCEPT_GROUPS[group]))

    return run("joins_group", fn, cases())


def _members_case(label: str, idx_a: np.ndarray, idx_b: np.ndarray, in_a: np.ndarray, in_b: np.ndarray) -> Case:
    return Case(
        label,
        lambda fn: fn(idx_a.copy(), idx_b.copy(), in_a.copy(), in_b.copy()),
        np.flatnonzero(in_a[idx_a] & in_b[idx_b]).astype(np.int64),
        {
            "a pair belongs to the group when *both* of its features join it": np.flatnonzero(
                in_a[idx_a] | in_b[idx_b]
            ),
            "a pair belongs to the group when both of its features join it; yours reads side A only": np.flatnonzero(
                in_a[idx_a]
            ),
            "return the positions of the pairs (indices into idx_a / idx_b), not a mask": (
                in_a[idx_a] & in_b[idx_b]
            ).astype(np.int64),
        },
    )


def check_group_members(fn: Callable[..., Any], study: Study | None = None) -> CheckResult:
    """Exercise 4: ``fn(idx_a (m,), idx_b (m,), in_a (d_a,), in_b (d_b,)) -> (j,) int`` the pairs whose features both join."""

    def cases() -> Iterator[Case]:
        rng = np.random.default_rng(4)
        yield _members_case(
            "random pairs and groups",
            rng.integers(0, 30, 50),
            rng.integers(0, 40, 50),
            rng.random(30) < 0.3,
            rng.random(40) < 0.3,
        )
        if study is not None:
            from .study import match, top_token_strings

            comp = study.comparison("cross")
            m = matching.threshold(match(study, comp).many_to_one, study.cfg.matching.min_r)
            kw = set(subspaces.CONCEPT_GROUPS["Time"])
            yield _members_case(
                "the study's many-to-one pairs above min_r, group Time",
                m.idx_a,
                m.idx_b,
                *(subspaces.group_features(top_token_strings(study, s), kw) for s in (comp.a, comp.b)),
            )

    return run("group_members", fn, cases())


SCORABLE_GRID = [(n, kx, ky) for n in (2, 3, 4, 6, 10, 21, 40) for kx in (1, 2, 3, 5, 10, 20) for ky in (1, 3, 5, 11)]


def check_svcca_scorable(fn: Callable[..., Any], study: Study | None = None) -> CheckResult:
    """Exercise 4: ``fn(n, k_x, k_y) -> bool`` whether SVCCA of ``n`` pairs keeping ``k_x``, ``k_y`` components can be scored."""

    def grid(rule: Callable[[int, int, int], Any]) -> np.ndarray:
        return np.array([bool(rule(n, kx, ky)) for n, kx, ky in SCORABLE_GRID])

    def cases() -> Iterator[Case]:
        yield Case(
            f"{len(SCORABLE_GRID)} combinations of n, k_x, k_y",
            grid,
            grid(lambda n, kx, ky: similarity.not_scorable("svcca", n, k_x=kx, k_y=ky) is None),
            {
                "the rule reads the *larger* of k_x and k_y: one side with k > n/2 saturates the canonical correlations": grid(
                    lambda n, kx, ky: n >= 3 and min(kx, ky) <= n / 2
                ),
                "k = n/2 exactly is still scorable (the rule is k > n/2)": grid(
                    lambda n, kx, ky: n >= 3 and max(kx, ky) < n / 2
                ),
                "SVCCA needs at least 3 pairs whatever k is": grid(lambda n, kx, ky: max(kx, ky) <= n / 2),
            },
        )

    return run("svcca_scorable", fn, cases())


# ---- exercise 5: steering and transfer -------------------------------------------------------------------------


def _steer_mistakes(
    model: Any, layer: int, tokens: np.ndarray, direction: np.ndarray, alpha: float, vocab: np.ndarray
) -> dict[str, Any]:
    """What the usual wrong steerings give (computed with hooks, as a student would)."""
    t = torch.as_tensor(tokens, dtype=torch.long, device=model.cfg.device)
    v = torch.as_tensor(direction, dtype=torch.float32, device=model.cfg.device)

    def lift(hook: str, vec: torch.Tensor, first: int, log_probs: bool = True, mean_from: int = 1) -> np.ndarray:
        def add(resid: torch.Tensor, hook: Any) -> torch.Tensor:
            resid[:, first:, :] += alpha * vec
            return resid

        with torch.inference_mode():
            clean = model(t).float()
            steered = model.run_with_hooks(t, fwd_hooks=[(hook, add)]).float()
        if log_probs:
            clean, steered = clean.log_softmax(-1), steered.log_softmax(-1)
        return (steered - clean)[:, mean_from:, :].mean(dim=(0, 1))[torch.as_tensor(vocab)].cpu().numpy()

    unit = v / v.norm()
    return {
        "steer every position but BOS (position 0)": lift(hook_name(layer), unit, 0),
        "the direction is scaled to unit norm before multiplying by alpha": lift(hook_name(layer), v, 1),
        "the lift is of log-probabilities (log_softmax of the logits), not of raw logits": lift(
            hook_name(layer), unit, 1, log_probs=False
        ),
        "average over positions 1..T-1 (BOS's prediction is not steered)": lift(hook_name(layer), unit, 1, mean_from=0),
        LAYER_HINT + "yours steers its input (hook_resid_pre)": lift(f"blocks.{layer}.hook_resid_pre", unit, 1),
    }


def _steer_case(
    label: str, model: Any, layer: int, tokens: np.ndarray, direction: np.ndarray, alpha: float, vocab: np.ndarray
) -> Case:
    ref = transfer.Steerer(model, layer, tokens, vocab).run(direction[None], alpha).lift[0]
    return Case(
        label,
        lambda fn: fn(model, layer, torch.as_tensor(tokens), torch.as_tensor(direction), alpha, torch.as_tensor(vocab)),
        ref,
        _steer_mistakes(model, layer, tokens, direction, alpha, vocab),
        rtol=1e-3,
        atol=1e-4,
    )


def check_steering_lift(fn: Callable[..., Any], study: Study | None = None) -> CheckResult:
    """Exercise 5: ``fn(model, layer, tokens (n_rows, T), direction (d_model,), alpha, vocab_ids (S,)) -> (S,)``."""

    def cases() -> Iterator[Case]:
        rng = np.random.default_rng(5)
        tokens = rng.integers(1, 50, (3, 10))
        tokens[:, 0] = 0
        yield _steer_case(
            "random model, layer 1", random_model(2), 1, tokens, rng.standard_normal(32), 4.0, np.arange(0, 50, 3)
        )
        if study is not None:
            s = steering_setup(study, n_pairs=1)
            mid = s.comparison.a.model
            yield _steer_case(
                f"the study's model {mid} steered by its best pair's feature",
                s.models[mid],
                s.layers[mid],
                s.rows[mid],
                s.directions[mid][0],
                s.alpha[mid],
                s.vocab[mid][:300],
            )

    return run("steering_lift", fn, cases())


def check_lift_agreement(fn: Callable[..., Any], study: Study | None = None) -> CheckResult:
    """Exercise 5: ``fn(lift_a (S,), lift_b (S,)) -> float`` Spearman's rho of two lifts over the shared strings."""

    def case(label: str, x: np.ndarray, y: np.ndarray) -> Case:
        return Case(
            label,
            lambda fn: fn(x.copy(), y.copy()),
            transfer.spearman_matrix(x[None], y[None])[0, 0],
            {
                "agreement is Spearman's rho (on ranks: robust to the lifts' scale and outliers), not Pearson's r": pearsonr(
                    x, y
                )[0]
            },
            rtol=1e-6,
            atol=1e-8,
        )

    def cases() -> Iterator[Case]:
        rng = np.random.default_rng(6)
        x = rng.standard_normal(200) ** 3
        yield case("random heavy-tailed lifts", x, x + rng.standard_normal(200))
        yield case("lifts with ties", np.round(x, 0), np.round(x + rng.standard_normal(200), 0))

    return run("lift_agreement", fn, cases())


@dataclass(frozen=True)
class SteeringSetup:
    """Exercise 5's experiment at the comparison notebook 09 tests (``transfer.comparison``, with its sides a and b):
    per model id, the hooked model, its layer, held-out
    rows (n_rows, T) (BOS first), the token ids of the strings both vocabularies share (S,) in the same order,
    notebook 09's dose ``alpha`` (the steering size at which the model's own features raise its loss by
    ``transfer.loss_rise``), and the unit decoder rows (n_pairs, d_model) of the strongest final pairs (by r);
    ``r`` (n_pairs,) their correlations."""

    models: dict[str, Any]
    layers: dict[str, int]
    rows: dict[str, np.ndarray]
    vocab: dict[str, np.ndarray]
    strings: list[str]
    alpha: dict[str, float]
    directions: dict[str, np.ndarray]
    r: np.ndarray
    comparison: Comparison


def steering_setup(study: Study, n_pairs: int = 12) -> SteeringSetup:
    """The pieces of a small transfer experiment (see :class:`SteeringSetup`), from the study's cached artifacts and
    notebook 09's set-up (:func:`featlib.study.transfer.steerers`, its random draws in 09's order: the same doses)."""
    from .study import match
    from .study.transfer import steerers

    t = study.cfg.transfer
    comp = study.listed[t.comparison]
    pairs = match(study, comp).pairs
    rng = np.random.default_rng(t.seed)
    rng.choice(len(pairs), min(t.max_pairs, len(pairs)), replace=False)  # 09 draws its test pairs first
    steer, doses, strings = steerers(study, comp, pairs, rng, with_sae=False)
    top = np.argsort(-pairs.r, kind="stable")[:n_pairs]
    sides = {comp.a.model: comp.a, comp.b.model: comp.b}
    idx = {comp.a.model: pairs.idx_a[top], comp.b.model: pairs.idx_b[top]}
    return SteeringSetup(
        {m: s.model for m, s in steer.items()},
        {m: s.layer for m, s in steer.items()},
        {m: s.tokens.cpu().numpy() for m, s in steer.items()},
        {m: s.vocab_ids.cpu().numpy() for m, s in steer.items()},
        strings,
        {m: d["alpha"] for m, d in doses.items()},
        {m: transfer.unit_rows(study.decoder_rows(sides[m], idx[m])) for m in steer},
        pairs.r[top],
        comp,
    )


#: The check of every exercise function, by the function's name.
CHECKS: dict[str, Callable[..., CheckResult]] = {
    "record_resid": check_record_resid,
    "resid_by_blocks": check_resid_by_blocks,
    "streamed_pearson": check_streamed_pearson,
    "best_partners": check_best_partners,
    "one_to_one": check_one_to_one,
    "svcca": check_svcca,
    "rsa": check_rsa,
    "null_scores": check_null_scores,
    "p_value": check_p_value,
    "joins_group": check_joins_group,
    "group_members": check_group_members,
    "svcca_scorable": check_svcca_scorable,
    "steering_lift": check_steering_lift,
    "lift_agreement": check_lift_agreement,
}
