"""Outputs of the notebooks: one function saves every figure, one every result table, plus the few plot
types the notebooks share."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from .config import REPO

if TYPE_CHECKING:
    import pandas as pd

    from .config import Config

FIGURES = REPO / "figures"
RESULTS = REPO / "results"


def resolved_profile(cfg: "Config") -> Path:
    """Write the run's resolved profile (after overrides) as ``figures/<label>/profile.yaml``; returns the folder.

    Raises ConfigError when the folder holds the figures of *another* profile file with other values (a
    copy of ``params/smoke.yaml`` saved as ``smoke.yaml`` elsewhere and edited): the run would overwrite
    them while the folder claimed the original's parameters."""
    from .config import ConfigError

    out = FIGURES / cfg.label
    stored = _stored_provenance(out / "profile.yaml")
    if stored and stored[0] != cfg.source and stored[1] != cfg.params_hash:
        raise ConfigError(f"{cfg.source}: figures/{cfg.label}/ holds the figures of {stored[0]} (params_hash "
                          f"{stored[1]}), not of this profile (params_hash {cfg.params_hash}). Fix: save the profile "
                          f"under another file name (the name is its label), or delete figures/{cfg.label}/.")
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


def save_figure(fig: Any, cfg: "Config", notebook: str, name: str) -> None:
    """Save ``fig`` as ``figures/<label>/<notebook>__<name>.png`` and ``.pdf`` (label: the profile, or
    ``profile+hash`` when overrides were applied; the resolved profile is written beside them).

    ``notebook`` is the notebook's stem (e.g. ``"04_svcca_rsa"``); the manifest written by
    ``make figures`` maps every file back to it. PDFs carry no creation date, so re-runs with the
    same numbers give the same bytes.
    """
    png = resolved_profile(cfg) / f"{notebook}__{name}.png"
    fig.savefig(png, dpi=120, bbox_inches="tight", metadata={"Software": None})
    fig.savefig(png.with_suffix(".pdf"), bbox_inches="tight", metadata={"CreationDate": None, "Creator": None, "Producer": None})


def save_table(table: "pd.DataFrame", cfg: "Config", notebook: str, name: str) -> Path:
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


def heatmap(ax: Any, values: np.ndarray, rows: Sequence[Any], cols: Sequence[Any], title: str, fmt: str = "{:.2f}",
            vmin: float | None = None, vmax: float | None = None, cmap: str = "viridis") -> Any:
    """Annotated heatmap of ``values`` (len(rows), len(cols)); NaN cells are left blank, and a panel without
    a finite cell says so (a metric not scorable anywhere, e.g. SVCCA with k > n/2 in every cell)."""
    im = ax.imshow(values, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto", origin="lower")
    if not np.isfinite(values).any():
        ax.text(0.5, 0.5, "not scorable in any cell", transform=ax.transAxes, ha="center", va="center", fontsize=9,
                color="0.4")
    ax.set_xticks(range(len(cols)), [str(c) for c in cols])
    ax.set_yticks(range(len(rows)), [str(r) for r in rows])
    ax.set_title(title, fontsize=10)
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            v = values[i, j]
            if np.isfinite(v):
                r, g, b, _ = im.cmap(im.norm(v))
                dark = 0.299 * r + 0.587 * g + 0.114 * b < 0.5
                ax.text(j, i, fmt.format(v), ha="center", va="center", fontsize=7, color="white" if dark else "black")
    ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    return im


def null_histogram(ax: Any, null: np.ndarray, observed: float, title: str, p: float) -> None:
    """Histogram of a null distribution with the observed score as a vertical line."""
    ax.hist(null, bins=40, color="0.7", label=f"random re-pairings (n={len(null)})")
    ax.axvline(observed, color="C3", lw=2, label=f"paired: {observed:.3f} ({format_p(p)})")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)


SCALE_ROLES = (("null", "re-paired (null)", "0.55", "_"), ("floor", "random-model floor", "C3", "v"),
               ("cross", "cross-model", "C0", "o"), ("ceiling", "seed ceiling", "C2", "^"))


