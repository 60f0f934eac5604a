"""Profiles: typed values checked at build time (one-line messages), overrides, the resolved profile."""

import re

import pytest
import yaml

from featlib import config


def test_profiles_exist_and_validate():
    assert {"smoke", "tiny", "pythia", "gemma", "smollm-gemma"} <= set(config.available_profiles())
    for name in config.available_profiles():
        cfg = config.build(name)
        assert cfg.profile == name == cfg.label and cfg.overrides == {}
        assert len(cfg.params_hash) == 16
        assert cfg.comparisons and all({c.a, c.b} <= set(cfg.models) and c.a != c.b for c in cfg.comparisons)
        assert set(cfg.references.models) <= set(cfg.models)


def test_defaults_fill_every_key():
    cfg = config.build("pythia")  # pythia's sae section gives no architecture, epochs, ...
    assert cfg.sae.architecture == "topk" and cfg.sae.epochs == 4 and cfg.sae.b_dec_init == "zeros"
    assert cfg.data.align == "auto" and cfg.matching.max_bytes == 3 << 30
    assert cfg.comparisons == [config.ComparisonSpec(a="A", b="B", layers=[2, 5], kind="cross")]
    assert cfg.references.model_dump() == {"run": [], "models": ["A", "B"], "second_seed": 1, "init_seed": 0,
                                           "layers": "diagonal"}
    assert cfg.calibration.model_dump() == {"fraction": 0.5, "draws": 50, "grid_draws": 20, "inner_draws": 4, "seed": 0}
    tiny = config.build("tiny")
    assert tiny.references.model_dump() == {"run": ["seed", "random_init"], "models": ["A", "B"], "second_seed": 1,
                                            "init_seed": 0, "layers": "diagonal"}
    assert tiny.atlas.comparison == tiny.transfer.comparison == 0 and tiny.atlas.layers == []


def test_a_comparison_names_its_models_or_takes_the_first_two():
    cfg = config.build("tiny", {"comparisons": [{"layers": [2, 3]}, {"a": "B", "b": "A", "layers": [5, 1]}]})
    assert [(c.a, c.b, c.layers, c.kind) for c in cfg.comparisons] == [("A", "B", [2, 3], "cross"), ("B", "A", [5, 1], "cross")]
    assert config.build("tiny", {"comparisons": [{"b": "A", "a": "B", "layers": [5, 1]}]}).references.models == ["A", "B"]


def test_the_former_layout_is_refused_naming_where_each_key_went():
    for key, value, says in [
        ("comparisons", {"run": ["cross", "seed"]}, "is a mapping (the former layout)"),
        ("matching.layer_pair", [2, 3], "write comparisons: [{layers: [2, 3]}] and remove matching.layer_pair"),
        ("atlas.layer_pair", [2, 3], "rename it to atlas.layers"),
        ("universal.layers", [2, 3], "write universal.layers: {A: 2, B: 3}"),
    ]:
        with pytest.raises(config.ConfigError) as e:
            config.build("tiny", {key: value})
        assert "\n" not in str(e.value) and f"{key} = " in str(e.value) and says in str(e.value), str(e.value)


