"""The metric registry (featlib.metrics): the only list of metrics, what featlib.similarity runs by name,
and part of the geometry and calibration cache keys. The recipe of docs/layout.md ("Adding a metric"):
a small metric registered here is scored, with its null and p-value, exactly as computed by hand."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from featlib import config, step
from featlib import similarity as sim
from featlib import study as fs
from featlib.metrics import Metric, common, registry
from featlib.study import geometry, scale
from featlib.study.core import Comparison, Side

# ----------------------------------------------------------------------------- the recipe: a new metric


def _centred_unit_rows(A: torch.Tensor) -> torch.Tensor:
    """Rows of the column-centred ``A`` ``(n, d)`` scaled to unit norm."""
    Z = A - A.mean(0)
    return Z / Z.norm(dim=1, keepdim=True)


def _cosine_null(pair: common.Pair, perms: np.ndarray) -> np.ndarray:
    """Mean cosine of row i of X and row p_i of Y (both column-centred), one per row p of ``perms`` ``(N, n)``."""
    Zx, Zy = pair.once("cosine rows", lambda: (_centred_unit_rows(pair.X), _centred_unit_rows(pair.Y)))
    return (Zx[None] * Zy[torch.from_numpy(perms)]).sum(-1).mean(-1).numpy()


COSINE = Metric(
    "centred_cosine",
    "centred cosine",
    3,
    score=lambda pair: float(_cosine_null(pair, common.identity(pair.n))[0]),
    null=lambda pair, n_shuffles: _cosine_null(pair, pair.perms(n_shuffles)),
)


def _by_hand(X: np.ndarray, Y: np.ndarray) -> float:
    """Mean over pairs of the cosine of the centred rows, with numpy."""
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    return float(np.mean([x @ y / (np.linalg.norm(x) * np.linalg.norm(y)) for x, y in zip(Xc, Yc)]))


def _related(n: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)) + 2.0
    return X, X + 0.8 * rng.standard_normal((n, d))


def test_a_registered_metric_is_scored_with_its_null_and_p_value():
    X, Y = _related(30, 6, seed=0)
    N, seed = 40, 3
    alone = sim.compare_with_nulls(X, Y, N, seed, metrics=("cka",))
    with registry.registered(COSINE):
        summary, nulls = sim.compare_with_nulls(X, Y, N, seed, metrics=("cka", "centred_cosine"))
        scored = sim.scores(X, Y, metrics=("centred_cosine",))
        small = sim.compare(X[:2], Y[:2], 5, metrics=("centred_cosine",))
        assert sim.metric_versions(("cka", "centred_cosine")) == {"cka": 1, "centred_cosine": 1}
    observed = _by_hand(X, Y)
    null = np.array([_by_hand(X, Y[p]) for p in sim.permutations(30, N, seed)])  # the re-pairings every null shares
    p = (1 + np.count_nonzero(null >= observed - 1e-9 * max(1.0, abs(observed)))) / (1 + N)
    entry = summary["centred_cosine"]
    assert entry["score"] == pytest.approx(observed, abs=1e-12) and scored["centred_cosine"] == entry["score"]
    np.testing.assert_allclose(nulls["centred_cosine"], null, rtol=0, atol=1e-12)
    assert entry["null_mean"] == pytest.approx(null.mean(), abs=1e-12)
    assert entry["null_std"] == pytest.approx(null.std(), abs=1e-12)
    assert entry["p"] == p == 1 / (1 + N) and observed > 0.5 > null.max()
    assert summary["cka"] == alone[0]["cka"], "the other metrics are unchanged"
    np.testing.assert_array_equal(nulls["cka"], alone[1]["cka"])
    # its min_pairs: fewer pairs are not scorable, with the reason
    assert small["centred_cosine"] == {
        "score": None,
        "null_mean": None,
        "null_std": None,
        "p": None,
        "reason": "centred cosine needs at least 3 pairs, got 2",
    }
    # once unregistered (also when the block raised), the name is unknown again
    with pytest.raises(RuntimeError), registry.registered(COSINE):
        raise RuntimeError
    assert "centred_cosine" not in registry.names() and sim.METRICS == registry.names()
    with pytest.raises(ValueError, match="unknown metric 'centred_cosine'"):
        sim.compare_with_nulls(X, Y, N, seed, metrics=("cka", "centred_cosine"))


# ----------------------------------------------------------------------------- unknown names


@pytest.mark.parametrize(
    "call",
    [
        lambda X, Y: sim.compare_with_nulls(X, Y, 10, metrics=("svcca", "cosine")),
        lambda X, Y: sim.compare(X, Y, 10, metrics="cosine"),
        lambda X, Y: sim.scores(X, Y, metrics=("cosine",)),
        lambda X, Y: sim.not_scorable("cosine", len(X)),
        lambda X, Y: registry.get("cosine"),
        lambda X, Y: registry.unregister("cosine"),
    ],
    ids=["compare_with_nulls", "compare", "scores", "not_scorable", "get", "unregister"],
)
def test_unknown_metric_is_an_error_naming_it_and_the_registered_ones(call):
    """An unregistered name never falls through to another metric's code (it once gave Procrustes scores)."""
    X, Y = _related(20, 5, seed=1)
    with pytest.raises(ValueError) as e:
        call(X, Y)
    message = str(e.value)
    assert "'cosine'" in message and all(m in message for m in sim.METRICS), message


