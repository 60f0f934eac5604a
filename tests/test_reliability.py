"""Reliability under bad input and faults: every outside input keyed by content, no hang, a full disk and
dead writers handled, strict weights, concurrent publishing, provenance of figures, and one clear line
(key, value, what is allowed, the fix, the file) for every bad profile a careful user tried."""

import errno
import json
import multiprocessing
import os
import shutil
import signal
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

from featlib import cache, config, corpus, models, plots, saes, step
from featlib import study as fs
from featlib.study import pairs
from featlib.tools import chain

REPO = config.REPO
NA = "is not allowed; allowed:"

# (overrides on the smoke profile, what the one-line message says): every one a case a user hit
BAD_PROFILES = [
    ({"data.n_train_tokens": 100}, "data.n_train_tokens = 100 is fewer than one batch; allowed: at least sae.batch_size (512)"),
    ({"data.n_train_tokens": 600, "universal.batch_size": 1024},
     "data.n_train_tokens = 600 is fewer than one batch; allowed: at least universal.batch_size (1024)"),
    ({"sae.k": 10_000}, "sae.k = 10000 exceeds the SAE width; allowed: at most the SAE width sae.expansion x d_model (4 x 128)"),
    ({"universal.k": 600}, "universal.k = 600 exceeds the width; allowed: at most the universal SAE's width universal.expansion x d_model (4 x 128)"),
    ({"data.seq_len": 1}, f"data.seq_len = 1 {NA} an integer >= 2"),
    ({"data.seq_len": 4096}, "data.seq_len = 4096 is longer than a model's context; allowed: at most model A's context (128 tokens)"),
    ({"data.prepend_bos": False}, "data.prepend_bos = False is not allowed; allowed: true"),
    ({"subspaces.groups": {"Months": "january"}}, f"subspaces.groups.Months = 'january' {NA}"),
    ({"subspaces.groups": {"Months": []}}, f"subspaces.groups.Months = [] {NA}"),
    ({"subspaces.groups": "months"}, f"subspaces.groups = 'months' {NA}"),
    ({"similarity.layerwise_shuffles": 0}, f"similarity.layerwise_shuffles = 0 {NA} an integer >= 1"),
    ({"matching.one_to_one": "false"}, f"matching.one_to_one = 'false' {NA} true or false"),
    ({"similarity.n_shuffles": "100"}, f"similarity.n_shuffles = '100' {NA} an integer >= 1"),
    ({"layers.A": [True, 2]}, f"layers.A[0] = True {NA} an integer >= 0"),
    ({"comparisons": [{"layers": [True, 3]}]}, f"comparisons[0].layers[0] = True {NA} an integer >= 0"),
    ({"models": [{"source": "local", "path": "models/tiny/lm-a"}]}, f"{NA} a mapping of at least 2 ids"),
    ({"matching.min_r": 1.5}, f"matching.min_r = 1.5 {NA} a number, 0 <= min_r < 1"),
    ({"data.source": "text_file", "data.path": "no/such.txt"}, "data.path = 'no/such.txt' does not exist; allowed: an existing UTF-8 text file"),
    ({"data.source": "hf_dataset"}, "data.path = '' is empty"),
    ({"data.revision": 3}, f"data.revision = 3 {NA} a string"),
    ({"layers.A": [2, 9]}, "layers.A = [2, 9] names layer 9, which model A does not have; allowed: layers 0..3 of model A"),
    ({"models.B.path": "models/tiny/none"}, "models.B.path = 'models/tiny/none' does not exist"),
    ({"universal.batch_size": 0}, f"universal.batch_size = 0 {NA} an integer >= 1"),
    ({"sae.batch_size": 0}, f"sae.batch_size = 0 {NA} an integer >= 1"),
    ({"transfer.n_tokens": 65}, "transfer.n_tokens = 65 is longer than a row; allowed: at most data.seq_len (64)"),
    ({"similarity.layerwise_shuffles": None}, f"similarity.layerwise_shuffles = None {NA} an integer >= 1"),
]


