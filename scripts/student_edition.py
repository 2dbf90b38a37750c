"""Write the student edition of the series: every notebook without its solution cells and without stored outputs.

    python scripts/student_edition.py [--out build/student]    (or: make student)

A solution cell is a code cell tagged ``solution`` (tags read as ``series.cell_tags`` reads them, the same in every
tool); nbconvert's ``TagRemovePreprocessor`` removes those, an empty answer cell takes each one's place, and
nbconvert's ``ClearOutputPreprocessor`` clears every output (the stored outputs of check cells would show the
answers). The check cells stay: run in the student edition, each stops with one line, ``not done yet: define `...` first``,
until the learner's own answer is in place. A tool of the repository: it reads this checkout's notebooks.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import nbformat
from nbconvert.preprocessors import ClearOutputPreprocessor, TagRemovePreprocessor

from series import CHECK_TAG, SOLUTION_TAG, cell_tags, output_folder, run_tool, series

ROOT = Path(__file__).resolve().parent.parent  # the repository
ANSWER_TAG = "answer"
# the empty cell the student edition puts before each check, where the learner writes the exercise's answer
ANSWER_CELL = "# Your answer here: define what the exercise above asks for, then run the check cell below.\n"
README = """# nanogpt-edu, student edition

The notebooks of the series without their solutions. Work through them in order, starting with
`00_overview.ipynb`. Each exercise is followed by an empty answer cell, where you write your answer, and a check
cell: run it after your answer. Until the names the
exercise asks for are defined it says `not done yet`; with an answer that is not right it says `not right yet`
and gives a hint. "Run All" stops at the first exercise you have not done yet: answer it, run its check cell,
then go on with Run > Run Selected Cell and All Below. Open the notebooks in JupyterLab with the project's
kernel, "Python (nanogpt-edu)".
"""


def add_answer_cells(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Return ``nb`` with an empty answer cell (tagged ``answer``) before each check cell (``nb`` is changed too)."""
    cells = []
    for cell in nb.cells:
        if cell.cell_type == "code" and CHECK_TAG in cell.metadata.get("tags", []):
            cells.append(nbformat.v4.new_code_cell(ANSWER_CELL, metadata={"tags": [ANSWER_TAG]}))
        cells.append(cell)
    nb.cells = cells
    return nb


def student_notebook(nb: nbformat.NotebookNode, keep_outputs: bool = False) -> nbformat.NotebookNode:
    """Return ``nb`` without its solution cells, with an empty answer cell before each check and every output
    cleared (``nb`` itself is changed too).

    ``nb`` comes from ``series.read_notebook`` (its tags are lists). With ``keep_outputs`` (the HTML student
    edition) the lesson's outputs stay and only the check cells' are cleared: they say what a right answer gives.
    """
    for cell in nb.cells:  # tags as every tool reads them, whatever the file wrote
        cell.metadata["tags"] = cell_tags(cell)
    remove = TagRemovePreprocessor(remove_cell_tags={SOLUTION_TAG}, enabled=True)
    nb, _ = remove.preprocess(nb, {})
    if keep_outputs:
        for cell in nb.cells:
            if CHECK_TAG in cell.metadata.tags and cell.cell_type == "code":
                cell.outputs, cell.execution_count = [], None
    else:
        add_answer_cells(nb)
        nb, _ = ClearOutputPreprocessor(enabled=True).preprocess(nb, {})
    return nb


def build(notebook_dir: Path = ROOT / "notebooks", out: Path = ROOT / "build" / "student") -> list[Path]:
    """Write the student edition of every notebook in ``notebook_dir`` into ``out``; return the files written."""
    read = series(notebook_dir)  # every notebook read and checked before anything is written
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path, nb in read:
        nb = student_notebook(nb)
        target = out / path.name
        nbformat.write(nb, target)
        written.append(target)
    (out / "README.md").write_text(README, encoding="utf-8")
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python scripts/student_edition.py", description=__doc__.splitlines()[0])
    parser.add_argument("--notebooks", type=Path, default=ROOT / "notebooks")
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "student")
    args = parser.parse_args(argv)
    output_folder(args.out, args.notebooks)
    series(args.notebooks)  # the notebooks are usable: only then is anything removed
    for old in sorted(args.out.glob("[0-9][0-9]_*.ipynb")):  # left from an earlier build; nothing else is touched
        old.unlink()
    written = build(args.notebooks, args.out)
    print(f"wrote {len(written)} notebooks without solutions to {args.out}")


if __name__ == "__main__":
    run_tool(main)