# (key, bad value, what the one-line message says about it: key = value, what is allowed)
NA = "is not allowed; allowed:"
BAD = [
    ("sae.architecture", "jumprelu", f"sae.architecture = 'jumprelu' {NA} 'topk', 'standard'."),
    ("universal.update", "everything", f"universal.update = 'everything' {NA} 'own', 'all_decoders'."),
    ("similarity.n_shuffles", "100", f"similarity.n_shuffles = '100' {NA} an integer >= 1."),
    ("models.A.source", "hubb", f"models.A.source = 'hubb' {NA} 'local', 'hub', 'gguf'."),
    ("matching.min_r", 1.5, f"matching.min_r = 1.5 {NA} a number, 0 <= min_r < 1."),
    ("references.run", ["seed", "sed"], f"references.run[1] = 'sed' {NA} 'seed', 'random_init'."),
    ("similarity.n_shuffles", 0, f"similarity.n_shuffles = 0 {NA} an integer >= 1."),
    ("models.B.dtype", "fp8", f"models.B.dtype = 'fp8' {NA} 'float32', 'float16', 'bfloat16', 'auto'."),
    ("matching.min_r", -0.1, f"matching.min_r = -0.1 {NA} a number, 0 <= min_r < 1."),
    ("similarity.variance", 0, f"similarity.variance = 0 {NA} a number, 0 < variance <= 1."),
    ("references.run", ["seed", "seed"], "references.run = ['seed', 'seed'] repeats an item; allowed: a list of distinct items from 'seed', 'random_init'."),
    ("data.source", "wiki", f"data.source = 'wiki' {NA} 'sotu', 'text_file', 'hf_dataset'."),
    ("data.align", "chars", f"data.align = 'chars' {NA} 'auto', 'tokens', 'token_end', 'word'."),
    ("data.split", "train", f"data.split = 'train' {NA} 'analysis', 'lm_heldout', 'lm_train'."),
    ("sae.source", "hub", f"sae.source = 'hub' {NA} 'train', 'pretrained'."),
    ("sae.format", "safetensors", f"sae.format = 'safetensors' {NA} 'sae_lens', 'sparsify'."),
    ("sae.b_dec_init", "median", f"sae.b_dec_init = 'median' {NA} 'zeros', 'mean'."),
    ("atlas.matching", "greedy", f"atlas.matching = 'greedy' {NA} 'best', 'hungarian'."),
    ("sae.epochs", 2.5, f"sae.epochs = 2.5 {NA} an integer >= 1."),
    ("sae.k", 0, f"sae.k = 0 {NA} an integer >= 1."),
    ("sae.expansion", 0, f"sae.expansion = 0 {NA} an integer >= 1."),
    ("sae.batch_size", -4, f"sae.batch_size = -4 {NA} an integer >= 1."),
    ("universal.steps", True, f"universal.steps = True {NA} an integer >= 1."),
    ("similarity.layerwise_shuffles", 0, f"similarity.layerwise_shuffles = 0 {NA} an integer >= 1."),
    ("subspaces.n_random_sets", 0, f"subspaces.n_random_sets = 0 {NA} an integer >= 1."),
    ("atlas.n_random", 0, f"atlas.n_random = 0 {NA} an integer >= 1."),
    ("data.prepend_bos", 1, f"data.prepend_bos = 1 {NA} true or false."),
    ("layers.A", [], f"layers.A = [] {NA} a non-empty list of integers >= 0."),
    ("layers.A", [0, -1], f"layers.A[1] = -1 {NA} an integer >= 0."),
    ("comparisons[0].layers", [2, 7], "comparisons[0].layers = [2, 7] names layer 7 of model B, which is not among its extracted "
                                      "layers; allowed: one extracted layer of each of A, B: A [0, 1, 2, 3]; B [0, 1, 2, 3, 4, 5]."),
    ("comparisons[0].layers", [2], f"comparisons[0].layers = [2] {NA} a list of 2 integers >= 0."),
    ("comparisons[0].a", "C", "comparisons[0].a = 'C' names no model; allowed: a model id among 'A', 'B'."),
    ("comparisons[0].b", "A", "comparisons[0].b = 'A' is the same model as a; allowed: a model other than a ('A')"),
    ("comparisons[0].kind", "seed", f"comparisons[0].kind = 'seed' {NA} 'cross'"),  # seed: a reference, not listed
    ("comparisons", [], f"comparisons = [] {NA} a non-empty list of mappings with the keys a, b, layers, kind."),
    ("universal.layers.A", 9, "universal.layers.A = 9 names layer 9 of model A, which is not among its extracted layers; "
                              "allowed: an extracted layer of A [0, 1, 2, 3]."),
    ("universal.layers", {"C": 1}, "universal.layers = {'C': 1} names model 'C', which the universal SAE does not read"),
    ("universal.models", ["A"], f"universal.models = ['A'] {NA} [] (every model) or at least two distinct model ids"),
    ("atlas.layers", [9, 3], "atlas.layers = [9, 3] names layer 9 of model A"),
    ("atlas.comparison", 1, "atlas.comparison = 1 names no comparison; allowed: the index of one of comparisons (0..0: A2–B3)."),
    ("transfer.comparison", 2, "transfer.comparison = 2 names no comparison"),
    ("references.models", ["C"], f"references.models = ['C'] {NA} distinct model ids among those the comparisons name: 'A', 'B'."),
    ("references.models", ["A", "A"], f"references.models = ['A', 'A'] {NA} distinct model ids among those the comparisons name"),
    ("references.layers", "grid", f"references.layers = 'grid' {NA} 'focus', 'diagonal', 'all'."),
    ("calibration.fraction", 0, f"calibration.fraction = 0 {NA} a number, 0 < fraction <= 0.5."),
    ("calibration.draws", 0, f"calibration.draws = 0 {NA} an integer >= 1."),
    ("references.second_seed", 0, "references.second_seed = 0 equals sae.seed; allowed: any integer but sae.seed (0)."),
]


