"""The notebook series is complete and stored as a clean run (nbval then checks that the outputs reproduce)."""

import json
import re
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def load(path):
    return json.loads(path.read_text(encoding="utf-8"))


def source(cell) -> str:
    return "".join(cell["source"])


def test_the_series_is_numbered_in_order():
    names = [p.stem for p in NOTEBOOKS]
    assert names == ["00_overview", "01_config", "02_weight_porting", "03_tokenization", "04_forward_pass",
                     "05_sampling_loop", "06_kv_cache", "07_output_quality", "08_after_nanogpt"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_goals_exercise_and_recap(path):
    cells = load(path)["cells"]
    markdown = "\n".join(source(c) for c in cells if c["cell_type"] == "markdown")
    assert "**Learning goals**" in markdown and "## Exercise" in markdown and "## Recap" in markdown
    # a collapsed solution cell, followed by a cell that checks it (tests/test_exercises.py checks the checks)
    for i, cell in enumerate(cells):
        if cell["metadata"].get("jupyter", {}).get("source_hidden"):
            assert "answers(" in source(cells[i + 1]) and "check(" in source(cells[i + 1])
            break
    else:
        pytest.fail("no collapsed solution cell")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_stored_as_a_clean_top_to_bottom_run(path):
    nb = load(path)
    code = [c for c in nb["cells"] if c["cell_type"] == "code" and source(c).strip()]
    assert [c["execution_count"] for c in code] == list(range(1, len(code) + 1))
    for cell in code:
        tags = cell["metadata"].get("tags", [])
        assert not [o for o in cell["outputs"] if o["output_type"] == "error"] or "raises-exception" in tags
        stderr = [o for o in cell["outputs"] if o.get("name") == "stderr"]
        assert not stderr or "nbval-ignore-output" in tags, f"stderr in a compared cell: {source(cell)[:60]}"
    assert nb["metadata"]["kernelspec"]["language"] == "python"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_plot_cells_end_in_show_and_compared_cells_print_no_paths(path):
    for cell in load(path)["cells"]:
        if cell["cell_type"] != "code":
            continue
        text = source(cell)
        if re.search(r"^fig = plot_", text, re.M):
            assert text.rstrip().endswith("plt.show()"), text  # a trailing ';' does not hide output under nbval
        if "nbval-ignore-output" not in cell["metadata"].get("tags", []):
            outputs = json.dumps(cell["outputs"])
            assert "/work/" not in outputs and "/home/" not in outputs and "/tmp/" not in outputs