@pytest.mark.parametrize("overrides,says", BAD_PROFILES, ids=[",".join(map(str, o.items())) for o, _ in BAD_PROFILES])
def test_a_bad_profile_stops_at_build_with_one_line(tmp_path, overrides, says):
    raw = config.load_profile("smoke")
    node_over = {}
    for key, value in overrides.items():  # written into a profile file, as a user would
        node, parts = raw, key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
        node_over[key] = value
    path = tmp_path / "smoke.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(config.ConfigError) as e:
        config.build(str(path))
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{path}: ") and says in msg and "Fix:" in msg, msg
    with pytest.raises(config.ConfigError) as e:  # the same value as an override names the override
        config.build("smoke", node_over)
    if any(f"{k} = " in str(e.value) for k in node_over):
        assert "(override " in str(e.value) and "Fix: change the override" in str(e.value), str(e.value)


# ---- profile files -------------------------------------------------------------------------------------------

def test_duplicate_keys_name_the_key_the_lines_and_the_file(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text((config.PARAMS_DIR / "smoke.yaml").read_text().replace("  n_shuffles: 100\n",
                                                                           "  n_shuffles: 100\n  n_shuffles: 7\n"))
    with pytest.raises(config.ConfigError, match=rf"^{path} is not valid YAML \(.*duplicate key 'n_shuffles' \(lines "
                       r"\d+ and \d+\).*Fix: correct its syntax\.$"):
        config.build(str(path))


def test_a_yaml_syntax_error_names_the_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("profile: broken\nsae: [\n")
    with pytest.raises(config.ConfigError, match=rf"^{path} is not valid YAML .*Fix: correct its syntax"):
        config.build(str(path))


def test_a_missing_profile_path_names_the_path_not_a_doubled_suffix(tmp_path):
    with pytest.raises(config.ConfigError) as e:
        config.build(str(tmp_path / "nope.yaml"))
    msg = str(e.value)
    assert f"profile file '{tmp_path / 'nope.yaml'}' does not exist" in msg and ".yaml.yaml" not in msg and "Fix:" in msg
    with pytest.raises(config.ConfigError, match=r"\(it is a folder\)"):
        config.build(str(tmp_path) + "/")


def test_a_profile_file_that_is_not_utf8_names_the_file(tmp_path):
    path = tmp_path / "latin.yaml"
    path.write_bytes((config.PARAMS_DIR / "smoke.yaml").read_bytes() + "# caf\xe9\n".encode("latin-1"))
    with pytest.raises(config.ConfigError, match=rf"^{path} is not UTF-8 text \(byte 0xe9 at offset \d+\)\. Fix: save it as UTF-8\.$"):
        config.build(str(path))


# ---- text inputs ---------------------------------------------------------------------------------------------

def test_a_latin1_or_binary_text_file_names_the_file(tmp_path):
    latin, binary = tmp_path / "latin.txt", tmp_path / "data.bin"
    latin.write_bytes("Caf\xe9 au lait.\n\nSecond document.".encode("latin-1"))
    binary.write_bytes(b"text\x00\x01\x02 more")
    for path, says in ((latin, r"is not UTF-8 text \(byte 0xe9 at offset 3\)\. Fix: convert it"),
                       (binary, r"holds NUL bytes \(offset 4\): it is not a text file\. Fix")):
        with pytest.raises(ValueError, match=rf"^data\.path = '{path}': {path} {says}"):
            list(corpus.documents(config.Data(source="text_file", path=str(path))))


def test_a_relative_text_path_is_read_from_the_repository_like_every_other_path(tmp_path, monkeypatch):
    rel = "build/test-reliability-corpus.txt"
    (REPO / "build").mkdir(exist_ok=True)
    (REPO / rel).write_text("First document here.\n\nSecond one.")
    try:
        monkeypatch.chdir(REPO / "notebooks")  # where the notebooks run
        assert list(corpus.documents(config.Data(source="text_file", path=rel))) == ["First document here.", "Second one."]
        cfg = config.build("smoke", {"data.source": "text_file", "data.path": rel})
        assert cfg.data.path == rel
    finally:
        (REPO / rel).unlink()


def keys(overrides):
    """Activation and matching keys of a smoke run (planned: nothing is extracted or trained)."""
    cfg = config.build("smoke", overrides)
    with step.planning():
        study = fs.open_study(cfg, device="cpu")
        cross = study.comparison("cross")
        return {"acts": study.eval_acts("A").key, "matching": pairs.matching_artifact(study, cross).key}


def test_editing_the_text_file_gives_new_activations(tmp_path):
    text = tmp_path / "corpus.txt"
    text.write_text("\n\n".join(corpus.sotu_documents("analysis")[:40]))
    over = {"data.source": "text_file", "data.path": str(text)}
    before = keys(over)
    assert keys(over) == before
    text.write_text(text.read_text().replace("America", "Amerika", 1))
    after = keys(over)
    assert after["acts"] != before["acts"] and after["matching"] != before["matching"]


def _fake_sae_folder(root: Path, layer: int, seed: int) -> None:
    folder = root / f"layer_{layer}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cfg.json").write_text(json.dumps({"d_in": 128, "d_sae": 512}))
    (folder / "sae_weights.safetensors").write_bytes(np.random.default_rng(seed).bytes(256))


