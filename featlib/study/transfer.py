"""Notebook 09: does a matched feature carry over? Steering directions transferred between the models.

For the comparison ``transfer.comparison`` names, at each layer pair (``transfer.layers``: its own, or also
the diagonal of equal relative depth) and each direction of transfer (a→b, b→a), a seeded sample of its
matching's final pairs
is tested (at most ``transfer.max_pairs``). Each test pair's source feature steers the source model;
its transfer by every method of :mod:`featlib.transfer` steers the target, at each model's dose. The
pre-registered success rule: transfer i by method m succeeds when the agreement of the two steerings'
log-probability lifts (Spearman over shared token strings) exceeds the ``success_quantile`` of pair i's
agreement with the *other* test pairs' transferred directions (every method pooled). Controls, scored
by the same rule: the direction of a random other pair (a derangement of the pairs), a random direction
of the same norm, and a rotation fitted on randomly re-paired decoder rows.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from .. import step, transfer
from ..activations import heldout_rows
from ..matching import Matches
from ..subspaces import group_features, resolve_groups
from .codes import top_token_strings
from .core import Comparison, Study
from .pairs import match, matching_artifact
from .usae import reads, universal_sae, usae_artifact

if TYPE_CHECKING:
    import pandas as pd

# 2: the log-probability lift averaged before selecting the shared strings (other float rounding than 1)
VERSION = 2
DOSE_FACTORS = tuple(2.0 ** np.arange(-6, 5))  # sizes tried, times the layer's mean residual norm
FUNCTION_WORDS = {"the", "of", "and", "to", "in", "a", "that", "for", "is", "on", "with", "as", "by", "it", "we"}


@dataclass(frozen=True)
class TransferParams:
    """What one cell's steering experiment reads of ``transfer`` (and hashes into its key), with its methods."""

    max_pairs: int
    folds: int
    ridge: float
    n_rows: int
    n_tokens: int
    loss_rise: float
    n_calibration: int
    top_n: int
    seed: int
    methods: tuple[str, ...]

    @classmethod
    def of(cls, study: Study, methods: list[str]) -> TransferParams:
        t = study.cfg.transfer
        return cls(
            t.max_pairs,
            t.folds,
            t.ridge,
            t.n_rows,
            t.n_tokens,
            t.loss_rise,
            t.n_calibration,
            t.top_n,
            t.seed,
            tuple(methods),
        )


def cells(study: Study) -> list[Comparison]:
    """The cells tested: the comparison ``transfer.comparison`` names, then (``transfer.layers: diagonal``) it at
    the other layer pairs of equal relative depth."""
    focus = study.listed[study.cfg.transfer.comparison]
    extra = (
        [focus.at(*c) for c in study.diagonal(focus) if c != (focus.a.layer, focus.b.layer)]
        if study.cfg.transfer.layers == "diagonal"
        else []
    )
    return [focus] + extra


def methods(study: Study, comp: Comparison) -> list[str]:
    """The methods run at ``comp``: ``universal`` only where the universal SAE reads both of its sides' layers."""
    return [m for m in transfer.METHODS if m != "universal" or reads(study, comp)]


def transfer_artifact(study: Study, comp: Comparison) -> step.Artifact:
    """The steering experiment at the cell ``comp``, both directions (cached; inputs: its matching, both SAEs,
    both models' eval activations, which key the models, text and tokenizers, and the universal SAE
    where it is used; parameters: :class:`TransferParams`)."""
    a, b = comp.a.model, comp.b.model
    for m, layer in ((a, comp.a.layer), (b, comp.b.layer)):
        if layer not in study.cfg.layers[m]:
            raise ValueError(
                f"layer {layer} of model {m} was not extracted (layers.{m} = {study.cfg.layers[m]}), so it "
                f"has no SAE or activations to steer with. Fix: add it to layers.{m} in the profile."
            )
    inputs: dict[str, step.Input] = {
        "matching": matching_artifact(study, comp),
        "sae_A": study.sae_input(comp.a),
        "sae_B": study.sae_input(comp.b),
        "eval_A": study.eval_acts(a).key,
        "eval_B": study.eval_acts(b).key,
    }
    params = TransferParams.of(study, methods(study, comp))
    if "universal" in params.methods:
        inputs["usae"] = usae_artifact(study)

    def produce(tmp: Path) -> None:
        np.savez(tmp / "results.npz", **_experiment(study, comp, params, tmp))

    return step.run(
        "transfer",
        asdict(params),  # methods a tuple: hashed as the JSON list it was
        inputs,
        produce,
        version=VERSION,
        meta={"cell": [comp.a.layer, comp.b.layer], "comparison": comp.name},
    )


