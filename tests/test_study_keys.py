"""Cache keys of the study's steps (featlib.step): a step's key is its inputs' keys plus its own
parameters, so an upstream change re-keys everything downstream and a parameter a step does not read
leaves it alone. Computed with step.planning(): nothing is extracted or trained."""

import pytest

from featlib import config, step
from featlib import study as fs
from featlib.study import codes, pairs, scale, transfer, usae


def keys(overrides=None, profile="smoke"):
    cfg = config.build(profile, overrides or {})
    with step.planning():
        study = fs.open_study(cfg, device="cpu")
        cross, seed, rand = study.comparison("cross"), study.comparison("seed"), study.comparison("random_init")
        return {
            "acts_A": study.eval_acts("A").key, "acts_B": study.eval_acts("B").key,
            "codes_A": codes.codes_artifact(study, cross.a).key, "codes_B": codes.codes_artifact(study, cross.b).key,
            "codes_A_seed": codes.codes_artifact(study, seed.b).key, "codes_A_random": codes.codes_artifact(study, rand.b).key,
            "matching": pairs.matching_artifact(study, cross).key, "matching_seed": pairs.matching_artifact(study, seed).key,
            "matching_random": pairs.matching_artifact(study, rand).key,
            "calibration": scale.calibration_artifact(study, cross, cfg.calibration.draws).key,
            "usae": usae.usae_artifact(study).key, "usae_metrics": usae.metrics_artifact(study).key,
            "transfer": transfer.transfer_artifact(study, cross).key,
        }


@pytest.fixture(scope="module")
def base():
    return keys()


def changed(a, b):
    return {k for k in a if a[k] != b[k]}


def test_same_profile_twice_same_keys(base):
    assert keys() == base
    assert len(set(base.values())) == len(base), "every step has its own key"


def test_planning_makes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("FEATUNIV_CACHE", str(tmp_path))
    keys()
    assert not any(tmp_path.iterdir()), "step.planning() must not write any artifact"


def test_editing_model_b_rekeys_everything_downstream_of_b_only(base):
    other = keys({"models.B.dtype": "float16"})
    assert changed(base, other) == {"acts_B", "codes_B", "matching", "usae", "usae_metrics", "calibration", "transfer"}
    other = keys({"models.B.path": "models/tiny/lm-a"})  # another checkpoint
    assert {"acts_B", "codes_B", "matching"} <= changed(base, other) and "codes_A" not in changed(base, other)


def test_measurement_parameters_do_not_retrain(base):
    assert changed(base, keys({"universal.fire_threshold": 0.2})) == {"usae_metrics"}
    assert changed(base, keys({"universal.concept": 3})) == set()
    assert changed(base, keys({"similarity.n_shuffles": 7, "atlas.n_random": 9, "calibration.grid_draws": 3})) == set()
    assert changed(base, keys({"calibration.draws": 7})) == {"calibration"}
    assert changed(base, keys({"universal.steps": 201})) == {"usae", "usae_metrics", "transfer"}  # its universal method
    assert changed(base, keys({"transfer.n_rows": 3, "transfer.ridge": 0.1})) == {"transfer"}
    assert changed(base, keys({"transfer.gallery": 2, "transfer.success_quantile": 0.9, "transfer.prompts": ["x"]})) == set()


def test_matching_and_seed_parameters_reach_the_right_steps(base):
    every_matching = {"matching", "matching_seed", "matching_random", "calibration"}
    assert changed(base, keys({"matching.min_r": 0.2})) == every_matching | {"usae_metrics", "transfer"}
    assert changed(base, keys({"references.second_seed": 2})) == {"codes_A_seed", "matching_seed", "calibration"}
    assert changed(base, keys({"references.init_seed": 3})) == {"codes_A_random", "matching_random", "calibration"}
    assert changed(base, keys({"sae.k": 8})) == every_matching | {"codes_A", "codes_B", "codes_A_seed", "codes_A_random",
                                                                 "usae_metrics", "transfer"}


def test_only_cells_with_both_models_ceiling_and_floor_are_calibrated():
    cfg = config.build("smoke")  # references.layers: focus, so only A2 and B3 have a ceiling and a floor
    with step.planning():
        study = fs.open_study(cfg, device="cpu")
        assert scale.calibration_artifact(study, study.focus.at(2, 3), 5) is not None
        assert scale.calibration_artifact(study, study.focus.at(2, 2), 5) is None, "B2 has no ceiling or floor"
        assert scale.calibration_artifact(study, study.focus.at(1, 3), 5) is None, "A1 has no ceiling or floor"


def test_transfer_refuses_a_layer_that_was_not_extracted():
    cfg = config.build("smoke")  # layers A [1, 2], B [2, 3]
    with step.planning():
        study = fs.open_study(cfg, device="cpu")
        with pytest.raises(ValueError, match=r"layer 0 of model A was not extracted.*layers\.A"):
            transfer.transfer_artifact(study, study.focus.at(0, 3))


def test_a_third_model_rekeys_only_what_reads_it(base):
    """Adding model C and its comparisons leaves A–B's steps alone; the universal SAE, which now reads C too,
    and what depends on it are re-keyed."""
    three = keys(profile="smoke-three")
    assert changed(base, three) == {"usae", "usae_metrics", "transfer"}
    only_ab = keys({"universal.models": ["A", "B"]}, profile="smoke-three")
    assert only_ab == base, "the same A-B study inside a three-model profile: the same keys"