def _one_line(msg, key, says, where):
    assert "\n" not in msg, msg
    assert msg.startswith(where) and says in msg and "Fix:" in msg and key.split("[")[0] in msg.split("Fix:")[1], msg


@pytest.mark.parametrize("key,value,says", BAD, ids=[f"{k}={v!r}" for k, v, _ in BAD])
def test_a_bad_value_in_the_profile_file_is_one_line_naming_key_value_allowed_and_file(tmp_path, key, value, says):
    raw = config.load_profile("tiny")
    node = raw
    *parents, leaf = [int(p) if p.isdigit() else p for p in re.findall(r"[^.\[\]]+", key)]
    for p in parents:
        node = node[p]
    node[leaf] = value
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(config.ConfigError) as e:
        config.build(str(path))
    _one_line(str(e.value), key, says, where=f"{path}: ")
    assert str(path) in str(e.value).split("Fix:")[1], "the fix names the file"


@pytest.mark.parametrize("key,value,says", BAD[:6], ids=[f"{k}={v!r}" for k, v, _ in BAD[:6]])
def test_a_bad_override_names_the_override(key, value, says):
    with pytest.raises(config.ConfigError) as e:
        config.build("tiny", {key: value})
    _one_line(str(e.value), key, says, where=f"params/tiny.yaml (override {key}): ")
    assert f"(override {key})" in str(e.value) and f"Fix: change the override {key}." in str(e.value)


def test_the_message_reads_as_documented(tmp_path):
    path = config.PARAMS_DIR / "tiny.yaml"
    with pytest.raises(config.ConfigError) as e:
        config.build("tiny", {"sae.architecture": "jumprelu"})
    assert str(e.value) == ("params/tiny.yaml (override sae.architecture): sae.architecture = 'jumprelu' is not allowed; "
                            "allowed: 'topk', 'standard'. Fix: change the override sae.architecture.")
    raw = config.load_profile("tiny")
    raw["sae"]["architecture"] = "jumprelu"
    mine = tmp_path / "tiny.yaml"
    mine.write_text(yaml.safe_dump(raw))
    with pytest.raises(config.ConfigError) as e:
        config.build(str(mine))
    assert str(e.value) == (f"{mine}: sae.architecture = 'jumprelu' is not allowed; allowed: 'topk', 'standard'. "
                            f"Fix: edit sae.architecture in {mine}.")
    assert path.exists()


def test_ceiling_and_floor_need_trained_saes():
    pretrained = {"sae.source": "pretrained", "sae.release": {"A": "r", "B": "r"}, "sae.sae_id": {"A": "x", "B": "x"}}
    with pytest.raises(config.ConfigError) as e:
        config.build("tiny", pretrained)
    msg = str(e.value)
    assert "\n" not in msg and "references.run" in msg and "'pretrained'" in msg
    assert msg.endswith("Fix: the ceiling and floor compare SAEs trained here; set sae.source: train or drop 'seed' and "
                        "'random_init' from references.run.")
    with pytest.raises(config.ConfigError, match="'random_init' only with sae.source 'train'"):
        config.build("tiny", dict(pretrained, **{"references.run": ["random_init"]}))
    cfg = config.build("tiny", dict(pretrained, **{"references.run": []}))
    assert cfg.sae.source == "pretrained"


def test_pretrained_saes_need_a_release_per_model():
    with pytest.raises(config.ConfigError, match=r"sae\.release = \{'A': 'r'\} lacks B"):
        config.build("pythia", {"sae.release": {"A": "r"}})


