"""The Colab header of every notebook: an "Open in Colab" badge in its title cell, and a 4-line block at
the top of its setup cell that, on Colab only, clones the project and calls :func:`setup`: install the
pinned requirements once (``scripts/colab_install.sh``: Colab's own torch is kept), restart the runtime
once, then work in ``notebooks/``. Elsewhere the block does nothing.

``python -m featlib.tools.colab`` (re)writes both into ``notebooks/NN_*.ipynb`` (replacing older
headers, including the long pre-``featlib.tools`` block); the tests check they are there. The repository's
address is written once, in pyproject.toml (``[project.urls] Repository``, :func:`repo_url`): forks change
it there and run this again (the tests check that the notebooks and README's badges agree with it).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import nbformat

from ..config import REPO

BRANCH = "main"
CLONE = "/content/featuniv"
MARK = "# Colab only:"
END = f'    sys.path.insert(0, "{CLONE}"); from featlib.tools import colab; colab.setup()\n'
OLD_END = '    os.chdir("/content/featuniv/notebooks")\n'  # the last line of the long block before featlib.tools


def repo_url() -> str:
    """The repository's address: pyproject.toml's ``[project.urls] Repository``, the one place it is written."""
    return _toml_string((REPO / "pyproject.toml").read_text(), "project.urls", "Repository")


def _toml_string(text: str, table: str, key: str) -> str:
    """The plain string ``key = "..."`` (or ``'...'``) of ``[table]`` in TOML ``text``: just what
    :func:`repo_url` reads. Not a TOML parser: the standard library has one (``tomllib``) only from
    Python 3.11, and featuniv runs on 3.10 too."""
    in_table = False
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("["):
            in_table = line.split("#", 1)[0].strip() == f"[{table}]"
        elif in_table:
            m = re.fullmatch(rf"""{re.escape(key)}\s*=\s*(?:"([^"\\]*)"|'([^']*)')\s*(?:#.*)?""", line)
            if m:
                return m[1] if m[1] is not None else m[2]
    raise ValueError(f'pyproject.toml: no {key} = "..." in [{table}]')


def badge(notebook: str, folder: str = "notebooks") -> str:
    """Markdown of the badge that opens ``<folder>/<notebook>`` (a path in the repository) on Colab."""
    slug = repo_url().removeprefix("https://github.com/")
    url = f"https://colab.research.google.com/github/{slug}/blob/{BRANCH}/{folder}/{notebook}"
    return f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({url})"


def setup_block() -> str:
    """The Colab-only lines that open every notebook's setup cell (one featlib call after the clone)."""
    return (
        f"import sys  {MARK} fetch featuniv, install its pins (Colab's torch kept), restart once; elsewhere nothing\n"
        'if "google.colab" in sys.modules:\n'
        f"    !test -d {CLONE} || git clone -q --depth 1 -b {BRANCH} {repo_url()} {CLONE}\n"
    ) + END


def setup(root: str = CLONE) -> None:
    """On Colab: the first time, install featuniv's pins (``scripts/colab_install.sh``) and restart the
    runtime (run the notebook again then); every time, work in ``<root>/notebooks``. Elsewhere: nothing."""
    if "google.colab" not in sys.modules:
        return
    done = Path(root) / ".colab-installed"
    if not done.exists():
        proc = subprocess.Popen(
            ["bash", f"{root}/scripts/colab_install.sh"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        assert proc.stdout is not None  # stdout=PIPE
        for line in proc.stdout:  # shown in the notebook (a subprocess's own output would not be)
            print(line, end="", flush=True)
        assert proc.wait() == 0, "featuniv's Colab install failed: see the output above"
        done.touch()
        print(
            "featuniv installed: the runtime restarts once so that the new packages load; run the notebook again.",
            flush=True,
        )
        os.kill(os.getpid(), signal.SIGKILL)
    os.chdir(f"{root}/notebooks")


def _setup_cell(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    return next(c for c in nb.cells if c.cell_type == "code")


def has_header(nb: nbformat.NotebookNode, notebook: str, folder: str = "notebooks") -> bool:
    return nb.cells[0].source.startswith(badge(notebook, folder)) and _setup_cell(nb).source.startswith(setup_block())


def _strip_block(body: str) -> str:
    """``body`` without a Colab block at its top (this one, one of another address or branch, or the old long one)."""
    first = body.split("\n", 1)[0]
    if MARK in first:
        for end in (END, OLD_END):
            if end in body:
                return body.split(end, 1)[1].lstrip("\n")
    return body


def stamp(path: Path) -> bool:
    """Write the badge and the Colab block into one notebook (replacing older ones); True if it changed."""
    nb = nbformat.read(path, as_version=4)
    if has_header(nb, path.name):
        return False
    title = nb.cells[0]
    lines = title.source.splitlines()
    if lines and "colab-badge.svg" in lines[0]:
        lines = lines[2:] if len(lines) > 1 and not lines[1].strip() else lines[1:]
    title.source = badge(path.name) + "\n\n" + "\n".join(lines)
    setup = _setup_cell(nb)
    setup.source = setup_block() + "\n" + _strip_block(setup.source)
    nbformat.write(nb, path)
    return True


def main() -> None:
    for path in sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        print(f"{path.name}: {'stamped' if stamp(path) else 'up to date'}")


if __name__ == "__main__":
    main()
