"""Static checks of the notebooks and of the environment files (no execution)."""

import ast
import re

import nbformat
import pytest
import yaml

from featlib import chain, config
from featlib.config import REPO

NOTEBOOKS = chain.notebooks()


def test_eight_numbered_notebooks():
    assert [nb.name[:2] for nb in NOTEBOOKS] == ["01", "02", "03", "04", "05", "06", "07", "08"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_layout(path):
    nb = nbformat.read(path, as_version=4)
    title, setup, params = nb.cells[:3]
    heading = title.source.split("\n\n", 1)[1]  # after the Colab badge
    assert title.cell_type == "markdown" and heading.startswith(f"# {path.name[:2]} ·")
    assert "**Inputs.**" in title.source and "**Outputs.**" in title.source
    assert setup.cell_type == "code" and "import" in setup.source
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert tagged == [params], "exactly one cell tagged 'parameters', right after the setup cell"
    # plain literals only, and exactly the defaults of the tiny profile
    values = {}
    for stmt in ast.parse(params.source).body:
        assert isinstance(stmt, ast.Assign) and len(stmt.targets) == 1
        values[stmt.targets[0].id] = ast.literal_eval(stmt.value)
    assert values == yaml.safe_load((config.PARAMS_DIR / "tiny.yaml").read_text())
    assert f'NOTEBOOK = "{path.stem}"' in setup.source
    assert any("plots.save_figure" in c.source for c in nb.cells), "figures go through featlib.plots.save_figure"
    assert "assert" in nb.cells[-1].source, "closing asserts on scientific invariants"


def _pins(lines):
    out = {}
    for line in lines:
        m = re.match(r"^\s*(?:-\s*)?([A-Za-z0-9_.\-]+)==([^\s;#]+)", line)
        if m:
            out[m.group(1).lower().replace("_", "-")] = m.group(2)
    return out


def test_environment_files_name_the_same_versions():
    req = _pins((REPO / "requirements.txt").read_text().splitlines())
    constraints = _pins((REPO / "constraints.txt").read_text().splitlines())
    assert req and all(constraints[k] == v for k, v in req.items()), "requirements agree with constraints"
    for env_file in (REPO / "environment.yml", REPO / "binder/environment.yml"):
        env = yaml.safe_load(env_file.read_text())
        assert "python=3.11" in env["dependencies"]
        pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
        assert _pins(pip) == req, f"{env_file.name} pip section must use requirements.txt's pins"
    nodeps = _pins((REPO / "requirements-nodeps.txt").read_text().splitlines())
    assert nodeps and all(constraints[k] == v for k, v in nodeps.items()) and not set(nodeps) & set(req)
    for installer in ("Makefile", "binder/postBuild", "scripts/colab_install.sh"):
        assert re.search(r"pip install .*--no-deps -r requirements-nodeps\.txt", (REPO / installer).read_text()), installer


def test_every_notebook_opens_in_colab_with_a_colab_only_setup_block():
    from featlib import colab

    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        assert colab.has_header(nb, path.name), f"{path.name}: run `python -m featlib.colab`"
        assert f"/blob/main/notebooks/{path.name})" in nb.cells[0].source
    script = (REPO / "scripts/colab_install.sh").read_text()
    assert "grep -v '^torch==' requirements.txt" in script and 'torch==${torch_version}' in script, "Colab's torch is kept"


def test_colab_stamp_is_idempotent_and_replaces_an_old_header(tmp_path, monkeypatch):
    from featlib import colab

    path = tmp_path / NOTEBOOKS[0].name
    path.write_bytes(NOTEBOOKS[0].read_bytes())
    assert not colab.stamp(path)
    monkeypatch.setattr(colab, "REPO_URL", "https://github.com/someone/fork")
    assert colab.stamp(path) and not colab.stamp(path)
    nb = nbformat.read(path, as_version=4)
    assert nb.cells[0].source.count("colab-badge.svg") == 1 and "someone/fork" in nb.cells[0].source
    setup = next(c for c in nb.cells if c.cell_type == "code").source
    assert setup.count(colab.MARK) == 1 and "featuniv/featuniv" not in setup and "%matplotlib inline" in setup