def test_unknown_keys_and_sections_fail_naming_the_fix(tmp_path):
    with pytest.raises(config.ConfigError, match=r"^params/tiny\.yaml \(override similarity\.n_shufles\): unknown key "
                       r"similarity\.n_shufles; known keys of similarity: variance, n_shuffles, seed, layerwise_shuffles\. Fix"):
        config.build("tiny", {"similarity.n_shufles": 10})
    with pytest.raises(config.ConfigError, match=r"unknown key models\.A\.revision.*Fix"):
        config.build("tiny", {"models.A.revision": "main"})
    raw = config.load_profile("smoke")
    raw["colour"] = "red"
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(config.ConfigError, match=r"bad\.yaml: unknown key colour; known keys: profile, models, .*comparisons, references, calibration, transfer\. "
                       r"Fix: check the spelling of colour in"):
        config.build(str(tmp_path / "bad.yaml"))
    with pytest.raises(config.ConfigError, match=r"not a mapping.*Fix: override sae\.k itself"):
        config.build("tiny", {"sae.k.x": 1})
    with pytest.raises(config.ConfigError, match="override 'profile' is not allowed"):
        config.build("tiny", {"profile": "other"})


def test_unknown_profile_names_the_available_ones():
    with pytest.raises(config.ConfigError, match="unknown profile 'nope'.*smoke.*tiny.*Fix"):
        config.build("nope")


def test_layers_for_every_model():
    with pytest.raises(config.ConfigError, match="give a list of layers for every model"):
        config.build("tiny", {"layers": {"A": [0]}})
    with pytest.raises(config.ConfigError, match=r"models\.C\.path = '' is empty"):
        config.build("tiny", {"models.C": {"source": "local"}, "layers.C": [0]})
    with pytest.raises(config.ConfigError, match=r"models\.C\.path = 'x' does not exist.*make models"):
        config.build("tiny", {"models.C": {"source": "local", "path": "x"}, "layers.C": [0]})
    cfg = config.build("tiny", {"models.C": {"source": "local", "path": "models/tiny/lm-a"}, "layers.C": [0],
                                "universal.layers.C": 0})  # no comparison names C: the universal SAE needs its layer
    assert list(cfg.models) == ["A", "B", "C"]


def test_sections_left_out_take_the_defaults_and_required_ones_are_named(tmp_path):
    raw = config.load_profile("smoke")
    for section in ("sae", "similarity", "subspaces", "universal", "atlas", "references", "calibration", "transfer"):
        del raw[section]
    del raw["profile"]
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump(raw))
    cfg = config.build(str(tmp_path / "mine.yaml"))
    assert cfg.profile == "mine"  # no profile key: the file's stem
    assert cfg.sae == config.build("pythia", {"sae": {}}).sae  # all defaults
    assert cfg.universal.update == "own" and cfg.references.run == [] and cfg.references.models == ["A", "B"]
    for required in ("data", "matching", "models", "layers", "comparisons"):
        part = dict(raw)
        del part[required]
        (tmp_path / "part.yaml").write_text(yaml.safe_dump(part))
        with pytest.raises(config.ConfigError, match=rf"part\.yaml: {required} is required.*Fix: set {required} in"):
            config.build(str(tmp_path / "part.yaml"))
    with pytest.raises(config.ConfigError, match=r"data\.source is required"):
        config.build(str(tmp_path / "mine.yaml"), {"data": {"seq_len": 64}})
    assert config.build(str(tmp_path / "mine.yaml"), {"matching": {}}).matching == config.Matching()  # every key has a default
    with pytest.raises(config.ConfigError, match=r"comparisons\[0\]\.layers is required"):
        config.build(str(tmp_path / "mine.yaml"), {"comparisons": [{"a": "A", "b": "B"}]})
    with pytest.raises(config.ConfigError, match=r"models = .* is not allowed; allowed: a mapping of at least 2 ids"):
        config.build(str(tmp_path / "mine.yaml"), {"models": {"A": {"source": "local", "path": "x"}}})


