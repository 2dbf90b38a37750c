"""Every notebook in a real JupyterLab, and the static edition's sampling explorer, in headless Chromium.

JupyterLab runs on localhost (random free port, token) over a copy of the notebooks; in one JupyterLab page, kept
open as a learner keeps it, each notebook is opened from the file browser, run from the Run menu, checked for what
the page shows (its plots, no error output, and in 05 the sampling explorer answering a slider), then saved and
closed from the File menu. Then the static edition's 05 page is opened as a file, with every request
that would leave the machine refused and recorded, and its sliders are moved: the bars and the tokens-kept count
must be what ``nanogpt_edu.sampling`` computes on the page's own logits. Screenshots go to artifacts/.

Needs Debian's chromium package; Playwright drives it, no browser is downloaded. Without it these tests are
skipped with one line saying so, unless NANOGPT_EDU_REQUIRE_BROWSER=1 (``.ci/run`` sets it), which makes a
missing Chromium a failure.
"""

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest
import torch

from test_html_edition import SAMPLING, figure_count

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
NOTEBOOKS = [p.stem for p in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))]

NO_CHROMIUM = "browser tests need Chromium, not installed: to run them, apt-get install chromium (.ci/run does)"
REQUIRED = os.environ.get("NANOGPT_EDU_REQUIRE_BROWSER") == "1"

pytestmark = pytest.mark.browser
if not Path(CHROMIUM).exists() and not REQUIRED:
    pytest.skip(NO_CHROMIUM, allow_module_level=True)  # one line in the summary for the whole file


@pytest.fixture(scope="session", autouse=True)
def chromium() -> str:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{NO_CHROMIUM}; NANOGPT_EDU_REQUIRE_BROWSER=1 makes them required")
    return CHROMIUM


@pytest.fixture(scope="session")
def browser(chromium):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        yield b
        b.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def lab(tmp_path_factory, edition_notebooks):
    """Start JupyterLab over a copy of the notebooks; yield (base URL, token)."""
    port, token = free_port(), secrets.token_hex(16)
    # serve a copy: JupyterLab autosaves, and the stored notebooks are what nbval checks
    lab_root = tmp_path_factory.mktemp("lab-root")
    notebooks = lab_root / "notebooks"
    shutil.copytree(edition_notebooks, notebooks)
    # beside it, the rest of the repository as it is, for the notebooks' relative paths (../bench/results/...)
    for entry in ROOT.iterdir():
        if entry.name != "notebooks" and not entry.name.startswith("."):
            (lab_root / entry.name).symlink_to(entry)
    # without their stored outputs, so every number, figure and slider the page shows comes from this run
    for path in notebooks.glob("[0-9][0-9]_*.ipynb"):
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "code":
                cell.outputs, cell.execution_count = [], None
        nbformat.write(nb, path)
    log = open(tmp_path_factory.mktemp("lab") / "jupyterlab.log", "w")
    # a private settings folder: render every cell (JupyterLab otherwise only renders those in view) and no news
    settings = tmp_path_factory.mktemp("settings")
    for extension, text in [("notebook-extension/tracker", '{"windowingMode": "none"}'),
                            ("apputils-extension/notification", '{"fetchNews": "false", "checkForUpdates": false}')]:
        folder, name = extension.split("/")
        (settings / "@jupyterlab" / folder).mkdir(parents=True, exist_ok=True)
        (settings / "@jupyterlab" / folder / f"{name}.jupyterlab-settings").write_text(text)
    env = {**os.environ, "HF_HUB_DISABLE_PROGRESS_BARS": "1", "JUPYTERLAB_SETTINGS_DIR": str(settings),
           "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path_factory.mktemp("workspaces")),
           "JUPYTER_CONFIG_DIR": str(tmp_path_factory.mktemp("cfg"))}
    lab = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={notebooks}", "--allow-root"],
        stdout=log, stderr=subprocess.STDOUT, env=env,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status?token={token}", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline or lab.poll() is not None:
                    pytest.fail(f"jupyter lab did not start (see {log.name})")
                time.sleep(0.5)
        yield f"http://127.0.0.1:{port}", token
    finally:
        lab.terminate()
        try:
            lab.wait(timeout=20)
        except subprocess.TimeoutExpired:
            lab.kill()
        log.close()


