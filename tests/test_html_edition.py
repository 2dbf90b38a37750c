import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))  # the HTML edition is a repository tool, not part of the package
from html_edition import build, notebooks  # noqa: E402

NOTEBOOK_DIR = ROOT / "notebooks"


def figure_count(path: Path) -> int:
    nb = json.loads(path.read_text(encoding="utf-8"))
    return sum("image/png" in o.get("data", {}) for c in nb["cells"] for o in c.get("outputs", []))


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
        assert "https://cdnjs" not in text  # nothing to fetch: the edition works offline
        assert f'href="{path.stem}.html"' in index
    assert figure_count(NOTEBOOK_DIR / "05_sampling_loop.ipynb") >= 3  # the sampling notebook's plots
    assert "Learning goals" not in index and "<li>" in index  # goals are listed as items under each notebook
