"""Outputs of the notebooks: the figures' one style (seaborn's paper theme, one- and two-column sizes,
one colour per concept group), one function that saves every figure and one every result table, number
formats, and the plot types the figures of :mod:`featlib.figures` share."""

from __future__ import annotations

import re
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .config import REPO

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.typing import RcKeyType

    from .config import Config

FIGURES = REPO / "figures"
RESULTS = REPO / "results"

ONE_COLUMN, TWO_COLUMN = 3.5, 7.0  # figure widths in inches: one column and the full width of a two-column paper
DPI = 300  # of the saved PNGs (the PDFs are vector)
# seaborn's "paper" context at these sizes: 8 pt text, 7 pt ticks and legends at print size
RC: dict[RcKeyType, Any] = {
    "font.size": 8,
    "axes.titlesize": 8,
    "axes.labelsize": 8,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "legend.fontsize": 7,
    "legend.title_fontsize": 7,
    "legend.frameon": False,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "image.cmap": "viridis",
    "hatch.linewidth": 0.5,
    "hatch.color": "0.35",
    "figure.dpi": 100,  # the screen size in notebooks, whatever a user's matplotlibrc says (files: DPI)
    "patch.force_edgecolor": False,
}
NULL_COLOR, FLOOR_COLOR, CROSS_COLOR, CEILING_COLOR = "0.55", "#d55e00", "#0173b2", "#029e73"


@contextmanager
def style() -> Any:
    """The figures' style while a figure is drawn: seaborn's ``ticks`` style and ``paper`` context with
    :data:`RC` on top; nothing outside the block changes."""
    import matplotlib as mpl
    import seaborn as sns
    from matplotlib.rcsetup import cycler

    palette = cycler(color=sns.color_palette("colorblind").as_hex())
    with mpl.rc_context({**sns.axes_style("ticks"), **sns.plotting_context("paper"), **RC, "axes.prop_cycle": palette}):
        yield


def plain_log_ticks(ax: Any, axis: str = "y") -> None:
    """Tick labels of a log axis as plain numbers (30, 200, 20,000), not powers of ten; between the powers,
    the 2s, 3s and 5s are labelled too where the axis spans under 1.5 decades, the 2s and 5s under two."""
    from matplotlib.ticker import FuncFormatter

    target = ax.yaxis if axis == "y" else ax.xaxis

    def minor(v: float, _: Any) -> str:
        lo, hi = sorted(target.get_view_interval())
        decades = np.log10(hi / lo) if lo > 0 else np.inf
        digits = "235" if decades < 1.5 else "25" if decades < 2 else ""
        return f"{v:,.6g}" if f"{v:.6g}"[0] in digits else ""

    target.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.6g}"))
    target.set_minor_formatter(FuncFormatter(minor))


def new_figure(
    nrows: int = 1, ncols: int = 1, width: float = TWO_COLUMN, height: float = 2.4, **kw: Any
) -> tuple[Any, Any]:
    """``plt.subplots`` at a paper width (:data:`ONE_COLUMN` or :data:`TWO_COLUMN`) with constrained layout,
    so that legends and colour bars placed outside the axes stay inside the saved figure; call it
    inside :func:`style`."""
    import matplotlib.pyplot as plt

    if width not in (ONE_COLUMN, TWO_COLUMN):
        raise ValueError(f"figure width {width} in: one column is {ONE_COLUMN} in, two columns {TWO_COLUMN} in")
    return plt.subplots(nrows, ncols, figsize=(width, height), layout="constrained", squeeze=False, **kw)


def group_colors(groups: Sequence[str]) -> dict[str, str]:
    """One colour per concept group, by its place in the profile's groups (``subspaces.groups``), so a
    group has the same colour in every figure and in the atlas page (seaborn's colour-blind palette;
    its grey left out; groups after the ninth, evenly spaced hues)."""
    import seaborn as sns

    colorblind = [c for c in sns.color_palette("colorblind").as_hex() if c != "#949494"]  # grey: "no group", nulls
    extra = max(0, len(groups) - len(colorblind))
    return dict(zip(groups, colorblind + (sns.color_palette("husl", extra).as_hex() if extra else [])))


