"""``make exercises``: the student notebooks ``exercises/NN_*.ipynb`` from their solutions, the source,
``exercises/solutions/NN_*.ipynb``.

In a solution notebook, the lines between ``# BEGIN SOLUTION`` and ``# END SOLUTION`` (each alone on its
line) of a code cell become one ``raise NotImplementedError`` at the block's indentation; a markdown cell
tagged ``answer`` becomes an empty answer for the student to write. The title cell's Colab badge points
at the student notebook and its heading loses " (solution)". Outputs and execution counts are cleared;
cell ids are the solution's, so the same solutions always give the same bytes. ``--check`` writes
nothing and exits 1 naming every student notebook that differs from what its solution gives (the tests
run it: a solution edited without ``make exercises`` fails CI).
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import nbformat

from ..config import REPO
from . import colab

FOLDER = "exercises"
SOLUTIONS = f"{FOLDER}/solutions"
BEGIN, END = "# BEGIN SOLUTION", "# END SOLUTION"
STUB = 'raise NotImplementedError("your code here")'
ANSWER = "**Your answer:** *(write it here)*"
SUFFIX = " (solution)"


def solution_paths(root: Path = REPO) -> list[Path]:
    return sorted((root / SOLUTIONS).glob("[0-9][0-9]_*.ipynb"))


def strip_solutions(source: str, where: str) -> str:
    """``source`` with every solution block replaced by ``raise NotImplementedError`` at the block's indentation."""
    out, inside = [], False
    for n, line in enumerate(source.splitlines(), 1):
        marker = line.strip()
        if marker in (BEGIN, END):
            if (marker == BEGIN) == inside:
                raise ValueError(
                    f"{where}, line {n}: {marker!r} {'inside' if inside else 'outside'} a solution block. "
                    f"Fix: pair every {BEGIN!r} with one {END!r}."
                )
            inside = marker == BEGIN
            if inside:
                out.append(line[: len(line) - len(line.lstrip())] + STUB)
        elif not inside:
            out.append(line)
    if inside:
        raise ValueError(f"{where}: {BEGIN!r} without {END!r}. Fix: close the solution block.")
    return "\n".join(out)


def student(nb: nbformat.NotebookNode, name: str) -> nbformat.NotebookNode:
    """The student version of the solution notebook ``nb`` (named ``name``)."""
    out = nbformat.v4.new_notebook(
        metadata={
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python"},
        }
    )
    for i, cell in enumerate(nb.cells):
        cell = copy.deepcopy(cell)
        tags = cell.metadata.get("tags", [])
        if cell.cell_type == "code":
            cell.source = strip_solutions(cell.source, f"{name}, cell {i}")
            cell.outputs, cell.execution_count = [], None
        elif "answer" in tags:
            cell.source = ANSWER
        cell.metadata = {"tags": tags} if tags else {}
        out.cells.append(cell)
    title = out.cells[0]
    title.source = title.source.replace(colab.badge(name, SOLUTIONS), colab.badge(name, FOLDER), 1).replace(
        SUFFIX, "", 1
    )
    return out


def render(path: Path) -> str:
    """The student notebook of the solution at ``path``, as the text written to ``exercises/``."""
    return nbformat.writes(student(nbformat.read(path, as_version=4), path.name)) + "\n"


def stale(root: Path = REPO) -> list[str]:
    """Student notebooks missing or different from what their solutions give, and ones with no solution."""
    out = [
        f"{FOLDER}/{p.name}"
        for p in solution_paths(root)
        if not (root / FOLDER / p.name).exists() or (root / FOLDER / p.name).read_text() != render(p)
    ]
    names = {p.name for p in solution_paths(root)}
    return out + [
        f"{FOLDER}/{p.name} (no solution)"
        for p in sorted((root / FOLDER).glob("[0-9][0-9]_*.ipynb"))
        if p.name not in names
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a student notebook is stale")
    args = parser.parse_args(argv)
    if args.check:
        bad = stale()
        for item in bad:
            print(f"{item} is out of date with {SOLUTIONS}/. Fix: run make exercises.")
        return 1 if bad else 0
    for path in solution_paths():
        target = REPO / FOLDER / path.name
        text = render(path)
        if not target.exists() or target.read_text() != text:
            tmp = target.with_suffix(".tmp")
            tmp.write_text(text)
            tmp.replace(target)
            print(f"{FOLDER}/{path.name}: written")
        else:
            print(f"{FOLDER}/{path.name}: up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
