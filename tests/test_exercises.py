"""The coursework track (exercises/, docs/coursework.md): the student notebooks are what `make exercises` gives
from their solutions, every check fails on its stub and passes on its solution, every solution notebook runs
end to end on the tiny profile with every check passing, and the notebooks open on Colab through their badges."""

import ast
import re
import shutil

import nbformat
import pytest

from featlib import coursework
from featlib.config import REPO
from featlib.tools import chain, colab, exercises

SOLUTIONS = exercises.solution_paths()


def student_path(path):
    return REPO / exercises.FOLDER / path.name


def functions(nb):
    """The functions the notebook's cells tagged ``exercise`` define (each cell runs alone: it imports what it needs)."""
    found = {}
    for cell in nb.cells:
        if "exercise" in cell.metadata.get("tags", []):
            space = {}
            exec(compile(cell.source, "<exercise>", "exec"), space)
            found |= {k: v for k, v in space.items() if callable(v) and getattr(v, "__module__", None) is None}
    return found


def test_four_to_six_exercises_each_with_its_student_notebook():
    assert 4 <= len(SOLUTIONS) <= 6
    assert [p.name[:2] for p in SOLUTIONS] == [f"{i:02d}" for i in range(1, len(SOLUTIONS) + 1)]
    assert sorted(p.name for p in (REPO / exercises.FOLDER).glob("[0-9][0-9]_*.ipynb")) == [p.name for p in SOLUTIONS]


def test_student_notebooks_are_what_make_exercises_gives():
    assert exercises.stale() == [], "run make exercises"
    assert exercises.main(["--check"]) == 0


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.stem)
def test_student_notebook_hides_every_solution(path):
    solution, text = nbformat.read(path, as_version=4), exercises.render(path)
    assert text == exercises.render(path), "the same solutions give the same bytes"
    student = nbformat.reads(text, as_version=4)
    assert [c.id for c in student.cells] == [c.id for c in solution.cells]
    assert exercises.BEGIN not in text and exercises.END not in text
    for cell, mine in zip(solution.cells, student.cells):
        if cell.cell_type == "code":
            assert not mine.outputs and mine.execution_count is None
            hidden = re.findall(rf"{exercises.BEGIN}\n(.*?)\n\s*{exercises.END}", cell.source, re.S)
            for block in hidden:
                body = [ln.strip() for ln in block.splitlines() if len(ln.strip()) > 12 and not ln.strip().startswith("#")]
                assert not any(ln in mine.source for ln in body), f"{path.name}: a solution line left in the student version"
            assert (exercises.STUB in mine.source) == bool(hidden)
        elif "answer" in cell.metadata.get("tags", []):
            assert mine.source == exercises.ANSWER
        else:
            assert mine.source == cell.source or mine is student.cells[0]


def test_a_stale_student_notebook_or_an_unclosed_block_is_caught(tmp_path):
    root = tmp_path / "repo"
    shutil.copytree(REPO / exercises.FOLDER, root / exercises.FOLDER)
    assert exercises.stale(root) == []
    path = root / exercises.SOLUTIONS / SOLUTIONS[0].name
    nb = nbformat.read(path, as_version=4)
    nb.cells[1].source += "\nprint('changed')"
    nbformat.write(nb, path)
    assert exercises.stale(root) == [f"{exercises.FOLDER}/{path.name}"]
    (root / exercises.FOLDER / "09_extra.ipynb").write_text("{}")
    assert exercises.stale(root)[-1] == f"{exercises.FOLDER}/09_extra.ipynb (no solution)"
    with pytest.raises(ValueError, match="without '# END SOLUTION'. Fix: close"):
        exercises.strip_solutions("def f():\n    # BEGIN SOLUTION\n    return 1\n", "x.ipynb, cell 3")
    with pytest.raises(ValueError, match="line 1: '# END SOLUTION' outside a solution block"):
        exercises.strip_solutions("# END SOLUTION\n", "x.ipynb, cell 3")
    assert exercises.strip_solutions("def f():\n    # BEGIN SOLUTION\n    return 1\n    # END SOLUTION\nf", "x") == \
        f"def f():\n    {exercises.STUB}\nf"


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.stem)
def test_every_check_fails_on_its_stub_and_passes_on_its_solution(path):
    """On fresh random data (no study: the study's cases run in the solution notebooks below)."""
    solved, stubs = functions(nbformat.read(path, as_version=4)), functions(nbformat.read(student_path(path), as_version=4))
    assert solved and set(solved) == set(stubs) and set(solved) <= set(coursework.CHECKS)
    for name in solved:
        result = coursework.CHECKS[name](stubs[name])
        assert not result and result.message.startswith("not implemented yet"), repr(result)
        result = coursework.CHECKS[name](solved[name])
        assert result, repr(result)


