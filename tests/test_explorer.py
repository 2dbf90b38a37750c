"""The sampling explorer: its data is the model's, and its in-browser arithmetic is nanogpt_edu.sampling's.

The JavaScript that ships in the page (``DISTRIBUTION_JS``) runs here under Node.js, or in headless Chromium where
Node.js is missing, on the pocket model's real logits and on made-up ones with ties, for many settings; what it
computes must be what ``filtered_distribution`` (temperature and ``nanogpt_edu.sampling``'s masks) computes.
"""

import html
import json
import os
import re
import shutil
import subprocess

import pytest
import torch

from nanogpt_edu import load_model
from nanogpt_edu.explorer import (DEFAULT_PROMPTS, DISTRIBUTION_JS, ExplorerPage, explorer_document,
                                  filtered_distribution, next_token_logits, sampling_explorer)
from nanogpt_edu.plots import token_label
from nanogpt_edu.sampling import sample_next_token

HEAD = 2000  # probabilities compared one by one; the rest through their sums
# run every case through the shipped function; report the kept count, the first HEAD probabilities and the sums
RUN_CASES = DISTRIBUTION_JS + """
function run_cases(cases) {
  const sum = (a) => a.reduce((s, x) => s + x, 0);
  return cases.map((c) => {
    const r = filtered_distribution(c.logits, c.temperature, c.top_k, c.top_p, c.min_p);
    return {kept: r.kept, before: Array.from(r.before.subarray(0, %d)), after: Array.from(r.after.subarray(0, %d)),
            before_sum: sum(r.before), after_sum: sum(r.after)};
  });
}
""" % (HEAD, HEAD)


@pytest.fixture(scope="module")
def model():
    return load_model("pocket")


@pytest.fixture(scope="module")
def rows(model):
    return [next_token_logits(model, p) for p in DEFAULT_PROMPTS]


