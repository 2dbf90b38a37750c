import json
import re
import shutil
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))  # the HTML edition is a repository tool, not part of the package
from html_edition import build, notebooks  # noqa: E402

NOTEBOOK_DIR = ROOT / "notebooks"
SAMPLING = "05_sampling_loop"
# the cell that shows the sampling explorer in notebook 05 (the notebook's `model` is the pocket model)
EXPLORER_CELL = """from nanogpt_edu.explorer import sampling_explorer

sampling_explorer(model, ["Hello, my name is", "ROMEO:", "The king"])"""
# what only the explorer's stored output holds: the name of its in-browser arithmetic
EXPLORER_MARK = "filtered_distribution(sorted_logits"
# a page fetches something when a script or stylesheet points at another host, or a module imports from one
NETWORK_LOAD = re.compile(r'<script\b[^>]*\bsrc="(?:https?:)?//|<link\b[^>]*\bhref="(?:https?:)?//'
                          r'|import\(\s*"https?://')


def figure_count(path: Path) -> int:
    nb = json.loads(path.read_text(encoding="utf-8"))
    return sum("image/png" in o.get("data", {}) for c in nb["cells"] for o in c.get("outputs", []))


def explorer_outputs(path: Path) -> list[str]:
    """Return the stored HTML outputs of ``path`` that are the sampling explorer."""
    nb = json.loads(path.read_text(encoding="utf-8"))
    html = ["".join(o.get("data", {}).get("text/html", "")) for c in nb["cells"] for o in c.get("outputs", [])]
    return [h for h in html if EXPLORER_MARK in h]


def notebooks_with_explorer(folder: Path) -> Path:
    """Return a copy of the notebooks in ``folder`` whose 05 holds the sampling explorer's output as the committed
    ``nanogpt_edu.explorer`` draws it now (stored outputs lag behind the code until the notebook is re-run).

    The cell that shows the explorer keeps its place with a fresh output; a 05 without one gets the explorer's cell
    in place of its ipywidgets panel (or before the exercise), with the output IPython would store for it.
    """
    from IPython.core.formatters import DisplayFormatter

    from nanogpt_edu import load_model
    from nanogpt_edu.explorer import sampling_explorer

    shutil.copytree(NOTEBOOK_DIR, folder, dirs_exist_ok=True)
    path = folder / f"{SAMPLING}.ipynb"
    nb = nbformat.read(path, as_version=4)
    page = sampling_explorer(load_model("pocket"), ["Hello, my name is", "ROMEO:", "The king"])
    data, metadata = DisplayFormatter().format(page)
    output = nbformat.v4.new_output("execute_result", data=data, metadata=metadata)
    sources = ["".join(c.source) for c in nb.cells]
    shown = [i for i, s in enumerate(sources) if "sampling_explorer(" in s and nb.cells[i].cell_type == "code"]
    if shown:
        cell = nb.cells[shown[-1]]
        output.execution_count = cell.execution_count
        cell.outputs = [o for o in cell.outputs if EXPLORER_MARK not in "".join(o.get("data", {}).get("text/html", ""))]
        cell.outputs.append(output)
    else:
        cell = nbformat.v4.new_code_cell(EXPLORER_CELL, metadata={"tags": ["nbval-ignore-output"]})
        cell.outputs = [output]
        widgets = [i for i, s in enumerate(sources) if "ipywidgets" in s]
        if widgets:
            cell.execution_count = nb.cells[widgets[0]].execution_count
            nb.cells[widgets[0]] = cell
        else:
            nb.cells.insert(next((i for i, s in enumerate(sources) if s.startswith("## Exercise")), len(nb.cells)),
                            cell)
    nbformat.write(nb, path)
    return folder


def stored_scripts(path: Path) -> set[str]:
    """Return the code of the scripts inside the notebook's stored HTML outputs (the explorer's BokehJS, say)."""
    nb = json.loads(path.read_text(encoding="utf-8"))
    html = "".join("".join(o.get("data", {}).get("text/html", "")) for c in nb["cells"] for o in c.get("outputs", []))
    return set(re.findall(r"<script\b[^>]*>(.*?)</script>", html, re.S))