def steerers(
    study: Study, comp: Comparison, pairs: Matches, rng: np.random.Generator, with_sae: bool = True
) -> tuple[dict[str, transfer.Steerer], dict[str, dict[str, Any]], list[str]]:
    """Each model of ``comp`` steered at its layer over the same held-out rows (``transfer.n_rows`` x ``n_tokens``),
    reading its codes (``with_sae``) and the token strings both vocabularies share (returned, with their ids in
    each Steerer's ``vocab_ids``), and its dose: :func:`featlib.transfer.dose` of ``transfer.n_calibration`` of
    ``pairs``' own decoder rows, drawn with ``rng`` (model A's first), at sizes times the layer's mean residual
    norm (``mean_norm`` in the dose's dict)."""
    t, (a, b) = study.cfg.transfer, (comp.a.model, comp.b.model)
    sides, idx = {a: comp.a, b: comp.b}, {a: pairs.idx_a, b: pairs.idx_b}
    rows = heldout_rows(study.cfg, [study.models[m] for m in (a, b)], t.n_rows, t.n_tokens)
    special = {m: set(study.models[m].tokenizer.all_special_ids) for m in (a, b)}
    ids_a, ids_b, strings = transfer.shared_strings(
        study.token_strings(a), study.token_strings(b), special[a], special[b]
    )
    steer, doses = {}, {}
    for m, ids in ((a, ids_a), (b, ids_b)):
        steer[m] = transfer.Steerer(
            study.models[m].model, sides[m].layer, rows[m], ids, sae=study.sae(sides[m]) if with_sae else None
        )
        own = rng.choice(len(pairs), min(t.n_calibration, len(pairs)), replace=False)
        scale = study.eval_acts(m).mean_norm(sides[m].layer)
        doses[m] = transfer.dose(
            steer[m], study.decoder_rows(sides[m], idx[m][own]), t.loss_rise, scale, DOSE_FACTORS
        ) | {"mean_norm": scale}
    return steer, doses, strings


def _experiment(study: Study, comp: Comparison, t: TransferParams, tmp: Path) -> dict[str, Any]:
    (a, b), (la, lb) = (comp.a.model, comp.b.model), (comp.a.layer, comp.b.layer)
    sides, layer = {a: comp.a, b: comp.b}, {a: la, b: lb}
    pairs = match(study, comp).pairs
    n_all = len(pairs)
    if n_all < 2 * t.folds:
        raise ValueError(
            f"the matching at {comp.name} has {n_all} pairs; transfer needs at least 2 x "
            f"transfer.folds = {2 * t.folds}. Fix: lower matching.min_r or transfer.folds, or test other layers."
        )
    rng = np.random.default_rng(t.seed)
    test = np.sort(rng.choice(n_all, min(t.max_pairs, n_all), replace=False))
    fold = transfer.folds(len(test), t.folds, t.seed)
    idx = {a: pairs.idx_a, b: pairs.idx_b}
    steer, doses, strings = steerers(study, comp, pairs, rng)
    alpha = {m: d["alpha"] for m, d in doses.items()}
    out: dict[str, Any] = {}
    info = {"strings": strings, "n_pairs": n_all, "methods": list(t.methods), "dose": doses}
    usae = universal_sae(study)[0] if "universal" in t.methods else None
    for src, tgt in ((a, b), (b, a)):
        X, Y = study.decoder_rows(sides[src], idx[src]), study.decoder_rows(sides[tgt], idx[tgt])
        dirs = _transferred(study, (src, layer[src]), (tgt, layer[tgt]), X, Y, test, fold, usae, t.ridge)
        dirs["random direction"] = rng.standard_normal((len(test), Y.shape[1]))
        dirs["re-paired map"] = transfer.cross_fitted_rotation(X, Y, test, fold, shuffle_seed=t.seed + 1)
        key = f"{src}>{tgt}"
        source = steer[src].run(X[test], alpha[src], idx[src][test])
        effects = [
            steer[tgt].run(dirs[k], alpha[tgt], idx[tgt][test])
            for k in tqdm(dirs, desc=f"steering {key} at {la}-{lb}", leave=False)
        ]
        out |= {
            f"{key}/rho": np.stack([transfer.spearman_matrix(source.lift, e.lift) for e in effects]).astype(np.float32),
            f"{key}/overlap": np.stack([transfer.top_overlap(source.lift, e.lift, t.top_n) for e in effects]),
            f"{key}/loss_rise": np.stack([e.loss_rise for e in effects]),
            f"{key}/feature_lift": np.stack([e.feature_lift for e in effects]),
            f"{key}/source_loss_rise": source.loss_rise,
            f"{key}/source_feature_lift": source.feature_lift,
            f"{key}/source_top": np.argsort(-source.lift, axis=1)[:, :5],
            f"{key}/top": np.stack([np.argsort(-e.lift, axis=1)[:, :5] for e in effects]),
            f"{key}/feature_src": idx[src][test],
            f"{key}/feature_tgt": idx[tgt][test],
        }
        info[key] = list(dirs)
    out |= {"test": test, "r": pairs.r[test], "alpha": np.array([alpha[a], alpha[b]])}
    step.write_json(tmp / "info.json", info)
    return out