def shut_down_kernels(base: str, token: str) -> None:
    """Stop every kernel the server runs, so the next notebook has the machine to itself."""
    def call(method: str, path: str):
        request = urllib.request.Request(f"{base}{path}", method=method, headers={"Authorization": f"token {token}"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read() or b"null")

    for session in call("GET", "/api/sessions"):
        call("DELETE", f"/api/sessions/{session['id']}")


# ---- the explorer, read from the page and recomputed with nanogpt_edu.sampling ----

READ_EXPLORER = """() => {
  const doc = Bokeh.documents[Bokeh.documents.length - 1];
  const get = (name) => doc.get_model_by_name(name);
  const args = get("top_k").js_property_callbacks["change:value"][0].args;
  const i = Number(get("prompt").value);
  const bars = get("bars").renderers[0].data_source.data;
  return {temperature: get("temperature").value, top_k: get("top_k").value, top_p: get("top_p").value,
          min_p: get("min_p").value, prompt: args.prompts[i], logits: Array.from(args.logits[i]),
          token: Array.from(bars.token), before: Array.from(bars.before), after: Array.from(bars.after),
          masked: Array.from(bars.masked), kept_html: get("kept").text};
}"""


def set_explorer(page, **values) -> None:
    """Set controls through Bokeh's document, as dragging them would (the callbacks run the same way)."""
    page.evaluate("""(values) => {
      const doc = Bokeh.documents[Bokeh.documents.length - 1];
      for (const [name, value] of Object.entries(values)) doc.get_model_by_name(name).value = value;
    }""", values)


def check_explorer(page, previous: dict | None = None) -> dict:
    """Check the bars and the tokens-kept count against ``filtered_distribution`` on the page's own logits."""
    from nanogpt_edu.explorer import filtered_distribution

    from playwright.sync_api import expect

    state = page.evaluate(READ_EXPLORER)
    top_p = state["top_p"] if state["top_p"] < 1 else None  # the sliders' "off" is None for nanogpt_edu.sampling
    expected = filtered_distribution(torch.tensor(state["logits"], dtype=torch.float64), state["temperature"],
                                     top_k=state["top_k"] or None, top_p=top_p, min_p=state["min_p"] or None)
    kept_text = f"{expected.kept:,}"
    expect(page.locator(".kept-count")).to_have_text(kept_text)  # what the learner reads (waits for the redraw)
    n = len(state["token"])
    before, after = expected.before[:n], expected.after[:n]
    torch.testing.assert_close(torch.tensor(state["before"], dtype=torch.float64), before, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(torch.tensor(state["after"], dtype=torch.float64), after, rtol=1e-9, atol=1e-12)
    assert state["masked"] == [0.0 if j < expected.kept else b for j, b in enumerate(state["before"])]
    held = float(re.search(r"holding ([\d.]+)% of the probability", state["kept_html"])[1])
    assert held == pytest.approx(100 * float(expected.before[:expected.kept].sum()), abs=0.05 + 1e-9)
    if previous is not None:  # the page changed: the figure and the count follow the controls
        assert (state["after"], kept_text) != (previous["after"], previous["kept_text"])
    return {**state, "kept_text": kept_text}


def press_slider(page, title: str, key: str, times: int) -> None:
    """Move a slider with the keyboard, as a learner would after clicking its handle."""
    slider = page.locator(".bk-Slider", has_text=title)
    handle = slider.locator(".noUi-handle").first
    handle.scroll_into_view_if_needed()
    handle.focus()
    for _ in range(times):
        handle.press(key)


# ---- the tests ----

@pytest.fixture(scope="session")
def lab_pages(lab, browser):
    """One JupyterLab page, kept open from notebook to notebook as a learner keeps it (loading JupyterLab's
    page costs seconds of CPU); ``open_page()`` gives it back with no notebook open, or a fresh one after a test
    that failed with its notebook still open."""
    base, token = lab
    held = {}

    def open_page():
        page = held.get("page")
        if page is not None and page.locator(".jp-NotebookPanel").count() == 0:
            return page
        if page is not None:
            page.close(run_before_unload=False)
        page = held["page"] = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"{base}/lab/workspaces/series?token={token}")  # an empty workspace of its own
        page.wait_for_selector(".jp-DirListing-item", timeout=90_000)
        return page

    yield open_page
    if held.get("page") is not None:
        held["page"].close(run_before_unload=False)


def from_file_menu(page, command: str) -> None:
    """Click the File menu's item for ``command`` (by command: the items' names carry their shortcuts)."""
    page.get_by_role("menuitem", name="File", exact=True).click()
    page.locator(f".lm-Menu-item[data-command='{command}']").click()


def close_notebook(page) -> None:
    """Save the notebook (the server's copy) and close its tab, both from the File menu, as a learner would."""
    from_file_menu(page, "docmanager:save")  # Save Notebook: a clean notebook then closes without asking
    page.wait_for_selector(".lm-TabBar-tab.jp-mod-dirty", state="detached", timeout=30_000)
    from_file_menu(page, "application:close")  # Close Tab
    page.wait_for_selector(".jp-NotebookPanel", state="detached", timeout=30_000)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_in_jupyterlab(lab, lab_pages, edition_notebooks, name):
    base, token = lab
    page = lab_pages()
    # open it from the file browser, as a learner would
    page.locator(".jp-DirListing-item", has_text=f"{name}.ipynb").dblclick()
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=90_000)
    # the kernel the notebook asks for is the project's
    page.wait_for_selector(".jp-Toolbar-kernelName:has-text('Python (nanogpt-edu)')", timeout=60_000)
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=90_000)

    # Run > Run All Cells, as a learner would
    page.get_by_role("menuitem", name="Run", exact=True).click()
    page.get_by_role("menuitem", name="Run All Cells", exact=True).click()

    # cells waiting or running show [*], done ones their number, others [ ] (a collapsed solution cell shows no
    # prompt). Wait until none is waiting: an error stops Run All, leaving the cells after it at [ ].
    deadline = time.monotonic() + 1200  # some cells time things, and a busy machine is slow
    while True:
        prompts = [p.strip() for p in page.locator(".jp-CodeCell .jp-InputArea-prompt").all_inner_texts()]
        prompts = [p for p in prompts if p]
        if "[*]:" not in prompts and any(p.strip("[]:").isdigit() for p in prompts):
            break
        assert time.monotonic() < deadline, f"the cells are still running after 20 minutes: {prompts}"
        time.sleep(1)
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=60_000)

    # JupyterLab shows errors and warnings under the stderr mime type; the stored notebooks have neither
    errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']").all_inner_texts()
    assert not errors, errors[0][-3000:]
    assert all(p.strip("[]:").isdigit() for p in prompts), f"not every cell ran: {prompts}"
    assert "Traceback" not in "\n".join(page.locator(".jp-OutputArea-output").all_inner_texts())
    # the notebook's figures render as images, as many as it stores
    images = page.locator(".jp-OutputArea-output img[src^='data:image/png']")
    assert images.count() >= figure_count(edition_notebooks / f"{name}.ipynb")

    first_figure = page.locator(".jp-OutputArea-output img, .jp-OutputArea-output canvas").first
    if name == SAMPLING:
        # the sampling explorer draws, and answers its sliders here as in the static page
        page.wait_for_selector(".kept-count", timeout=60_000)
        assert page.locator(".jp-OutputArea-output canvas").count() >= 1
        shown = check_explorer(page)
        press_slider(page, "top_k", "ArrowLeft", 3)
        check_explorer(page, previous=shown)
        first_figure = page.locator(".jp-OutputArea-output canvas").first
    if first_figure.count():
        first_figure.scroll_into_view_if_needed()
    time.sleep(0.5)  # let the last redraw reach the page
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"jupyterlab_{name}.png"))
    close_notebook(page)
    shut_down_kernels(base, token)


