"""The series as an nbgrader assignment, graded by nbgrader itself: generate_assignment, then autograde a submission
with the right answers and one with wrong ones, and read the scores from nbgrader's gradebook.

nbgrader is an optional extra (``pip install -e '.[classroom]'``; ``.ci/run`` installs it). Without it these tests
are skipped with one line, unless NANOGPT_EDU_REQUIRE_CLASSROOM=1 (``.ci/run`` sets it) makes that a failure.
"""

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))  # the assignment writer is a repository tool
sys.path.insert(0, str(ROOT / "tests"))
from exercise_answers import ANSWERS  # noqa: E402
from nbgrader_assignment import BEGIN, END, build  # noqa: E402
from series import SeriesError, read_notebook  # noqa: E402

NO_NBGRADER = "nbgrader tests need nbgrader, not installed: pip install -e '.[classroom]' (.ci/run does)"
if importlib.util.find_spec("nbgrader") is None:
    if os.environ.get("NANOGPT_EDU_REQUIRE_CLASSROOM") == "1":
        raise RuntimeError(f"{NO_NBGRADER}; NANOGPT_EDU_REQUIRE_CLASSROOM=1 makes them required")
    pytest.skip(NO_NBGRADER, allow_module_level=True)

NOTEBOOK_DIR = ROOT / "notebooks"
ASSIGNMENT = "series"
# autograde runs every notebook it grades top to bottom, twice here (a right and a wrong submission): two of the
# series, the two quickest to run (about 5 s each), keep this test short; the assignment is written and released whole
GRADED = ["01_config", "03_tokenization"]


def nbgrader(course: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": str(ROOT), "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    done = subprocess.run([sys.executable, "-m", "nbgrader", *args], cwd=course, env=env, capture_output=True,
                          text=True, timeout=1800)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def answer_cells(nb) -> list:
    return [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("solution")]


def submit(course: Path, student: str, answers) -> None:
    """Put a submission in nbgrader's ``submitted`` folder: the released notebooks with ``answers(stem, n, cell)``
    written into each answer cell (None keeps the released stub)."""
    folder = course / "submitted" / student / ASSIGNMENT
    folder.mkdir(parents=True)
    source = course / "source" / ASSIGNMENT
    for stem in GRADED:
        released = nbformat.read(course / "release" / ASSIGNMENT / f"{stem}.ipynb", as_version=4)
        solutions = answer_cells(nbformat.read(source / f"{stem}.ipynb", as_version=4))
        cells = answer_cells(released)
        assert len(cells) == len(solutions) >= 2
        for n, (cell, solution) in enumerate(zip(cells, solutions), start=1):
            assert BEGIN not in cell.source and "NotImplementedError" in cell.source  # the students' copy: no answer
            answer = answers(stem, n, solution)
            if answer is not None:
                cell.source = answer
        nbformat.write(released, folder / f"{stem}.ipynb")


def right(stem, n, solution):
    return solution.source.replace(BEGIN + "\n", "").replace("\n" + END, "")


def wrong(stem, n, solution):
    return ANSWERS.get((stem, n), {}).get("wrong")  # none written for it: the released stub, also no points


def test_nbgrader_generates_the_assignment_and_autogrades_right_and_wrong_submissions(tmp_path):
    assert set(GRADED) <= {p.stem for p in NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb")}
    course = tmp_path / "course"
    written = build(NOTEBOOK_DIR, course, ASSIGNMENT)
    assert [p.stem for p in written] == [p.stem for p in sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))]
    for path in written:  # the solutions sit between nbgrader's markers, each check is a graded test
        nb = nbformat.read(path, as_version=4)
        answers = answer_cells(nb)
        tests = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade")]
        assert len(answers) >= 2 and len(tests) == len(answers)
        assert all(c.source.startswith(BEGIN) and c.source.endswith(END) for c in answers)
        assert all(c.metadata.nbgrader.points == 1 and c.metadata.nbgrader.locked for c in tests)
        assert all(not c.get("outputs") for c in nb.cells)  # no stored check output shows an answer
    nbgrader(course, "generate_assignment", ASSIGNMENT, "--force")
    for path in written:  # the released copy has no solution code left
        released = (course / "release" / ASSIGNMENT / path.name).read_text(encoding="utf-8")
        nb = nbformat.read(path, as_version=4)
        lesson = "\n".join(c.source for c in nb.cells if c not in answer_cells(nb))
        for solution in answer_cells(nb):
            body = [line for line in right(None, None, solution).splitlines()
                    if len(line.strip()) > 12 and line.strip() not in lesson]
            assert body and not any(nbformat.v4.nbjson.json.dumps(line)[1:-1] in released for line in body)

    submit(course, "right", right)
    submit(course, "wrong", wrong)
    nbgrader(course, "autograde", ASSIGNMENT, "--force")

    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gradebook:
        for stem in GRADED:
            full = gradebook.find_submission_notebook(stem, ASSIGNMENT, "right")
            assert full.max_score == 2 and full.score == 2, stem  # both checks pass
            assert gradebook.find_submission_notebook(stem, ASSIGNMENT, "wrong").score == 0, stem


def test_the_assignment_writer_refuses_a_series_without_exercises(tmp_path):
    folder = tmp_path / "notebooks"
    folder.mkdir()
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# 00 · a lesson"),
                                         nbformat.v4.new_code_cell("x = 1")])
    nbformat.write(nb, folder / "00_lesson.ipynb")
    with pytest.raises(SeriesError, match="nothing to grade"):
        build(folder, tmp_path / "out")
    assert read_notebook(folder / "00_lesson.ipynb").cells[1].source == "x = 1"