def _transferred(
    study: Study,
    src: tuple[str, int],
    tgt: tuple[str, int],
    X: np.ndarray,
    Y: np.ndarray,
    test: np.ndarray,
    fold: np.ndarray,
    usae: Any,
    ridge: float,
) -> dict[str, np.ndarray]:
    """{method: (len(test), d_tgt) directions}: the test pairs' source decoder rows carried into the target by
    every method (see :mod:`featlib.transfer`). ``src``/``tgt``: (model, layer); X (n, d_src), Y (n, d_tgt):
    the decoder rows of all matched pairs; ``fold``: each test pair's fold for the rotation; ``usae``: the
    universal SAE, or None to leave its method out; ``ridge``: the affine map's penalty (``transfer.ridge``)."""
    (ms, ls), (mt, lt) = src, tgt
    W = transfer.ridge_map(study.eval_acts(ms).layer(ls), study.eval_acts(mt).layer(lt), ridge)
    dirs = {"partner": Y[test], "rotation": transfer.cross_fitted_rotation(X, Y, test, fold), "affine": X[test] @ W}
    if usae is not None:
        U = {m: usae.W_dec[m].detach().double().cpu().numpy() for m in (ms, mt)}
        dirs["universal"] = U[mt][transfer.nearest_rows(X[test], U[ms])]
    return dirs


@dataclass(frozen=True)
class Cell:
    """One cell's steering experiment (arrays per direction of transfer, ``"A>B"``: model ids)."""

    comparison: Comparison
    r: np.ndarray  # (n,) correlation of each test pair
    alpha: dict[str, float]  # dose per model
    arrays: dict[str, np.ndarray]  # "A>B/rho" (M, n, n), ".../overlap" (M, n), ...
    info: dict[str, Any]  # shared strings, methods, dose curves, pairs matched

    @property
    def la(self) -> int:
        return self.comparison.a.layer

    @property
    def lb(self) -> int:
        return self.comparison.b.layer

    @property
    def name(self) -> str:
        """E.g. ``A2–B3``."""
        return f"{self.comparison.a.name}–{self.comparison.b.name}"

    def directions(self) -> list[str]:
        return [k for k in self.info if ">" in k]

    def rows(self, key: str) -> list[str]:
        """The methods then controls whose directions were steered in ``key``, in array order."""
        return self.info[key]


def transfer_cells(study: Study) -> list[Cell]:
    """Every tested layer pair's experiment (see :func:`transfer_artifact`)."""
    out = []
    for comp in cells(study):
        art = transfer_artifact(study, comp)
        arrays = art.arrays("results.npz")
        alpha = dict(zip((comp.a.model, comp.b.model), arrays["alpha"].tolist()))
        out.append(Cell(comp, arrays["r"], alpha, arrays, art.json("info.json")))
    return out