def assert_offline(text: str, notebook: Path) -> None:
    """The page loads nothing from another host: no remote src, href or import, and no script of the template
    names a URL (so none builds a request at run time); only the notebook's own outputs' scripts may mention one."""
    assert not NETWORK_LOAD.search(text), NETWORK_LOAD.search(text)
    allowed = stored_scripts(notebook)
    for script in re.findall(r"<script\b[^>]*>(.*?)</script>", text, re.S):
        assert script in allowed or not re.search(r"https?://", script), script[:300]


def test_static_edition_has_every_page_with_its_figures_and_links(built_editions, edition_notebooks):
    folder, pages = built_editions
    teacher = folder / "teacher"
    assert pages["teacher"][0].name == "index.html"
    index = (teacher / "index.html").read_text(encoding="utf-8")
    for path in notebooks(edition_notebooks):
        page = teacher / f"{path.stem}.html"
        assert page in pages["teacher"] and page.is_file()
        text = page.read_text(encoding="utf-8")
        figures = figure_count(path)
        # every stored figure is embedded in the page (the template adds one small icon of its own)
        assert len(re.findall(r'<img[^>]+src="data:image/png;base64', text)) >= figures
        assert not re.search(r'href="\d\d_\w+\.ipynb"', text)  # links lead to the other HTML pages
        assert_offline(text, path)  # nothing to fetch: it works offline
        assert f'href="{path.stem}.html"' in index
    assert [p.name for p in notebooks(edition_notebooks)] == [p.name for p in notebooks(NOTEBOOK_DIR)]
    assert figure_count(NOTEBOOK_DIR / f"{SAMPLING}.ipynb") >= 3  # the sampling notebook's plots
    assert figure_count(edition_notebooks / f"{SAMPLING}.ipynb") == figure_count(NOTEBOOK_DIR / f"{SAMPLING}.ipynb")
    assert "Learning goals" not in index and "<li>" in index  # goals are listed as items under each notebook


def test_the_sampling_explorer_survives_into_the_static_edition(editions, edition_notebooks):
    text = (editions / "teacher" / f"{SAMPLING}.html").read_text(encoding="utf-8")
    stored = explorer_outputs(edition_notebooks / f"{SAMPLING}.ipynb")
    assert len(stored) == 1
    # every script of the output, BokehJS and the explorer's data and code, is in the page as stored (nbconvert
    # tidies the HTML around them), though BokehJS's code mentions URLs
    scripts = re.findall(r"<script\b[^>]*>(.*?)</script>", stored[0], re.S)
    assert len(scripts) >= 3 and sum(map(len, scripts)) > 1_000_000 and "https://" in "".join(scripts)
    assert all(script in text for script in scripts)
    assert re.search(r'<div\b[^>]*data-root-id=', text)  # and the placeholder BokehJS draws into
    assert_offline(text, edition_notebooks / f"{SAMPLING}.ipynb")


@pytest.mark.parametrize("tag", [
    '<script src="https://cdnjs.cloudflare.com/ajax/libs/require.js/2.1.10/require.min.js"></script>',
    '<script type="text/javascript" src="//cdn.example.org/x.js" crossorigin="anonymous"></script>',
    '<script type="module">\n const m = (await import("https://cdn.example.org/mermaid.mjs")).default;\n</script>',
])
def test_only_scripts_that_load_from_the_network_are_dropped(tmp_path, tag):
    import html_edition

    kept = '<script>const home = "https://example.org"; draw(home);</script>'
    assert html_edition.REMOTE_IMPORT.sub("", html_edition.REMOTE_SCRIPT.sub("", f"<p>a</p>{tag}{kept}")) == \
        f"<p>a</p>{kept}"


# ---- the two editions: solutions folded (teacher's) or absent (student's); the index; the tools' bad input ----

import html as html_module  # noqa: E402
import subprocess  # noqa: E402

from html_edition import build_editions, figure_alt  # noqa: E402
from series import SeriesError, cell_tags, read_notebook, title_and_goals  # noqa: E402


def page_text(page: str) -> str:
    """What a reader (or a search of the page source) finds: tags removed, entities decoded."""
    return html_module.unescape(re.sub(r"<[^>]+>", "", page))


