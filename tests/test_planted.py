"""The planted-truth benchmark of the calibrated scale (featlib.planted) at its test size.

Two synthetic models share a known share s of their features; after SAE training, the chain's matching
and every metric, the calibrated score must rise with s, s = 0 must sit inside the random-model floor's
interval (the floor is the s = 0 construction with another seed), s = 1 must be above the floor, and the
final pairs must number about d (the regime in which plain SVCCA is degenerate). One run (about 20-60 s
on two CPU cores) serves every test.
"""

import numpy as np
import pytest

from featlib import planted, similarity
from featlib.calibration import ABOVE, NOT_ABOVE

# metrics whose calibrated mean rose strictly with s at the test size for each of seeds 0-6; Procrustes
# did for seeds 1-6 but not 0 (s = 0 -> 0.25: -0.02 -> -0.08; its chance level is high, ~0.9 at m ≈ 29
# pairs), so it is asserted from s = 0.25 up only (it rose there for every seed)
MONOTONE = ("svcca_heldout", "rsa", "cka", "cka_debiased", "mutual_knn")
MONOTONE_FROM_QUARTER = ("procrustes",)
P = planted.PlantedParams()


@pytest.fixture(scope="module")
def result() -> planted.PlantedResult:
    return planted.run(P)


def scorable(result: planted.PlantedResult) -> list[str]:
    """Metrics scorable at every share."""
    return [k for k in result.metrics if all(r.calibration[k].scorable for r in result.shares)]


def calibrated_means(result: planted.PlantedResult, metric: str) -> np.ndarray:
    return np.array([r.calibration[metric].calibrated.mean for r in result.shares])


def check_increasing(result: planted.PlantedResult, metrics=MONOTONE) -> None:
    shares = [r.share for r in result.shares]
    assert shares == sorted(shares)
    for k in metrics:
        means = calibrated_means(result, k)
        assert np.all(np.diff(means) > 0), f"{k}: calibrated means {np.round(means, 3)} over s = {shares}"


def check_zero_share_in_floor(result: planted.PlantedResult) -> None:
    for k in scorable(result):
        c = result.at(0.0).calibration[k]
        assert c.floor.lo <= c.cross.mean <= c.floor.hi, \
            f"{k}: s = 0 cross {c.cross.mean:.3f}, floor [{c.floor.lo:.3f}, {c.floor.hi:.3f}]"
        assert c.verdict == NOT_ABOVE, k


def check_full_share_above_floor(result: planted.PlantedResult) -> None:
    for k in scorable(result):
        c = result.at(1.0).calibration[k]
        assert c.verdict == ABOVE, f"{k}: {c.verdict}"
        assert c.calibrated.lo > 0.5, f"{k}: calibrated {c.calibrated}"


def check_pairs_near_d(result: planted.PlantedResult) -> None:
    p = result.params
    ns = [r.n for r in result.shares] + [result.ceiling.n, result.floor.n]
    assert all(p.d_a / 2 <= n <= p.d_b for n in ns), f"final pairs {ns}, widths {p.d_a} and {p.d_b}"


