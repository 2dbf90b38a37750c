"""Build the static HTML editions of the notebook series: the teacher's and the student's, each an index and a page
per notebook.

    python scripts/html_edition.py [--out build/html]    (or: make html)

writes ``build/html/teacher`` (every solution folded behind a closed "show solution" control) and
``build/html/student`` (no solution cell at all, and no output of a check cell, which would say what a right answer
gives). A tool of the repository, not of the package: it reads the notebooks of this checkout.

Each page shows the notebook with its stored outputs and figures (embedded, so the folder works offline and can be
copied anywhere); links between notebooks point at the HTML pages. Nothing is executed and nothing is downloaded.
Every figure gets a text alternative made from what the notebook says about it (``figure_alt``).
"""

from __future__ import annotations

import argparse
import copy
import html
import re
from pathlib import Path

import mistune
from nbconvert import HTMLExporter

from series import notebooks, output_folder, run_tool, series, title_and_goals
from student_edition import student_notebook

ROOT = Path(__file__).resolve().parent.parent  # the repository
TEMPLATES = Path(__file__).resolve().parent / "templates"
EDITIONS = ("teacher", "student")
NOTEBOOK_LINK = re.compile(r'href="(\d\d_[\w]+)\.ipynb"')
# nbconvert's template loads require.js and MathJax from a CDN (<script src="https://...">, and the widgets'
# manager so too when a notebook stores widget state) and imports mermaid from one in an inline module script. The
# series needs none of them and the edition must work offline, so exactly those are dropped. Every other inline
# script stays, whatever URLs its code mentions: the sampling explorer's output bundles BokehJS, which does.
REMOTE_SCRIPT = re.compile(r'<script\b[^>]*\bsrc="(?:https?:)?//[^"]*"[^>]*>\s*</script>')
REMOTE_IMPORT = re.compile(r'<script type="module">(?:(?!</script>).)*?'
                           r'\bimport\(\s*"https?://(?:(?!</script>).)*</script>', re.S)


_markdown = mistune.create_markdown(escape=True)  # raw HTML in a notebook's markdown is shown, not run


def markdown_inline(text: str) -> str:
    """Return ``text`` (one line of markdown) as HTML without the paragraph around it."""
    rendered = _markdown(text).strip()
    return re.sub(r"^<p>(.*)</p>$", r"\1", rendered, flags=re.S)


def plain_text(markdown: str) -> str:
    """Return markdown as the words a reader sees: no markup, code and links as their text, one line."""
    blocks = re.sub(r"</?(?:p|li|ul|ol|h\d|br|div|pre|blockquote|table|tr|td|th)\b[^>]*>", " ", _markdown(markdown))
    words = html.unescape(re.sub(r"<[^>]+>", "", blocks))  # inline markup (code, emphasis) joins its words
    return re.sub(r"\s+", " ", words).strip()


TITLE_IN_CODE = re.compile(r"""\b(?:suptitle|set_title|title)\s*[(=]\s*f?(["'])(.+?)\1""")


def figure_alt(nb, index: int, number: int) -> str:
    """Return the text alternative of the ``number``-th figure of code cell ``index``: its title and its lesson.

    Made from what the notebook already holds: the title the cell's code gives (a ``title=``/``set_title``
    string) or else the section it is in, then the first sentences of the markdown just above the cell, which is
    where the series says what a figure shows. A notebook can give its own with the cell metadata
    ``"nanogpt_edu": {"alt": ["...", ...]}`` (one per figure).
    """
    cell = nb.cells[index]
    own = cell.metadata.get("nanogpt_edu", {}).get("alt") if isinstance(cell.metadata.get("nanogpt_edu"), dict) else None
    if isinstance(own, list) and number < len(own) and isinstance(own[number], str):
        return own[number]
    above = [c.source for c in nb.cells[:index] if c.cell_type == "markdown"]
    titles = [m[2] for m in TITLE_IN_CODE.finditer(cell.source) if "{" not in m[2]]
    section = next((line.lstrip("#").strip() for text in reversed(above) for line in reversed(text.splitlines())
                    if line.startswith("#")), "")
    title = titles[min(number, len(titles) - 1)] if titles else section
    lesson = plain_text("\n".join(l for l in above[-1].splitlines() if not l.startswith("#"))) if above else ""
    sentences = re.findall(r".+?(?:[.:;!?](?=\s|$)|$)", lesson)
    lesson = " ".join(s.strip() for s in sentences[:2]).strip()
    if len(lesson) > 400:
        lesson = lesson[:400].rsplit(" ", 1)[0] + " …"
    name = plain_text(nb.cells[0].source.splitlines()[0].lstrip("#"))
    return f"Figure from {name}: {plain_text(title)}. {lesson}".strip()


