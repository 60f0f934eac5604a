"""Every figure function of featlib.figures rendered on small synthetic data, and held to what a reviewer
checks: a paper width (3.5 or 7 in), 300-dpi PNG plus PDF with the same bytes on a re-run, the models'
names on it, legends outside every panel, readable text, labelled axes, one colour scale where panels
are compared, one colour per concept group (also on the atlas page)."""

from __future__ import annotations

import inspect
from types import SimpleNamespace

import matplotlib
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from featlib import atlas, figures, plots
from featlib.similarity import METRICS

pytestmark = pytest.mark.slow  # every figure at 300 dpi, PNG and PDF: 1-3 s each, about 30 s in all

matplotlib.use("Agg")

NAMES = {"A": "SmolLM2-135M-Instruct", "B": "Gemma-3-270M"}
GROUPS = ["Time", "Calendar", "Emotions", "Countries"]
COLORS = plots.group_colors(GROUPS)
RNG = np.random.default_rng(0)


@pytest.fixture(autouse=True)
def _reseed() -> None:
    """Every case draws its synthetic data from a freshly seeded generator."""
    global RNG
    RNG = np.random.default_rng(0)
ROWS, COLS = ["0 (0.33)", "1 (0.67)", "2 (1.00)"], ["0 (0.17)", "1 (0.33)", "2 (0.50)", "3 (0.67)"]


class _Pairs:
    """What the figures read of :class:`featlib.matching.Matches`: ``r`` and the number of pairs."""

    def __init__(self, r: np.ndarray) -> None:
        self.r = r

    def __len__(self) -> int:
        return len(self.r)


def _matches() -> list[SimpleNamespace]:
    out = []
    for name in ("cross A1–B2", "seed A1–A1 (seed 1)", "random_init A1–A1 (random init)"):
        r = RNG.uniform(-0.1, 1, 200)
        out.append(SimpleNamespace(comparison=SimpleNamespace(name=name), many_to_one=_Pairs(r), pairs=_Pairs(r[r > 0.3][:80])))
    return out


def _geometry() -> SimpleNamespace:
    scores = {m: SimpleNamespace(scorable=True, score=0.4, p=1 / 1001, reason="") for m in METRICS}
    scores["svcca"] = SimpleNamespace(scorable=False, score=np.nan, p=np.nan,
                                      reason="SVCCA keeps k = 107 components of 171 pairs: k > n/2, chance level saturates")
    nulls = {m: RNG.normal(0.1, 0.02, 1000) for m in METRICS if scores[m].scorable}
    return SimpleNamespace(comparison=SimpleNamespace(name="cross A1–B2"), n=171, n_shuffles=1000, scores=scores,
                           nulls=lambda: nulls)


def _calibration() -> pd.DataFrame:
    rows = []
    for metric in METRICS:
        r = {"comparison": "cross A1–B2", "metric": metric, "m": 40}
        for role, v in (("null", 0.0), ("floor", 0.1), ("cross", 0.3), ("ceiling", 0.6), ("calibrated", 0.4)):
            r |= {role: v, f"{role} lo": v - 0.05, f"{role} hi": v + 0.05}
        r["verdict"] = "above the floor"
        if metric == "svcca":
            r |= {k: np.nan for k in r if k not in ("comparison", "metric", "m")}
            r["verdict"] = "not scorable: SVCCA is degenerate at m = 40 pairs (cross, ceiling, floor, null)"
        rows.append(r)
    return pd.DataFrame(rows)


def _grid() -> pd.DataFrame:
    rows = []
    for la in range(3):
        for lb in range(4):
            r = {"comparison": "cross A–B", "layer A": la, "layer B": lb, "pairs": 50 + la + lb}
            for m in METRICS:
                r |= {m: np.nan if m == "svcca" else RNG.uniform(0, 0.5), f"{m} null": RNG.uniform(0, 0.1),
                      f"{m} p": np.nan if m == "svcca" else (0.2 if la == lb else 0.001)}
            rows.append(r)
    return pd.DataFrame(rows)


def _calibrated_grid() -> pd.DataFrame:
    rows = [{"layer A": la, "layer B": lb, "metric": m, "calibrated": np.nan if m == "svcca" else 0.5 * la,
             "verdict": "above the floor" if la else "not above the floor"} for la, lb in ((0, 0), (1, 1), (2, 3)) for m in METRICS]
    return pd.DataFrame(rows)


def _groups() -> pd.DataFrame:
    rows = []
    for kind in ("cross", "seed", "random_init"):
        for g in GROUPS:
            r = {"kind": kind, "group": g, "pairs": 6, "scorable": g != "Countries"}
            for m in ("rsa", "svcca"):
                r |= {m: RNG.uniform(0, 0.6), f"{m} null (re-pair)": 0.0, f"{m} null sd (re-pair)": 0.1}
            rows.append(r)
    return pd.DataFrame(rows)


