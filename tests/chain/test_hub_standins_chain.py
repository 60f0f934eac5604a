"""The `pythia` profile's chain 01-09, offline: its own models, SAE releases and hook conventions,
read from local stand-ins in the hub's formats (featlib.tools.standins, small scale); only the sizes and
the dataset path differ from params/pythia.yaml (``make pythia-standin`` runs it at the real sizes)."""

import json

import nbformat
import yaml

from featlib import step
from featlib.tools import chain, standins
from featlib.config import PARAMS_DIR, REPO

LABEL = "pythia-standin-small"


def standin_profile(root):
    pythia = yaml.safe_load((PARAMS_DIR / "pythia.yaml").read_text())
    p = standins.standin_profile(root, LABEL)
    p["data"].update(n_docs=0, seq_len=65, n_eval_tokens=8192, n_train_tokens=8192, batch_size=16)
    p["layers"] = {"A": [0, 1], "B": [0, 1, 2]}
    p["comparisons"] = [{"a": "A", "b": "B", "layers": [1, 1], "kind": "cross"}]
    p["similarity"].update(n_shuffles=50, layerwise_shuffles=20)
    p["subspaces"].update(n_random_sets=10, min_features=2)
    p["universal"].update(expansion=2, k=8, batch_size=256, steps=100, warmup_steps=10, dead_steps=20)
    p["atlas"].update(n_active=100, n_random=20)
    p["transfer"] = dict(max_pairs=20, folds=2, n_rows=2, n_tokens=9, n_calibration=4, gallery=2, gallery_tokens=4)
    assert p["models"] == pythia["models"] and p["sae"] == pythia["sae"], "the stand-in profile loads exactly what pythia loads"
    return p


def test_pythia_chain_runs_offline_on_standins(standins, tmp_path, monkeypatch):
    monkeypatch.setenv("FEATUNIV_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("FEATUNIV_DEVICE", "cpu")
    path = tmp_path / f"{LABEL}.yaml"
    path.write_text(yaml.safe_dump(standin_profile(standins)))
    timings = chain.run(str(path), jobs=2)  # 04-09 two at a time, as make figures on two CPUs
    assert list(timings) == [nb.stem for nb in chain.notebooks()]
    manifest = json.loads((REPO / "figures" / LABEL / "manifest.json").read_text())
    assert {f["notebook"] for f in manifest["figures"]} == {f"notebooks/{nb.name}" for nb in chain.notebooks()}
    for nb in chain.notebooks():
        executed = nbformat.read(REPO / "build" / LABEL / nb.name, as_version=4)
        text = "".join(o.get("text", "") for c in executed.cells for o in c.get("outputs", []))
        assert "all checks passed" in text
    # published SAEs need no SAE-training activations: the train split holds only the universal SAE's layers
    params = [step.Artifact("activations", p).meta["spec"]["params"] for p in (tmp_path / "cache" / "activations").iterdir()]
    stored = sorted((p["split"], tuple(p["layers"])) for p in params)
    assert stored == [("eval", (0, 1)), ("eval", (0, 1, 2)), ("train", (1,)), ("train", (1,))], stored