def test_overrides_apply_on_top_and_relabel_the_run():
    base = config.build("tiny")
    cfg = config.build("tiny", {"similarity.n_shuffles": 100, "layers.A": [1, 2]})
    assert cfg.similarity.n_shuffles == 100 and cfg.layers["A"] == [1, 2]
    assert cfg.similarity.variance == base.similarity.variance and cfg.data == base.data  # the rest stays
    assert cfg.profile == "tiny" and cfg.overrides == {"similarity.n_shuffles": 100, "layers.A": [1, 2]}
    assert cfg.label.startswith("tiny+") and len(cfg.label) == len("tiny+") + 6
    assert cfg.params_hash != base.params_hash
    again = config.build("tiny", {"similarity.n_shuffles": 100, "layers.A": [1, 2]})
    assert again == cfg and again.label == cfg.label and again.params_hash == cfg.params_hash
    assert config.build("tiny").params_hash == base.params_hash and base.label == "tiny"
    assert config.build("tiny", {"similarity.n_shuffles": 101}).label != config.build("tiny", {"similarity.n_shuffles": 100}).label
    model = config.build("tiny", {"models.B": {"source": "hub", "name": "pythia-70m"}})
    assert model.models["B"].model_dump() == {"source": "hub", "name": "pythia-70m", "path": "", "dtype": "float32"}
    assert model.models["B"] == config.ModelSpec(source="hub", name="pythia-70m")
    assert config.load_profile("tiny")["similarity"]["n_shuffles"] == 1000, "the profile itself is untouched"


def test_resolved_yaml_round_trips(tmp_path):
    for cfg in (config.build("tiny"), config.build("smoke", {"similarity.n_shuffles": 7, "universal.update": "all_decoders"})):
        text = cfg.resolved_yaml()
        assert text.startswith("# Resolved profile") and "params/" in text.splitlines()[0]
        assert yaml.safe_load(text)["profile"] == cfg.label
        (tmp_path / "resolved.yaml").write_text(text)
        again = config.build(str(tmp_path / "resolved.yaml"))
        assert again.as_dict() == dict(cfg.as_dict(), profile=cfg.label)
        assert again.params_hash == cfg.params_hash and again.label == cfg.label
        assert again == cfg or cfg.overrides, "without overrides, the very same Config"
    assert "with overrides: {similarity.n_shuffles: 7" in text


def test_universal_layers_default_to_the_first_comparison_naming_each_model():
    cfg = config.build("tiny")
    assert cfg.universal_layers == {"A": 2, "B": 3}
    assert config.build("tiny", {"universal.layers": {"A": 1, "B": 4}}).universal_layers == {"A": 1, "B": 4}
    assert config.build("tiny", {"universal.layers": {"B": 4}}).universal_layers == {"A": 2, "B": 4}
    three = {"models.C": {"source": "local", "path": "models/tiny/lm-a"}, "layers.C": [0, 1]}
    with pytest.raises(config.ConfigError, match=r"universal\.layers = \{\} lacks model 'C'.*add C: <layer>"):
        config.build("tiny", three)
    assert config.build("tiny", dict(three, **{"universal.layers": {"C": 1}})).universal_layers == {"A": 2, "B": 3, "C": 1}
    assert config.build("tiny", dict(three, **{"universal.models": ["A", "B"]})).universal_layers == {"A": 2, "B": 3}
    cfg = config.build("tiny", dict(three, comparisons=[{"a": "A", "b": "B", "layers": [2, 3]}, {"a": "C", "b": "B", "layers": [1, 5]}]))
    assert cfg.universal_layers == {"A": 2, "B": 3, "C": 1}


def test_profile_label_must_be_a_plain_name(tmp_path):
    raw = dict(config.load_profile("smoke"), profile="../escape")
    (tmp_path / "x.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(config.ConfigError, match="plain name.*Fix"):
        config.build(str(tmp_path / "x.yaml"))


def test_transfer_settings_are_checked():
    with pytest.raises(config.ConfigError, match=r"transfer\.n_tokens = 200 is longer than a row; allowed: at most data\.seq_len \(128\)"):
        config.build("tiny", {"transfer.n_tokens": 200})
    with pytest.raises(config.ConfigError, match=r"transfer\.prompts = \['ok', ' '\] holds an empty prompt"):
        config.build("tiny", {"transfer.prompts": ["ok", " "]})
    with pytest.raises(config.ConfigError, match=r"transfer\.folds"):
        config.build("tiny", {"transfer.folds": 1})
    with pytest.raises(config.ConfigError, match=r"transfer\.success_quantile"):
        config.build("tiny", {"transfer.success_quantile": 1.0})