def _outcomes(cell: Cell, key: str, quantile: float, seed: int) -> dict[str, np.ndarray]:
    """Per steered row (methods, controls, and each method's random other pair): success per test pair."""
    names = cell.rows(key)
    rho = cell.arrays[f"{key}/rho"]
    pool = [i for i, k in enumerate(names) if k in transfer.METHODS]
    ok, thr = transfer.success(rho, pool, quantile)
    other = transfer.derangement(rho.shape[1], seed)
    res = {k: ok[i] for i, k in enumerate(names)}
    for i in pool:
        res[f"{names[i]}: random other pair"] = rho[i, np.arange(len(other)), other] > thr
    return res


def success_table(study: Study, cells_: list[Cell]) -> pd.DataFrame:
    """Per layer pair, direction and steered row: test pairs, transfer success rate with its Wilson 95 %
    interval, and the medians of agreement (Spearman), top-``top_n`` overlap, the target feature's code
    lift and the loss rise."""
    import pandas as pd

    t = study.cfg.transfer
    rows = []
    for c in cells_:
        for key in c.directions():
            names = c.rows(key)
            outcome = _outcomes(c, key, t.success_quantile, t.seed)
            rho = c.arrays[f"{key}/rho"]
            diag = rho[:, np.arange(rho.shape[1]), np.arange(rho.shape[1])]
            for name, ok in outcome.items():
                base = name.split(":")[0]
                i = names.index(base)
                lo, hi = transfer.wilson(int(ok.sum()), len(ok))
                kind = "method" if name in transfer.METHODS else "control"
                row = {
                    "layers": c.name,
                    "direction": key.replace(">", "→"),
                    "steered by": name,
                    "kind": kind,
                    "pairs": len(ok),
                    "success": float(ok.mean()),
                    "95% CI low": lo,
                    "95% CI high": hi,
                }
                if ":" not in name:
                    row |= {
                        "median agreement": float(np.median(diag[i])),
                        f"median top-{t.top_n} overlap": float(np.median(c.arrays[f"{key}/overlap"][i])),
                        "median feature lift": float(np.median(c.arrays[f"{key}/feature_lift"][i])),
                        "median loss rise": float(np.median(c.arrays[f"{key}/loss_rise"][i])),
                    }
                rows.append(row)
    return pd.DataFrame(rows)


def success_by_r(study: Study, cell: Cell, bins: int = 3) -> pd.DataFrame:
    """Success rate of every method by quantile bin of the test pairs' correlation r (both directions pooled)."""
    import pandas as pd

    t = study.cfg.transfer
    edges = np.quantile(cell.r, np.linspace(0, 1, bins + 1))
    which = np.clip(np.searchsorted(edges, cell.r, side="right") - 1, 0, bins - 1)
    rows = []
    for key in cell.directions():
        outcome = _outcomes(cell, key, t.success_quantile, t.seed)
        for name in (k for k in outcome if k in transfer.METHODS):
            for q in range(bins):
                ok = outcome[name][which == q]
                rows.append(
                    {
                        "direction": key.replace(">", "→"),
                        "method": name,
                        "r bin": f"{edges[q]:.2f}–{edges[q + 1]:.2f}",
                        "pairs": len(ok),
                        "success": float(ok.mean()) if len(ok) else np.nan,
                    }
                )
    return pd.DataFrame(rows)


def gallery_pairs(study: Study, cell: Cell) -> list[int]:
    """Up to ``transfer.gallery`` readable test pairs (indices into the cell's test pairs): the strongest pair
    of each concept group (06) in turn, then of a function word, then the strongest remaining pairs."""
    a, b = cell.comparison.a.model, cell.comparison.b.model
    top_a = top_token_strings(study, cell.comparison.a)
    top_b = top_token_strings(study, cell.comparison.b)
    fa, fb = cell.arrays[f"{a}>{b}/feature_src"], cell.arrays[f"{a}>{b}/feature_tgt"]
    order = np.argsort(-cell.r, kind="stable")
    groups = list(resolve_groups(study.cfg.subspaces.groups).values()) + [FUNCTION_WORDS]
    chosen: list[int] = []
    for kw in groups:
        both = group_features(top_a, kw)[fa] & group_features(top_b, kw)[fb]
        pick = next((int(i) for i in order if both[i] and i not in chosen), None)
        if pick is not None:
            chosen.append(pick)
    chosen += [int(i) for i in order if i not in chosen]
    return chosen[: study.cfg.transfer.gallery]


