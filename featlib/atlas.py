"""Feature atlas: two linked UMAP panels of matched SAE features, one per model.

For one layer pair, each model's *pool* of features (the matched ones plus its most active ones) is
laid out by UMAP (umap-learn, cosine metric on the decoder rows, fixed seed; the published tool's
n_neighbors 15, min_dist 0.05). Pairs come from the best-partner matching of notebook 03, or from a
one-to-one Hungarian assignment on the pool's correlations (:func:`hungarian_pairs`). The page
(:func:`write_html`) is one self-contained HTML file (plotly.js inlined; opens from disk, offline):
a box or lasso selection in either panel highlights the partners in the other, hovering shows the
feature, its partner's correlation and its top tokens in context, points are coloured by concept
group or by correlation, and a slider hides pairs below a correlation.

Beside the picture, a number: *neighbourhood preservation* (:func:`neighbourhood_preservation`),
the mean share of each paired feature's k nearest paired neighbours (cosine of decoder rows, in
its own model) whose partners are among its partner's k nearest neighbours, against random
re-pairings (notebook 04's mutual k-NN alignment, for the atlas's pairs).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .plots import format_p, group_colors


@dataclass
class Atlas:
    """What the page shows. Point i of panel A is feature ``pool_a[i]``; ``pairs`` (n, 2) holds row
    indices into the pools, ``r`` (n,) their correlations."""

    ids: tuple[str, str]
    layers: tuple[int, int]
    pool_a: np.ndarray
    pool_b: np.ndarray
    xy_a: np.ndarray  # (len(pool_a), 2)
    xy_b: np.ndarray
    pairs: np.ndarray  # (n_pairs, 2) int
    r: np.ndarray  # (n_pairs,)
    hover_a: list[str]
    hover_b: list[str]
    group_a: list[str]  # concept group of each point ("" = none)
    group_b: list[str]
    matching: str
    stats: dict[str, Any] = field(default_factory=dict)


def numba_workqueue() -> None:
    """Make numba run its parallel code (umap-learn's, pynndescent's) on its own work-queue threads rather
    than an OpenMP pool, unless ``NUMBA_THREADING_LAYER`` says otherwise. numba's OpenMP workers keep
    spinning beside torch's after a call: here every later torch or LAPACK operation of the process ran
    up to 80x slower (a 20-shuffle Procrustes null: 1.5 s before a numba-parallel call, 124 s after)."""
    import os

    if "NUMBA_THREADING_LAYER" not in os.environ:
        import numba

        numba.config.THREADING_LAYER = "workqueue"  # type: ignore[attr-defined]  # numba sets its options via globals()


def umap_xy(W: np.ndarray, seed: int, n_neighbors: int = 15, min_dist: float = 0.05) -> np.ndarray:
    """(n, 2) UMAP layout of (n, d) decoder rows (cosine metric, fixed seed: the same layout every run)."""
    numba_workqueue()
    import umap

    n = len(W)
    if n < 4:
        raise ValueError(
            f"the atlas needs at least 4 features per panel, got {n}. Fix: lower matching.min_r or raise atlas.n_active."
        )
    reducer = umap.UMAP(
        n_neighbors=min(n_neighbors, n - 1),
        min_dist=min_dist,
        metric="cosine",
        random_state=seed,
        init="random" if n < 10 else "spectral",
        n_jobs=1,
    )
    return np.asarray(reducer.fit_transform(np.asarray(W, dtype=np.float32)), dtype=np.float64)


def hungarian_pairs(corr: np.ndarray, min_r: float) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one pairs of a (n_a, n_b) correlation matrix maximising the summed correlation
    (scipy's ``linear_sum_assignment``), keeping those with r > ``min_r``: ((n, 2) rows, (n,) r)."""
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(np.nan_to_num(corr, nan=-1.0), maximize=True)
    r = corr[rows, cols]
    keep = r > min_r
    return np.stack([rows[keep], cols[keep]], axis=1), r[keep]