def test_registry_is_the_list_of_metrics():
    assert (
        sim.METRICS
        == registry.names()
        == ("svcca", "svcca_heldout", "rsa", "cka", "cka_debiased", "mutual_knn", "procrustes")
    )
    assert sim.METRIC_NAMES == {m: registry.get(m).display for m in sim.METRICS}
    assert sim.SUBSET_METRICS == ("svcca", "rsa", "cka", "cka_debiased", "procrustes")
    assert sim.metric_versions() == {m: registry.get(m).version for m in sim.METRICS}
    with pytest.raises(ValueError, match="already registered"):
        registry.register(dataclasses.replace(registry.get("rsa")))
    with pytest.raises(ValueError, match="identifier"):
        dataclasses.replace(COSINE, name="centred cosine")
    with pytest.raises(ValueError, match="version"):
        dataclasses.replace(COSINE, version=0)
    assert registry.names() == sim.METRICS


# ----------------------------------------------------------------------------- cache keys


def test_metric_versions_are_in_the_geometry_key(tmp_path, monkeypatch):
    monkeypatch.setenv("FEATUNIV_CACHE", str(tmp_path))
    rng = np.random.default_rng(2)
    XA, XB = rng.standard_normal((30, 6)), rng.standard_normal((30, 7))
    study = SimpleNamespace(
        cfg=config.build("smoke"), decoder_rows=lambda side, idx: (XA if side.model == "A" else XB)[idx]
    )
    idx = np.arange(30)
    m = SimpleNamespace(
        comparison=Comparison("cross", Side("A", 1), Side("B", 1)),
        artifact="a matching",
        pairs=type("Pairs", (SimpleNamespace,), {"__len__": lambda self: 30})(idx_a=idx, idx_b=idx),
    )
    g = geometry.compare_pairs(study, m, 5)
    params = dataclasses.asdict(geometry.geometry_params(study, 5))
    assert g.artifact.meta["spec"]["params"] == params
    assert params["metrics"] == sim.metric_versions() and list(params["metrics"]) == list(sim.METRICS)
    assert params["knn_k"] == sim.KNN_K and params["heldout_splits"] == sim.HELDOUT_SPLITS
    assert g.scores["rsa"].score == sim.compare(XA, XB, 5)["rsa"]["score"]
    monkeypatch.setitem(registry._REGISTRY, "rsa", dataclasses.replace(registry.get("rsa"), version=2))
    again = geometry.compare_pairs(study, m, 5)
    assert again.artifact.key != g.artifact.key and again.artifact.meta["spec"]["params"]["metrics"]["rsa"] == 2


def test_metric_versions_are_in_the_calibration_key(tmp_path, monkeypatch):
    monkeypatch.setenv("FEATUNIV_CACHE", str(tmp_path))
    cfg = config.build("smoke")
    with step.planning():
        study = fs.open_study(cfg, device="cpu")
        cell = study.focus
        before = scale.calibration_artifact(study, cell, 5).key
        params = dataclasses.asdict(scale.calibration_params(study, 5))
        assert params["metrics"] == sim.metric_versions() and params["draws"] == 5
        assert params["heldout_splits"] == sim.HELDOUT_SPLITS and params["knn_k"] == sim.KNN_K
        monkeypatch.setitem(registry._REGISTRY, "cka", dataclasses.replace(registry.get("cka"), version=3))
        after = scale.calibration_artifact(study, cell, 5).key
        assert dataclasses.asdict(scale.calibration_params(study, 5))["metrics"]["cka"] == 3
    assert before != after
