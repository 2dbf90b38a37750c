"""The exercises grade honestly, and the student edition works as handed out.

For every notebook, the student edition (solution cells removed, outputs cleared) runs in a kernel cell by cell.
Every check cell must stop with its one "not done yet" line and nothing else. Then, in the same kernel, each
exercise is answered wrongly (the check must say "not right yet") and answered correctly under other variable
names than the solution's (the check must pass): so a check verifies exactly the names the exercise asks for,
against answers it works out itself. ``exercise_answers.py`` holds those answers, one entry per check cell.
"""

import re
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from exercise_answers import ANSWERS
from nanogpt_edu.exercises import NotDoneYet, NotRightYet, answers, check

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))  # the student edition is a repository tool
from student_edition import ANSWER_CELL, ANSWER_TAG, SOLUTION_TAG, build, student_notebook  # noqa: E402

NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
EXERCISE_HEADING = re.compile(r"^## Exercise (\d) \((core|stretch)\)", re.M)


def tags(cell) -> list[str]:
    return cell.metadata.get("tags", [])


def check_cells(nb) -> list:
    return [c for c in nb.cells if "check" in tags(c)]


def test_answers_reads_the_notebooks_names_and_reports_missing_ones_in_one_line():
    notebook = {"answers": answers, "longest": "x", "n_tokens": 3}  # a cell's globals are the notebook's names
    assert eval('answers("longest")', notebook) == "x"
    assert eval('answers("longest", "n_tokens")', notebook) == ("x", 3)
    with pytest.raises(NotDoneYet) as err:
        eval('answers("longest", "surely_not_defined", "nor_this")', notebook)
    assert str(err.value) == "define `surely_not_defined` and `nor_this` first (the exercise above asks for them)"
    assert err.value._render_traceback_() == [f"not done yet: {err.value}"]  # what Jupyter shows: one line
    with pytest.raises(NotRightYet) as err:
        check(notebook["longest"] == "y", "longest: compare the tokens' bytes, not their ids")
    assert err.value._render_traceback_() == ["not right yet: longest: compare the tokens' bytes, not their ids"]
    check(notebook["n_tokens"] == 3, "never shown")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_notebook_has_a_core_and_a_stretch_exercise_each_with_solution_and_check(path):
    nb = nbformat.read(path, as_version=4)
    headings = EXERCISE_HEADING.findall("\n".join(c.source for c in nb.cells if c.cell_type == "markdown"))
    kinds = [kind for _, kind in headings]
    assert len(headings) >= 2 and "core" in kinds and "stretch" in kinds, headings
    assert [int(n) for n, _ in headings] == list(range(1, len(headings) + 1))
    solutions = [c for c in nb.cells if SOLUTION_TAG in tags(c)]
    checks = check_cells(nb)
    assert len(solutions) == len(checks) == len(headings)
    for solution in solutions:
        assert solution.metadata.get("jupyter", {}).get("source_hidden"), "solutions are collapsed"
    for number, cell in enumerate(checks, start=1):
        assert cell.source.count("answers(") == 1, "a check fetches the exercise's names once, with answers()"
        assert (path.stem, number) in ANSWERS, f"tests/exercise_answers.py has no answers for {path.stem} #{number}"
    # the cell before each check is its solution: the student edition removes exactly that one
    for i, cell in enumerate(nb.cells):
        if "check" in tags(cell):
            assert SOLUTION_TAG in tags(nb.cells[i - 1])


def test_make_student_writes_every_notebook_without_solutions_or_outputs(tmp_path):
    written = build(ROOT / "notebooks", tmp_path)
    assert [p.name for p in written] == [p.name for p in NOTEBOOKS]
    assert (tmp_path / "README.md").is_file()
    for teacher, student in zip(NOTEBOOKS, written):
        t, s = nbformat.read(teacher, as_version=4), nbformat.read(student, as_version=4)
        assert not [c for c in s.cells if SOLUTION_TAG in tags(c)]
        assert all(not c.get("outputs") for c in s.cells if c.cell_type == "code")
        # each solution cell gives way to an empty answer cell, right before its check
        assert len(s.cells) == len(t.cells)
        assert len(check_cells(s)) == len(check_cells(t))
        for i, cell in enumerate(s.cells):
            if "check" in tags(cell):
                assert ANSWER_TAG in tags(s.cells[i - 1]) and s.cells[i - 1].source == ANSWER_CELL