def test_swapping_a_local_sae_folder_gives_a_new_matching(tmp_path):
    for m in ("A", "B"):
        for layer in (1, 2, 3):
            _fake_sae_folder(tmp_path / m, layer, seed=layer)
    over = {"sae.source": "pretrained", "references.run": [], "sae.release": {"A": str(tmp_path / "A"), "B": str(tmp_path / "B")},
            "sae.sae_id": {"A": "layer_{layer}", "B": "layer_{layer}"}}
    before = keys(over)
    assert keys(over) == before
    _fake_sae_folder(tmp_path / "B", 3, seed=99)  # another SAE of the same width saved in its place
    after = keys(over)
    assert after["matching"] != before["matching"] and after["acts"] == before["acts"]


def test_the_paper_profiles_stream_a_parquet_revision_with_the_stand_ins_call(monkeypatch):
    import datasets

    calls = []
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **kw: calls.append((a, kw)) or iter([{"text": "x"}]))
    for name in ("pythia", "gemma"):
        data = config.build(name).data
        assert data.revision == "refs/convert/parquet" and data.data_files.endswith(".parquet")
        list(corpus.documents(data))
        assert calls[-1] == ((data.path,), {"split": "train", "streaming": True, "revision": "refs/convert/parquet",
                                             "data_files": {"train": data.data_files}})
    # the revision is in the activations' key
    from featlib.activations import TextParams

    text = TextParams.of(config.build("pythia").data, "token_end")
    assert (text.source, text.revision, text.data_files) == ("hf_dataset", "refs/convert/parquet", data.data_files)


# ---- models --------------------------------------------------------------------------------------------------

@pytest.fixture
def model_copy(tmp_path):
    folder = tmp_path / "lm-a"
    shutil.copytree(REPO / "models/tiny/lm-a", folder)
    return folder


def test_a_local_model_is_keyed_by_its_content_not_its_path(model_copy):
    original = models.load_local("A", REPO / "models/tiny/lm-a")
    assert models.load_local("A", model_copy).fingerprint == original.fingerprint, "same files elsewhere: same key"
    fields = json.loads((model_copy / "config.json").read_text())
    (model_copy / "config.json").write_text(json.dumps(dict(fields, act_fn="relu")))
    assert models.load_local("A", model_copy).fingerprint != original.fingerprint, "another architecture"


@pytest.mark.parametrize("damage,says", [("drop block 1", r"lacks blocks\.1\."), ("extra", r"has unknown extra\.weight")])
def test_a_weights_file_missing_or_adding_tensors_is_refused(model_copy, damage, says):
    from safetensors.torch import load_file, save_file

    state = load_file(model_copy / "model.safetensors")
    if damage == "drop block 1":
        state = {k: v for k, v in state.items() if not k.startswith("blocks.1.")}
    else:
        state["extra.weight"] = state["embed.W_E"][:2].clone()
    save_file(state, model_copy / "model.safetensors")
    lm = models.load_local("A", model_copy)
    with pytest.raises(ValueError, match=rf"weights file .*model\.safetensors {says}.*Fix: re-create the model folder"):
        lm.model


