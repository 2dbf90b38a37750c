"""Write the series as an nbgrader source assignment: solutions between nbgrader's markers, checks as graded tests.

    python scripts/nbgrader_assignment.py [--out build/classroom] [--assignment nanogpt_edu]    (or: make assignment)

writes ``<out>/source/<assignment>/NN_*.ipynb`` and ``<out>/nbgrader_config.py``, a course folder nbgrader works
in (``cd <out> && nbgrader generate_assignment <assignment>``; docs/teaching.md has the whole round). In each
notebook:

- a solution cell (tagged ``solution``) becomes an nbgrader solution cell, its code between ``### BEGIN SOLUTION``
  and ``### END SOLUTION``: ``generate_assignment`` puts ``# YOUR CODE HERE`` / ``raise NotImplementedError()``
  there in the students' copy;
- a check cell (tagged ``check``) becomes a locked autograded test cell worth ``--points`` points: it passes when it
  runs without error (the check raises ``not right yet`` or ``not done yet`` otherwise);
- every other cell is locked (read-only) so a changed lesson cell cannot change a grade, and stored outputs are
  cleared (the check cells' would show the answers).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import nbformat

from series import CHECK_TAG, SOLUTION_TAG, SeriesError, output_folder, run_tool, series

ROOT = Path(__file__).resolve().parent.parent  # the repository
BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
CONFIG = """c = get_config()  # noqa: F821  (nbgrader's configuration of this course folder, written by make assignment)
c.CourseDirectory.root = {root!r}
# the students' notebooks run with the project's kernel; a cell may take a while on a busy shared server
c.ExecutePreprocessor.timeout = 600
c.ClearSolutions.code_stub = {{"python": "# YOUR CODE HERE\\nraise NotImplementedError()"}}
"""


def grader_notebook(nb: nbformat.NotebookNode, stem: str, points: int = 1) -> nbformat.NotebookNode:
    """Return ``nb`` (read by ``series.read_notebook``) as an nbgrader source notebook."""
    exercise = 0
    for index, cell in enumerate(nb.cells):
        tags = cell.metadata.get("tags", [])
        meta = {"schema_version": 3, "grade": False, "solution": False, "locked": True,
                "grade_id": f"{stem}-cell-{index}"}
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
        if SOLUTION_TAG in tags and cell.cell_type == "code":
            exercise += 1
            cell.source = f"{BEGIN}\n{cell.source.rstrip()}\n{END}"
            meta.update(solution=True, locked=False, grade_id=f"{stem}-exercise-{exercise}-answer")
            cell.metadata.get("jupyter", {}).pop("source_hidden", None)  # the student's cell to write in
        elif CHECK_TAG in tags and cell.cell_type == "code":
            meta.update(grade=True, points=points, grade_id=f"{stem}-exercise-{max(exercise, 1)}-check")
        cell.metadata["nbgrader"] = meta
    if not exercise:
        raise SeriesError(f"{stem}: no cell tagged {SOLUTION_TAG!r}, so nothing to grade")
    return nb


def build(notebook_dir: Path = ROOT / "notebooks", out: Path = ROOT / "build" / "classroom",
          assignment: str = "nanogpt_edu", points: int = 1) -> list[Path]:
    """Write the source assignment and the course's nbgrader_config.py into ``out``; return the notebooks."""
    read = series(notebook_dir)
    source = out / "source" / assignment
    source.mkdir(parents=True, exist_ok=True)
    for old in source.glob("[0-9][0-9]_*.ipynb"):
        old.unlink()
    written = []
    for path, nb in read:
        target = source / path.name
        nbformat.write(grader_notebook(nb, path.stem, points), target)
        written.append(target)
    (out / "nbgrader_config.py").write_text(CONFIG.format(root=str(out.resolve())), encoding="utf-8")
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python scripts/nbgrader_assignment.py", description=__doc__.splitlines()[0])
    parser.add_argument("--notebooks", type=Path, default=ROOT / "notebooks")
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "classroom")
    parser.add_argument("--assignment", default="nanogpt_edu", help="the assignment's name in nbgrader")
    parser.add_argument("--points", type=int, default=1, help="points per passed check")
    args = parser.parse_args(argv)
    if not args.assignment.isidentifier():
        raise SeriesError(f"--assignment {args.assignment!r}: use letters, digits and _ only")
    if args.points < 1:
        raise SeriesError(f"--points {args.points}: give a whole number of at least 1")
    output_folder(args.out, args.notebooks)
    written = build(args.notebooks, args.out, args.assignment, args.points)
    print(f"wrote {len(written)} notebooks to {written[0].parent}; next: cd {args.out} && "
          f"nbgrader generate_assignment {args.assignment}")


if __name__ == "__main__":
    run_tool(main)
