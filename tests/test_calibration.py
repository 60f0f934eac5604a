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


# ---- concept groups on the calibrated scale (featlib.study.groups) ------------------------------------------


def _related(n, d, noise, rng, base=None):
    """``n`` pairs (X, Y): Y = X + noise (noise None: Y independent of X)."""
    X = rng.standard_normal((n, d)) if base is None else base
    Y = rng.standard_normal((n, d)) if noise is None else X + noise * rng.standard_normal((n, d))
    return X, Y


def test_a_group_is_calibrated_at_one_m_with_known_answers():
    from featlib import similarity
    from featlib.study.groups import calibrate_group

    rng = np.random.default_rng(0)
    ceiling, floor, cross = _related(12, 16, 0.3, rng), _related(12, 16, None, rng), _related(12, 16, 1.0, rng)
    names = ["cross", "ceiling", "floor"]
    kw = dict(fraction=1.0, draws=4, seed=0, variance=0.99)  # m = every pair: each draw is the whole set, reordered
    same = calibrate_group(ceiling, [ceiling], [floor], names, **kw)["rsa"]  # the cross is the ceiling: 1
    assert same.m == 12 and same.draws == 4 and same.calibrated.mean == pytest.approx(1, abs=1e-9)
    assert same.calibrated.lo == pytest.approx(1, abs=1e-9) and same.calibrated.hi == pytest.approx(1, abs=1e-9)
    on_floor = calibrate_group(floor, [ceiling], [floor], names, **kw)["cka_debiased"]  # the cross is the floor: 0
    assert on_floor.calibrated.mean == pytest.approx(0, abs=1e-9) and on_floor.verdict == cal.NOT_ABOVE
    s = {k: similarity.scores(*p, metrics=("rsa",))["rsa"] for k, p in (("x", cross), ("c", ceiling), ("f", floor))}
    mid = calibrate_group(cross, [ceiling], [floor], names, **kw)["rsa"]
    assert mid.calibrated.mean == pytest.approx((s["x"] - s["f"]) / (s["c"] - s["f"]), abs=1e-9)
    assert 0 < mid.calibrated.mean < 1 and mid.cross.mean == pytest.approx(s["x"], abs=1e-9)
    # half-samples of unequal groups: one m for all, a real interval, planted order kept
    half = calibrate_group(_related(30, 16, 1.0, rng), [_related(40, 16, 0.3, rng)] * 2, [_related(20, 16, None, rng)] * 2,
                           ["cross", "c1", "c2", "f1", "f2"], fraction=0.5, draws=20, seed=0, variance=0.99)
    assert {c.m for c in half.values()} == {10} and half["rsa"].calibrated.lo < half["rsa"].calibrated.hi
    assert half["rsa"].above_floor and half["cka_debiased"].above_floor
    assert half["svcca"].verdict.startswith("not scorable: SVCCA is degenerate at m = 10 pairs")


def test_a_group_with_a_floor_of_five_pairs_is_not_scorable_and_says_why():
    from featlib.study.groups import calibrate_group

    rng = np.random.default_rng(1)
    cals = calibrate_group(_related(30, 8, 0.5, rng), [_related(30, 8, 0.1, rng)], [_related(5, 8, None, rng)],
                           ["cross A1–B1", "seed A1–A1 (seed 1)", "random_init B1–B1 (random init)"],
                           fraction=0.5, draws=20, seed=0, variance=0.99)
    assert set(cals) == {"svcca", "rsa", "cka_debiased"}
    for c in cals.values():
        assert not c.scorable and np.isnan(c.calibrated.mean) and c.m == 2 and c.draws == 0
        assert c.verdict == ("not scorable: random_init B1–B1 (random init) has 5 pairs of the group, so "
                             "m = ⌊0.5 × 5⌋ = 2 pairs per draw (at least 3 needed)")
    three = calibrate_group(_related(6, 8, 0.5, rng), [_related(30, 8, 0.1, rng)], [_related(30, 8, None, rng)],
                            ["c", "s", "f"], fraction=0.5, draws=5, seed=0, variance=0.99)["rsa"]
    assert three.m == 3 and three.verdict.startswith("not scorable: RSA is degenerate at m = 3 pairs")


def _group_study(tmp_path, monkeypatch, overrides=None):
    """A tiny-profile Study whose SAEs are seeded random decoders and whose matchings are planted: in every
    comparison, features 0..n-1 of side A pair with 0..n-1 of side B; group "G" holds the first ``sizes[i]`` pairs
    of comparison i, "H" the next ten."""
    import zlib

    from featlib import matching, step
    from featlib.study import groups, pairs

    monkeypatch.setenv("FEATUNIV_CACHE", str(tmp_path / "cache"))
    cfg = config.build("tiny", {"references.layers": "focus", "calibration.grid_draws": 5} | (overrides or {}))
    study = Study(cfg, {m: SimpleNamespace(n_layers=n) for m, n in zip("AB", (4, 6))}, {})
    decoders = {}

    def decoder_rows(side, idx):
        if side not in decoders:
            decoders[side] = np.random.default_rng(zlib.crc32(side.name.encode())).standard_normal((64, 16))
        return decoders[side][np.asarray(idx)]

    study.decoder_rows = decoder_rows
    comps = [study.focus, *study.references(study.focus)]
    n = 40
    fakes = {c: pairs.Match(c, matching.Matches(np.arange(n), np.arange(n), np.full(n, 0.5)),
                            matching.Matches(np.arange(n), np.arange(n), np.full(n, 0.5)), {},
                            step.Artifact("matching", tmp_path / f"matching-{i}")) for i, c in enumerate(comps)}
    monkeypatch.setattr(groups, "match", lambda s, c: fakes[c])
    return study, fakes[study.focus], comps