def _usae() -> SimpleNamespace:
    k = 300
    entropy = RNG.uniform(0, 1, k)
    cofire = RNG.integers(0, 1000, k).astype(float)
    return SimpleNamespace(firing_entropy=entropy, fired=np.ones(k, bool), cofire=cofire, energy=cofire / 1000 + 1e-3,
                           counterpart_cos={m: RNG.uniform(0, 1, k) for m in NAMES},
                           random_cos={m: RNG.uniform(0, 0.3, k) for m in NAMES})


def _atlas() -> atlas.Atlas:
    n = 60
    groups = [GROUPS[i % 5] if i % 5 < 4 else "" for i in range(n)]
    return atlas.Atlas(ids=("A", "B"), layers=(1, 2), pool_a=np.arange(n), pool_b=np.arange(n), xy_a=RNG.normal(size=(n, 2)),
                       xy_b=RNG.normal(size=(n, 2)), pairs=np.stack([np.arange(10), np.arange(10)], 1), r=np.full(10, 0.5),
                       hover_a=[""] * n, hover_b=[""] * n, group_a=groups, group_b=groups[::-1], matching="best")


def _success() -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    steered = ["partner", "rotation", "random direction", "re-paired map"]
    rows = [{"layers": "A1–B2", "direction": d, "steered by": s, "kind": "method" if i < 2 else "control", "pairs": 40,
             "success": 0.5 if i < 2 else 0.05, "95% CI low": 0.4 if i < 2 else 0.0, "95% CI high": 0.6 if i < 2 else 0.1}
            for d in ("A→B", "B→A") for i, s in enumerate(steered)]
    return pd.DataFrame(rows), [("A1–B2", "A→B"), ("A1–B2", "B→A")]


def _by_r() -> pd.DataFrame:
    return pd.DataFrame([{"direction": d, "method": m, "r bin": b, "success": RNG.uniform()} for d in ("A→B", "B→A")
                         for m in ("partner", "rotation") for b in ("0.10–0.45", "0.45–0.70", "0.70–0.97")])


def _norms() -> pd.DataFrame:
    return pd.DataFrame([{"model": m, "layer": L, "depth": (L + 1) / 3, "mean norm": s * (1 + L)} for m, s in (("A", 100), ("B", 20000))
                         for L in range(3)])


def _saes() -> pd.DataFrame:
    return pd.DataFrame([{"model": m, "layer": L, "sae": "profile", "explained_variance": 0.9, "ce_recovered": 0.95,
                          "dead_fraction": 0.2} for m in NAMES for L in range(3)])


def _interaction():
    from featlib.phrases import interaction_agreement

    dec_a, dec_b = RNG.standard_normal((60, 8)), RNG.standard_normal((60, 10))
    groups = [np.arange(i * 5, i * 5 + 5) for i in range(len(GROUPS))]
    return interaction_agreement(dec_a, dec_b, GROUPS, groups, groups, np.arange(60), np.arange(60), 20, seed=0)


CASES = {
    "residual_norms": lambda: figures.residual_norms(_norms(), NAMES),
    "sae_quality": lambda: figures.sae_quality(_saes(), NAMES, lambda m, L: (L + 1) / 3, 0.5),
    "best_correlations": lambda: figures.best_correlations(_matches(), 0.1, NAMES),
    "null_distributions": lambda: figures.null_distributions(_geometry(), NAMES),
    "calibration": lambda: figures.calibration(_calibration(), METRICS, NAMES),
    "layer_heatmaps": lambda: figures.layer_heatmaps(_grid(), ("svcca", "rsa"), ROWS, COLS, "A", "B", NAMES),
    "other_metrics": lambda: figures.other_metrics(_grid(), ["cka", "mutual_knn", "procrustes"], ROWS, COLS, "A", "B", NAMES),
    "calibrated_grid": lambda: figures.calibrated_grid(_calibrated_grid(), METRICS, ROWS, COLS, ([0, 1, 2], [0, 1, 2, 3]), "A", "B", NAMES),
    "group_scores": lambda: figures.group_scores(_groups(), ("rsa", "svcca"), COLORS, NAMES),
    "group_interactions": lambda: figures.group_interactions(_interaction(), ("A1", "B2"), NAMES),
    "usae_training": lambda: figures.usae_training(list(np.geomspace(1, 0.01, 400))),
    "cross_r2": lambda: figures.cross_r2(np.array([[0.9, 0.3], [0.2, 0.8]]), ["A", "B"], NAMES),
    "firing": lambda: figures.firing(_usae(), {"r(log co-fires, log energy)": 0.9, "r, top quarter by co-fires": 0.5}),
    "counterparts": lambda: figures.counterparts(_usae(), {"A": 1, "B": 2}, NAMES),
    "atlas_maps": lambda: figures.atlas_maps(_atlas(), COLORS, NAMES),
    "transfer_success": lambda: figures.transfer_success(*_success(), 0.05, NAMES),
    "success_by_r": lambda: figures.success_by_r(_by_r(), 0.05, "A1–B2", NAMES),
}