def errors(cell) -> list:
    return [o for o in cell.get("outputs", []) if o.output_type == "error"]


def run(client: NotebookClient, index: int, source: str):
    cell = nbformat.v4.new_code_cell(source)
    client.execute_cell(cell, index)
    return cell


# Answers of every plausible wrong type: each asked name set to one of these (or to a function returning it, for
# exercises that ask for a function) must get one "not right yet" line from the check, never another error.
WRONG_TYPES = ["None", "[]", "[1, 2, 3]", "'some text'", "_np.int64(-7)", "_np.float64(-0.5)", "_torch.tensor(-7)",
               "_torch.tensor([0.5, 0.5])", "float('nan')"]


def asked_names(check_source: str) -> list[str]:
    return re.findall(r"[\"'](\w+)[\"']", re.search(r"answers\(([^)]*)\)", check_source)[1])


def write_answer(client: NotebookClient, nb, index: int, source: str) -> None:
    """Write ``source`` into the empty answer cell before check cell ``index`` and run it, as a learner does."""
    answer_cell = nb.cells[index - 1]
    assert ANSWER_TAG in tags(answer_cell)
    answer_cell.source = source
    client.execute_cell(answer_cell, index - 1)
    assert not errors(answer_cell), errors(answer_cell)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_student_edition_checks_say_not_done_yet_then_grade_wrong_and_other_names(path):
    nb = student_notebook(nbformat.read(path, as_version=4))
    expected_checks = len(check_cells(nb))
    client = NotebookClient(nb, timeout=300, kernel_name=nb.metadata.kernelspec.name, allow_errors=True,
                            resources={"metadata": {"path": str(path.parent)}})
    number = 0
    with client.setup_kernel():
        for index, cell in enumerate(nb.cells):
            if cell.cell_type != "code":
                continue
            client.execute_cell(cell, index)
            if "check" not in tags(cell):
                assert not errors(cell), f"{path.stem} cell {index} failed: {errors(cell)}"
                continue
            number += 1
            name = f"{path.stem} exercise {number}"
            (error,) = errors(cell)  # the check's only error is the "not done yet" line
            assert error.ename == "NotDoneYet", (name, error.ename, error.evalue)
            assert len(error.traceback) == 1 and error.traceback[0].startswith("not done yet: define `"), name
            assert [o for o in cell.outputs if o.output_type != "error"] == [], name
            for value in WRONG_TYPES:
                for answer in (value, f"lambda *args, **kwargs: {value}"):
                    names = asked_names(cell.source)
                    write_answer(client, nb, index, "import numpy as _np, torch as _torch\n"
                                 + "\n".join(f"{n} = {answer}" for n in names))
                    graded = run(client, index, cell.source)
                    assert [e.ename for e in errors(graded)] == ["NotRightYet"], (name, answer, errors(graded))
            answer = ANSWERS[(path.stem, number)]
            write_answer(client, nb, index, answer["wrong"])
            graded = run(client, index, cell.source)
            assert [e.ename for e in errors(graded)] == ["NotRightYet"], (name, errors(graded))
            assert graded.outputs[-1].traceback[0].startswith("not right yet: "), name
            for delegate in answer.get("delegates", []):  # the library under another name: never "done"
                write_answer(client, nb, index, delegate)
                graded = run(client, index, cell.source)
                assert [e.ename for e in errors(graded)] == ["NotRightYet"], (name, "delegation", errors(graded))
            write_answer(client, nb, index, answer["other_names"])
            passed = run(client, index, cell.source)
            assert not errors(passed), (name, errors(passed))
    assert number == expected_checks
