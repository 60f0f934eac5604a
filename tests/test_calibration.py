"""The calibrated scale (featlib.calibration): known answers on planted draws and pairs; where ceilings and
floors are computed (featlib.study.core); the random re-initialisation of a model (featlib.models)."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy.stats import ortho_group

from featlib import calibration as cal
from featlib import config, models
from featlib.study.core import Comparison, Side, Study


def test_summarise_known_answer():
    rng = np.random.default_rng(0)
    floor, ceiling = 0.2 + 0.01 * rng.standard_normal(40), 0.6 + 0.01 * rng.standard_normal(40)
    cross = 0.4 + 0.01 * rng.standard_normal(40)
    c = cal.summarise("cka", 30, cross, [ceiling], [floor], np.zeros(40))
    expected = (cross.mean() - floor.mean()) / (ceiling.mean() - floor.mean())
    assert c.calibrated.mean == pytest.approx(expected) and c.calibrated.lo < expected < c.calibrated.hi
    assert c.verdict == cal.ABOVE and c.above_floor and c.scorable and c.m == 30 and c.draws == 40
    # two ceilings and two floors are averaged per draw
    c2 = cal.summarise("cka", 30, cross, [ceiling - 0.1, ceiling + 0.1], [floor + 0.05, floor - 0.05], np.zeros(40))
    assert c2.calibrated.mean == pytest.approx(expected)
    # a cross score inside the floor's interval is not above the floor, whatever its calibrated value
    inside = cal.summarise("cka", 30, floor[::-1] + 0.001, [ceiling], [floor], np.zeros(40))
    assert inside.verdict == cal.NOT_ABOVE and not inside.above_floor and abs(inside.calibrated.mean) < 0.05
    # a ceiling not above the floor, or a not scorable metric: no number
    flat = cal.summarise("cka", 30, cross, [floor], [ceiling], np.zeros(40))
    assert not flat.scorable and np.isnan(flat.calibrated.mean) and "not above the floor" in flat.verdict
    nan = cal.summarise("svcca", 30, np.full(40, np.nan), [ceiling], [floor], np.zeros(40))
    assert not nan.scorable and "cross" in nan.verdict and np.isnan(nan.cross.mean)


def _pairs(n, d, shared, rng):
    """n pairs in d dims: Y is a rotation of X plus noise of weight 1 - shared."""
    X = rng.standard_normal((n, d))
    Q = ortho_group.rvs(d, random_state=rng)
    return X, shared * X @ Q + (1 - shared) * rng.standard_normal((n, d))


@pytest.mark.slow
def test_calibrate_pairs_orders_planted_similarity():
    rng = np.random.default_rng(1)
    d = 48
    cross, ceilings = _pairs(60, d, 0.5, rng), [_pairs(80, d, 0.9, rng), _pairs(70, d, 0.9, rng)]
    floors = [_pairs(90, d, 0.0, rng), _pairs(90, d, 0.0, rng)]
    cals = cal.calibrate_pairs(cross, ceilings, floors, draws=12, seed=0)
    assert set(cals) == set(cal.similarity.METRICS) and all(c.m == 30 for c in cals.values())
    for metric in ("cka_debiased", "procrustes", "svcca_heldout"):
        c = cals[metric]
        assert c.floor.mean < c.cross.mean < c.ceiling.mean and 0.1 < c.calibrated.mean < 0.95, (metric, c)
        assert c.above_floor and c.null.mean < c.floor.hi + 0.1
    assert not cals["svcca"].scorable, "30 pairs in 48 dimensions: plain SVCCA keeps k > n/2"
    again = cal.calibrate_pairs(cross, ceilings, floors, draws=12, seed=0)
    bands = lambda cs: np.array([[getattr(c, r).mean for r in ("cross", "ceiling", "floor", "null", "calibrated")]
                                 for c in cs.values()])
    np.testing.assert_allclose(bands(again), bands(cals), rtol=0, atol=1e-12)  # same pairs, same seed (NaN = NaN)
    assert [c.verdict for c in again.values()] == [c.verdict for c in cals.values()]
    none = cal.calibrate_pairs(floors[0], ceilings, [floors[1]], draws=12, seed=0)
    assert not none["cka_debiased"].above_floor


def test_too_few_pairs_is_not_scorable():
    rng = np.random.default_rng(2)
    cals = cal.calibrate_pairs(_pairs(5, 8, 0.5, rng), [_pairs(4, 8, 1, rng)], [_pairs(40, 8, 0, rng)], draws=3)
    assert cals["rsa"].m == 2 and not any(c.scorable for c in cals.values())


def _study(layers, depth):
    over = {"layers.A": layers[0], "layers.B": layers[1],
            "comparisons": [{"a": "A", "b": "B", "layers": [layers[0][0], layers[1][0]], "kind": "cross"}]}
    if depth[0] > depth[1]:  # the deeper model first: tiny's B (6 blocks) as A
        over |= {"models.A.path": "models/tiny/lm-b", "models.B.path": "models/tiny/lm-a"}
    cfg = config.build("tiny", over)
    fake = {m: SimpleNamespace(n_layers=n) for m, n in zip("AB", depth)}
    return Study(cfg, fake, {})


def test_diagonal_and_reference_layers():
    s = _study(([0, 1, 2, 3], [0, 1, 2, 3, 4, 5]), (4, 6))
    # depths A 0.25 0.5 0.75 1; B 0.17 0.33 0.5 0.67 0.83 1: ties (A0, A2) go to the shallower B layer
    assert s.diagonal(s.focus) == [(0, 0), (1, 2), (2, 3), (3, 5)]
    assert s.reference_layers("A") == [0, 1, 2, 3] and s.reference_layers("B") == [0, 2, 3, 5]
    flipped = _study(([0, 1, 2, 3, 4, 5], [0, 1, 2, 3]), (6, 4))
    assert flipped.diagonal(flipped.focus) == [(0, 0), (2, 1), (3, 2), (5, 3)]
    refs = s.references(s.focus.at(1, 2))
    assert [c.kind for c in refs] == ["seed", "seed", "random_init", "random_init"]
    assert refs[0] == Comparison("seed", Side("A", 1), Side("A", 1, seed=1))
    assert refs[3] == Comparison("random_init", Side("B", 2), Side("B", 2, random_init=True))
    b1 = s.references(s.focus.at(1, 1))
    assert b1 and b1 == [c for c in b1 if c.a.model == "A"], "B1 has no ceiling or floor"
    assert len(s.reference_sides()) == 2 * (4 + 4)
    focus = Study(config.build("tiny", {"references.layers": "focus"}), s.models, {})
    assert focus.reference_layers("A") == [2] and focus.reference_layers("B") == [3]
    only_a = Study(config.build("tiny", {"references.models": ["A"], "references.run": ["seed"]}), s.models, {})
    assert [c.name for c in only_a.comparisons] == ["cross A2–B3", "seed A2–A2 (seed 1)"]


def test_random_init_is_seeded_and_apart():
    cfg = config.build("tiny")
    lm = models.load_model("A", cfg.models["A"], "cpu")
    r1, r2, r3 = models.random_init(lm, 0), models.random_init(lm, 0), models.random_init(lm, 1)
    w = {k: dict(m.model.named_parameters())["blocks.0.attn.W_Q"] for k, m in (("lm", lm), ("r1", r1), ("r2", r2), ("r3", r3))}
    assert torch.equal(w["r1"], w["r2"]) and not torch.equal(w["r1"], w["r3"]) and not torch.equal(w["r1"], w["lm"])
    assert r1.fingerprint == r2.fingerprint != r3.fingerprint != lm.fingerprint
    assert r1.tokenizer is lm.tokenizer and r1.id == "A" and r1.model.cfg.n_layers == lm.model.cfg.n_layers