def test_static_edition_sampling_explorer_follows_its_sliders(browser, editions):
    from nanogpt_edu import load_model
    from nanogpt_edu.explorer import next_token_logits

    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    # the page must not need the network: refuse and record anything that is not the file itself or inline data
    remote = []

    def only_local(route):
        if route.request.url.startswith(("file:", "data:", "blob:")):
            route.continue_()
        else:
            remote.append(route.request.url)
            route.abort()

    page.route("**/*", only_local)
    page.goto((editions / "teacher" / f"{SAMPLING}.html").as_uri())
    page.wait_for_selector(".kept-count", timeout=60_000)

    # what the page opens with: the pocket model's logits, under nanoGPT's defaults (temperature 0.8, top-k 200)
    state = check_explorer(page)
    assert (state["temperature"], state["top_k"], state["top_p"], state["min_p"]) == (0.8, 200, 1.0, 0.0)
    assert state["kept_text"] == "200"
    fresh = next_token_logits(load_model("pocket"), state["prompt"])
    torch.testing.assert_close(torch.tensor(state["logits"], dtype=torch.float32), torch.from_numpy(fresh.logits),
                               rtol=0, atol=1e-4)
    assert state["token"] == fresh.labels

    # the keyboard on the top-k slider: 200 -> 190
    press_slider(page, "top_k", "ArrowLeft", 10)
    state = check_explorer(page, previous=state)
    assert (state["top_k"], state["kept_text"]) == (190, "190")
    # top-k off, the nucleus at temperature 1 reaches deep into the tail; then min-p; then another prompt
    for values in [dict(temperature=1.0, top_k=0, top_p=0.9), dict(temperature=1.5, top_p=1.0, min_p=0.1),
                   dict(prompt="1", temperature=0.5, top_k=50, top_p=0.5, min_p=0.05),
                   dict(prompt="0", temperature=1.0, top_k=12, top_p=1.0, min_p=0.0)]:
        set_explorer(page, **values)
        state = check_explorer(page, previous=state)
    assert state["prompt"] == "Hello, my name is" and state["kept_text"] == "12"

    ARTIFACTS.mkdir(exist_ok=True)
    page.locator(".jp-OutputArea-output:has([data-root-id])").screenshot(path=str(ARTIFACTS / f"static_{SAMPLING}.png"))
    page.close()
    assert remote == [], f"the static page tried to fetch {remote}"


