"""The whole chain 01-09 through papermill on the smoke-three profile (the smoke models plus a third, lm-a-seed1:
three comparisons of three models), in an empty cache."""

import json
import re

import nbformat
import pytest
import pandas as pd

from featlib import step
from featlib.tools import chain, site
from featlib.tools.tidy import tidy_outputs
from featlib.config import REPO


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    """One cache for this file: the atlas test below reuses the chain's A and B (smoke's keys are smoke-three's)."""
    return tmp_path_factory.mktemp("smoke-cache")


def test_smoke_chain_of_three_models(tmp_path, shared_cache, monkeypatch, capfd):
    cache = shared_cache / "cache"
    monkeypatch.setenv("FEATUNIV_CACHE", str(cache))
    # two notebooks at once after 03, as make figures runs them on two CPUs (their kernels' sockets apart)
    timings = chain.run("smoke-three", jobs=2)
    out, err = capfd.readouterr()  # the chain's log, the kernels' own output included
    assert not re.search("WARNING|ERROR|KeyboardInterrupt", out + err), (out + err)[-3000:]
    nbs = chain.notebooks()
    assert [nb.stem for nb in nbs] == list(timings) and len(nbs) >= 6

    manifest = json.loads((REPO / "figures/smoke-three/manifest.json").read_text())
    made = {f["notebook"] for f in manifest["figures"]}
    assert made == {f"notebooks/{nb.name}" for nb in nbs}, "every notebook saves at least one figure"
    for f in manifest["figures"]:
        assert (REPO / f["figure"]).stat().st_size > 0 and (REPO / f["pdf"]).exists()
        assert f["profile"] == "smoke-three" and f["params_hash"] == manifest["params_hash"]

    for nb in nbs:  # executed copies, outside the sources, with the smoke parameters injected
        executed = nbformat.read(REPO / "build/smoke-three" / nb.name, as_version=4)
        assert any("injected-parameters" in c.metadata.get("tags", []) for c in executed.cells)
        assert not any(o.get("output_type") == "error" for c in executed.cells for o in c.get("outputs", []))
        assert "all checks passed" in "".join(o.get("text", "") for c in executed.cells for o in c.get("outputs", []))
        assert all(tidy_outputs(c.outputs) == c.outputs for c in executed.cells if c.cell_type == "code")
        assert not executed.metadata.papermill.input_path.startswith("/")
    # 04 re-pairs similarity.n_shuffles times, every cell of 05 similarity.layerwise_shuffles times
    shuffles = {step.Artifact("similarity", p).meta["spec"]["params"]["n_shuffles"]
                for p in (cache / "similarity").iterdir()}
    assert shuffles == {100, 50}, shuffles
    # every comparison of the profile ran: the seed comparison trained a second SAE of A's focus layer
    compared = {step.Artifact("matching", p).meta["comparison"] for p in (cache / "matching").iterdir()}
    assert {"cross A2–B3", "cross C2–B3", "model_seed A2–C2", "seed A2–A2 (seed 1)", "random_init B3–B3 (random init)"} \
        <= compared, compared
    assert not any("C2–C2" in c for c in compared), "references.models [A, B]: no ceiling or floor of C"
    assert {step.Artifact("sae", p).meta["seed"] for p in (cache / "sae").iterdir()} == {0, 1}
    # 03-06 take every comparison: 04 calibrates each, 05 draws each one's grid in files of its own
    results = REPO / "results/smoke-three"
    cal = pd.read_csv(results / "04_svcca_rsa__calibration.csv")
    assert list(dict.fromkeys(cal.comparison)) == ["cross A2–B3", "cross C2–B3", "model_seed A2–C2"]
    assert set(pd.read_csv(results / "05_layerwise__grid.csv").sides) == {"A-B", "C-B", "A-C"}
    for name in ("heatmaps", "heatmaps_C2-B3", "calibrated_grid_A2-C2", "other_metrics_A2-C2"):
        assert (REPO / f"figures/smoke-three/05_layerwise__{name}.png").is_file(), name
    groups = pd.read_csv(results / "06_semantic_subspaces__group_scores.csv")
    assert {"cross A2–B3", "cross C2–B3", "model_seed A2–C2"} <= set(groups.comparison)
    # 07: one universal SAE over the three models, and the overlap of every comparison it reads
    usae = [step.Artifact("usae_metrics", p) for p in (cache / "usae_metrics").iterdir()]
    assert len(usae) == 1 and [o["comparison"] for o in usae[0].json("scalars.json")["overlaps"]] == \
        ["cross A2–B3", "cross C2–B3", "model_seed A2–C2"]
    assert pd.read_csv(results / "07_universal__cross_r2.csv").shape == (3, 4), "encode and decode A, B and C"
    # tidy tables of every notebook, listed in the manifest
    tables = {t["notebook"] for t in manifest["results"]}
    assert tables == {f"notebooks/{nb.name}" for nb in nbs}, tables
    assert all((REPO / t["table"]).stat().st_size > 0 for t in manifest["results"])
    # the executed copies as a static site (make site): every notebook, 08's atlas page copied beside it
    index = site.build_site(tmp_path / "site", ["smoke-three"])
    listed = re.findall(r'href="(smoke-three/[^"]+)"', index.read_text())
    assert listed == [f"smoke-three/{nb.stem}.html" for nb in nbs]
    assert all("data:image/png;base64" in (index.parent / page).read_text() for page in listed)
    atlas = re.findall(r'<iframe[^>]*src="([^"]+)"', (index.parent / "smoke-three/08_atlas.html").read_text())
    assert atlas and all((index.parent / "smoke-three" / src).is_file() for src in atlas)
    # a second run reuses every cached artifact: nothing new appears in the cache
    before = sorted(p.name for p in cache.glob("*/*"))
    chain.run("smoke-three", only=["04"])
    assert sorted(p.name for p in cache.glob("*/*")) == before


def test_atlas_hungarian_pairs_on_the_smoke_cache(shared_cache, monkeypatch):
    """The one-to-one atlas: pool correlations equal the full correlation matrix restricted to the
    pools, and the Hungarian pairs use every feature once."""
    import numpy as np

    from featlib import config, sparse_rows
    from featlib import study as fs
    from featlib.correlation import correlate

    monkeypatch.setenv("FEATUNIV_CACHE", str(shared_cache / "cache"))
    cfg = config.build("smoke", {"atlas.matching": "hungarian", "references.run": []})
    study = fs.open_study(cfg, device="cpu")
    at = fs.feature_atlas(study)
    comp = fs.atlas_comparison(study)
    assert len(np.unique(at.pairs[:, 0])) == len(at.pairs) == len(np.unique(at.pairs[:, 1])) >= 3
    ca, cb = fs.sae_codes(study, comp.a), fs.sae_codes(study, comp.b)
    full = correlate(lambda: zip(sparse_rows.chunks(ca, 4096), sparse_rows.chunks(cb, 4096)),
                     ca.shape[1], cb.shape[1], keep_matrix=True).matrix.numpy()
    np.testing.assert_allclose(fs.pool_correlations(study, comp, at.pool_a, at.pool_b),
                               full[np.ix_(at.pool_a, at.pool_b)], atol=1e-6)
    np.testing.assert_allclose(at.r, full[at.pool_a[at.pairs[:, 0]], at.pool_b[at.pairs[:, 1]]], atol=1e-5)
