"""Figures: one function saves every figure, plus the few plot types the notebooks share."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .config import REPO

FIGURES = REPO / "figures"


def save_figure(fig: Any, profile: str, notebook: str, name: str) -> None:
    """Save ``fig`` as ``figures/<profile>/<notebook>__<name>.png`` and ``.pdf``.

    ``notebook`` is the notebook's stem (e.g. ``"04_svcca_rsa"``); the manifest written by
    ``make figures`` maps every file back to it. PDFs carry no creation date, so re-runs with the
    same numbers give the same bytes.
    """
    out = FIGURES / profile
    out.mkdir(parents=True, exist_ok=True)
    png = out / f"{notebook}__{name}.png"
    fig.savefig(png, dpi=120, bbox_inches="tight", metadata={"Software": None})
    fig.savefig(png.with_suffix(".pdf"), bbox_inches="tight", metadata={"CreationDate": None, "Creator": None, "Producer": None})


def heatmap(ax: Any, values: np.ndarray, rows: Sequence[Any], cols: Sequence[Any], title: str, fmt: str = "{:.2f}",
            vmin: float | None = None, vmax: float | None = None, cmap: str = "viridis") -> Any:
    """Annotated heatmap of ``values`` (len(rows), len(cols)); NaN cells are left blank."""
    im = ax.imshow(values, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto", origin="lower")
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
    ax.axvline(observed, color="C3", lw=2, label=f"paired: {observed:.3f} (p = {p:.3g})")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