def test_every_check_belongs_to_an_exercise():
    names = set().union(*(functions(nbformat.read(p, as_version=4)) for p in SOLUTIONS))
    assert names == set(coursework.CHECKS)


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.stem)
def test_exercise_layout(path):
    nb = nbformat.read(path, as_version=4)
    student = nbformat.read(student_path(path), as_version=4)
    assert colab.has_header(nb, path.name, exercises.SOLUTIONS) and colab.has_header(student, path.name, exercises.FOLDER)
    heading = nb.cells[0].source.split("\n\n")[1]
    assert heading.startswith(f"# Exercise {int(path.name[:2])} ·") and heading.endswith(exercises.SUFFIX)
    assert "**You will learn**" in nb.cells[0].source and "**Time.**" in nb.cells[0].source
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and chain.notebook_parameters(path) == ("tiny", {})
    for i, cell in enumerate(nb.cells):
        if "exercise" in cell.metadata.get("tags", []):
            check = nb.cells[i + 1]
            assert "check" in check.metadata.get("tags", []), f"{path.name}: an exercise cell without a check cell after it"
            defined = [n.name for n in ast.parse(cell.source).body if isinstance(n, ast.FunctionDef)]
            for name in defined:
                assert f"cw.check_{name}({name}, study)" in check.source
        if cell.cell_type == "code":  # logic lives in featlib; an exercise cell holds the student's functions
            limit = 40 if "exercise" in cell.metadata.get("tags", []) else 20
            assert len([ln for ln in cell.source.splitlines() if ln.strip()]) <= limit, f"{path.name}: a long code cell"
        if cell.cell_type == "markdown" and cell.source.startswith("**Question"):
            assert "answer" in nb.cells[i + 1].metadata.get("tags", []), f"{path.name}: a question without an answer cell"
    assert nb.cells[-1].source.startswith("assert ") and "check" in nb.cells[-1].source


def test_the_track_is_linked_and_documented():
    readme, guide = (REPO / "README.md").read_text(), (REPO / "docs/coursework.md").read_text()
    assert "docs/coursework.md" in readme and "exercises/" in readme
    for path in SOLUTIONS:
        assert colab.badge(path.name, exercises.FOLDER) in guide, f"docs/coursework.md: no Colab badge of {path.name}"
        assert f"exercises/solutions/{path.name}" in guide


@pytest.fixture(scope="module")
def exercise_cache(tmp_path_factory):
    """One cache for every solution notebook: the first computes the tiny study's artifacts, the others reuse them.
    ``make test`` runs them after nbval with ``FEATUNIV_EXERCISE_CACHE`` set to nbval's cache, whose tiny artifacts
    (the same keys) they then reuse; unset, they start from an empty cache, as a student on Colab does."""
    import os
    from pathlib import Path

    shared = os.environ.get("FEATUNIV_EXERCISE_CACHE")
    return Path(shared) if shared else tmp_path_factory.mktemp("exercise-cache")


@pytest.mark.slow
@pytest.mark.beside_nbval
@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.stem)
def test_solution_notebook_runs_with_every_check_passing(path, exercise_cache, tmp_path, monkeypatch):
    import papermill

    monkeypatch.setenv("FEATUNIV_CACHE", str(exercise_cache))
    executed = papermill.execute_notebook(str(path), str(tmp_path / path.name), cwd=str(path.parent), kernel_name="python3",
                                          progress_bar=False, kernel_manager_class=chain.IdleShutdownKernelManager)
    checks = [c for c in executed.cells if "check" in c.metadata.get("tags", [])]
    shown = ["".join(o.get("data", {}).get("text/plain", "")) for c in checks for o in c.outputs]
    assert checks and all(shown) and all("✗" not in s and "✓" in s for s in shown), shown
