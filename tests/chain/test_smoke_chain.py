"""The whole chain 01-08 through papermill on the smoke profile, in an empty cache."""

import json

import nbformat

from featlib import chain
from featlib.config import REPO


def test_smoke_chain(tmp_path, monkeypatch):
    monkeypatch.setenv("FEATUNIV_CACHE", str(tmp_path / "cache"))
    timings = chain.run("smoke")
    nbs = chain.notebooks()
    assert [nb.stem for nb in nbs] == list(timings) and len(nbs) >= 6

    manifest = json.loads((REPO / "figures/smoke/manifest.json").read_text())
    made = {f["notebook"] for f in manifest["figures"]}
    assert made == {f"notebooks/{nb.name}" for nb in nbs}, "every notebook saves at least one figure"
    for f in manifest["figures"]:
        assert (REPO / f["figure"]).stat().st_size > 0 and (REPO / f["pdf"]).exists()
        assert f["profile"] == "smoke" and f["params_hash"] == manifest["params_hash"]

    for nb in nbs:  # executed copies, outside the sources, with the smoke parameters injected
        executed = nbformat.read(REPO / "build/smoke" / nb.name, as_version=4)
        assert any("injected-parameters" in c.metadata.get("tags", []) for c in executed.cells)
        assert not any(o.get("output_type") == "error" for c in executed.cells for o in c.get("outputs", []))
        assert "all checks passed" in "".join(o.get("text", "") for c in executed.cells for o in c.get("outputs", []))
    # 04 re-pairs similarity.n_shuffles times, every cell of 05 similarity.layerwise_shuffles times
    from featlib.cache import read_meta

    shuffles = {read_meta(p)["spec"]["n_shuffles"] for p in (tmp_path / "cache" / "similarity").iterdir()}
    assert shuffles == {100, 50}, shuffles
    # a second run reuses every cached artifact: nothing new appears in the cache
    before = sorted(p.name for p in (tmp_path / "cache").glob("*/*"))
    chain.run("smoke", only=["04"])
    assert sorted(p.name for p in (tmp_path / "cache").glob("*/*")) == before


def test_atlas_hungarian_pairs_on_the_smoke_cache(tmp_path, monkeypatch):
    """The one-to-one atlas: pool correlations equal the full correlation matrix restricted to the
    pools, and the Hungarian pairs use every feature once."""
    import numpy as np

    from featlib import config, pipeline
    from featlib.correlation import correlate

    monkeypatch.setenv("FEATUNIV_CACHE", str(tmp_path / "cache"))
    cfg = config.build("smoke", atlas=dict(config.load_profile("smoke")["atlas"], matching="hungarian"))
    study = pipeline.open_study(cfg, device="cpu")
    at = pipeline.feature_atlas(study)
    (la, lb), ids = at.layers, study.ids
    assert len(np.unique(at.pairs[:, 0])) == len(at.pairs) == len(np.unique(at.pairs[:, 1])) >= 3
    ca, cb = pipeline.sae_codes(study, ids[0], la), pipeline.sae_codes(study, ids[1], lb)
    full = correlate(lambda: zip(pipeline.code_chunks(ca, 4096), pipeline.code_chunks(cb, 4096)),
                     int(ca["d_sae"]), int(cb["d_sae"]), keep_matrix=True).matrix.numpy()
    np.testing.assert_allclose(pipeline.pool_correlations(study, la, lb, at.pool_a, at.pool_b),
                               full[np.ix_(at.pool_a, at.pool_b)], atol=1e-6)
    np.testing.assert_allclose(at.r, full[at.pool_a[at.pairs[:, 0]], at.pool_b[at.pairs[:, 1]]], atol=1e-5)
