"""Outputs of the notebooks: one function saves every figure, one every result table, plus the few plot
types the notebooks share."""

from __future__ import annotations

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
    """Write the run's resolved profile (after overrides) as ``figures/<label>/profile.yaml``; returns the folder."""
    out = FIGURES / cfg.label
    out.mkdir(parents=True, exist_ok=True)
    text = cfg.resolved_yaml()
    if not (out / "profile.yaml").exists() or (out / "profile.yaml").read_text() != text:
        (out / "profile.yaml").write_text(text)
    return out


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