def neighbourhood_preservation(
    X: np.ndarray, Y: np.ndarray, k: int = 10, n_random: int = 200, seed: int = 0
) -> dict[str, Any]:
    """Row i of X (n, d_a) is paired with row i of Y (n, d_b). Score: mean over i of
    |{partners of N_X(i)} ∩ N_Y(i)| / k, with N the k nearest other rows by cosine — the mutual k-NN
    alignment of :mod:`featlib.similarity` (notebook 04) on the atlas's pairs — against ``n_random``
    random re-pairings; p = (1 + #null >= score) / (1 + n_random)."""
    from . import similarity

    n = len(X)
    if n <= k + 1:
        raise ValueError(
            f"neighbourhood preservation needs more than k + 1 = {k + 1} pairs, got {n}. Fix: lower atlas.knn_k."
        )
    observed = similarity.mutual_knn(X, Y, k)
    null = similarity.mutual_knn_null(X, Y, n_random, seed, k)
    return {
        "score": observed,
        "null_mean": float(null.mean()),
        "null_std": float(null.std()),
        "p": similarity.p_value(observed, null),
        "k": k,
        "n": n,
        "chance": k / (n - 1),
    }


def _panel(xy: np.ndarray, hover: list[str], group: list[str]) -> dict[str, Any]:
    return {"x": np.round(xy[:, 0], 4).tolist(), "y": np.round(xy[:, 1], 4).tolist(), "hover": hover, "group": group}


def page_data(atlas: Atlas, colors: dict[str, str] | None = None) -> dict[str, Any]:
    """The JSON the page is drawn from: per panel the coordinates, hover texts, groups, every point's
    partners as [index in the other panel, r] and its best pair correlation (null if unpaired); ``colors``
    (concept group -> colour, in the profile's order: :func:`featlib.plots.group_colors`; default: the
    groups present, sorted) colours the groups as the figures do."""
    n_a, n_b = len(atlas.pool_a), len(atlas.pool_b)
    partners: dict[str, list[list[list[float]]]] = {"A": [[] for _ in range(n_a)], "B": [[] for _ in range(n_b)]}
    for (i, j), r in zip(atlas.pairs.tolist(), atlas.r.tolist()):
        partners["A"][i].append([j, round(r, 4)])
        partners["B"][j].append([i, round(r, 4)])
    best = {side: [max((r for _, r in p), default=None) for p in partners[side]] for side in partners}
    return {
        "ids": list(atlas.ids),
        "layers": list(atlas.layers),
        "matching": atlas.matching,
        "A": _panel(atlas.xy_a, atlas.hover_a, atlas.group_a) | {"partners": partners["A"], "r": best["A"]},
        "B": _panel(atlas.xy_b, atlas.hover_b, atlas.group_b) | {"partners": partners["B"], "r": best["B"]},
        "stats": atlas.stats,
        "colors": colors
        if colors is not None
        else group_colors(sorted({g for g in atlas.group_a + atlas.group_b if g})),
    }