# ---- accessibility: every page of both static editions, with axe-core, and the explorer by keyboard alone ----

WCAG_21_AA = {"runOnly": {"type": "tag", "values": ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]},
              "resultTypes": ["violations"]}


EDITION_PAGES = [f"{edition}/{page}" for edition in ("teacher", "student") for page in ["index", *NOTEBOOKS]]


@pytest.mark.parametrize("page_name", EDITION_PAGES)
def test_every_page_of_both_editions_meets_wcag_21_aa_by_axe(browser, editions, page_name):
    from axe_playwright_python.sync_playwright import Axe

    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto((editions / f"{page_name}.html").as_uri())
    page.wait_for_load_state("load")
    if page.locator("[data-root-id]").count():  # the explorer: let BokehJS draw it and name its sliders
        page.wait_for_selector(".kept-count", timeout=60_000)
        page.wait_for_function("""() => { let n = 0; const walk = (r) => { for (const e of r.querySelectorAll('*'))
            if (e.shadowRoot) { n += e.shadowRoot.querySelectorAll('[role=slider][aria-label]').length;
            walk(e.shadowRoot); } }; walk(document); return n >= 4; }""", timeout=30_000)
    results = Axe().run(page, options=WCAG_21_AA).response
    violations = [(v["id"], v["impact"], len(v["nodes"]), v["nodes"][0]["html"][:120]) for v in results["violations"]]
    assert violations == [], violations
    # every figure has a text alternative that says what it shows: its notebook, its title and lesson
    alts = page.locator("img[src^='data:image/png']").evaluate_all("els => els.map(e => e.alt)")
    assert all(a.startswith("Figure from ") and len(a.split()) >= 8 for a in alts), alts
    page.close()


def test_the_explorer_sliders_are_named_and_move_with_the_keyboard_alone(browser, editions):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto((editions / "student" / f"{SAMPLING}.html").as_uri())
    page.wait_for_selector(".kept-count", timeout=60_000)
    names = ["temperature", "top_k (0 = off)", "top_p (1 = off)", "min_p (0 = off)"]
    for name in names:  # a screen reader finds each by its name, with its value
        expect_slider = page.get_by_role("slider", name=name, exact=True)
        assert expect_slider.count() == 1, name
    state = check_explorer(page)
    # Tab from the prompt's menu reaches the temperature slider; no mouse from here on
    page.get_by_role("combobox").first.focus()
    page.keyboard.press("Tab")
    focused = page.evaluate("() => { let e = document.activeElement; while (e && e.shadowRoot && "
                            "e.shadowRoot.activeElement) e = e.shadowRoot.activeElement; "
                            "return e && e.getAttribute('aria-label'); }")
    assert focused == "temperature"
    page.keyboard.press("ArrowRight")  # temperature 0.8 -> 0.85
    state = check_explorer(page, previous=state)
    assert state["temperature"] == pytest.approx(0.85)
    page.keyboard.press("Tab")  # on to top_k: 200 -> 195, read back from the page's own answer
    for _ in range(5):
        page.keyboard.press("ArrowLeft")
    state = check_explorer(page, previous=state)
    assert (state["top_k"], state["kept_text"]) == (195, "195")
    assert page.get_by_role("slider", name="top_k (0 = off)").get_attribute("aria-valuenow").startswith("195")
    page.close()