def _labelled(axis) -> bool:
    """An axis label, or tick labels that are words (model names, methods), not bare numbers."""
    words = any(t.get_text() and not t.get_text().replace(".", "").replace("−", "").strip().isdigit() for t in axis.get_ticklabels())
    return bool(axis.get_label_text()) or words


def _texts(fig) -> list:
    return [t for t in fig.findobj(matplotlib.text.Text) if t.get_visible() and t.get_text().strip()]


def test_every_figure_function_has_a_case():
    assert set(CASES) == set(figures.__all__)


@pytest.mark.parametrize("name", sorted(CASES))
def test_figure_meets_the_reviewers_list(name, tmp_path):
    import matplotlib.pyplot as plt

    state = RNG.bit_generator.state
    fig = CASES[name]()
    png = tmp_path / f"{name}.png"
    plots.write_figure(fig, png)  # lays the figure out (once, then frozen)
    assert png.with_suffix(".pdf").read_bytes().startswith(b"%PDF")
    RNG.bit_generator.state = state  # the same data drawn again: the same bytes
    again = CASES[name]()
    plots.write_figure(again, tmp_path / "again.png")
    assert (tmp_path / "again.png").read_bytes() == png.read_bytes(), f"{name}: the same figure gave other bytes"
    width = fig.get_size_inches()[0]
    assert width in (plots.ONE_COLUMN, plots.TWO_COLUMN), f"{name}: {width} in wide"
    with Image.open(png) as im:
        assert im.size[0] == round(width * plots.DPI), f"{name}: PNG not at {plots.DPI} dpi"

    renderer = fig.canvas.get_renderer()
    texts = _texts(fig)
    assert min(t.get_fontsize() for t in texts) >= 5.5, f"{name}: text below 5.5 pt"
    if "names" in inspect.signature(getattr(figures, name)).parameters:
        joined = " ".join(t.get_text() for t in texts)
        assert all(n in joined for n in NAMES.values()), f"{name}: the models' names are not on the figure"

    panels = [ax for ax in fig.axes if ax.get_visible() and ax.axison and ax.get_label() != "<colorbar>"]
    for ax in panels:  # a panel sharing its x axis with the one below it is labelled there
        shared = [ax] + [o for o in panels if o is not ax and ax.get_shared_x_axes().joined(ax, o)]
        assert any(_labelled(o.xaxis) for o in shared), f"{name}: a panel without an x label"
    assert any(_labelled(ax.yaxis) for ax in panels), f"{name}: no y label"

    legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend()]
    for leg in legends:
        box = leg.get_window_extent(renderer)
        for ax in fig.axes:
            if ax.get_visible():
                assert not box.overlaps(ax.get_window_extent(renderer)), f"{name}: a legend over a panel"
    plt.close(fig)
    plt.close(again)


def _clims(fig) -> set:
    return {im.get_clim() for ax in fig.axes for im in ax.images}


def test_compared_panels_share_one_colour_scale_and_one_colour_bar():
    import matplotlib.pyplot as plt

    for fig in (CASES["other_metrics"](), CASES["calibrated_grid"]()):
        assert len(_clims(fig)) == 1
        assert sum(ax.get_label() == "<colorbar>" for ax in fig.axes) == 1
        plt.close(fig)
    fig = CASES["layer_heatmaps"]()
    excess = [im.get_clim() for ax in fig.axes for im in ax.images if "null mean" in ax.get_title()]
    assert len(excess) == 1 or len(set(excess)) == 1
    lo, hi = excess[0]
    assert lo == -hi, "the excess over the null is on a scale centred on zero"
    plt.close(fig)


def test_not_significant_cells_are_hatched():
    import matplotlib.pyplot as plt

    fig = CASES["layer_heatmaps"]()
    rsa = next(ax for ax in fig.axes if ax.get_title() == "RSA (paired)")
    hatched = [p for p in rsa.patches if p.get_hatch()]
    grid = _grid()
    assert len(hatched) == int((grid["rsa p"] >= 0.05).sum()) == 3  # la == lb
    plt.close(fig)


def test_a_concept_group_has_one_colour_in_every_figure_and_on_the_atlas_page():
    import matplotlib.pyplot as plt

    sub = plots.group_colors(GROUPS[:2])
    assert all(sub[g] == COLORS[g] for g in sub) and len(set(COLORS.values())) == len(COLORS)
    assert "#949494" not in COLORS.values(), "grey is for features without a group and for nulls"
    fig = CASES["group_scores"]()
    bars = [matplotlib.colors.to_hex(p.get_facecolor()) for p in fig.axes[0].patches]
    scorable = [g for g in GROUPS if g != "Countries"]
    assert bars[:len(scorable)] == [COLORS[g] for g in scorable]
    plt.close(fig)
    fig = CASES["atlas_maps"]()
    drawn = {c.get_label(): matplotlib.colors.to_hex(c.get_facecolor()[0]) for c in fig.axes[0].collections if c.get_label() in COLORS}
    assert drawn and all(drawn[g] == COLORS[g] for g in drawn)
    plt.close(fig)
    assert atlas.page_data(_atlas(), COLORS)["colors"] == COLORS