def legend_entries(fig: Any) -> dict[str, Any]:
    """Label -> handle of every labelled artist in the figure's axes (the first of each label)."""
    seen: dict[str, Any] = {}
    for ax in fig.axes:
        for h, label in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(label, h)
    return seen


def outside_legend(
    fig: Any,
    handles: Sequence[Any] | None = None,
    labels: Sequence[str] | None = None,
    where: str = "lower center",
    ncols: int | None = None,
) -> Any:
    """One legend for the whole figure, outside every axes (``where``: ``lower center``, ``upper center`` or
    ``right``); handles and labels default to every labelled artist of the figure (:func:`legend_entries`)."""
    if handles is None:
        entries = legend_entries(fig)
        handles, labels = list(entries.values()), list(entries)
    if not handles:
        return None
    ncols = ncols or (1 if where == "right" else min(len(handles), 4))
    return fig.legend(handles, labels, loc=f"outside {where}", ncols=ncols)


def resolved_profile(cfg: Config) -> Path:
    """Write the run's resolved profile (after overrides) as ``figures/<label>/profile.yaml``; returns the folder.

    Raises ConfigError when the folder holds the figures of *another* profile file with other values (a
    copy of ``params/smoke.yaml`` saved as ``smoke.yaml`` elsewhere and edited): the run would overwrite
    them while the folder claimed the original's parameters."""
    from .config import ConfigError

    out = FIGURES / cfg.label
    stored = _stored_provenance(out / "profile.yaml")
    if stored and stored[0] != cfg.source and stored[1] != cfg.params_hash:
        raise ConfigError(
            f"{cfg.source}: figures/{cfg.label}/ holds the figures of {stored[0]} (params_hash "
            f"{stored[1]}), not of this profile (params_hash {cfg.params_hash}). Fix: save the profile "
            f"under another file name (the name is its label), or delete figures/{cfg.label}/."
        )
    out.mkdir(parents=True, exist_ok=True)
    text = cfg.resolved_yaml()
    same_values = stored is not None and stored[1] == cfg.params_hash  # keep the file that first made them
    if not same_values and (not (out / "profile.yaml").exists() or (out / "profile.yaml").read_text() != text):
        (out / "profile.yaml").write_text(text)
    return out


def _stored_provenance(path: Path) -> tuple[str, str] | None:
    """(profile file, params_hash) from the header of a ``profile.yaml`` written by :func:`resolved_profile`."""
    if not path.is_file():
        return None
    head = path.read_text().splitlines()[:3]
    source = re.match(r"# Resolved profile '[^']*': (.*)$", head[0]) if head else None
    digest = next((m for line in head if (m := re.search(r"params_hash ([0-9a-f]+)$", line))), None)
    return (source.group(1), digest.group(1)) if source and digest else None


def save_figure(fig: Any, cfg: Config, notebook: str, name: str) -> None:
    """Save ``fig`` as ``figures/<label>/<notebook>__<name>.png`` and ``.pdf`` (label: the profile, or
    ``profile+hash`` when overrides were applied; the resolved profile is written beside them).

    ``notebook`` is the notebook's stem (e.g. ``"04_svcca_rsa"``); the manifest written by
    ``make figures`` maps every file back to it. PDFs carry no creation date, so re-runs with the
    same numbers give the same bytes.
    """
    write_figure(fig, resolved_profile(cfg) / f"{notebook}__{name}.png")


