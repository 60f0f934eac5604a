"""`make site` (featlib.tools.site) on small notebooks of its own: titles, the atlas IFrame, stale sites."""

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from featlib.tools import site

TITLE = "badge\n\n# 08 · The atlas\n\n**What it shows.** Two maps of `features`, *linked*. More text.\n\n**Inputs.** x"


def atlas_notebook(src: str) -> nbformat.NotebookNode:
    iframe = f'\n<iframe\n width="100%"\n src="{src}"\n frameborder="0"\n></iframe>\n'
    return new_notebook(cells=[new_markdown_cell(TITLE), new_code_cell("IFrame(...)", outputs=[
        new_output("execute_result", data={"text/html": iframe, "text/plain": "<IFrame>"}, execution_count=1)])])


def test_title_and_first_sentence_of_what_it_shows():
    page = site.describe(atlas_notebook("x.html"), "08_atlas.html")
    assert (page.title, page.what) == ("08 · The atlas", "Two maps of features, linked.")
    cut = new_notebook(cells=[new_markdown_cell("# 05 · Grid\n\n**What it shows.** Every pair:\n- one\n- two")])
    assert site.describe(cut, "05.html").what == "Every pair …"


def test_the_atlas_page_is_copied_beside_the_notebook_or_replaced_by_a_note(tmp_path, monkeypatch):
    monkeypatch.setattr(site, "NOTEBOOKS", tmp_path / "notebooks")
    monkeypatch.setattr(site, "REPO", tmp_path)
    (tmp_path / "build/atlas/tiny").mkdir(parents=True)
    (tmp_path / "build/atlas/tiny/atlas_A2_B3_best.html").write_text("<html>the page</html>")
    nb = atlas_notebook("../build/atlas/tiny/atlas_A2_B3_best.html")
    assert site.embed_atlas(nb, "tiny", tmp_path / "site/tiny") == []
    assert 'src="atlas/atlas_A2_B3_best.html"' in nb.cells[1].outputs[0].data["text/html"]
    assert (tmp_path / "site/tiny/atlas/atlas_A2_B3_best.html").read_text() == "<html>the page</html>"
    gone = atlas_notebook("../build/atlas/smoke+abc/atlas_A2_B3_best.html")
    assert site.embed_atlas(gone, "smoke+abc", tmp_path / "site/smoke+abc") == ["build/atlas/smoke+abc/atlas_A2_B3_best.html"]
    note = gone.cells[1].outputs[0].data["text/html"]
    assert "<iframe" not in note and "make atlas PROFILE=smoke</code>" in note


@pytest.mark.slow
def test_a_site_replaces_the_previous_one_and_never_a_folder_of_other_files(tmp_path):
    out = tmp_path / "site"
    site.build_site(out, ["tiny"])
    (out / "stale.html").write_text("from an older build")
    index = site.build_site(out, ["tiny"])
    assert not (out / "stale.html").exists() and 'href="tiny/01_extract_activations.html"' in index.read_text()
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit, match="not a site"):
        site.build_site(other, ["tiny"])
    with pytest.raises(SystemExit, match="no executed notebooks for nope"):
        site.build_site(out, ["nope"])


def test_sources_are_tiny_the_committed_runs_and_local_builds(tmp_path, monkeypatch):
    monkeypatch.setattr(site, "NOTEBOOKS", tmp_path / "notebooks")
    monkeypatch.setattr(site, "REPO", tmp_path)
    for folder in ("notebooks/smollm-gemma", "notebooks/.ipynb_checkpoints", "build/smoke", "build/atlas", "build/tiny"):
        (tmp_path / folder).mkdir(parents=True)
    for nb in ("notebooks/smollm-gemma/01_x.ipynb", "notebooks/.ipynb_checkpoints/01_x-checkpoint.ipynb", "build/smoke/01_x.ipynb",
               "build/tiny/01_x.ipynb"):
        (tmp_path / nb).write_text("{}")
    assert site.sources() == {"tiny": tmp_path / "notebooks", "smollm-gemma": tmp_path / "notebooks/smollm-gemma",
                              "smoke": tmp_path / "build/smoke"}
    (tmp_path / "build/smollm-gemma").mkdir()
    (tmp_path / "build/smollm-gemma/01_x.ipynb").write_text("{}")
    assert site.sources()["smollm-gemma"] == tmp_path / "build/smollm-gemma", "a local run replaces the committed one"