def write_html(atlas: Atlas, path: Path, colors: dict[str, str] | None = None) -> Path:
    """Write the self-contained page (plotly.js inlined; works opened from disk) atomically; ``colors``:
    see :func:`page_data`."""
    import plotly

    js = (Path(plotly.__file__).parent / "package_data" / "plotly.min.js").read_text(encoding="utf-8")
    data = json.dumps(page_data(atlas, colors), allow_nan=False).replace("</", "<\\/")
    a, b = atlas.ids
    la, lb = atlas.layers
    stats = atlas.stats.get("neighbourhood", {})
    title = f"Feature atlas: {a}{la} vs {b}{lb} ({atlas.matching} matching, {len(atlas.pairs)} pairs)"
    subtitle = (
        (
            f"neighbourhood preservation (k = {stats['k']}) {stats['score']:.3f} vs random pairs "
            f"{stats['null_mean']:.3f} ± {stats['null_std']:.3f}, {format_p(stats['p'])}"
        )
        if stats
        else ""
    )
    html = (
        PAGE.replace("__TITLE__", title)
        .replace("__SUBTITLE__", subtitle)
        .replace("__PLOTLY__", js)
        .replace("__DATA__", data)
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(html, encoding="utf-8")
    tmp.replace(path)
    return path


def select_box(page: Any, side: str, x0: float, y0: float, x1: float, y1: float) -> None:
    """Drag a selection box over data rectangle [x0, x1] x [y0, y1] of panel ``side`` ("A" or "B") of an
    open atlas page (a Playwright page), clipped to the visible axes; waits for the linked highlight."""
    corners = page.evaluate(
        """([side, pts]) => { const gd = document.getElementById('panel-' + side), fl = gd._fullLayout;
             const box = gd.getBoundingClientRect();
             const clip = (v, ax) => { const [lo, hi] = ax.range, pad = (hi - lo) * 0.005;
                                       return Math.min(Math.max(v, lo + pad), hi - pad); };
             return pts.map(([x, y]) => [box.left + fl._size.l + fl.xaxis.l2p(clip(x, fl.xaxis)),
                                         box.top + fl._size.t + fl.yaxis.l2p(clip(y, fl.yaxis))]); }""",
        [side, [[x0, y0], [x1, y1]]],
    )
    (ax, ay), (bx, by) = corners
    page.mouse.move(ax, ay)
    page.mouse.down()
    page.mouse.move(bx, by, steps=12)
    page.mouse.up()
    page.wait_for_function("document.getElementById('selection-info').textContent.includes('selected in')")


def screenshot(html: Path, png: Path, chromium: str) -> Path:
    """Open the page in headless Chromium, select the densest third of panel A, save a screenshot."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 820})
        page.goto(html.resolve().as_uri())
        page.wait_for_function("window.atlasReady === true")
        x = np.array(page.evaluate("DATA.A.x"))
        y = np.array(page.evaluate("DATA.A.y"))
        lo, hi = np.quantile(x, [0.1, 0.45])
        select_box(page, "A", lo, y.min() - 1, hi, y.max() + 1)
        png.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(png))
        browser.close()
    return png


def main(argv: list[str] | None = None) -> None:
    """``python -m featlib.atlas --profile NAME [--set KEY=VALUE ...]``: screenshot each page of
    ``build/atlas/<label>/`` into ``figures/<label>/08_atlas__page[_N].png`` (needs Debian's chromium;
    ``make atlas`` calls it)."""
    import argparse
    import shutil

    from .config import REPO, build, parse_sets

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--profile", default="tiny")
    ap.add_argument("--set", action="append", metavar="KEY=VALUE", dest="sets")
    args = ap.parse_args(argv)
    label = build(args.profile, parse_sets(args.sets)).label
    chromium = shutil.which("chromium")
    if chromium is None:
        print(
            "no screenshot: Debian's chromium is not installed (apt-get install chromium); the pages are in build/atlas/"
        )
        return
    pages = sorted((REPO / "build" / "atlas" / label).glob("*.html"))
    for k, html in enumerate(pages):
        png = REPO / "figures" / label / f"08_atlas__page{'' if k == 0 else f'_{k}'}.png"
        print(f"{html.relative_to(REPO)} -> {screenshot(html, png, chromium).relative_to(REPO)}")


# a plain string, not a raw one: a backslash at the end of a line joins it to the next (the long lines are split
# so; the page has no backslash of its own)
PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>__TITLE__</title>
<style>
 body { font-family: sans-serif; margin: 12px; }
 #controls { margin: 6px 0 10px; font-size: 14px; }
 #controls > * { margin-right: 18px; }
 .panels { display: flex; gap: 8px; }
 .panel { width: 50%; height: 560px; }
 #status { font-size: 13px; color: #444; }
</style>
<script>__PLOTLY__</script>
</head><body>
<h3 style="margin:4px 0">__TITLE__</h3>
<div id="status">__SUBTITLE__</div>
<div id="controls">
 <label>colour by <select id="colour"><option value="group">concept group</option>\
<option value="r">correlation</option></select></label>
 <label>pairs with r &ge; <input id="minr" type="range" min="0" max="1" step="0.01" value="0">\
 <span id="minr-value">0.00</span></label>
 <button id="clear">clear selection</button>
 <span id="selection-info">Select points (box or lasso) in either panel to highlight their partners.</span>
</div>
<div id="legend" style="font-size:13px"></div>
<div class="panels"><div id="panel-A" class="panel"></div><div id="panel-B" class="panel"></div></div>
<script>
const DATA = __DATA__;
const SIDES = ["A", "B"];
const OTHER = {A: "B", B: "A"};
const present = new Set(DATA.A.group.concat(DATA.B.group).filter(g => g));
const groups = Object.keys(DATA.colors).filter(g => present.has(g));
const state = {minR: 0, colour: "group", highlighted: {A: [], B: []}, source: null, updating: false};
window.atlasState = state;

function visible(side) {  // point indices shown: paired points above the slider, plus unpaired ones at 0
  const r = DATA[side].r;
  return r.map((v, i) => i).filter(i => state.minR <= 0 || (r[i] !== null && r[i] >= state.minR));
}
function colours(side) {
  const d = DATA[side];
  if (state.colour === "r") return d.r.map(v => v === null ? -0.05 : v);
  return d.group.map(g => g ? DATA.colors[g] : "#bbbbbb");
}
function trace(side) {
  const d = DATA[side], idx = visible(side), col = colours(side);
  const marker = {size: 7, color: idx.map(i => col[i]), line: {width: 0}};
  if (state.colour === "r") Object.assign(marker, {colorscale: "Viridis", cmin: -0.05, cmax: 1, showscale: true, \
colorbar: {title: "r", len: 0.5}});
  return {type: "scatter", mode: "markers", x: idx.map(i => d.x[i]), y: idx.map(i => d.y[i]),
          customdata: idx, text: idx.map(i => d.hover[i]), hoverinfo: "text", marker: marker,
          selected: {marker: {opacity: 1}}, unselected: {marker: {opacity: 0.12}}};
}
function layout(side) {
  return {title: {text: DATA.ids[SIDES.indexOf(side)] + " layer " + DATA.layers[SIDES.indexOf(side)], font: {size: 14}},
          dragmode: "select", hovermode: "closest", margin: {l: 30, r: 10, t: 40, b: 30}, showlegend: false,
          xaxis: {showticklabels: false, zeroline: false}, yaxis: {showticklabels: false, zeroline: false}};
}
function quietly(update) {  // programmatic updates must not read as the user clearing a selection
  state.updating = true;
  return Promise.resolve(update()).finally(() => { state.updating = false; });
}
function highlight(side, points) {  // points: indices into DATA[side]
  state.highlighted[side] = points.slice().sort((a, b) => a - b);
  const idx = visible(side), pos = new Map(idx.map((p, k) => [p, k]));
  const sel = state.highlighted[side].filter(p => pos.has(p)).map(p => pos.get(p));
  quietly(() => Plotly.update("panel-" + side, {selectedpoints: [sel]}, {selections: []}));  // drop its own selection box
}
function onSelect(side, ev) {
  if (!ev || !ev.points) return;
  const chosen = ev.points.map(p => p.customdata);
  const partners = new Set();
  chosen.forEach(i => DATA[side].partners[i].forEach(([j, r]) => { if (r >= state.minR) partners.add(j); }));
  state.source = side;
  state.highlighted[side] = chosen.slice().sort((a, b) => a - b);
  highlight(OTHER[side], [...partners]);
  document.getElementById("selection-info").textContent =
    chosen.length + " selected in " + side + ", " + partners.size + " partners highlighted in " + OTHER[side];
}
function draw() {
  SIDES.forEach(side => Plotly.react("panel-" + side, [trace(side)], layout(side), {displaylogo: false, responsive: true}));
}
function clearSelection() {
  state.source = null; state.highlighted = {A: [], B: []};
  SIDES.forEach(side => quietly(() => Plotly.update("panel-" + side, {selectedpoints: [null]}, {selections: []})));
  document.getElementById("selection-info").textContent = "Selection cleared.";
}
document.getElementById("legend").innerHTML = "concept groups: " + groups.map(g =>
  `<span style="color:${DATA.colors[g]}">&#9679; ${g}</span>`).join(" ") + ' <span style="color:#bbbbbb">&#9679; none</span>';
draw();
SIDES.forEach(side => {
  const el = document.getElementById("panel-" + side);
  el.on("plotly_selected", ev => { if (!state.updating) onSelect(side, ev); });
  el.on("plotly_deselect", () => { if (!state.updating) clearSelection(); });
});
document.getElementById("colour").addEventListener("change", e => { state.colour = e.target.value; draw(); clearSelection(); });
document.getElementById("minr").addEventListener("input", e => {
  state.minR = parseFloat(e.target.value);
  document.getElementById("minr-value").textContent = state.minR.toFixed(2);
  draw(); clearSelection();
});
document.getElementById("clear").addEventListener("click", clearSelection);
window.atlasReady = true;
</script>
</body></html>
"""


if __name__ == "__main__":
    main()
