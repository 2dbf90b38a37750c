"""Build the static HTML edition of the notebook series: an index page and one page per notebook.

    python scripts/html_edition.py [--out build/html]    (or: make html)

A tool of the repository, not of the package: it reads the notebooks of this checkout.

Each page shows the notebook with its stored outputs and figures (embedded, so the folder works offline and can be
copied anywhere); links between notebooks point at the HTML pages. Nothing is executed and nothing is downloaded.
"""

from __future__ import annotations

import argparse
import html
import re
from pathlib import Path

import nbformat
from nbconvert import HTMLExporter

ROOT = Path(__file__).resolve().parent.parent  # the repository
NOTEBOOK_LINK = re.compile(r'href="(\d\d_[\w]+)\.ipynb"')
# nbconvert's template loads require.js and MathJax from a CDN (<script src="https://...">, and the widgets'
# manager so too when a notebook stores widget state) and imports mermaid from one in an inline module script. The
# series needs none of them and the edition must work offline, so exactly those are dropped. Every other inline
# script stays, whatever URLs its code mentions: the sampling explorer's output bundles BokehJS, which does.
REMOTE_SCRIPT = re.compile(r'<script\b[^>]*\bsrc="(?:https?:)?//[^"]*"[^>]*>\s*</script>')
REMOTE_IMPORT = re.compile(r'<script type="module">(?:(?!</script>).)*?'
                           r'\bimport\(\s*"https?://(?:(?!</script>).)*</script>', re.S)


def notebooks(folder: Path) -> list[Path]:
    """Return the numbered notebooks of ``folder`` in order."""
    return sorted(folder.glob("[0-9][0-9]_*.ipynb"))


def title_and_goals(nb) -> tuple[str, str]:
    """Return a notebook's title (its first heading) and its learning goals (the markdown list under them)."""
    first = "".join(nb.cells[0].source)
    title = first.splitlines()[0].lstrip("# ").strip()
    goals = first.split("**Learning goals**", 1)[-1].split("\n\n", 1)[0].strip() if "**Learning goals**" in first else ""
    return title, goals


def build(notebook_dir: Path = ROOT / "notebooks", out: Path = ROOT / "build" / "html") -> list[Path]:
    """Write the HTML edition into ``out``; return the pages written (index first)."""
    out.mkdir(parents=True, exist_ok=True)
    exporter = HTMLExporter(template_name="lab")
    entries, pages = [], []
    for path in notebooks(notebook_dir):
        nb = nbformat.read(path, as_version=4)
        # stored ipywidgets state would make the page load the widgets' manager from a CDN; without it the widget
        # outputs show their plain-text stand-in (the sampling explorer needs no widgets: it brings BokehJS along)
        nb.metadata.pop("widgets", None)
        body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": path.stem}})
        body = NOTEBOOK_LINK.sub(r'href="\1.html"', body)
        body = REMOTE_IMPORT.sub("", REMOTE_SCRIPT.sub("", body))
        page = out / f"{path.stem}.html"
        page.write_text(body, encoding="utf-8")
        pages.append(page)
        entries.append((path.stem, *title_and_goals(nb)))
    index = out / "index.html"
    index.write_text(index_page(entries), encoding="utf-8")
    return [index, *pages]


def index_page(entries: list[tuple[str, str, str]]) -> str:
    """Return the index: the learning path, one entry per notebook with its goals."""
    items = []
    for stem, title, goals in entries:
        goal_items = "".join(f"<li>{html.escape(g.lstrip('- ').strip())}</li>"
                             for g in goals.splitlines() if g.strip().startswith("-"))
        items.append(f'<li><a href="{stem}.html">{html.escape(title)}</a><ul>{goal_items}</ul></li>')
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>nanogpt-edu: inside nanoGPT's sample.py</title>
<style>body {{ font-family: sans-serif; max-width: 50em; margin: 2em auto; line-height: 1.5; }}
li > a {{ font-weight: bold; }} ul ul {{ font-size: 0.9em; color: #444; }}</style></head>
<body><h1>nanogpt-edu: how a GPT generates text</h1>
<p>A walk through nanoGPT's sampling script, one step per notebook, run on the small offline pocket model.
Follow them in order; each has learning goals, short runnable steps, an exercise and a recap.</p>
<h2>The learning path</h2>
<ol>{''.join(items)}</ol>
<p>This is the static edition: the stored outputs, read-only. To run and change the code, open the notebooks in
JupyterLab (see the project's README).</p></body></html>
"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python scripts/html_edition.py", description=__doc__.splitlines()[0])
    parser.add_argument("--notebooks", type=Path, default=ROOT / "notebooks")
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "html")
    args = parser.parse_args(argv)
    if not notebooks(args.notebooks):
        parser.error(f"--notebooks: no numbered notebooks in {args.notebooks}")
    pages = build(args.notebooks, args.out)
    print(f"wrote {len(pages)} pages to {args.out} (open {pages[0]})")


if __name__ == "__main__":
    main()