def write_figure(fig: Any, png: Path) -> None:
    """Write ``fig`` at its own size (a paper width: see :func:`new_figure`) as vector PDF and as ``png`` at
    :data:`DPI` dpi in 256 colours (a third of the bytes of full colour, which these plots do not need),
    each to a temporary file first, then renamed into place. The layout is computed once and then frozen, so
    the same figure gives the same bytes, and the notebook shows what the files hold."""
    import io
    import os

    from PIL import Image

    pdf = png.with_suffix(".pdf")
    fig.canvas.draw()  # constrained layout runs here, once; then the positions are kept for both files and the display
    fig.set_layout_engine("none")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, facecolor="white")
    image = Image.open(buf).convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    for path, write in (
        (
            pdf,
            lambda f: fig.savefig(f, format="pdf", metadata={"CreationDate": None, "Creator": None, "Producer": None}),
        ),
        (png, lambda f: image.save(f, format="png", optimize=True)),
    ):
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            write(tmp)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def save_table(table: pd.DataFrame, cfg: Config, notebook: str, name: str) -> Path:
    """Save a tidy result table as ``results/<label>/<notebook>__<name>.csv`` (written atomically); returns its path."""
    import os
    import tempfile

    (RESULTS / cfg.label).mkdir(parents=True, exist_ok=True)
    path = RESULTS / cfg.label / f"{notebook}__{name}.csv"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        table.to_csv(tmp, index=False, float_format="%.6g")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def display_options() -> None:
    """pandas' display in the notebooks: wide tables, numbers as :func:`format_number` writes them."""
    import pandas as pd

    pd.set_option("display.width", 200, "display.max_colwidth", 80, "display.float_format", format_number)


def format_number(v: float) -> str:
    """A number in a table as text: three significant digits (0.00223, 2.14), whole numbers and those of
    100 or more without decimals and with thousands separators (2,048), scientific notation only below
    10⁻⁴, and "—" where it is not scorable (NaN)."""
    if not np.isfinite(v):
        return "—"
    if abs(v) >= 100 or float(v).is_integer():
        return f"{v:,.0f}"
    return f"{v:.3g}" if abs(v) >= 1e-4 else f"{v:.2e}"


def format_p(p: float) -> str:
    """A permutation p-value as text: ``p < 0.001`` below a thousandth (the +1-corrected minimum of 1,000
    re-pairings is 1/1,001), else two significant digits."""
    return "p < 0.001" if p < 1e-3 else f"p = {p:.2g}"


def value_range(*arrays: np.ndarray) -> tuple[float | None, float | None]:
    """(min, max) over the finite entries of ``arrays``, for a shared colour scale; (None, None) if none."""
    finite = np.concatenate([np.asarray(a, float).ravel() for a in arrays])
    finite = finite[np.isfinite(finite)]
    return (float(finite.min()), float(finite.max())) if finite.size else (None, None)


def panel_note(ax: Any, text: str, x: float = 0.5, y: float = 0.5, width: int = 34, **kw: Any) -> Any:
    """Grey text in a panel (axes coordinates), wrapped at ``width`` characters and kept out of the layout
    (a long reason must not widen its column)."""
    import textwrap

    wrapped = "\n".join(textwrap.fill(part, width, break_on_hyphens=False) for part in text.split("\n"))
    t = ax.text(
        x,
        y,
        wrapped,
        transform=kw.pop("transform", ax.transAxes),
        ha="center",
        va="center",
        color="0.35",
        fontsize=kw.pop("fontsize", 6),
        **kw,
    )
    t.set_in_layout(False)
    return t


def layer_ticks(labels: Sequence[Any]) -> list[str]:
    """Tick labels "L (depth)" as "L" over "depth", so a row of them does not overlap."""
    return [re.sub(r" \((.*)\)$", r"\n\1", str(x)) for x in labels]


def compact(v: float) -> str:
    """A cell's value in two decimals without the leading zero (.17, -.05, 1.00), so it fits its cell."""
    return re.sub(r"^(-?)0\.", r"\1.", f"{v:.2f}")