def test_rows_longer_than_a_models_context_are_refused_before_extraction():
    lm = SimpleNamespace(id="B", n_ctx=2048)
    models.check_context(lm, 2048)
    with pytest.raises(ValueError, match=r"data\.seq_len = 4096 is longer than model B's context \(2048 tokens\)\. "
                       r"Fix: set data\.seq_len to at most 2048"):
        models.check_context(lm, 4096)


def test_a_hub_model_is_keyed_by_the_commit_the_hub_cache_holds(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    assert models.hub_revision("pythia-70m") == []
    ref = tmp_path / "models--EleutherAI--pythia-70m" / "refs" / "main"
    ref.parent.mkdir(parents=True)
    ref.write_text("a" * 40)
    assert models.hub_revision("pythia-70m") == ["a" * 40]


# ---- training loops ------------------------------------------------------------------------------------------

@contextmanager
def deadline(seconds):
    """Fail (rather than hang the suite) if the block runs longer than ``seconds``."""
    def boom(*_):
        raise TimeoutError(f"still running after {seconds} s: it hangs")
    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def test_fewer_training_activations_than_a_batch_raise_instead_of_hanging():
    with deadline(20), pytest.raises(ValueError, match=r"10 training activations cannot fill one batch of "
                                     r"sae\.batch_size = 16\. Fix: raise data\.n_train_tokens"):
        next(saes._batches(np.zeros((10, 4), np.float32), 16, seed=0))
    with deadline(20), pytest.raises(ValueError, match="cannot fill one batch"):
        next(saes._batches(np.zeros((0, 4), np.float32), 16, seed=0))


def test_k_above_the_sae_width_is_refused_before_training():
    params = config.build("smoke").sae.model_copy(update={"k": 40, "expansion": 2})
    with pytest.raises(ValueError, match=r"sae\.k = 40 exceeds the SAE width sae\.expansion x d_model = 2 x 16\. Fix"):
        saes.train_sae(np.zeros((64, 16), np.float32), params, seed=0)


# ---- the cache -----------------------------------------------------------------------------------------------

def test_a_marker_without_its_file_list_is_reported_not_a_key_error(tmp_path):
    folder = tmp_path / "kind" / "0123456789abcdef"
    folder.mkdir(parents=True)
    (folder / cache.MARKER).write_text(json.dumps({"kind": "kind"}))
    with pytest.raises(cache.CorruptCacheError, match=r"does not list the artifact's files.*Fix: delete"):
        cache.is_complete(folder)


def test_temporary_folders_of_dead_processes_are_swept_others_kept(tmp_path):
    kind = tmp_path / "codes"
    kind.mkdir()
    host = cache._owner().rsplit("-", 1)[0]
    dead = multiprocessing.get_context("fork").Process(target=lambda: None)
    dead.start()
    dead.join()
    names = {"dead": f".0123456789abcdef.{host}-{dead.pid}.x1y2z3", "alive": f".0123456789abcdef.{host}-{os.getpid()}.a1b2c3",
             "elsewhere": f".0123456789abcdef.otherhost-{dead.pid}.q1w2e3"}
    for name in names.values():
        (kind / name).mkdir()
    removed = cache.sweep_stale(tmp_path)
    assert [p.name for p in removed] == [names["dead"]]
    assert sorted(p.name for p in kind.iterdir()) == sorted([names["alive"], names["elsewhere"]])
    assert cache.sweep_stale(tmp_path) == [], "once per process and root"


def test_a_full_disk_stops_extraction_with_the_size_needed_and_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "disk_usage", lambda p: SimpleNamespace(total=1 << 30, used=(1 << 30) - (1 << 20), free=1 << 20))
    with pytest.raises(cache.DiskFullError, match=r"A's activations need 1\.00 GiB in .* but only 1 MiB are free\. "
                       r"Fix: free disk space, or set FEATUNIV_CACHE"):
        step.reserve(tmp_path, 1 << 30, "A's activations")
    monkeypatch.undo()

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "posix_fallocate", full, raising=False)

    def produce(tmp):
        step.preallocated_npy(tmp / "layer_0.npy", (1000, 64))
    with pytest.raises(cache.DiskFullError, match=r"disk of .* is full: .* could not be allocated for layer_0\.npy\. Fix"):
        step.run("activations", {"x": 1}, {}, produce, version=1, root=tmp_path)
    assert [p for p in (tmp_path / "activations").iterdir()] == [], "no temporary folder, nothing published"


