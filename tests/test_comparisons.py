"""Comparisons as data: any number of models, the comparisons a profile lists, their ceilings and floors,
and the checks at ``config.build`` that refuse what cannot be compared (one line each)."""

import re
from types import SimpleNamespace

import pytest

from featlib import config
from featlib.config import REPO, ConfigError
from featlib.study import Comparison, Side, Study, figure_name

THREE = {"models.C": {"source": "local", "path": "models/tiny/lm-a-seed1"}, "layers.C": [1, 2],
         "comparisons": [{"a": "A", "b": "B", "layers": [2, 3]}, {"a": "C", "b": "B", "layers": [2, 3]},
                         {"a": "A", "b": "C", "layers": [2, 2], "kind": "model_seed"}]}


def stub_study(cfg: config.Config) -> Study:
    """A Study whose models only know their depth: enough for the comparisons' bookkeeping."""
    n_layers = {mid: config.local_shape(spec.model_dump())["n_layers"] for mid, spec in cfg.models.items()}
    return Study(cfg, {mid: SimpleNamespace(n_layers=n) for mid, n in n_layers.items()}, {})


def test_the_three_model_profile_and_its_defaults():
    cfg = config.build("smoke-three")
    assert list(cfg.models) == ["A", "B", "C"]
    assert [(c.a, c.b, c.layers, c.kind) for c in cfg.comparisons] == [
        ("A", "B", [2, 3], "cross"), ("C", "B", [2, 3], "cross"), ("A", "C", [2, 2], "model_seed")]
    assert cfg.universal_layers == {"A": 2, "B": 3, "C": 2}, "every model, at its layer in the first comparison naming it"
    one = config.build("smoke", {"comparisons": [{"layers": [2, 3]}]})
    assert (one.comparisons[0].a, one.comparisons[0].b) == ("A", "B"), "a and b default to the first two models"
    assert one.references.models == ["A", "B"], "references.models [] = every model a comparison names"
    chosen = config.build("smoke", THREE | {"universal.models": ["B", "C"], "universal.layers": {"C": 1}})
    assert chosen.universal_layers == {"B": 3, "C": 1}


@pytest.mark.parametrize("overrides, key, words", [
    ({"comparisons": [{"a": "A", "b": "Z", "layers": [2, 3]}]}, "comparisons[0].b", "names no model"),
    ({"comparisons": [{"a": "A", "b": "A", "layers": [2, 2]}]}, "comparisons[0].b", "same model as a"),
    ({"comparisons": [{"a": "A", "b": "B", "layers": [2, 5]}]}, "comparisons[0].layers", "not among its extracted layers"),
    ({"comparisons": [{"layers": [2, 3]}, {"a": "A", "b": "B", "layers": [2, 3]}]}, "comparisons[1]", "repeats comparisons[0]"),
    ({"comparisons": []}, "comparisons", "a non-empty list"),
    ({"comparisons": [{"a": "A", "b": "B", "layers": [2, 3], "kind": "model_seed"}]}, "comparisons[0].kind",
     "differ in d_mlp, d_model, n_heads, n_layers"),
    ({"comparisons": [{"a": "A", "b": "B", "layers": [2, 3], "kind": "seed"}]}, "comparisons[0].kind", "'model_seed'"),
    ({"universal.layers": {"Z": 1}}, "universal.layers", "does not read"),
    ({"universal.layers.A": 3}, "universal.layers.A", "not among its extracted layers"),
    ({"universal.models": ["A"]}, "universal.models", "at least two distinct"),
    ({"atlas.comparison": 1}, "atlas.comparison", "names no comparison"),
    ({"transfer.comparison": 3}, "transfer.comparison", "names no comparison"),
    ({"atlas.layers": [3, 3]}, "atlas.layers", "not among its extracted layers"),
    ({"references.models": ["A", "A"]}, "references.models", "distinct model ids"),
    ({"references.run": ["seed", "seed"]}, "references.run", "repeats an item"),
    ({"references.models": ["A", "Z"]}, "references.models", "among those the comparisons name"),
    ({"layers.C": [1]}, "layers", "one list of layers for each of the models A, B"),
    ({"sae.release.C": "x"}, "sae.release", "names model 'C', which the profile does not have"),
    ({"matching.layer_pair": [2, 3]}, "matching.layer_pair", "comparisons: [{layers: [2, 3]}]"),
    ({"atlas.layer_pair": [2, 3]}, "atlas.layer_pair", "rename it to atlas.layers"),
    ({"universal.layers": [2, 3]}, "universal.layers", "universal.layers: {A: 2, B: 3}"),
    ({"comparisons": {"run": ["cross", "seed"]}}, "comparisons", "move run (now ['seed'], without 'cross')"),
])
def test_what_cannot_be_compared_is_refused_at_build_in_one_line(overrides, key, words):
    with pytest.raises(ConfigError) as e:
        config.build("smoke", overrides)
    msg = str(e.value)
    assert "\n" not in msg and f"{key} = " in msg and words in msg and "Fix:" in msg, msg


