import pytest
import yaml

from featlib import config


def test_profiles_exist_and_validate():
    assert {"smoke", "tiny", "pythia"} <= set(config.available_profiles())
    for name in config.available_profiles():
        cfg = config.build(name)
        assert cfg.profile == name
        assert len(cfg.params_hash) == 16


def test_unknown_profile_names_the_available_ones():
    with pytest.raises(config.ConfigError, match="unknown profile 'nope'.*smoke.*tiny"):
        config.build("nope")


def test_unknown_key_is_an_error_naming_the_fix():
    with pytest.raises(config.ConfigError, match=r"unknown key\(s\) \['n_shufles'\] in parameter 'similarity'"):
        config.build("tiny", similarity={"n_shufles": 10})


def test_unknown_top_level_parameter(tmp_path, monkeypatch):
    raw = yaml.safe_load((config.PARAMS_DIR / "smoke.yaml").read_text())
    raw["colour"] = "red"
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.setattr(config, "PARAMS_DIR", tmp_path)
    with pytest.raises(config.ConfigError, match="unknown parameter.*colour"):
        config.build("bad")


def test_layer_pair_must_be_extracted():
    with pytest.raises(config.ConfigError, match="layer 7 of model B"):
        config.build("tiny", matching={"layer_pair": [2, 7]})


def test_alignment_mode_is_checked():
    assert config.build("tiny").data["align"] == "auto"
    with pytest.raises(config.ConfigError, match="data.align must be 'auto', 'tokens', 'token_end' or 'word'"):
        config.build("tiny", data=dict(config.load_profile("tiny")["data"], align="chars"))


def test_layers_for_every_model():
    with pytest.raises(config.ConfigError, match="give a list of layers for every model"):
        config.build("tiny", layers={"A": [0]})


def test_params_hash_changes_with_any_parameter():
    base = config.build("tiny")
    other = config.build("tiny", similarity={"n_shuffles": 999})
    assert base.params_hash != other.params_hash
    assert config.build("tiny").params_hash == base.params_hash


def test_profile_file_by_path_and_every_section_required(tmp_path):
    raw = yaml.safe_load((config.PARAMS_DIR / "smoke.yaml").read_text())
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump(dict(raw, profile="mine")))
    assert config.load_profile(str(tmp_path / "mine.yaml"))["profile"] == "mine"
    del raw["subspaces"]
    (tmp_path / "partial.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(config.ConfigError, match=r"lacks the section\(s\) \['subspaces'\].*Fix"):
        config.load_profile(str(tmp_path / "partial.yaml"))


def test_all_sections_given_make_the_profile_a_label():
    sections = {k: v for k, v in config.load_profile("smoke").items() if k != "profile"}
    cfg = config.build("my-run", **sections)
    assert cfg.profile == "my-run" and cfg.data == config.build("smoke").data
    with pytest.raises(config.ConfigError, match="plain name"):
        config.build("../escape", **sections)


def test_notebook_with_only_the_profile_changed_gets_that_profile(capsys):
    """The parameters cells hold the tiny values: setting only `profile = "pythia"` must not run tiny's."""
    tiny = {k: v for k, v in config.load_profile("tiny").items() if k != "profile"}
    cfg = config.build("pythia", **tiny)
    assert cfg == config.build("pythia") and cfg.models["A"]["name"] == "pythia-70m"
    assert "taking its parameters from params/pythia.yaml" in capsys.readouterr().out
    edited = dict(tiny, similarity=dict(tiny["similarity"], n_shuffles=10))  # an edited cell is taken as it is
    assert config.build("pythia", **edited).models == config.build("tiny").models