def test_preallocated_arrays_read_back_what_was_written(tmp_path):
    arr = step.preallocated_npy(tmp_path / "x.npy", (5, 3))
    arr[:] = np.arange(15, dtype=np.float32).reshape(5, 3)
    arr.flush()
    del arr
    assert np.array_equal(np.load(tmp_path / "x.npy"), np.arange(15, dtype=np.float32).reshape(5, 3))


def _writer(root: str, rounds: int, errors) -> None:
    for i in range(rounds):
        try:
            with cache.publish("race", {"same": "key"}, root=Path(root)) as tmp:
                (tmp / "data.bin").write_bytes(bytes(200_000))
        except Exception as e:  # noqa: BLE001 - every failure is counted
            errors.put(f"writer: {type(e).__name__}: {e}")


def _reader(root: str, rounds: int, errors) -> None:
    path = cache.artifact_dir("race", {"same": "key"}, Path(root))
    for _ in range(rounds):
        try:
            cache.is_complete(path)
        except Exception as e:  # noqa: BLE001
            errors.put(f"reader: {type(e).__name__}: {e}")


def test_concurrent_writers_and_readers_neither_crash_nor_see_a_half_written_artifact(tmp_path):
    ctx = multiprocessing.get_context("fork")
    errors = ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), 40, errors)) for _ in range(3)]
    procs += [ctx.Process(target=_reader, args=(str(tmp_path), 400, errors)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    found = []
    while not errors.empty():
        found.append(errors.get())
    assert all(p.exitcode == 0 for p in procs) and not found, found[:5]
    final = cache.artifact_dir("race", {"same": "key"}, tmp_path)
    assert cache.is_complete(final) and not [p for p in final.parent.iterdir() if p != final]


# ---- the chain and its outputs -------------------------------------------------------------------------------

def test_only_that_matches_no_notebook_is_an_error(capsys):
    assert chain.main(["--profile", "smoke", "--only", "99"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--only 99 matches no notebook" in err and "Fix:" in err


def test_a_copy_of_a_profile_with_other_values_cannot_overwrite_its_figures(tmp_path, monkeypatch):
    monkeypatch.setattr(plots, "FIGURES", tmp_path / "figures")
    plots.resolved_profile(config.build("smoke"))
    copy = tmp_path / "mine" / "smoke.yaml"  # a modified copy that keeps the name (and profile: smoke)
    copy.parent.mkdir()
    copy.write_text((config.PARAMS_DIR / "smoke.yaml").read_text().replace("n_shuffles: 100", "n_shuffles: 10"))
    with pytest.raises(config.ConfigError, match=r"figures/smoke/ holds the figures of params/smoke\.yaml \(params_hash "
                       r"[0-9a-f]{16}\), not of this profile .*Fix: save the profile under another file name"):
        plots.resolved_profile(config.build(str(copy)))
    same = tmp_path / "mine" / "same.yaml"  # a copy with the same values is the same run
    same.write_text((config.PARAMS_DIR / "smoke.yaml").read_text())
    plots.resolved_profile(config.build(str(same)))
    edited = config.build("smoke", {})  # the profile's own file, edited: its figures are re-made
    monkeypatch.setattr(config.Config, "params_hash", property(lambda self: "f" * 16))
    plots.resolved_profile(edited)
