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
    """Return a notebook folder whose 05 stores the sampling explorer's output.

    The project's own notebooks once 05 has it. Until then, a copy of them in ``folder`` where the explorer's cell
    replaces 05's ipywidgets panel (or comes before the exercise), with the output IPython would store for it.
    """
    if explorer_outputs(NOTEBOOK_DIR / f"{SAMPLING}.ipynb"):
        return NOTEBOOK_DIR
    from IPython.core.formatters import DisplayFormatter

    from nanogpt_edu import load_model
    from nanogpt_edu.explorer import sampling_explorer

    shutil.copytree(NOTEBOOK_DIR, folder, dirs_exist_ok=True)
    path = folder / f"{SAMPLING}.ipynb"
    nb = nbformat.read(path, as_version=4)
    page = sampling_explorer(load_model("pocket"), ["Hello, my name is", "ROMEO:", "The king"])
    data, metadata = DisplayFormatter().format(page)
    cell = nbformat.v4.new_code_cell(EXPLORER_CELL, metadata={"tags": ["nbval-ignore-output"]})
    cell.outputs = [nbformat.v4.new_output("execute_result", data=data, metadata=metadata)]
    sources = ["".join(c.source) for c in nb.cells]
    widgets = [i for i, s in enumerate(sources) if "ipywidgets" in s]
    if widgets:
        cell.execution_count = nb.cells[widgets[0]].execution_count
        nb.cells[widgets[0]] = cell
    else:
        nb.cells.insert(next((i for i, s in enumerate(sources) if s.startswith("## Exercise")), len(nb.cells)), cell)
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


def test_static_edition_has_every_page_with_its_figures_and_links(tmp_path):
    pages = build(NOTEBOOK_DIR, tmp_path)
    index = (tmp_path / "index.html").read_text(encoding="utf-8")
    assert pages[0].name == "index.html"
    for path in notebooks(NOTEBOOK_DIR):
        page = tmp_path / f"{path.stem}.html"
        assert page.is_file()
        text = page.read_text(encoding="utf-8")
        figures = figure_count(path)
        # every stored figure is embedded in the page (the template adds one small icon of its own)
        assert len(re.findall(r'<img[^>]+src="data:image/png;base64', text)) >= figures
        assert not re.search(r'href="\d\d_\w+\.ipynb"', text)  # links lead to the other HTML pages
        assert_offline(text, path)  # nothing to fetch: it works offline
        assert f'href="{path.stem}.html"' in index
    assert figure_count(NOTEBOOK_DIR / f"{SAMPLING}.ipynb") >= 3  # the sampling notebook's plots
    assert "Learning goals" not in index and "<li>" in index  # goals are listed as items under each notebook


def test_the_sampling_explorer_survives_into_the_static_edition(tmp_path):
    folder = notebooks_with_explorer(tmp_path / "notebooks")
    build(folder, tmp_path / "html")
    text = (tmp_path / "html" / f"{SAMPLING}.html").read_text(encoding="utf-8")
    stored = explorer_outputs(folder / f"{SAMPLING}.ipynb")
    assert len(stored) == 1
    # every script of the output, BokehJS and the explorer's data and code, is in the page as stored (nbconvert
    # tidies the HTML around them), though BokehJS's code mentions URLs
    scripts = re.findall(r"<script\b[^>]*>(.*?)</script>", stored[0], re.S)
    assert len(scripts) >= 3 and sum(map(len, scripts)) > 1_000_000 and "https://" in "".join(scripts)
    assert all(script in text for script in scripts)
    assert re.search(r'<div\b[^>]*data-root-id=', text)  # and the placeholder BokehJS draws into
    assert_offline(text, folder / f"{SAMPLING}.ipynb")


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
