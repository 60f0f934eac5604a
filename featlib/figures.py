"""Every figure of notebooks 01–09, one function each: it takes what the notebook computed and returns a
matplotlib Figure at a paper width (3.5 or 7 in) in the style of :func:`featlib.plots.style`; the notebook
saves it with :func:`featlib.plots.save_figure` (300-dpi PNG and PDF).

Conventions shared by all: models are named (``names``: model id -> name, :meth:`Study.model_names`),
layers are shown with their relative depth (L + 1) / layers, nulls with their spread, legends outside
the data, panels that are compared on one scale, one colour per concept group
(:func:`featlib.plots.group_colors`), cells not significant hatched. ``tests/test_figures.py`` renders
each on small data.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from . import plots
from .plots import CROSS_COLOR, NULL_COLOR, ONE_COLUMN, TWO_COLUMN, new_figure, outside_legend, style
from .similarity import METRIC_NAMES

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

__all__ = [
    "residual_norms",
    "sae_quality",
    "best_correlations",
    "null_distributions",
    "calibration",
    "layer_heatmaps",
    "other_metrics",
    "calibrated_grid",
    "group_scores",
    "group_interactions",
    "usae_training",
    "cross_r2",
    "firing",
    "counterparts",
    "atlas_maps",
    "transfer_success",
    "success_by_r",
]


def _model(names: dict[str, str], mid: str) -> str:
    """``A: SmolLM2-135M-Instruct``."""
    return f"{mid}: {names[mid]}"


def _key(names: dict[str, str]) -> str:
    """``A = SmolLM2-135M-Instruct, B = Gemma-3-270M``: what the ids in panel titles stand for."""
    return ", ".join(f"{mid} = {n}" for mid, n in names.items())


def _grid(n: int, ncols: int, height: float, **kw: Any) -> tuple[Figure, np.ndarray]:
    """A two-column figure of ``n`` panels in rows of ``ncols``; unused slots are hidden."""
    nrows = -(-n // ncols)
    fig, axes = new_figure(nrows, ncols, TWO_COLUMN, height * nrows, **kw)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, axes


def _layer_axes(axes: np.ndarray, n: int, names: dict[str, str], a: str, b: str) -> None:
    """Axis labels of the first ``n`` heatmaps of a grid of layer pairs: B's layer on x, A's on y (first column only)."""
    for k, ax in enumerate(axes.flat[:n]):
        ax.set(
            xlabel=f"layer of {_model(names, b)}\n(relative depth)",
            ylabel=f"layer of {_model(names, a)}\n(relative depth)" if k % axes.shape[1] == 0 else "",
        )


def residual_norms(norms: pd.DataFrame, names: dict[str, str]) -> Figure:
    """01: mean residual-stream norm (log scale) against relative depth, one line per model.
    ``norms``: columns model, depth, mean norm (:func:`featlib.study.residual_norms`)."""
    with style():
        fig, axes = new_figure(width=ONE_COLUMN, height=2.4)
        ax = axes[0, 0]
        for mid, rows in norms.groupby("model"):
            ax.plot(rows.depth, rows["mean norm"], "o-", label=_model(names, mid))
        ax.set(
            yscale="log",
            xlabel="relative depth (L + 1) / layers",
            ylabel="mean ‖x‖ over eval units (log)",
            xlim=(0, 1.02),
        )
        plots.plain_log_ticks(ax)
        outside_legend(fig, where="upper center", ncols=1)
    return fig


def sae_quality(
    table: pd.DataFrame, names: dict[str, str], depth: Callable[[str, int], float], min_ev: float
) -> Figure:
    """02: explained variance, CE loss recovered and dead-latent fraction of the profile's SAEs against
    relative depth (``depth(model, layer)``), one line per model, on one shared scale; the dashed line is
    ``sae.min_explained_variance``. ``table``: :func:`featlib.study.sae_table`."""
    cols = {
        "explained_variance": "explained variance",
        "ce_recovered": "CE loss recovered",
        "dead_fraction": "dead-latent fraction",
    }
    profile_saes = table[table.sae == "profile"]
    with style():
        fig, axes = new_figure(1, 3, TWO_COLUMN, 2.4, sharey=True)
        for mid, rows in profile_saes.groupby("model"):
            x = [depth(mid, L) for L in rows.layer]
            for ax, col in zip(axes[0], cols):
                ax.plot(x, rows[col], "o-", label=_model(names, mid))
        axes[0, 0].axhline(min_ev, color=NULL_COLOR, ls="--", lw=1, label="required explained variance")
        for ax, title in zip(axes[0], cols.values()):
            ax.set(title=title, xlabel="relative depth (L + 1) / layers", xlim=(0, 1.02))
        axes[0, 0].set(ylabel="fraction", ylim=(min(0.0, float(profile_saes[list(cols)].min().min()) - 0.05), 1.05))
        outside_legend(fig)
    return fig


def best_correlations(matches: Sequence[Any], min_r: float, names: dict[str, str]) -> Figure:
    """03: per comparison (``matches``: :class:`featlib.study.Match`), the correlation of every active B
    feature with its best A partner (grey) and of the final pairs (blue), with the threshold, on one r axis (−0.2 to 1)."""
    with style():
        fig, axes = _grid(len(matches), min(3, len(matches)), 2.0)
        for ax, m in zip(axes.flat, matches):
            ax.hist(
                m.many_to_one.r,
                bins=50,
                range=(-0.2, 1),
                color=NULL_COLOR,
                label="best partner of every active B feature",
            )
            ax.hist(
                m.pairs.r,
                bins=50,
                range=(-0.2, 1),
                color=CROSS_COLOR,
                alpha=0.85,
                label="final pairs after the filters",
            )
            ax.axvline(min_r, color="k", ls="--", lw=0.8, label=f"threshold r = {min_r}")
            ax.set(
                title=f"{m.comparison.name}\n{len(m.pairs):,} of {len(m.many_to_one):,} kept",
                xlabel="Pearson r of activations",
                ylabel="features (log)",
                yscale="log",
            )
            plots.plain_log_ticks(ax)
        fig.suptitle(_key(names))
        outside_legend(fig, ncols=3)
    return fig


def null_distributions(geom: Any, names: dict[str, str]) -> Figure:
    """04: every metric's re-pairing null (histogram) with the paired score of one matching
    (``geom``: :class:`featlib.study.Geometry`); a metric not scorable shows its reason."""
    nulls = geom.nulls()
    with style():
        fig, axes = _grid(len(geom.scores), 4, 1.9)
        for ax, (metric, s) in zip(axes.flat, geom.scores.items()):
            if s.scorable:
                plots.null_histogram(ax, nulls[metric], s.score, METRIC_NAMES[metric], s.p)
            else:
                ax.set_axis_off()
                ax.set_title(f"{METRIC_NAMES[metric]}: not scorable")
                plots.panel_note(ax, s.reason, width=30)
        for ax in axes[:, 1:].flat:
            ax.set_ylabel("")
        fig.suptitle(f"{geom.comparison.name}, {geom.n} pairs, {geom.n_shuffles:,} re-pairings ({_key(names)})")
        outside_legend(fig)
    return fig


def calibration(cal: pd.DataFrame, metrics: Sequence[str], names: dict[str, str]) -> Figure:
    """04: per metric, the null, random-model floor, cross-model score and seed ceiling (mean and 95 %
    interval over the draws) with the calibrated score; one shared y scale. ``cal``:
    :func:`featlib.study.calibration_table`."""
    with style():
        fig, axes = _grid(len(metrics), 4, 2.1, sharey=True)
        for ax, metric in zip(axes.flat, metrics):
            plots.scale_dots(ax, cal, metric, METRIC_NAMES[metric])
        for ax in axes[:, 1:].flat:
            ax.set_ylabel("")
        fig.suptitle(_key(names))
        outside_legend(fig)
    return fig


def _excess(grid: pd.DataFrame, metric: str) -> np.ndarray:
    from .study import grid_matrix

    return grid_matrix(grid, metric) - grid_matrix(grid, f"{metric} null")


def _not_significant(grid: pd.DataFrame, metric: str, alpha: float = 0.05) -> np.ndarray:
    from .study import grid_matrix

    p = grid_matrix(grid, f"{metric} p")
    return np.isfinite(p) & (p >= alpha)


def _symmetric(*arrays: np.ndarray) -> tuple[float | None, float | None]:
    lo, hi = plots.value_range(*arrays)
    if lo is None or hi is None:
        return None, None
    m = max(abs(lo), abs(hi)) or 1.0
    return -m, m


def layer_heatmaps(
    grid: pd.DataFrame,
    metrics: tuple[str, str],
    rows: Sequence[str],
    cols: Sequence[str],
    a: str,
    b: str,
    names: dict[str, str],
) -> Figure:
    """05: two metrics (the papers': SVCCA and RSA) of every layer pair of one comparison — the paired
    score, and its excess over the mean of the re-pairing null (one diverging scale for both) — beside
    the pairs per cell. Cells not above their null (p ≥ 0.05) are hatched. ``grid``:
    :func:`featlib.study.layer_grid`."""
    from .study import grid_matrix

    with style():
        fig, axes = new_figure(2, 3, TWO_COLUMN, 4.6)
        excess = {m: _excess(grid, m) for m in metrics}
        lo, hi = _symmetric(*excess.values())
        for row, metric in enumerate(metrics):
            ns = _not_significant(grid, metric)
            score = grid_matrix(grid, metric)
            plots.heatmap(axes[row, 0], score, rows, cols, f"{METRIC_NAMES[metric]} (paired)", ns=ns)
            plots.heatmap(
                axes[row, 1],
                excess[metric],
                rows,
                cols,
                f"{METRIC_NAMES[metric]} − null mean",
                vmin=lo,
                vmax=hi,
                cmap="vlag",
                ns=ns,
            )
        plots.heatmap(axes[0, 2], grid_matrix(grid, "pairs"), rows, cols, "pairs per cell", fmt="{:.0f}", cmap="Greys")
        axes[1, 2].set_axis_off()
        plots.panel_note(
            axes[1, 2], "hatched: not above the re-pairing null (p ≥ 0.05)\nblank: not scorable", width=26, fontsize=7
        )
        _layer_axes(axes, 5, names, a, b)
    return fig


def other_metrics(
    grid: pd.DataFrame,
    metrics: Sequence[str],
    rows: Sequence[str],
    cols: Sequence[str],
    a: str,
    b: str,
    names: dict[str, str],
) -> Figure:
    """05: the excess over the re-pairing null mean of the other metrics per layer pair, on one diverging
    scale with one colour bar; hatched where p ≥ 0.05."""
    with style():
        fig, axes = _grid(len(metrics), 3, 2.3)
        excess = {m: _excess(grid, m) for m in metrics}
        lo, hi = _symmetric(*excess.values())
        images = [
            plots.heatmap(
                ax,
                excess[m],
                rows,
                cols,
                f"{METRIC_NAMES[m]} − null mean",
                vmin=lo,
                vmax=hi,
                cmap="vlag",
                ns=_not_significant(grid, m),
                colorbar=False,
            )
            for ax, m in zip(axes.flat, metrics)
        ]
        _layer_axes(axes, len(metrics), names, a, b)
        if im := next((i for i in images if i is not None), None):
            fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.6, label="score − null mean (hatched: p ≥ 0.05)")
    return fig


def calibrated_grid(
    calgrid: pd.DataFrame,
    metrics: Sequence[str],
    rows: Sequence[str],
    cols: Sequence[str],
    layers: tuple[Sequence[int], Sequence[int]],
    a: str,
    b: str,
    names: dict[str, str],
) -> Figure:
    """05: the calibrated score (0 = random-model floor, 1 = seed ceiling) of every metric per layer
    pair with a ceiling and floor, one 0–1 scale; hatched: not above the floor.
    ``calgrid``: :func:`featlib.study.calibrated_grid`."""
    with style():
        fig, axes = _grid(len(metrics), 3, 2.1)
        images = [
            plots.calibrated_heatmap(ax, calgrid, m, rows, cols, layers[0], layers[1], METRIC_NAMES[m])
            for ax, m in zip(axes.flat, metrics)
        ]
        _layer_axes(axes, len(metrics), names, a, b)
        if im := next((i for i in images if i is not None), None):
            fig.colorbar(
                im, ax=axes.ravel().tolist(), shrink=0.6, label="calibrated score (hatched: not above the floor)"
            )
    return fig


def group_scores(
    groups: pd.DataFrame,
    metrics: Sequence[str],
    colors: dict[str, str],
    names: dict[str, str],
    title: str = "Concept groups",
) -> Figure:
    """06: per concept group, each metric's cross-model score beside its re-pairing null (mean ± sd), its
    seed ceilings and random-model floors. ``groups``: :func:`featlib.study.subspace_scores` (or
    :func:`~featlib.study.phrase_scores`) rows of the cross, seed and random-init comparisons."""
    from matplotlib.patches import Patch

    with style():
        fig, axes = new_figure(len(metrics), 1, TWO_COLUMN, 0.4 + 1.6 * len(metrics), sharex=True)
        for ax, metric in zip(axes[:, 0], metrics):
            plots.group_scale(ax, groups, metric, METRIC_NAMES[metric], colors)
        fig.suptitle(f"{title} ({_key(names)})")
        entries = plots.legend_entries(fig)
        entries.pop("cross-model", None)
        outside_legend(
            fig, [Patch(color=CROSS_COLOR), *entries.values()], ["cross-model (bar, in the group's colour)", *entries]
        )
    return fig


def group_interactions(inter: Any, sides: Sequence[str], names: dict[str, str]) -> Figure:
    """06: how the phrase groups sit relative to each other in each SAE (mean cos² of the principal angles between
    two groups' subspaces, one matrix per side, one colour scale) and the two matrices' off-diagonal entries against
    each other, with the agreement r and its random-set null. ``inter``: :class:`featlib.phrases.Interaction`;
    ``sides``: the two sides' names (e.g. ``A2``, ``B3``)."""
    with style():
        fig, axes = new_figure(1, 3, TWO_COLUMN, 2.8)
        labels = inter.groups
        for ax, m, side in zip(axes[0, :2], (inter.a, inter.b), sides):
            im = plots.heatmap(
                ax,
                m,
                labels,
                labels,
                f"{side}: group subspaces",
                vmin=0,
                vmax=1,
                colorbar=False,
                fmt=plots.compact if len(labels) <= 8 else "",
            )  # twelve groups' values do not fit their cells
            ax.tick_params(axis="x", labelrotation=90)
        if im is not None:
            fig.colorbar(im, ax=axes[0, :2].tolist(), fraction=0.04, pad=0.02, label="mean cos² of principal angles")
        ax = axes[0, 2]
        iu = np.triu_indices(len(inter.groups), 1)
        ax.scatter(inter.a[iu], inter.b[iu], s=10, color=CROSS_COLOR, label="pairs of groups")
        stats = (
            f"r = {inter.agreement:.2f} ({plots.format_p(inter.p)});\nrandom sets' 95th pct {np.quantile(inter.null, 0.95):.2f}"
            if np.isfinite(inter.agreement)
            else "not scorable"
        )
        ax.set(xlabel=f"{sides[0]}: mean cos²\n{stats}", ylabel=f"{sides[1]}: mean cos²", title="pairs of groups")
        if not np.isfinite(inter.agreement):
            plots.panel_note(ax, inter.reason, fontsize=7)
        fig.suptitle(f"Phrase groups relative to each other ({_key(names)})")
    return fig


def usae_training(loss: Sequence[float], window: int = 50) -> Figure:
    """07: the universal SAE's reconstruction loss per step (rolling mean over ``window`` steps, log scale)."""
    import pandas as pd

    with style():
        fig, axes = new_figure(width=ONE_COLUMN, height=2.2)
        ax = axes[0, 0]
        ax.plot(pd.Series(loss).rolling(window, min_periods=1).mean(), color=CROSS_COLOR)
        ax.set(
            xlabel="training step",
            ylabel=f"reconstruction loss\n(summed over models, {window}-step mean)",
            yscale="log",
        )
    return fig


def cross_r2(r2: np.ndarray, ids: Sequence[str], names: dict[str, str]) -> Figure:
    """07: R² of reconstructing each model's activations from each model's code (rows: encode, columns: decode)."""
    with style():
        fig, axes = new_figure(width=ONE_COLUMN, height=2.6)
        labels = [_model(names, m) for m in ids]
        plots.heatmap(
            axes[0, 0],
            r2,
            [f"encode {x}" for x in labels],
            [f"decode {x}" for x in labels],
            "cross-reconstruction R²",
            vmin=0,
            vmax=1,
        )
        axes[0, 0].tick_params(axis="x", labelrotation=15)
    return fig


def firing(res: Any, summary: dict[str, float]) -> Figure:
    """07: how evenly each concept fires across models (entropy) and its co-fires against its energy.
    ``res``: :class:`featlib.study.USAEResults`; ``summary``: :func:`featlib.study.firing_summary`."""
    both = (res.cofire > 0) & (res.energy > 0)
    with style():
        fig, axes = new_figure(1, 2, TWO_COLUMN, 2.5)
        ax0, ax1 = axes[0]
        ax0.hist(res.firing_entropy[res.fired], bins=30, range=(0, 1), color=CROSS_COLOR)
        ax0.set(xlabel="firing entropy (0: one model only, 1: every model equally)", ylabel="concepts")
        ax1.scatter(res.cofire[both], res.energy[both], s=3, alpha=0.5, color=CROSS_COLOR, linewidths=0)
        ax1.set(
            xscale="log",
            yscale="log",
            xlabel="co-fires (tokens where it fires in every model)",
            ylabel="energy",
            title=f"r(log co-fires, log energy) = {summary['r(log co-fires, log energy)']:.2f}\n"
            f"(top quarter by co-fires: {summary['r, top quarter by co-fires']:.2f})",
        )
    return fig


def counterparts(res: Any, layers: dict[str, int], names: dict[str, str]) -> Figure:
    """07: per model, each concept's best cosine with the model's own SAE (notebook 02) against random directions."""
    ids = list(layers)
    with style():
        fig, axes = new_figure(1, len(ids), TWO_COLUMN, 2.3, sharey=True)
        for ax, m in zip(axes[0], ids):
            ax.hist(
                [res.counterpart_cos[m][res.fired], res.random_cos[m][res.fired]],
                bins=30,
                range=(0, 1),
                label=["universal concepts", "random directions"],
                color=[CROSS_COLOR, NULL_COLOR],
            )
            ax.axvline(0.5, color="k", lw=0.8, ls="--", label="counterpart threshold 0.5")
            ax.set(
                title=f"{_model(names, m)}, layer {layers[m]}",
                xlabel="best cosine with the SAE of 02",
                ylabel="concepts",
            )
        outside_legend(fig, ncols=3)
    return fig


def atlas_maps(at: Any, colors: dict[str, str], names: dict[str, str]) -> Figure:
    """08: the two UMAP maps of decoder vectors, features of a concept group in the group's colour.
    ``at``: :class:`featlib.atlas.Atlas`."""
    (a, b), (la, lb) = at.ids, at.layers
    with style():
        fig, axes = new_figure(1, 2, TWO_COLUMN, 3.3)
        for ax, xy, groups, mid, layer in (
            (axes[0, 0], at.xy_a, at.group_a, a, la),
            (axes[0, 1], at.xy_b, at.group_b, b, lb),
        ):
            ax.scatter(xy[:, 0], xy[:, 1], s=4, color="0.82", linewidths=0, label="no concept group")
            for g, color in colors.items():
                sel = np.array([x == g for x in groups], dtype=bool)
                if sel.any():
                    ax.scatter(xy[sel, 0], xy[sel, 1], s=10, color=color, linewidths=0, label=g)
            ax.set(title=f"{_model(names, mid)}, layer {layer}", xticks=[], yticks=[], xlabel="UMAP 1", ylabel="UMAP 2")
        outside_legend(fig, where="right", ncols=1)
    return fig


def transfer_success(
    table: pd.DataFrame, keys: Sequence[tuple[str, str]], chance: float, names: dict[str, str]
) -> Figure:
    """09: transfer success rate (95 % interval) of every method and control, one panel per layer pair and
    direction (``keys``); methods blue, controls grey, chance dashed; one x scale (0–1)."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    with style():
        fig, axes = _grid(len(keys), 2, 2.4, sharex=True, sharey="row")
        for ax, (layers, direction) in zip(axes.flat, keys):
            plots.success_bars(
                ax, table[(table.layers == layers) & (table.direction == direction)], chance, f"{layers}, {direction}"
            )
        for ax in axes[:, 1:].flat:
            ax.tick_params(labelleft=False)
        fig.suptitle(_key(names))
        outside_legend(
            fig,
            [Patch(color=CROSS_COLOR), Patch(color=NULL_COLOR), Line2D([], [], color="k", ls="--", lw=0.8)],
            ["transfer method", "control", f"chance ({chance:.0%})"],
            ncols=3,
        )
    return fig


def success_by_r(by_r: pd.DataFrame, chance: float, title: str, names: dict[str, str]) -> Figure:
    """09: success rate of each method by thirds of the pair's correlation r, one panel per direction
    (``title``: the layer pair, e.g. ``A2–B3``)."""
    directions = list(dict.fromkeys(by_r.direction))
    with style():
        fig, axes = new_figure(1, len(directions), TWO_COLUMN, 2.3, sharey=True)
        for ax, direction in zip(axes[0], directions):
            g = by_r[by_r.direction == direction]
            for method, h in g.groupby("method", sort=False):
                ax.plot(h["r bin"].astype(str), h["success"], marker="o", label=method)
            ax.axhline(chance, color="k", ls="--", lw=0.8, label=f"chance ({chance:.0%})")
            ax.set(title=f"{title}, {direction}", xlabel="pair correlation r (thirds)", ylim=(0, 1))
        axes[0, 0].set_ylabel("transfer success rate")
        fig.suptitle(_key(names))
        outside_legend(fig, ncols=5)
    return fig
