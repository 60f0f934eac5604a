"""Static checks of the notebooks and of the environment files (no execution)."""

import ast
import re

import nbformat
import pytest
import yaml

from featlib.config import REPO
from featlib.tools import chain, colab

NOTEBOOKS = chain.notebooks()


def test_nine_numbered_notebooks():
    assert [nb.name[:2] for nb in NOTEBOOKS] == ["01", "02", "03", "04", "05", "06", "07", "08", "09"]


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
    # exactly `profile = "tiny"` and `overrides = {}`, plain literals (papermill injects the same two names)
    values = {}
    for stmt in ast.parse(params.source).body:
        assert isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name)
        values[stmt.targets[0].id] = ast.literal_eval(stmt.value)
    assert values == {"profile": "tiny", "overrides": {}}
    assert chain.notebook_parameters(path) == ("tiny", {})
    assert f'NOTEBOOK = "{path.stem}"' in setup.source
    assert any("plots.save_figure" in c.source for c in nb.cells), "figures go through featlib.plots.save_figure"
    assert "assert" in nb.cells[-1].source, "closing asserts on scientific invariants"


def test_notebooks_are_thin():
    """Logic lives in featlib: the code (blank lines aside) of notebooks 01–08 stays under half of the 852
    lines they had before featlib.study, a later notebook under 75 lines, and no code cell is longer than 20."""
    total = 0
    for path in NOTEBOOKS:
        mine = 0
        for cell in nbformat.read(path, as_version=4).cells:
            if cell.cell_type == "code":
                lines = [ln for ln in cell.source.splitlines() if ln.strip()]
                assert len(lines) <= 20, f"{path.name}: a code cell of {len(lines)} lines; move its logic to featlib"
                mine += len(lines)
        if path.name[:2] <= "08":
            total += mine
        else:
            assert mine < 75, f"{path.name}: {mine} code lines; move logic to featlib"
    assert total < 852 / 2, total


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
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        assert colab.has_header(nb, path.name), f"{path.name}: run `python -m featlib.tools.colab`"
        assert f"/blob/main/notebooks/{path.name})" in nb.cells[0].source


def test_the_repository_address_is_written_once():
    """README's badges use pyproject's address (the notebooks' are checked by has_header above)."""
    slug = colab.repo_url().removeprefix("https://github.com/")
    readme = (REPO / "README.md").read_text()
    assert colab.badge("01_extract_activations.ipynb") in readme
    assert f"https://mybinder.org/v2/gh/{slug}/main?" in readme
    assert sum(slug in ln for ln in readme.splitlines()) == 2, "only the two badges name the repository"


def test_colab_block_is_short_with_one_featlib_call():
    block = colab.setup_block().splitlines()
    assert len(block) <= 5 and colab.MARK in block[0] and block[1] == 'if "google.colab" in sys.modules:'
    assert "git clone" in block[2] and block[-1].strip().endswith("colab.setup()")
    assert sum("featlib" in line for line in block) == 1
    colab.setup()  # not on Colab: nothing happens (no install, no chdir, no restart)


OLD_BLOCK = """# Colab only: fetch featuniv and install its pinned requirements, keeping Colab's torch; the runtime
# then restarts once (run the notebook again). Elsewhere this block does nothing.
import os, sys
if "google.colab" in sys.modules:
    done = "/content/featuniv/.colab-installed"
    if not os.path.exists(done):
        !git clone -q --depth 1 -b main https://github.com/featuniv/featuniv /content/featuniv || true
        !bash /content/featuniv/scripts/colab_install.sh && touch {done}
        assert os.path.exists(done), "featuniv's Colab install failed: see the output above"
        os.kill(os.getpid(), 9)  # restart so that the new packages load
    os.chdir("/content/featuniv/notebooks")
"""


def test_colab_stamp_is_idempotent_and_replaces_an_old_header(tmp_path, monkeypatch):
    """On a minimal notebook of its own, with the long pre-featlib.tools block in its setup cell."""
    old_badge = colab.badge("01_x.ipynb")
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell(old_badge + "\n\n# 01 · title"),
        nbformat.v4.new_code_cell(OLD_BLOCK + "\n%matplotlib inline\nNOTEBOOK = \"01_x\""),
        nbformat.v4.new_code_cell('profile = "tiny"\noverrides = {}'),
    ])
    path = tmp_path / "01_x.ipynb"
    nbformat.write(nb, path)
    assert not colab.has_header(nbformat.read(path, as_version=4), path.name)
    assert colab.stamp(path) and not colab.stamp(path)  # the old block replaced, then nothing to do
    setup = nbformat.read(path, as_version=4).cells[1].source
    assert setup == colab.setup_block() + "\n%matplotlib inline\nNOTEBOOK = \"01_x\""
    monkeypatch.setattr(colab, "repo_url", lambda: "https://github.com/someone/fork")
    assert colab.stamp(path) and not colab.stamp(path)
    nb = nbformat.read(path, as_version=4)
    assert nb.cells[0].source.count("colab-badge.svg") == 1 and "someone/fork" in nb.cells[0].source
    assert nb.cells[0].source.endswith("# 01 · title")
    setup = nb.cells[1].source
    assert setup.count(colab.MARK) == 1 and "featuniv/featuniv" not in setup and "someone/fork" in setup
    assert setup.endswith("\n%matplotlib inline\nNOTEBOOK = \"01_x\"") and "os.kill" not in setup
    assert nb.cells[2].source == 'profile = "tiny"\noverrides = {}'