def answer_texts(nb) -> list[str]:
    """The lines only an answer holds: the solution cells' code, and what solution and check cells printed."""
    shown = [c for c in nb.cells if "solution" not in cell_tags(c)]  # what students see anyway: lesson and checks,
    lesson = "\n".join([c.source for c in shown] + [  # and the lesson's own outputs
        "".join(o.get("text", "")) + "".join(o.get("data", {}).get("text/plain", ""))
        for c in shown if "check" not in cell_tags(c) for o in c.get("outputs", [])])
    lines = []
    for cell in nb.cells:
        tags = cell_tags(cell)
        if "solution" in tags:
            lines += [line.strip() for line in cell.source.splitlines()]
        if {"solution", "check"} & set(tags):
            for output in cell.get("outputs", []):
                lines += "".join(output.get("text", "")).splitlines()
                lines += "".join(output.get("data", {}).get("text/plain", "")).splitlines()
    return [line.strip() for line in lines if len(line.strip()) > 12 and line.strip() not in lesson]


def test_the_student_edition_has_no_solution_code_or_output_in_its_page_source(editions):
    for path in notebooks(NOTEBOOK_DIR):
        nb = read_notebook(path)
        secret = answer_texts(nb)
        assert len(secret) >= 2, path.stem  # each notebook has answers to hide
        student = (editions / "student" / f"{path.stem}.html").read_text(encoding="utf-8")
        teacher = (editions / "teacher" / f"{path.stem}.html").read_text(encoding="utf-8")
        shown, source = page_text(student), student
        for line in secret:
            assert line not in shown and html_module.escape(line) not in source, (path.stem, line)
            assert line in page_text(teacher), (path.stem, line)  # the teacher's edition has every answer
        # the exercises and their checks are still there for the student
        checks = [c for c in nb.cells if "check" in cell_tags(c)]
        assert all(c.source.splitlines()[-1].strip() in shown for c in checks)
        # teacher: each solution folded under a closed "show solution" control
        folds = re.findall(r"<details\b([^>]*)><summary>show solution</summary>(.*?)</details>", teacher, re.S)
        assert len(folds) == sum("solution" in cell_tags(c) for c in nb.cells) >= 2
        assert all("open" not in attributes for attributes, _ in folds)
        assert "<details" not in student


def test_the_index_renders_every_goal_whole_and_numbers_each_notebook_once(editions):
    for edition in ("teacher", "student"):
        index = (editions / edition / "index.html").read_text(encoding="utf-8")
        text = page_text(index)
        assert "**" not in text and "`" not in text  # markdown rendered, not shown raw
        entries = re.findall(r'<li><a href="(\d\d_\w+)\.html">(.*?)</a><ul>(.*?)</ul></li>', index, re.S)
        assert [e[0] for e in entries] == [p.stem for p in notebooks(NOTEBOOK_DIR)]
        assert 'class="path"' in index and "list-style: none" in index  # the titles carry the numbers, once
        for (stem, title, goals), path in zip(entries, notebooks(NOTEBOOK_DIR)):
            first = read_notebook(path).cells[0].source
            assert page_text(title).startswith(stem[:2] + " ")
            items = re.findall(r"<li>(.*?)</li>", goals, re.S)
            written = title_and_goals(read_notebook(path))[1]
            assert len(items) == len(written) == first.split("**Learning goals**")[1].split("\n\n")[0].count("\n-")
            for item, goal in zip(items, written):  # whole: a goal that wraps ends as it does in the notebook
                words = page_text(item).split()
                assert words[-1].rstrip(";.") == re.sub(r"[`*]", "", goal).split()[-1].rstrip(";."), (stem, goal)


def test_every_figure_has_a_text_alternative_naming_its_notebook_and_lesson(editions):
    for path in notebooks(NOTEBOOK_DIR):
        page = (editions / "teacher" / f"{path.stem}.html").read_text(encoding="utf-8")
        images = re.findall(r'<img\b[^>]*src="data:image/png;base64[^>]*>', page)
        alts = [html_module.unescape(m[2]) for m in map(re.compile(r'\balt=(["\'])(.*?)\1').search, images) if m]
        figures = [a for a in alts if a.startswith("Figure from ")]  # (the template's own small icon has its own)
        # every figure the page draws as an image (an output that also has HTML shows that instead) is described
        assert len(alts) == len(images) and len(figures) == figure_count(path), path.stem
        for alt in figures:
            assert alt.startswith(f"Figure from {path.stem[:2]} ") and len(alt.split()) >= 8, alt
    # a cell's own description wins; the title its code gives comes first
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("# 09 · A test"), nbformat.v4.new_markdown_cell("## Bars\nThe bars show *k*."),
        nbformat.v4.new_code_cell('ax.set_title("Top-k keeps five")'),
        nbformat.v4.new_code_cell("plt.show()", metadata={"nanogpt_edu": {"alt": ["Five blue bars."]}})])
    assert figure_alt(nb, 2, 0) == "Figure from 09 · A test: Top-k keeps five. The bars show k."
    assert figure_alt(nb, 3, 0) == "Five blue bars."