def test_group_calibration_is_a_cached_step_keyed_by_its_pairs_and_parameters(tmp_path, monkeypatch):
    from featlib.study import groups

    study, m, comps = _group_study(tmp_path, monkeypatch)
    sizes = {c: 20 for c in comps} | {comps[-1]: 5}  # the last floor (B's) has 5 pairs of G

    def membership(c, sizes=sizes):
        mask = np.zeros(64, bool)
        mask[: sizes[c]] = True
        other = np.zeros(64, bool)
        other[20:30] = True
        return {"G": (mask, mask), "H": (other, other)}

    assert [c.kind for c in comps] == ["cross", "seed", "seed", "random_init", "random_init"]
    first = groups.group_calibration(study, m, membership, "tokens")
    assert first["G"]["rsa"].verdict.startswith("not scorable: random_init B3–B3 (random init) has 5 pairs")
    assert first["H"]["rsa"].m == 5 and first["H"]["rsa"].draws == 5
    calls = []
    real = groups.calibrate_group
    monkeypatch.setattr(groups, "calibrate_group", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert groups.group_calibration(study, m, membership, "tokens") == first and not calls, "reused"
    moved = sizes | {comps[1]: 19}  # one pair fewer in a ceiling: another key
    groups.group_calibration(study, m, lambda c: membership(c, moved), "tokens")
    assert len(calls) == 2, "both groups recomputed under the new key"
    for over, recomputed in (({"calibration.grid_draws": 6}, True), ({"calibration.seed": 1}, True),
                             ({"calibration.fraction": 0.4}, True), ({"calibration.inner_draws": 2}, True), ({"similarity.variance": 0.9}, True),
                             ({"subspaces.min_features": 7, "similarity.n_shuffles": 9}, False)):
        calls.clear()
        study2, m2, _ = _group_study(tmp_path, monkeypatch, over)
        groups.group_calibration(study2, m2, membership, "tokens")
        assert bool(calls) == recomputed, over
    calls.clear()
    assert groups.group_calibration(study, m, membership, "phrases") and calls, "phrase groups: their own key"
    no_refs, *_ = _group_study(tmp_path, monkeypatch, {"references.run": []})
    assert groups.group_calibration(no_refs, m, membership, "tokens") == {}


def test_a_group_whose_ceiling_equals_its_floor_in_a_draw_has_no_interval(monkeypatch):
    from dataclasses import replace

    from featlib.study import groups

    rng = np.random.default_rng(3)
    args = (_related(20, 8, 0.5, rng), [_related(20, 8, 0.1, rng)], [_related(20, 8, None, rng)], ["c", "s", "f"])
    kw = dict(fraction=0.5, draws=10, seed=0, variance=0.99)
    before = groups.calibrate_group(*args, **kw)
    fine = before["rsa"]
    assert fine.scorable and np.isfinite(fine.calibrated.hi)
    real = cal.calibrate_pairs
    monkeypatch.setattr(cal, "calibrate_pairs", lambda *a, **k: {n: replace(c, calibrated=replace(c.calibrated, hi=np.nan))
                                                                  if n == "rsa" else c for n, c in real(*a, **k).items()})
    tied = groups.calibrate_group(*args, **kw)
    assert tied["rsa"].verdict == ("not scorable: the seed ceiling equals the floor in some of the 10 draws of m = 10 "
                                   "pairs (no ratio there)") and np.isnan(tied["rsa"].calibrated.mean)
    assert tied["cka_debiased"] == before["cka_debiased"], "the other metrics as they were"


def test_half_sample_replicates_carry_each_comparisons_own_sampling_spread():
    """A comparison's interval is the sampling spread of its score at m pairs given its own n pairs. Against the
    spread of the estimate (the mean of the replicates) over 40 fresh samples of n pairs of one planted relation,
    the replicates of one sample of n pairs are within 0.8-2x (conservative: half-samples do not average over
    subsets as the whole sample does) for a floor-sized n = 2m and a cross-sized n = 8m, and the larger sample
    gets the narrower interval. One subset of m pairs per replicate (inner = 1, what every draw was before)
    gives the 8m-pair comparison the spread of a 2m-pair one: more than 2x its real spread."""
    d, m = 16, 20
    rotation = np.linalg.qr(np.random.default_rng(99).standard_normal((d, d)))[0]

    def sample(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        r = np.random.default_rng(seed)
        X = r.standard_normal((n, d))
        return X, X @ rotation + 2.0 * r.standard_normal((n, d))

    def spreads(n: int, inner: int) -> tuple[float, float]:
        est = [cal.draw_scores(*sample(n, s), m, 10, [s], inner=inner, metrics=("rsa",))[:, 0].mean() for s in range(40)]
        reps = cal.draw_scores(*sample(n, 1000), m, 200, [7], inner=inner, metrics=("rsa",))[:, 0]
        return float(np.std(est)), float(np.std(reps))

    truth_floor, floor = spreads(2 * m, 4)
    truth_cross, cross = spreads(8 * m, 4)
    assert 0.8 < floor / truth_floor < 2 and 0.8 < cross / truth_cross < 2, (floor, truth_floor, cross, truth_cross)
    assert cross < 0.75 * floor
    truth_single, single = spreads(8 * m, 1)
    assert single / truth_single > 2 and single > 0.85 * floor