def contrast(foreground: str, background: str) -> float:
    """Return the WCAG contrast ratio of two ``#rrggbb`` colours (1 to 21)."""
    def luminance(colour: str) -> float:
        channels = [int(colour[i:i + 2], 16) / 255 for i in (1, 3, 5)]
        r, g, b = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
        return 0.2126 * r + 0.7152 * g + 0.0722 * b
    light, dark = sorted([luminance(foreground), luminance(background)], reverse=True)
    return (light + 0.05) / (dark + 0.05)


def readable(colour: str, background: str, ratio: float = 4.6) -> str:
    """Return ``colour`` darkened (same hue) until its contrast on ``background`` reaches ``ratio`` (AA: 4.5)."""
    channels = [int(colour[i:i + 2], 16) for i in (1, 3, 5)]
    while contrast("#" + "".join(f"{c:02x}" for c in channels), background) < ratio:
        channels = [int(c * 0.9) for c in channels]
    return "#" + "".join(f"{c:02x}" for c in channels)


CODE_BACKGROUND = "#f5f5f5"  # the lab template's code cells (the darkest background code text sits on)
CODE_COLOUR = re.compile(r"(--jp-mirror-editor-[\w-]+-color):\s*#([0-9a-fA-F]{6}|[0-9a-fA-F]{3})\b")
PAGE_CSS = """
.jp-InputPrompt, .jp-OutputPrompt { color: #595959 !important; opacity: 1 !important; }
.jp-RenderedHTMLCommon a, .jp-RenderedMarkdown a { text-decoration: underline !important; }
details.nanogpt-solution > summary { cursor: pointer; font-weight: bold; color: #0b57a4; margin: 0.3em 0; }
"""


def accessible(page: str) -> str:
    """Return nbconvert's page with CSS added so that it meets WCAG 2.1 AA: every code-highlighting colour the
    page's theme defines darkened (same hue) to 4.5:1 on the code background, prompts readable, links underlined."""
    rules = []
    for name, value in dict(CODE_COLOUR.findall(page)).items():
        colour = "#" + (value if len(value) == 6 else "".join(c * 2 for c in value)).lower()
        if contrast(colour, CODE_BACKGROUND) < 4.5:
            rules.append(f"{name}: {readable(colour, CODE_BACKGROUND)};")
    css = f":root {{ {' '.join(rules)} }}{PAGE_CSS}"
    return page.replace("</head>", f"<style>{css}</style>\n</head>", 1)


def describe_figures(nb) -> None:
    """Give every stored figure of ``nb`` its text alternative (in the output's metadata, read by the template)."""
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        figures = [o for o in cell.get("outputs", []) if "image/png" in o.get("data", {})]
        for number, output in enumerate(figures):
            output.setdefault("metadata", {})["nanogpt_edu_alt"] = figure_alt(nb, index, number)


def edition_notebook(nb, edition: str):
    """Return a copy of ``nb`` as ``edition`` shows it: all of it (teacher) or without the answers (student)."""
    nb = copy.deepcopy(nb)
    # stored ipywidgets state would make the page load the widgets' manager from a CDN; without it the widget
    # outputs show their plain-text stand-in (the sampling explorer needs no widgets: it brings BokehJS along)
    nb.metadata.pop("widgets", None)
    if edition == "student":
        nb = student_notebook(nb, keep_outputs=True)
    for cell in nb.cells:  # a folded solution is the <details> control's to hide, not JupyterLab's
        cell.metadata.get("jupyter", {}).pop("source_hidden", None)
    describe_figures(nb)
    return nb