def with_tags(nb, tags: list):
    """Set each cell's ``tags`` as given (None: leave it), even to what nbformat would refuse, as a file could."""
    for cell, value in zip(nb.cells, tags):
        if value is not None:
            cell.metadata["tags"] = value
    return nb


def tool(name: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / name), *args], capture_output=True, text=True,
                          env={**__import__("os").environ, "PYTHONPATH": str(ROOT)}, timeout=600)


def tool_in_process(name: str, *args: str, capsys) -> subprocess.CompletedProcess:
    """What ``tool`` returns, from the tool's ``main`` run here as its command runs it (``series.run_tool``)."""
    import importlib

    from series import run_tool

    module = importlib.import_module(name.removesuffix(".py"))
    capsys.readouterr()
    with pytest.raises(SystemExit) as stopped:  # every case here must end in the tool's exit status 2
        run_tool(module.main, list(args))
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess([name, *args], stopped.value.code, out, err)


# each tool meets one case as a real command (its exit status and stderr as a shell sees them); the other cases
# call the same main in this process, which spares a Python start-up (about 6 s with its imports) per case
AS_A_COMMAND = "not_json"


@pytest.mark.parametrize("script", ["student_edition.py", "html_edition.py", "nbgrader_assignment.py"])
@pytest.mark.parametrize("case", ["not_json", "no_cells", "empty_first_cell", "out_is_a_file", "tags_not_strings"])
def test_the_tools_refuse_bad_notebooks_and_outputs_in_one_line(tmp_path, script, case, capsys):
    folder, out = tmp_path / "notebooks", tmp_path / "out"
    folder.mkdir()
    good = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# 00 · fine")])
    bad = {"not_json": "{ this is not json",
           "no_cells": nbformat.writes(nbformat.v4.new_notebook()),
           "empty_first_cell": nbformat.writes(nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("  ")])),
           "tags_not_strings": json.dumps(with_tags(nbformat.v4.new_notebook(cells=[
               nbformat.v4.new_markdown_cell("# 01"), nbformat.v4.new_code_cell("x")]), [None, [1]]))}
    nbformat.write(good, folder / "00_fine.ipynb")
    if case == "out_is_a_file":
        out.write_text("a file")
    else:
        (folder / "01_bad.ipynb").write_text(bad[case], encoding="utf-8")
    args = ("--notebooks", str(folder), "--out", str(out))
    done = tool(script, *args) if case == AS_A_COMMAND else tool_in_process(script, *args, capsys=capsys)
    assert done.returncode == 2 and done.stdout == "", done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and done.stderr.startswith("error: "), done.stderr
    assert "Traceback" not in done.stderr
    assert ("01_bad.ipynb" if case != "out_is_a_file" else "--out") in done.stderr
    assert case == "out_is_a_file" or not out.exists()  # nothing written from a half-read series


@pytest.mark.parametrize("tags", ["solution", "solution, nbval-ignore-output", ["solution"]])
def test_a_solution_tagged_with_a_string_never_reaches_the_student_edition(tmp_path, tags):
    from student_edition import build as build_student

    folder = tmp_path / "notebooks"
    folder.mkdir()
    answer = "the_answer = 6 * 7  # SECRET-SOLUTION-LINE"
    cell = nbformat.v4.new_code_cell(answer)
    cell.outputs = [nbformat.v4.new_output("stream", text="SECRET-SOLUTION-OUTPUT\n")]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# 00 · one exercise"), cell,
                                         nbformat.v4.new_code_cell("print(the_answer)")])
    with_tags(nb, [None, tags, "check"])
    (folder / "00_one.ipynb").write_text(json.dumps(nb), encoding="utf-8")  # as written, not validated
    build_student(folder, tmp_path / "student")
    build(folder, tmp_path / "html", edition="student")
    for written in [tmp_path / "student" / "00_one.ipynb", tmp_path / "html" / "00_one.html"]:
        text = written.read_text(encoding="utf-8")
        assert "SECRET-SOLUTION" not in text and "print(the_answer)" in page_text(text), written