@pytest.mark.slow
def test_make_lab_serves_the_notebooks_with_the_projects_kernel(tmp_path):
    """`make lab`'s command starts JupyterLab on notebooks/, listing every notebook, with the
    environment's own kernel (no server stays behind)."""
    import json
    import os
    import socket
    import subprocess
    import sys
    import time
    import urllib.request
    from pathlib import Path

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    token = "featuniv-test"
    recipe = re.search(r"^lab: .*\n\t(.+)$", (REPO / "Makefile").read_text(), re.M).group(1)
    args = f"--no-browser --port={port} --IdentityProvider.token={token} --allow-root"
    cmd = recipe.replace("$(VENV)", str(Path(sys.executable).parent.parent)).replace("$(LAB_ARGS)", args).split()
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path), "JUPYTER_CONFIG_DIR": str(tmp_path / "config")}
    server = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        for _ in range(120):
            try:
                url = f"http://127.0.0.1:{port}/api/"
                listed = json.load(urllib.request.urlopen(f"{url}contents?token={token}", timeout=5))
                kernels = json.load(urllib.request.urlopen(f"{url}kernelspecs?token={token}", timeout=5))
                break
            except OSError:
                assert server.poll() is None, server.stderr.read().decode()[-2000:]
                time.sleep(0.5)
        else:
            raise AssertionError("JupyterLab did not answer within 60 s")
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert sorted(c["name"] for c in listed["content"] if c["type"] == "notebook") == [p.name for p in NOTEBOOKS]
    spec = kernels["kernelspecs"][kernels["default"]]["spec"]
    assert spec["display_name"] == "Python 3 (featuniv)" and Path(spec["argv"][0]).parent == Path(sys.executable).parent


def _bars(*, total: int | None, desc: str, nested: bool = False) -> str:
    """What tqdm itself writes to stderr for a bar (nested: with an inner bar that clears itself, as
    sae-lens's training bar inside the SAEs bar of notebook 02, which leaves cursor moves behind)."""
    import io

    from tqdm import tqdm

    out = io.StringIO()
    for _ in tqdm(range(2), total=total, desc=desc, file=out, mininterval=0):
        for _ in tqdm(range(3), desc="inner", file=out, mininterval=0, leave=False, position=1) if nested else ():
            pass
    return out.getvalue()


def test_tidy_drops_progress_bars_and_widgets_and_keeps_everything_else():
    from nbformat.v4 import new_output

    from featlib.tools.tidy import tidy_outputs

    warning = "/tmp/ipykernel_1/2.py:5: RuntimeWarning: All-NaN slice encountered\n  lo = np.nanmin(x)\n"
    bars = [_bars(total=5, desc="SAEs"), _bars(total=None, desc="batches"), _bars(total=5, desc="inner", nested=True)]
    assert all("it/s" in b or "s/it" in b for b in bars)
    outputs = [new_output("stream", name="stderr", text=b) for b in bars] + [
        new_output("stream", name="stderr", text=bars[0] + warning),
        new_output("stream", name="stdout", text="50%| of the pairs 3/4 [kept]\n"),
        new_output("stream", name="stderr", text="kept 50%| of 3/4 units\n"),
        new_output("display_data", data={"application/vnd.jupyter.widget-view+json": {"model_id": "x"},
                                         "text/plain": "Estimating norm scaling factor:   0%|   | 0/50 [00:00<?, ?it/s]"}),
        new_output("display_data", data={"text/plain": "<Figure>"}),
    ]
    kept = tidy_outputs(outputs)
    assert [o.get("text", o.get("data")) for o in kept] == [
        warning, "50%| of the pairs 3/4 [kept]\n", "kept 50%| of 3/4 units\n", {"text/plain": "<Figure>"}]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_notebooks_hold_no_progress_bars_or_machine_paths(path):
    from featlib.tools.tidy import tidy_outputs

    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert tidy_outputs(cell.outputs) == cell.outputs, f"{path.name}: progress bars (make notebooks tidies them)"
    assert "widgets" not in nb.metadata, f"{path.name}: saved widget state (make notebooks tidies it)"
    papermill = nb.metadata.get("papermill", {})
    assert not any(str(papermill.get(k, "")).startswith("/") for k in ("input_path", "output_path", "cwd"))