def build(notebook_dir: Path = ROOT / "notebooks", out: Path = ROOT / "build" / "html",
          edition: str = "teacher") -> list[Path]:
    """Write one HTML edition (``"teacher"`` or ``"student"``) into ``out``; return the pages written (index first)."""
    if edition not in EDITIONS:
        raise ValueError(f"edition should be one of {EDITIONS}, not {edition!r}")
    read = series(notebook_dir)
    out.mkdir(parents=True, exist_ok=True)
    exporter = HTMLExporter(template_name="lab", extra_template_paths=[str(TEMPLATES)])
    exporter.template_file = "edition.html.j2"
    entries, pages = [], []
    for path, nb in read:
        nb = edition_notebook(nb, edition)
        body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": plain_text(title_and_goals(nb)[0])}})
        body = NOTEBOOK_LINK.sub(r'href="\1.html"', body)
        body = accessible(REMOTE_IMPORT.sub("", REMOTE_SCRIPT.sub("", body)))
        page = out / f"{path.stem}.html"
        page.write_text(body, encoding="utf-8")
        pages.append(page)
        entries.append((path.stem, *title_and_goals(nb)))
    index = out / "index.html"
    index.write_text(index_page(entries, edition), encoding="utf-8")
    return [index, *pages]


def build_editions(notebook_dir: Path = ROOT / "notebooks", out: Path = ROOT / "build" / "html") -> dict:
    """Write both editions, into ``out/teacher`` and ``out/student``; return each one's pages."""
    return {edition: build(notebook_dir, out / edition, edition) for edition in EDITIONS}


EDITION_NOTE = {
    "teacher": "This is the teacher's edition: each exercise's solution is folded under it (\"show solution\").",
    "student": "This is the student's edition: the exercises are here, their solutions are not.",
}


def index_page(entries: list[tuple[str, str, list[str]]], edition: str = "teacher") -> str:
    """Return the index: the learning path, one entry per notebook (its title, once) with its goals as text."""
    items = []
    for stem, title, goals in entries:
        goal_items = "".join(f"<li>{markdown_inline(g)}</li>" for g in goals)
        items.append(f'<li><a href="{stem}.html">{markdown_inline(title)}</a><ul>{goal_items}</ul></li>')
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>nanogpt-edu: inside nanoGPT's sample.py ({edition}'s edition)</title>
<style>body {{ font-family: sans-serif; max-width: 50em; margin: 2em auto; line-height: 1.5; color: #1a1a1a; }}
a {{ color: #0b57a4; }} li > a {{ font-weight: bold; }} ul ul {{ font-size: 0.95em; color: #333; }}
ol.path {{ list-style: none; padding-left: 0; }} ol.path > li {{ margin-bottom: 1em; }}
code {{ background: #f2f2f2; padding: 0 0.2em; }}</style></head>
<body><main><h1>nanogpt-edu: how a GPT generates text</h1>
<p>A walk through nanoGPT's sampling script, one step per notebook, run on the small offline pocket model.
Follow them in order; each has learning goals, short runnable steps, an exercise and a recap.</p>
<p>{EDITION_NOTE[edition]}</p>
<h2>The learning path</h2>
<ol class="path">{''.join(items)}</ol>
<p>This is the static edition: the stored outputs, read-only. To run and change the code, open the notebooks in
JupyterLab (see the project's README).</p></main></body></html>
"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python scripts/html_edition.py", description=__doc__.splitlines()[0])
    parser.add_argument("--notebooks", type=Path, default=ROOT / "notebooks")
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "html")
    args = parser.parse_args(argv)
    output_folder(args.out, args.notebooks)
    for edition, pages in build_editions(args.notebooks, args.out).items():
        print(f"wrote the {edition}'s edition, {len(pages)} pages, to {pages[0].parent} (open {pages[0]})")


if __name__ == "__main__":
    run_tool(main)
