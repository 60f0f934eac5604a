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


def test_layers_for_every_model():
    with pytest.raises(config.ConfigError, match="give a list of layers for every model"):
        config.build("tiny", layers={"A": [0]})


def test_params_hash_changes_with_any_parameter():
    base = config.build("tiny")
    other = config.build("tiny", similarity={"n_shuffles": 999})
    assert base.params_hash != other.params_hash
    assert config.build("tiny").params_hash == base.params_hash
