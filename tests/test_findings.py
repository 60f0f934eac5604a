"""The written results of notebooks 01, 02 and 08 (featlib.study.findings): every number from the tables,
and the words follow the numbers."""

import pandas as pd

from featlib import study as fs


def test_extraction_findings_name_the_models_and_follow_the_norms():
    extraction = pd.DataFrame({"model": ["A", "B"], "eval units": [32893, 32893]})
    norms = pd.DataFrame({"model": ["A", "A", "B", "B"], "depth": [0.5, 1.0, 0.5, 1.0], "mean norm": [100.0, 300.0, 20000.0, 25000.0]})
    text = fs.extraction_findings(extraction, norms, {"A": "SmolLM2-135M-Instruct", "B": "Gemma-3-270M"})
    assert "32,893 eval units" in text and "grows with depth" in text and "SmolLM2-135M-Instruct (A) from 100" in text
    assert "(3.0-fold)" in text and "83.3 times the other's" in text  # 25,000 / 300
    norms.loc[3, "mean norm"] = 10000.0  # B's norm falls
    assert "changes with depth" in fs.extraction_findings(extraction, norms, {"A": "a", "B": "b"})


def test_sae_findings_give_ranges_and_one_number_where_all_agree():
    table = pd.DataFrame({"model": ["A", "B", "A"], "layer": [0, 1, 0], "sae": ["profile", "profile", "random init"],
                          "explained_variance": [0.9, 0.98, 0.6], "ce_recovered": [0.95, 0.99, 0.1], "l0": [16.0, 16.0, 16.0],
                          "dead_fraction": [0.2, 0.7, 0.1]})
    text = fs.sae_findings(table, 0.5)
    assert "explain 90%–98%" in text and "lowest: model A layer 0" in text and "fire 16 latents" in text
    assert "The 1 SAEs of the randomly initialised models (floors) explain 60%." in text


def test_atlas_findings_say_chance_when_the_maps_keep_no_more_than_random_pairs():
    stats = {"k": 10, "n": 171, "score": 0.194, "null_mean": 0.059, "null_std": 0.007, "p": 0.005, "chance": 0.059}
    text = fs.atlas_findings(stats, 35, 833)
    assert "19.4% have their partners" in text and "3.3 times what random re-pairings keep" in text and "p = 0.005" in text
    assert "35 of the 833 points" in text
    assert "No more than random re-pairings keep" in fs.atlas_findings(stats | {"score": 0.06, "p": 0.4}, 0, 10)


def test_findings_of_several_comparisons_are_told_apart():
    import numpy as np

    from featlib import matching
    from featlib.study import Comparison, Side

    assert fs.per_comparison({"cross A2–B3": "**What we find.** x"}) == "**What we find.** x"
    both = fs.per_comparison({"cross A2–B3": "**What we find.** x", "cross C2–B3": "**What we find.** y"})
    assert both == "**What we find.** **cross A2–B3.** x\n\n**cross C2–B3.** y"

    def m(kind, a, b, r, n_pairs):
        pairs = matching.Matches(np.arange(n_pairs), np.arange(n_pairs), np.full(n_pairs, r))
        return fs.Match(Comparison(kind, a, b), matching.Matches(np.arange(10), np.arange(10), np.full(10, r)), pairs,
                        {"active_B": 10}, None)

    A, B, C = Side("A", 2), Side("B", 3), Side("C", 2)
    matches = [m("cross", A, B, 0.5, 5), m("cross", C, B, 0.3, 3),
               m("seed", A, Side("A", 2, seed=1), 0.9, 9), m("seed", B, Side("B", 3, seed=1), 0.7, 7),
               m("random_init", A, Side("A", 2, random_init=True), 0.1, 1),
               m("random_init", B, Side("B", 3, random_init=True), 0.1, 1)]
    text = fs.matching_findings(matches)
    # A2–B3 between A's and B's references (ceiling 0.80, floor 0.10); C2–B3 between B's only (0.70, 0.10)
    assert "For cross A2–B3, the median best r (0.50) is 57% of the way" in text
    assert "For cross C2–B3, the median best r (0.30) is 33% of the way" in text and "ceiling 0.70" in text


def _group_rows(group, cross, ceilings, floors, p=0.01, pairs=12):
    """A toy group table: one cross row, then one row per seed ceiling and per random-init floor (score, pairs)."""
    rows = [{"comparison": "cross A1–B1", "kind": "cross", "group": group, "pairs": pairs, "scorable": True,
             "rsa": cross, "rsa p (re-pair)": p}]
    for kind, refs in (("seed", ceilings), ("random_init", floors)):
        for side, (score, n) in zip("AB", refs):
            name = f"{kind} {side}1–{side}1 ({'seed 1' if kind == 'seed' else 'random init'})"
            rows.append({"comparison": name, "kind": kind, "group": group, "pairs": n, "scorable": score == score,
                         "rsa": score, "rsa p (re-pair)": 0.01 if score == score else float("nan")})
    return rows