def heatmap(
    ax: Any,
    values: np.ndarray,
    rows: Sequence[Any],
    cols: Sequence[Any],
    title: str,
    fmt: Any = compact,
    vmin: float | None = None,
    vmax: float | None = None,
    cmap: str = "viridis",
    ns: np.ndarray | None = None,
    colorbar: bool = True,
) -> Any:
    """Annotated heatmap of ``values`` (len(rows), len(cols)); returns the image, or None when no cell is
    finite (the panel then says "not scorable in any cell" and draws no colour bar). Cells are written with
    ``fmt`` (a function or a format string); NaN cells are blank;
    cells where ``ns`` (same shape, bool) is true are hatched: not significant."""
    from matplotlib.patches import Rectangle

    values = np.asarray(values, float)
    ax.set_xticks(range(len(cols)), layer_ticks(cols), fontsize=6)
    ax.set_yticks(range(len(rows)), [str(r) for r in rows], fontsize=6)
    ax.set_title(title)
    ax.tick_params(length=0)
    if not np.isfinite(values).any():
        ax.set(xlim=(-0.5, len(cols) - 0.5), ylim=(-0.5, len(rows) - 0.5))
        panel_note(ax, "not scorable in any cell", fontsize=7)
        return None
    im = ax.imshow(values, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto", origin="lower")
    for i, j in zip(*np.nonzero(np.isfinite(values))):
        r, g, b, _ = im.cmap(im.norm(values[i, j]))
        dark = 0.299 * r + 0.587 * g + 0.114 * b < 0.5
        text = fmt(values[i, j]) if callable(fmt) else fmt.format(values[i, j])
        ax.text(j, i, text, ha="center", va="center", fontsize=5.5, color="white" if dark else "black")
        if ns is not None and ns[i, j]:
            ax.add_patch(
                Rectangle(
                    (j - 0.5, i - 0.5), 1, 1, fill=False, hatch="////", edgecolor="0.85" if dark else "0.35", lw=0
                )
            )
    if colorbar:
        ax.figure.colorbar(im, ax=ax, fraction=0.05, pad=0.02)
    return im


def null_histogram(ax: Any, null: np.ndarray, observed: float, title: str, p: float) -> None:
    """Histogram of a null distribution (grey, "re-pairings") with the observed score as a vertical line
    ("paired"); the score and its p-value go into the title."""
    ax.hist(null, bins=40, color=NULL_COLOR, label="random re-pairings")
    ax.axvline(observed, color=CROSS_COLOR, lw=1.5, label="paired")
    ax.set(title=f"{title}\npaired {observed:.3f}, {format_p(p)}", xlabel="score", ylabel="re-pairings")


SCALE_ROLES = (
    ("null", "re-paired (null)", NULL_COLOR, "_"),
    ("floor", "random-model floor", FLOOR_COLOR, "v"),
    ("cross", "cross-model", CROSS_COLOR, "o"),
    ("ceiling", "seed ceiling", CEILING_COLOR, "^"),
)


def scale_dots(ax: Any, table: pd.DataFrame, metric: str, title: str) -> None:
    """One metric's null, floor, cross and ceiling (mean and 2.5–97.5 % interval over the draws) for
    each cell of a :func:`featlib.study.calibration_table` table, the calibrated score and its interval
    under the cell's name;
    a not scorable metric is left blank with its reason."""
    rows = table[table.metric == metric].reset_index(drop=True)
    if rows.empty:
        panel_note(ax, "no ceiling and floor computed (references.run, references.layers)")
    ticks = []
    for i, r in rows.iterrows():
        ticks.append(f"{r['comparison']}\n(m={r['m']})")
        if not np.isfinite(r["cross"]):
            panel_note(
                ax,
                "not scorable: " + str(r["verdict"]).split(": ", 1)[-1],
                x=i,
                width=24,
                transform=ax.get_xaxis_transform(),
            )
            continue
        for j, (role, label, color, marker) in enumerate(SCALE_ROLES):
            x = i + (j - 1.5) * 0.15
            ax.errorbar(
                x,
                r[role],
                yerr=[[r[role] - r[f"{role} lo"]], [r[f"{role} hi"] - r[role]]],
                fmt=marker,
                color=color,
                capsize=2,
                label=label,
            )
        ticks[-1] += f"\ncalibrated {r['calibrated']:.2f}\n[{r['calibrated lo']:.2f}, {r['calibrated hi']:.2f}]"
    ax.set_xticks(range(len(rows)), ticks, fontsize=6)
    ax.set_xlim(-0.6, len(rows) - 0.4)
    ax.set(title=title, ylabel="score")


def calibrated_heatmap(
    ax: Any,
    grid: pd.DataFrame,
    metric: str,
    rows: Sequence[Any],
    cols: Sequence[Any],
    layers_a: Sequence[int],
    layers_b: Sequence[int],
    title: str,
) -> Any:
    """Calibrated score of ``metric`` per layer pair (rows: ``layers_a``, columns: ``layers_b``) on the
    shared 0–1 scale, from a :func:`featlib.study.calibrated_grid` table, without a colour bar (the
    figure draws one for all panels); returns the image (None if no cell is scored). Cells not above the
    random-model floor are hatched; cells without a ceiling and floor (or not scorable) are blank."""
    values = np.full((len(layers_a), len(layers_b)), np.nan)
    below = np.zeros_like(values, dtype=bool)
    for _, r in grid[grid.metric == metric].iterrows():
        i, j = list(layers_a).index(r["layer A"]), list(layers_b).index(r["layer B"])
        values[i, j] = r["calibrated"]
        below[i, j] = np.isfinite(r["calibrated"]) and r["verdict"] != "above the floor"
    return heatmap(ax, values, rows, cols, title, vmin=0, vmax=1, ns=below, colorbar=False)


def group_scale(ax: Any, groups: pd.DataFrame, metric: str, name: str, colors: dict[str, str]) -> None:
    """Per concept group scorable in the cross comparison: the cross-model ``metric`` (a bar in the group's
    colour), its re-pairing null (mean ± 1 sd, grey), and each ceiling (``seed``, triangles up) and floor
    (``random_init``, triangles down) of the same group, from a :func:`featlib.study.subspace_scores`
    table of several comparisons; a group whose pairs the metric cannot score says so. ``name``: the
    metric's name, on the y axis."""
    cross = groups[(groups.kind == "cross") & groups.scorable].reset_index(drop=True)
    x = np.arange(len(cross))
    ax.bar(x, cross[metric], color=[colors[g] for g in cross.group], width=0.6, label="cross-model")
    ax.errorbar(
        x + 0.2,
        cross[f"{metric} null (re-pair)"],
        yerr=cross[f"{metric} null sd (re-pair)"],
        fmt="_",
        color=NULL_COLOR,
        capsize=2,
        label="re-paired null (mean ± sd)",
    )
    for kind, color, marker, label in (
        ("seed", CEILING_COLOR, "^", "seed ceiling"),
        ("random_init", FLOOR_COLOR, "v", "random-model floor"),
    ):
        ref = groups[groups.kind == kind]
        for i, g in enumerate(cross.group):
            vals = ref[ref.group == g][metric].to_numpy(dtype=float)
            ax.scatter(np.full(len(vals), i - 0.2), vals, color=color, marker=marker, s=14, zorder=3, label=label)
    for col in np.flatnonzero(~np.isfinite(cross[metric].to_numpy(dtype=float))).tolist():
        panel_note(ax, "not scorable", x=col, y=0.5, rotation=90, transform=ax.get_xaxis_transform())
    ax.set_xticks(x, [f"{g}\n(n={n})" for g, n in zip(cross.group, cross.pairs)])
    ax.set(ylabel=name, xlim=(-0.7, max(len(cross), 4) - 0.3))
    if not len(cross):
        panel_note(ax, "no concept group scorable", fontsize=7)


def success_bars(ax: Any, table: pd.DataFrame, chance: float, title: str) -> None:
    """Transfer success rate with its 95 % interval for every method and control of a
    :func:`featlib.study.success_table` slice (one layer pair and direction), methods in blue, controls in
    grey, the chance rate (1 − ``transfer.success_quantile``) as a dashed line."""
    rows = table.reset_index(drop=True)
    y = np.arange(len(rows))[::-1]
    colors = [CROSS_COLOR if k == "method" else NULL_COLOR for k in rows["kind"]]
    err = [rows["success"] - rows["95% CI low"], rows["95% CI high"] - rows["success"]]
    ax.barh(y, rows["success"], xerr=err, color=colors, capsize=2)
    ax.axvline(chance, color="k", ls="--", lw=0.8, label=f"chance ({chance:.0%})")
    ax.set_yticks(y, [f"{s} (n={n})" for s, n in zip(rows["steered by"], rows["pairs"])])
    ax.set(xlim=(0, 1), xlabel="transfer success rate", title=title)
