"""Reading the series' notebooks for the repository's tools (the student, HTML and nbgrader editions).

Every tool reads a notebook through ``read_notebook``, so each meets the same checks and sees a cell's tags the
same way: a file that is not a notebook stops the tool with one line (``SeriesError``; the tools print it after
``error:`` and exit 2), and ``tags`` is always a list of strings by the time any tool, nbconvert or nbgrader looks
at a cell. That is what keeps a solution cell whose ``tags`` was written as the string ``"solution"`` out of the
student edition: read as a list, a string would be its letters.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat

from nanogpt_edu.errors import NanogptEduError, shown

SOLUTION_TAG = "solution"  # a cell holding an exercise's answer
CHECK_TAG = "check"  # the cell under it that grades the answer
GOALS = "**Learning goals**"


class SeriesError(NanogptEduError):
    """A notebook, folder or option the tools cannot use; the message is one line naming it."""


def notebooks(folder: Path) -> list[Path]:
    """Return the numbered notebooks of ``folder`` in order."""
    return sorted(folder.glob("[0-9][0-9]_*.ipynb"))


def cell_tags(cell) -> list[str]:
    """Return a cell's tags as a list of strings: the one way every tool reads them.

    A string is taken as a tag list written by hand (``"solution"`` or ``"solution, check"``); anything else that
    is not a list of strings is refused, since guessing could show an answer or hide a lesson.
    """
    tags = cell.get("metadata", {}).get("tags", [])
    if isinstance(tags, str):
        return [t for t in re.split(r"[\s,]+", tags) if t]
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise SeriesError(f"cell {cell.get('id', '?')}: tags should be a list of strings, not {shown(tags)}")
    return tags


def read_notebook(path: Path) -> nbformat.NotebookNode:
    """Return the notebook at ``path`` with every cell's tags as a list; raise ``SeriesError`` if it is unusable."""
    try:
        nb = nbformat.reads(path.read_text(encoding="utf-8"), as_version=4)
    except (OSError, UnicodeDecodeError) as error:
        raise SeriesError(f"{path}: cannot read it ({type(error).__name__}: {error})") from None
    except (json.JSONDecodeError, ValueError) as error:  # nbformat's NotJSONError is a ValueError
        raise SeriesError(f"{path}: not a notebook (not JSON: {str(error).splitlines()[0][:80]})") from None
    except Exception as error:  # JSON, but nbformat cannot make a notebook of it
        raise SeriesError(f"{path}: not a notebook ({type(error).__name__}: {str(error)[:80]})") from None
    cells = nb.get("cells") if isinstance(nb, dict) else None
    if not isinstance(cells, list) or not cells:
        raise SeriesError(f"{path}: the notebook has no cells")
    for cell in cells:
        if not isinstance(cell, dict) or not isinstance(cell.get("source", ""), (str, list)):
            raise SeriesError(f"{path}: a cell is not a notebook cell: {shown(cell)}")
        if isinstance(cell.get("metadata"), dict):
            if "tags" in cell.metadata:
                try:
                    cell.metadata["tags"] = cell_tags(cell)
                except SeriesError as error:
                    raise SeriesError(f"{path}: {error}") from None
        else:
            cell["metadata"] = nbformat.NotebookNode()
        if isinstance(cell.source, list):
            cell["source"] = "".join(map(str, cell.source))
    first = cells[0].source.strip()
    if not first:
        raise SeriesError(f"{path}: the first cell is empty (it should hold the notebook's title)")
    return nb


def title_and_goals(nb) -> tuple[str, list[str]]:
    """Return a notebook's title (its first line, markdown) and its learning goals, each goal whole (markdown)."""
    first = nb.cells[0].source.strip()
    title = first.splitlines()[0].lstrip("#").strip()
    if GOALS not in first:
        return title, []
    goals: list[str] = []
    for line in first.split(GOALS, 1)[1].splitlines()[1:]:
        if not line.strip():  # a blank line ends the list
            break
        item = re.match(r"\s{0,3}[-*+]\s+(.*)", line)
        if item:
            goals.append(item[1].strip())
        elif goals:  # a goal that wraps onto the next line
            goals[-1] += " " + line.strip()
        else:
            break
    return title, goals


def output_folder(out: Path, notebook_dir: Path) -> Path:
    """Check ``--out`` (a folder, or one the tool may create, and not the notebooks' own); return it."""
    if out.exists() and not out.is_dir():
        raise SeriesError(f"--out {out}: that is a file, not a folder")
    if out.resolve() == notebook_dir.resolve():
        raise SeriesError("--out: choose another folder than the notebooks themselves, whose solutions would be lost")
    for parent in out.resolve().parents:
        if parent.exists():
            if not parent.is_dir():
                raise SeriesError(f"--out {out}: {parent} is a file, not a folder")
            break
    return out


def series(notebook_dir: Path) -> list[tuple[Path, nbformat.NotebookNode]]:
    """Return every numbered notebook of ``notebook_dir`` with its contents; raise ``SeriesError`` if there is none."""
    if not notebook_dir.is_dir():
        raise SeriesError(f"--notebooks {notebook_dir}: not a folder")
    paths = notebooks(notebook_dir)
    if not paths:
        raise SeriesError(f"--notebooks: no numbered notebooks in {notebook_dir}")
    return [(path, read_notebook(path)) for path in paths]


def run_tool(main, argv=None) -> None:
    """Run a tool's ``main``; a ``SeriesError`` becomes its one line on stderr and exit status 2."""
    import sys

    try:
        main(argv)
    except SeriesError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
