"""The Colab header of every notebook: an "Open in Colab" badge in its title cell, and a block at the
top of its setup cell that, on Colab only, clones the project and installs its pinned requirements
(``scripts/colab_install.sh``: Colab's own torch is kept), then restarts the runtime once.
Elsewhere the block does nothing.

``python -m featlib.colab`` (re)writes both into ``notebooks/NN_*.ipynb``; the tests check they are
there. Forks change :data:`REPO_URL` and run it again.
"""

from __future__ import annotations

from pathlib import Path

import nbformat

from .config import REPO

REPO_URL = "https://github.com/featuniv/featuniv"
BRANCH = "main"
MARK = "# Colab only:"
END = '    os.chdir("/content/featuniv/notebooks")\n'


def badge(notebook: str) -> str:
    """Markdown of the badge that opens ``notebooks/<notebook>`` on Colab."""
    slug = REPO_URL.removeprefix("https://github.com/")
    url = f"https://colab.research.google.com/github/{slug}/blob/{BRANCH}/notebooks/{notebook}"
    return f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({url})"


def setup_block() -> str:
    """The Colab-only lines that open every notebook's setup cell."""
    return f'''{MARK} fetch featuniv and install its pinned requirements, keeping Colab's torch; the runtime
# then restarts once (run the notebook again). Elsewhere this block does nothing.
import os, sys
if "google.colab" in sys.modules:
    done = "/content/featuniv/.colab-installed"
    if not os.path.exists(done):
        !git clone -q --depth 1 -b {BRANCH} {REPO_URL} /content/featuniv || true
        !bash /content/featuniv/scripts/colab_install.sh && touch {{done}}
        assert os.path.exists(done), "featuniv's Colab install failed: see the output above"
        os.kill(os.getpid(), 9)  # restart so that the new packages load
''' + END


def _setup_cell(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    return next(c for c in nb.cells if c.cell_type == "code")


def has_header(nb: nbformat.NotebookNode, notebook: str) -> bool:
    return nb.cells[0].source.startswith(badge(notebook)) and _setup_cell(nb).source.startswith(setup_block())


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
    body = setup.source
    if body.startswith(MARK) and END in body:  # an older block (another REPO_URL or BRANCH)
        body = body.split(END, 1)[1].lstrip("\n")
    setup.source = setup_block() + "\n" + body
    nbformat.write(nb, path)
    return True


def main() -> None:
    for path in sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        print(f"{path.name}: {'stamped' if stamp(path) else 'up to date'}")


if __name__ == "__main__":
    main()