def transfer_gallery(study: Study, cell: Cell) -> pd.DataFrame:
    """Greedy continuations of every ``transfer.prompts`` for the gallery pairs (source: side a): a clean, a
    steered by f, b clean, b steered by each method's transfer of f (the rotation fitted on all pairs but this
    one), each model at its dose. Not cached: a few seconds."""
    import pandas as pd

    comp, t = cell.comparison, study.cfg.transfer
    a, b = comp.a.model, comp.b.model
    pairs = match(study, comp).pairs
    picks = gallery_pairs(study, cell)
    test = cell.arrays["test"][picks]
    X, Y = study.decoder_rows(comp.a, pairs.idx_a), study.decoder_rows(comp.b, pairs.idx_b)
    usae = universal_sae(study)[0] if "universal" in cell.info["methods"] else None
    dirs = _transferred(study, (a, cell.la), (b, cell.lb), X, Y, test, np.arange(len(test)), usae, t.ridge)
    tops = {m: top_token_strings(study, s) for m, s in ((a, comp.a), (b, comp.b))}
    rows = []
    for prompt in t.prompts:
        enc = {
            m: np.array([study.models[m].bos_id] + study.models[m].tokenizer.encode(prompt, add_special_tokens=False))
            for m in (a, b)
        }
        zero = {m: np.zeros((1, study.models[m].d_model)) for m in (a, b)}
        run = {a: np.vstack([zero[a], X[test]]), b: np.vstack([zero[b]] + list(dirs.values()))}
        layers = {a: cell.la, b: cell.lb}
        text = {
            m: [
                study.models[m].tokenizer.decode(s.tolist())
                for s in transfer.greedy_continuations(
                    study.models[m].model, layers[m], enc[m], run[m], cell.alpha[m], t.gallery_tokens
                )
            ]
            for m in (a, b)
        }
        for j, i in enumerate(test):
            label = (
                f"{a}{int(pairs.idx_a[i])} ({' | '.join(s.strip() for s in tops[a][pairs.idx_a[i]][:3])}) ↔ "
                f"{b}{int(pairs.idx_b[i])}, r = {pairs.r[i]:.2f}"
            )
            variants = [(f"{a} clean", text[a][0]), (f"{a} steered", text[a][1 + j]), (f"{b} clean", text[b][0])]
            variants += [(f"{b} steered ({k})", text[b][1 + n * len(test) + j]) for n, k in enumerate(dirs)]
            rows += [{"feature pair": label, "prompt": prompt, "model": v, "continuation": s} for v, s in variants]
    return pd.DataFrame(rows)


def dose_table(study: Study, cell: Cell) -> pd.DataFrame:
    """Each model's dose at the cell: its layer's mean residual norm, the size found, and the median loss
    rise of its own feature directions at every size tried."""
    import pandas as pd

    rows = []
    for m, layer in ((cell.comparison.a.model, cell.la), (cell.comparison.b.model, cell.lb)):
        d = cell.info["dose"][m]
        rows.append(
            {
                "model": m,
                "layer": layer,
                "mean residual norm": d["mean_norm"],
                "alpha": d["alpha"],
                "alpha / mean norm": d["alpha"] / d["mean_norm"],
                "median loss rise at sizes tried": ", ".join(
                    f"{a:.3g}: {r:.3f}" for a, r in zip(d["sizes"], d["median_rise"])
                ),
            }
        )
    return pd.DataFrame(rows)


def layer_table(study: Study, table: pd.DataFrame, cells_: list[Cell], metric: str = "cka_debiased") -> pd.DataFrame:
    """Per tested layer pair: each method's success rate (both directions pooled) beside the cell's
    calibrated ``metric`` (05; NaN where the cell has no ceiling or floor)."""
    import pandas as pd

    from .scale import calibrate

    rows = []
    for c in cells_:
        cal = calibrate(study, c.comparison, study.cfg.calibration.grid_draws).get(metric)
        here = table[(table["layers"] == c.name) & (table["kind"] == "method")]
        row = {
            "layers": c.name,
            f"calibrated {metric}": cal.calibrated.mean if cal else np.nan,
            "lo": cal.calibrated.lo if cal else np.nan,
            "hi": cal.calibrated.hi if cal else np.nan,
        }
        for name, g in here.groupby("steered by", sort=False):
            row[name] = float((g["success"] * g["pairs"]).sum() / g["pairs"].sum())
        rows.append(row)
    return pd.DataFrame(rows)