def test_a_group_is_above_the_floors_only_when_every_floor_is_scorable_and_beaten():
    """Emotions on smollm-gemma: cross 0.60, floors 0.18 (5 pairs) and not scorable (1 pair). The max over the
    floors skipped the NaN one and called the group above its floors; a not scorable floor is not beaten."""
    nan = float("nan")
    rows = (_group_rows("Emotions", 0.60, [(0.33, 26), (0.40, 18)], [(0.18, 5), (nan, 1)], pairs=9)
            + _group_rows("Time", 0.21, [(0.31, 167), (0.32, 111)], [(0.18, 21), (0.07, 39)], pairs=122)
            + _group_rows("Nature", 0.50, [(0.6, 20), (0.7, 20)], [(0.40, 20), (0.55, 20)]))  # beats one floor only
    text = fs.group_findings(pd.DataFrame(rows), "rsa")
    assert "3 of 3 concept groups have a scorable cross-model RSA; 1 of them are above" in text
    assert text.split("\n\n")[0].endswith(": Time.")
    emotions = next(line for line in text.splitlines() if line.startswith("- Emotions"))
    assert "floor not scorable (B1, 1 pair)" in emotions and "above its null and every floor" not in emotions
    assert "above its null and every floor" in next(line for line in text.splitlines() if line.startswith("- Time"))


def test_group_findings_state_the_calibrated_score_with_its_interval_not_an_uncalibrated_ratio(tmp_path):
    """A group's place between floor and ceiling is its calibrated score at one m with the interval over draws
    (the group table's calibration columns), or why it is not scorable — never (cross - best floor) / (mean ceiling
    - best floor) at unequal pair counts."""
    import numpy as np

    from featlib.calibration import ABOVE, NOT_ABOVE, Band, Calibration
    from featlib.study.groups import calibration_columns

    nan = float("nan")
    rows = (_group_rows("Time", 0.21, [(0.31, 167), (0.32, 111)], [(0.18, 21), (0.07, 39)], pairs=122)
            + _group_rows("Emotions", 0.60, [(0.33, 26), (0.40, 18)], [(0.18, 5), (nan, 1)], pairs=9)
            + _group_rows("Calendar", 0.71, [(0.44, 10), (0.77, 8)], [(nan, 2), (nan, 1)], pairs=7))
    table = pd.DataFrame(rows)
    table = table.assign(cka_debiased=table.rsa, **{"cka_debiased p (re-pair)": table["rsa p (re-pair)"]})

    def c(metric, value, lo, hi, verdict, m=10):
        none = Band(nan, nan, nan)
        return Calibration(metric, m, 20, none, none, none, none, Band(value, lo, hi), verdict)

    gone = "not scorable: random_init B1–B1 (random init) has 1 pair of the group, so m = ⌊0.5 × 1⌋ = 0 pairs per draw (at least 3 needed)"
    cals = {"Time": {"rsa": c("rsa", 0.25, -0.4, 0.9, NOT_ABOVE), "cka_debiased": c("cka_debiased", 0.6, 0.2, 1.1, ABOVE)},
            "Emotions": {"rsa": c("rsa", nan, nan, nan, gone, m=0)}}
    cross = calibration_columns(table[table.kind == "cross"], cals)
    refs = calibration_columns(table[table.kind != "cross"], None)
    full = pd.concat([cross, refs], ignore_index=True)
    assert {"calibration m", "calibration draws", "rsa calibrated", "rsa calibrated lo", "rsa calibrated hi",
            "rsa calibrated verdict", "svcca calibrated verdict"} <= set(full.columns)
    assert list(full.columns[: len(table.columns)]) == list(table.columns), "the existing columns kept, in order"
    assert cross.set_index("group").loc["Calendar", "rsa calibrated verdict"].startswith("not scorable: no ceiling and floor")
    assert refs["rsa calibrated"].isna().all() and (refs["rsa calibrated verdict"] == "").all()
    full.to_csv(tmp_path / "groups.csv", index=False)
    for t in (full, pd.read_csv(tmp_path / "groups.csv")):  # the same words from the committed CSV
        text = fs.group_findings(t, "rsa")
        assert "of the way from floor to ceiling" not in text
        line = {x.split(" (")[0][2:]: x for x in text.splitlines() if x.startswith("- ")}
        assert line["Time"].endswith("; calibrated **0.25** [-0.40, 0.90] at m = 10 pairs per draw, not above the random-model floor")
        assert line["Emotions"].endswith("; calibrated: " + gone)
        assert "On the calibrated scale (0 = random-model floor, 1 = seed ceiling; the group's pairs of every comparison " \
               "subsampled to one m), 1 of them are scorable, 0 above the floor." in text
        assert "calibrated **0.60** [0.20, 1.10] at m = 10 pairs per draw, above the floor" in fs.group_findings(t, "cka_debiased")
    assert "calibrated: not computed" in fs.group_findings(table, "rsa"), "a table without the columns says so"