def scale_dots(ax: Any, table: "pd.DataFrame", metric: str, title: str) -> None:
    """One metric's null, floor, cross and ceiling (mean and 2.5–97.5 % interval over the draws) for
    each cell of a :func:`featlib.study.calibration_table` table, with the calibrated score written above;
    a not scorable metric is left blank with its reason."""
    rows = table[table.metric == metric].reset_index(drop=True)
    if rows.empty:
        ax.text(0.5, 0.5, "no ceiling and floor computed\n(comparisons.run, comparisons.layers)", ha="center",
                va="center", fontsize=8, transform=ax.transAxes)
    for i, r in rows.iterrows():
        if not np.isfinite(r["cross"]):
            ax.text(i, 0.5, "not scorable:\n" + str(r["verdict"]).split(": ", 1)[-1], ha="center", va="center",
                    fontsize=7, wrap=True, transform=ax.get_xaxis_transform())
            continue
        for j, (role, label, color, marker) in enumerate(SCALE_ROLES):
            x = i + (j - 1.5) * 0.15
            ax.errorbar(x, r[role], yerr=[[r[role] - r[f"{role} lo"]], [r[f"{role} hi"] - r[role]]], fmt=marker,
                        color=color, capsize=3, label=label if i == 0 else None)
        ax.annotate(f"cal. {r['calibrated']:.2f}\n[{r['calibrated lo']:.2f}, {r['calibrated hi']:.2f}]",
                    (i, r["ceiling hi"]), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=7)
    ax.set_xticks(range(len(rows)), [f"{c}\n(m={m})" for c, m in zip(rows.comparison, rows.m)], fontsize=7)
    ax.set_xlim(-0.6, len(rows) - 0.4)
    ax.margins(y=0.25)
    ax.set_title(title, fontsize=10)
    if len(rows) and np.isfinite(rows["cross"]).any():
        ax.legend(fontsize=7, loc="lower right")


def calibrated_heatmap(ax: Any, grid: "pd.DataFrame", metric: str, rows: Sequence[Any], cols: Sequence[Any],
                       layers_a: Sequence[int], layers_b: Sequence[int], title: str) -> None:
    """Calibrated score of ``metric`` per layer pair (rows: ``layers_a``, columns: ``layers_b``) from a
    :func:`featlib.study.calibrated_grid` table; cells not above the random-model floor are hatched and
    marked "n.s.", cells without a ceiling and floor (or not scorable) are blank."""
    from matplotlib.patches import Rectangle

    values = np.full((len(layers_a), len(layers_b)), np.nan)
    below = np.zeros_like(values, dtype=bool)
    for _, r in grid[grid.metric == metric].iterrows():
        i, j = list(layers_a).index(r["layer A"]), list(layers_b).index(r["layer B"])
        values[i, j] = r["calibrated"]
        below[i, j] = np.isfinite(r["calibrated"]) and r["verdict"] != "above the floor"
    heatmap(ax, values, rows, cols, title, vmin=0, vmax=1, cmap="viridis")
    ax.tick_params(axis="x", labelrotation=45)
    for i, j in zip(*np.nonzero(below)):
        ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="///", edgecolor="0.3", lw=0))
        ax.text(j, i - 0.3, "n.s.", ha="center", va="center", fontsize=6, color="0.2")


def group_scale(ax: Any, groups: "pd.DataFrame", metric: str, title: str) -> None:
    """Per concept group (scorable in the cross comparison): the cross-model ``metric`` (bar) beside each
    ceiling (``seed``, triangles up) and floor (``random_init``, triangles down) of the same group, from a
    :func:`featlib.study.subspace_scores` table of several comparisons."""
    cross = groups[(groups.kind == "cross") & groups.scorable].reset_index(drop=True)
    x = np.arange(len(cross))
    ax.bar(x, cross[metric], color="C0", label="cross-model")
    for kind, color, marker, label in (("seed", "C2", "^", "seed ceiling"), ("random_init", "C3", "v", "random-model floor")):
        ref = groups[groups.kind == kind]
        for i, g in enumerate(cross.group):
            vals = ref[ref.group == g][metric].to_numpy(dtype=float)
            ax.scatter(np.full(len(vals), i), vals, color=color, marker=marker, zorder=3, label=label if i == 0 else None)
    ax.set_xticks(x, [f"{g}\n(n={n})" for g, n in zip(cross.group, cross.pairs)], fontsize=8)
    ax.set_title(title, fontsize=10)
    if len(cross):
        ax.legend(fontsize=7)


def success_bars(ax: Any, table: "pd.DataFrame", chance: float, title: str) -> None:
    """Transfer success rate with its 95 % interval for every method and control of a
    :func:`featlib.study.success_table` slice (one layer pair and direction), methods in blue, controls in
    grey, the chance rate (1 − ``transfer.success_quantile``) as a dashed line."""
    rows = table.reset_index(drop=True)
    y = np.arange(len(rows))[::-1]
    colors = ["C0" if k == "method" else "0.6" for k in rows["kind"]]
    err = [rows["success"] - rows["95% CI low"], rows["95% CI high"] - rows["success"]]
    ax.barh(y, rows["success"], xerr=err, color=colors, capsize=3)
    ax.axvline(chance, color="k", ls="--", lw=0.8, label=f"chance ({chance:.0%})")
    ax.set_yticks(y, [f"{s} (n={n})" for s, n in zip(rows["steered by"], rows["pairs"])], fontsize=7)
    ax.set(xlim=(0, 1), xlabel="transfer success rate")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