def run_js(cases: list[dict]) -> list[dict]:
    """Run ``RUN_CASES`` on ``cases`` with Node.js, or else in headless Chromium."""
    node = shutil.which("node")
    if node:
        script = RUN_CASES + """
const cases = JSON.parse(require("fs").readFileSync(0, "utf8"));
process.stdout.write(JSON.stringify(run_cases(cases)));
"""
        done = subprocess.run([node, "-e", script], input=json.dumps(cases), capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if not os.path.exists(chromium):
        reason = "the explorer's JavaScript needs Node.js or Chromium to run: apt-get install nodejs (or chromium)"
        if os.environ.get("NANOGPT_EDU_REQUIRE_BROWSER") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--headless", "--no-sandbox", "--disable-gpu"])
        page = browser.new_page()
        page.add_script_tag(content=RUN_CASES)
        results = page.evaluate("(cases) => run_cases(cases)", cases)
        browser.close()
    return results


def off(top_k: int, top_p: float, min_p: float) -> dict:
    """The sliders' values (top_k 0, top_p 1 and min_p 0 mean off) as nanogpt_edu.sampling's keywords."""
    return dict(top_k=top_k or None, top_p=top_p if top_p < 1 else None, min_p=min_p or None)


SETTINGS = [  # temperature, top_k, top_p, min_p
    (1.0, 0, 1.0, 0.0), (0.8, 200, 1.0, 0.0), (0.8, 1, 1.0, 0.0), (1.0, 10, 1.0, 0.0), (2.0, 500, 1.0, 0.0),
    (1.0, 0, 0.9, 0.0), (1.5, 0, 0.95, 0.0), (0.5, 0, 0.1, 0.0), (2.0, 0, 0.99, 0.0), (1.0, 0, 0.5, 0.0),
    (1.0, 0, 1.0, 0.05), (2.0, 0, 1.0, 0.01), (0.8, 0, 1.0, 0.5), (1.0, 0, 1.0, 1.0),
    (0.8, 200, 0.9, 0.05), (1.2, 40, 0.8, 0.1), (0.05, 0, 0.9, 0.0), (0.05, 5, 1.0, 0.0), (1.95, 300, 0.97, 0.02),
]
# made-up logits, sorted, with ties: at the k-th value (top-k keeps them all), at the top (min-p 1 keeps both)
TIES = [4.0, 4.0, 2.5, 2.0, 2.0, 2.0, 1.0, 0.0, -1.0, -1.0, -3.0, -30.0]
TIE_SETTINGS = [(1.0, 4, 1.0, 0.0), (1.0, 1, 1.0, 0.0), (1.0, 0, 1.0, 1.0), (1.0, 0, 0.5, 0.0), (0.3, 0, 0.9, 0.0),
                (2.0, 20, 0.7, 0.2), (1.0, 3, 1.0, 0.0), (1.0, 0, 1.0, 0.0)]
# four equal logits: probabilities of exactly 1/4, so the mass above a token lands exactly on top_p 0.5 and 0.75
EVEN, EVEN_SETTINGS = [0.0] * 4, [(1.0, 0, 0.5, 0.0), (1.0, 0, 0.75, 0.0), (1.0, 0, 1.0, 1.0), (1.0, 2, 1.0, 0.0)]


def test_the_shipped_arithmetic_is_nanogpt_edu_sampling(rows):
    cases, expected = [], []
    for logits, settings in [(r.logits.tolist(), SETTINGS) for r in rows] + [(TIES, TIE_SETTINGS),
                                                                                    (EVEN, EVEN_SETTINGS)]:
        for temperature, top_k, top_p, min_p in settings:
            cases.append(dict(logits=logits, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p))
            expected.append(filtered_distribution(torch.tensor(logits, dtype=torch.float64), temperature,
                                                  **off(top_k, top_p, min_p)))
    kept_counts = set()
    for case, got, want in zip(cases, run_js(cases), expected):
        setting = {k: v for k, v in case.items() if k != "logits"}
        assert got["kept"] == want.kept, setting
        n = min(HEAD, len(case["logits"]))
        torch.testing.assert_close(torch.tensor(got["before"][:n], dtype=torch.float64), want.before[:n],
                                   rtol=1e-9, atol=1e-15, msg=str(setting))
        torch.testing.assert_close(torch.tensor(got["after"][:n], dtype=torch.float64), want.after[:n],
                                   rtol=1e-9, atol=1e-15, msg=str(setting))
        assert got["before_sum"] == pytest.approx(1, abs=1e-9) and got["after_sum"] == pytest.approx(1, abs=1e-9)
        kept_counts.add(want.kept)
    # the cases reach from a single token through hundreds into the tail to the whole vocabulary
    assert min(kept_counts) == 1 and max(kept_counts) == 50257 and any(1000 < k < 50257 for k in kept_counts)


def test_filtered_distribution_is_what_sample_next_token_draws_from(rows):
    logits = torch.from_numpy(rows[0].logits)
    for temperature, top_k, top_p, min_p in [(0.8, 200, 1.0, 0.0), (1.0, 0, 0.9, 0.0), (1.5, 0, 1.0, 0.1)]:
        kept = filtered_distribution(logits, temperature, **off(top_k, top_p, min_p)).kept
        draws = sample_next_token(logits[None, :].repeat(400, 1), temperature, **off(top_k, top_p, min_p),
                                  generator=torch.Generator().manual_seed(0))
        assert int(draws.max()) < kept  # the logits are sorted: the kept tokens are the first `kept`


def test_next_token_logits_are_the_models_sorted_with_labels(model, rows):
    from nanogpt_edu.tokenizer import encode

    with torch.no_grad():
        logits, _ = model(torch.tensor(encode("Hello, my name is"))[None, :])
    row = rows[0]
    assert row.prompt == "Hello, my name is" and row.logits.dtype.name == "float32"
    assert torch.equal(torch.from_numpy(row.logits), torch.sort(logits[0, -1], descending=True).values)
    assert [float(logits[0, -1, i]) for i in row.token_ids] == row.logits[:len(row.token_ids)].tolist()
    assert len(row.labels) == 40 and len(set(row.labels)) == 40
    assert row.labels == [token_label(i) for i in row.token_ids]  # distinct already: no '#id' suffix needed


def test_labels_stay_distinct_when_tokens_print_alike(model):
    # byte tokens that are not UTF-8 on their own all print as '\ufffd'; the axis needs distinct names
    row = next_token_logits(model, "ROMEO:", shown=40, decode_bytes=lambda i: b"\xff")
    assert len(set(row.labels)) == 40 and row.labels[0] == "'\ufffd'" and row.labels[1].startswith("'\ufffd' #")


def shipped_code(fragment: str) -> list[str]:
    """Return the code of every CustomJS callback in an explorer page's embedded Bokeh document."""
    blob = re.search(r'<script type="application/json"[^>]*>(.*?)</script>', fragment, re.S)[1]
    codes = []

    def walk(node):
        if isinstance(node, dict):
            if node.get("name") == "CustomJS":
                codes.append(node["attributes"]["code"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(json.loads(html.unescape(blob)))
    return codes


def test_the_page_ships_the_tested_code_and_needs_no_network(model, rows, tmp_path):
    page = sampling_explorer(model, DEFAULT_PROMPTS)
    fragment = page._repr_html_()
    codes = shipped_code(fragment)
    # the callbacks run the tested arithmetic; the one other script only names the sliders for screen readers
    others = [code for code in codes if not code.startswith(DISTRIBUTION_JS)]
    assert len(codes) > len(others) and len(others) == 1 and "aria-label" in others[0] and "logits" not in others[0]
    assert "Bokeh.set_log_level" in fragment and len(fragment) > 1_000_000  # BokehJS itself is in the page
    assert not re.search(r'<script\b[^>]*\bsrc=|<link\b', fragment)  # nothing to fetch
    assert len(fragment) < 3_000_000  # three prompts' logits (compressed) and BokehJS
    saved = page.save(tmp_path / "explorer.html").read_text(encoding="utf-8")
    assert saved.startswith("<!DOCTYPE html>") and shipped_code(saved) == codes
    assert isinstance(page, ExplorerPage) and "sampling explorer" in repr(page)


def test_the_controls_start_where_asked(rows):
    doc = explorer_document(rows, temperature=1.0, top_k=0, top_p=0.9, min_p=0.05)
    values = {name: doc.select_one({"name": name}).value for name in ("prompt", "temperature", "top_k", "top_p",
                                                                      "min_p")}
    assert values == {"prompt": "0", "temperature": 1.0, "top_k": 0, "top_p": 0.9, "min_p": 0.05}
