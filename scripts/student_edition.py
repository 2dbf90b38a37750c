"""Write the student edition of the series: every notebook without its solution cells and without stored outputs.

    python scripts/student_edition.py [--out build/student]    (or: make student)

A solution cell is a code cell tagged ``solution``; nbconvert's ``TagRemovePreprocessor`` removes those, an empty
answer cell takes each one's place, and nbconvert's ``ClearOutputPreprocessor`` clears every output (the stored
outputs of check cells would show the answers). The check cells stay: run in the student edition, each stops with one line, ``not done yet: define `...` first``,
until the learner's own answer is in place. A tool of the repository: it reads this checkout's notebooks.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import nbformat
from nbconvert.preprocessors import ClearOutputPreprocessor, TagRemovePreprocessor

ROOT = Path(__file__).resolve().parent.parent  # the repository
SOLUTION_TAG = "solution"
CHECK_TAG = "check"
ANSWER_TAG = "answer"
# the empty cell the student edition puts before each check, where the learner writes the exercise's answer
ANSWER_CELL = "# Your answer here: define what the exercise above asks for, then run the check cell below.\n"
README = """# nanogpt-edu, student edition

The notebooks of the series without their solutions. Work through them in order, starting with
`00_overview.ipynb`. Each exercise is followed by a check cell: run it after your answer. Until the names the
exercise asks for are defined it says `not done yet`; with an answer that is not right it says `not right yet`
and gives a hint. "Run All" stops at the first exercise you have not done yet: answer it, run its check cell,
then go on with Run > Run Selected Cell and All Below. Open the notebooks in JupyterLab with the project's
kernel, "Python (nanogpt-edu)".
"""


def notebooks(folder: Path) -> list[Path]:
    """Return the numbered notebooks of ``folder`` in order."""
    return sorted(folder.glob("[0-9][0-9]_*.ipynb"))


def add_answer_cells(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Return ``nb`` with an empty answer cell (tagged ``answer``) before each check cell (``nb`` is changed too)."""
    cells = []
    for cell in nb.cells:
        if cell.cell_type == "code" and CHECK_TAG in cell.metadata.get("tags", []):
            cells.append(nbformat.v4.new_code_cell(ANSWER_CELL, metadata={"tags": [ANSWER_TAG]}))
        cells.append(cell)
    nb.cells = cells
    return nb


def student_notebook(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Return ``nb`` without its solution cells, with an empty answer cell before each check and every output
    cleared (``nb`` itself is changed too)."""
    remove = TagRemovePreprocessor(remove_cell_tags={SOLUTION_TAG}, enabled=True)
    nb, _ = remove.preprocess(nb, {})
    add_answer_cells(nb)
    nb, _ = ClearOutputPreprocessor(enabled=True).preprocess(nb, {})
    return nb


def build(notebook_dir: Path = ROOT / "notebooks", out: Path = ROOT / "build" / "student") -> list[Path]:
    """Write the student edition of every notebook in ``notebook_dir`` into ``out``; return the files written."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path in notebooks(notebook_dir):
        nb = student_notebook(nbformat.read(path, as_version=4))
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
    if not notebooks(args.notebooks):
        parser.error(f"--notebooks: no numbered notebooks in {args.notebooks}")
    if args.out.resolve() == args.notebooks.resolve():
        parser.error("--out: choose another folder than the notebooks themselves, whose solutions would be lost")
    for old in notebooks(args.out):  # notebooks left from an earlier build; nothing else in --out is touched
        old.unlink()
    written = build(args.notebooks, args.out)
    print(f"wrote {len(written)} notebooks without solutions to {args.out}")


if __name__ == "__main__":
    main()