def test_generator_is_seeded_nested_and_planted():
    p = planted.PlantedParams(n_tokens=2000)
    a, a2 = planted.model_a(p), planted.model_a(p)
    assert a.acts.shape == (2000, p.d_a) and a.acts.dtype == np.float32 and a.latents.shape == (2000, p.n_features)
    np.testing.assert_array_equal(a.acts, a2.acts)
    b = {s: planted.model_b(p, a, s) for s in (0.0, 0.25, 0.5)}
    assert b[0.5].acts.shape == (2000, p.d_b)
    np.testing.assert_array_equal(b[0.5].acts, planted.model_b(p, a, 0.5).acts)
    M = planted.shared_map(p)
    for s, m in b.items():
        shared = np.flatnonzero(m.source >= 0)
        assert len(shared) == round(s * p.n_features)
        # the same concept fires on the same units, its direction is A's mapped by M
        np.testing.assert_array_equal(m.latents[:, shared], a.latents[:, m.source[shared]])
        mapped = a.directions[m.source[shared]] @ M.T
        np.testing.assert_allclose(m.directions[shared], mapped / np.linalg.norm(mapped, axis=1, keepdims=True))
    # nested shared sets, and B's own draws are the same at every s (common random numbers)
    assert set(b[0.25].source[b[0.25].source >= 0]) <= set(b[0.5].source[b[0.5].source >= 0])
    k = round(0.25 * p.n_features)
    np.testing.assert_array_equal(b[0.25].latents[:, k:], b[0.0].latents[:, k:])
    np.testing.assert_array_equal(b[0.25].directions[k:], b[0.0].directions[k:])
    # the floor: the s = 0 construction with another seed
    floor = planted.model_b(p, a, 0.0, floor=True)
    assert floor.acts.shape == b[0.0].acts.shape and (floor.source == -1).all()
    assert not np.allclose(floor.acts, b[0.0].acts)
    # a planted latent is exactly correlated with A's, a model-specific one is not
    r = np.corrcoef(b[0.5].latents[:, 0], a.latents[:, b[0.5].source[0]])[0, 1]
    r0 = np.corrcoef(b[0.0].latents[:, 0], a.latents[:, 0])[0, 1]
    assert r == pytest.approx(1) and abs(r0) < 0.1


@pytest.mark.slow
def test_matching_keeps_about_d_pairs_and_svcca_is_degenerate(result):
    check_pairs_near_d(result)
    # at n ≈ d pairs (m ≈ d/2 per draw) plain SVCCA is not scorable; the other metrics are
    assert not any(r.calibration["svcca"].scorable for r in result.shares)
    assert set(scorable(result)) == set(similarity.METRICS) - {"svcca"}


@pytest.mark.slow
def test_planted_share_of_pairs_tracks_s(result):
    planted_share = [r.planted for r in result.shares]
    assert planted_share[0] == 0 and result.floor.planted == 0
    assert planted_share[-1] > 0.9 and result.ceiling.planted > 0.9
    assert np.all(np.diff(planted_share) > 0)
    assert result.ceiling.median_r > 0.9 and result.floor.median_r < 0.1


@pytest.mark.slow
def test_calibrated_score_increases_with_share(result):
    check_increasing(result)
    above = planted.PlantedResult(**{**result.__dict__, "shares": [r for r in result.shares if r.share >= 0.25]})
    check_increasing(above, MONOTONE_FROM_QUARTER)


@pytest.mark.slow
def test_zero_share_is_inside_the_floor_interval(result):
    check_zero_share_in_floor(result)


@pytest.mark.slow
def test_full_share_is_above_the_floor(result):
    check_full_share_above_floor(result)


@pytest.mark.slow
def test_table_tell_apart_and_figure(result):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = planted.response_table(result)
    assert len(table) == len(P.shares) * len(similarity.METRICS)
    row = table[(table.share == 1.0) & (table.metric == "cka_debiased")].iloc[0]
    c = result.at(1.0).calibration["cka_debiased"]
    assert row["calibrated"] == c.calibrated.mean and row["verdict"] == ABOVE and row["n"] == result.at(1.0).n
    apart = planted.can_tell_apart(result, 0.25, 0.5)
    assert set(apart) == set(similarity.METRICS) and apart["svcca"] is False
    for k, v in apart.items():
        x, y = result.at(0.25).calibration[k].calibrated, result.at(0.5).calibration[k].calibrated
        assert v == bool(x.hi < y.lo or y.hi < x.lo)
    fig = planted.response_figure(result)
    assert len(fig.axes) == 3
    plt.close(fig)


@pytest.mark.slow
def test_run_is_deterministic():
    p = planted.PlantedParams(n_tokens=2048, shares=(0.0, 1.0), draws=3)
    t1, t2 = planted.response_table(planted.run(p)), planted.response_table(planted.run(p))
    assert t1.equals(t2)