def test_a_universal_model_in_no_comparison_needs_its_layer():
    three = dict(THREE, comparisons=THREE["comparisons"][:1])
    with pytest.raises(ConfigError, match=r"universal.layers = \{\} lacks model 'C'.*add C: <layer>"):
        config.build("smoke", three)
    assert config.build("smoke", three | {"universal.layers": {"C": 1}}).universal_layers == {"A": 2, "B": 3, "C": 1}
    assert config.build("smoke", three | {"universal.models": ["A", "B"]}).universal_layers == {"A": 2, "B": 3}


def test_comparisons_references_and_grids_of_three_models():
    study = stub_study(config.build("smoke-three", {"references.models": []}))  # [] = every model: A, B and C
    ab, cb, ac = study.listed
    assert (ab.name, cb.name, ac.name) == ("cross A2–B3", "cross C2–B3", "model_seed A2–C2")
    refs = study.comparisons[3:]
    assert [r.name for r in refs] == ["seed A2–A2 (seed 1)", "seed B3–B3 (seed 1)", "seed C2–C2 (seed 1)",
                                      "random_init A2–A2 (random init)", "random_init B3–B3 (random init)",
                                      "random_init C2–C2 (random init)"], "each side's references once, in model order"
    assert [r.a for r in study.references(cb)] == [Side("C", 2), Side("B", 3)] * 2
    assert all(study.has_references(c) for c in study.listed)
    assert not study.has_references(ab.at(1, 3)), "references.layers focus: none at A1"
    assert study.reference_layers("A") == [2] and study.reference_layers("C") == [2]
    assert {s.model for s in study.reference_sides()} == {"A", "B", "C"}
    assert len(study.grid(cb)) == 4 and study.focus == ab and study.diagonal(ac) == [(1, 1), (2, 2)]
    assert [figure_name(study, "heatmaps", c) for c in study.listed] == ["heatmaps", "heatmaps_C2-B3", "heatmaps_A2-C2"]


def test_references_follow_the_models_listed():
    committed = stub_study(config.build("smoke-three"))  # references.models [A, B]
    assert all(committed.has_references(c) for c in committed.listed), "C's comparisons calibrated by A's or B's"
    assert {r.a.model for r in committed.comparisons if r.kind in ("seed", "random_init")} == {"A", "B"}
    study = stub_study(config.build("smoke-three", {"references.models": ["B"], "references.layers": "diagonal"}))
    ab, cb, _ = study.listed
    assert [r.a for r in study.references(ab)] == [Side("B", 3)] * 2, "A's ceiling and floor are not asked for"
    assert study.has_references(ab) and study.has_references(cb), "calibrated between B's ceiling and floor"
    assert not study.has_references(study.listed[2]), "neither A nor C has references"
    assert study.reference_layers("B") == [2, 3], "diagonal of A (4 layers) and B (6): A1~B2, A2~B3"
    none = stub_study(config.build("smoke-three", {"references.run": []}))
    assert none.comparisons == none.listed and not none.has_references(none.focus)


def test_comparison_at_keeps_models_and_variants():
    c = Comparison("cross", Side("C", 2), Side("B", 3, seed=1))
    assert c.at(1, 2) == Comparison("cross", Side("C", 1), Side("B", 2, seed=1))


SOURCES = [*REPO.glob("featlib/**/*.py"), *REPO.glob("notebooks/**/*.ipynb"), *REPO.glob("exercises/**/*.ipynb")]


def test_nothing_is_wired_to_two_models():
    """The models of a comparison come from the comparison: no ``ids[:2]`` anywhere."""
    found = [f"{p.relative_to(REPO)}" for p in SOURCES if re.search(r"ids\[:2\]", p.read_text())]
    assert not found, found


def test_settings_are_read_as_attributes():
    """Code and notebooks read ``cfg.similarity.n_shuffles``, never a string key of a section."""
    pattern = re.compile(r"""cfg\.(?:%s)\[\\?["']""" % "|".join(config.SECTIONS))
    found = [f"{p.relative_to(REPO)}: {m.group(0)}" for p in SOURCES for m in pattern.finditer(p.read_text())]
    assert not found, found


def test_the_library_does_not_import_its_command_line_tools():
    """Layering: featlib's modules never import featlib.tools (the atlas once imported the chain's CLI)."""
    pattern = re.compile(r"^\s*(?:from\s+(?:featlib\.tools|\.+tools)\b|import\s+featlib\.tools)", re.M)
    found = [str(p.relative_to(REPO)) for p in REPO.glob("featlib/**/*.py")
             if "tools" not in p.relative_to(REPO).parts and pattern.search(p.read_text())]
    assert not found, found


def test_every_kind_is_described():
    """The kinds a profile may list and the references' kinds each have a line in the study's table of kinds."""
    import typing

    from featlib.study import COMPARISON_KINDS

    listed = typing.get_args(config.ComparisonSpec.model_fields["kind"].annotation)
    assert set(COMPARISON_KINDS) == set(listed) | set(config.REFERENCE_KINDS)
