"""The sampling notebook in a real JupyterLab, in headless Chromium, as a learner would use it.

Starts ``jupyter lab`` on localhost (random free port, token), opens 05_sampling_loop.ipynb, runs every cell
from the Run menu and checks what the page shows: the plots as images, no error output, and the ipywidgets
panel redrawing its plot when a slider moves. A screenshot goes to artifacts/. Needs Debian's chromium package
(``.ci/run`` installs it); Playwright drives it, no browser is downloaded.
"""

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.browser


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab_url(tmp_path_factory):
    if not Path(CHROMIUM).exists():
        pytest.fail("Chromium is needed for the browser test: apt-get install chromium (see .ci/run)")
    port, token = free_port(), secrets.token_hex(16)
    # serve a copy: JupyterLab autosaves, and the stored notebooks are what nbval checks
    notebooks = tmp_path_factory.mktemp("lab-root") / "notebooks"
    shutil.copytree(ROOT / "notebooks", notebooks)
    log = open(tmp_path_factory.mktemp("lab") / "jupyterlab.log", "w")
    # a private settings folder: render every cell (JupyterLab otherwise only renders those in view) and no news
    settings = tmp_path_factory.mktemp("settings")
    (settings / "@jupyterlab" / "notebook-extension").mkdir(parents=True)
    (settings / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings").write_text(
        '{"windowingMode": "none"}')
    (settings / "@jupyterlab" / "apputils-extension").mkdir(parents=True)
    (settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings").write_text(
        '{"fetchNews": "false", "checkForUpdates": false}')
    env = {**os.environ, "HF_HUB_DISABLE_PROGRESS_BARS": "1", "JUPYTERLAB_SETTINGS_DIR": str(settings),
           "JUPYTER_CONFIG_DIR": str(tmp_path_factory.mktemp("cfg"))}
    lab = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={notebooks}", "--allow-root",
         ],
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


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def test_sampling_notebook_runs_in_jupyterlab(lab_url, browser):
    base, token = lab_url
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(f"{base}/lab/tree/05_sampling_loop.ipynb?token={token}")
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=90_000)
    # the kernel the notebook asks for is the project's
    page.wait_for_selector(".jp-Toolbar-kernelName:has-text('Python (nanogpt-edu)')", timeout=60_000)
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=90_000)

    # Run > Run All Cells, as a learner would
    page.get_by_role("menuitem", name="Run", exact=True).click()
    page.get_by_role("menuitem", name="Run All Cells", exact=True).click()

    # every code cell gets its execution number (one waiting or running shows [*] or [ ]); a collapsed solution
    # cell shows no prompt
    deadline = time.monotonic() + 180
    while True:
        prompts = [p.strip() for p in page.locator(".jp-CodeCell .jp-InputArea-prompt").all_inner_texts()]
        if prompts and all(p.strip("[]:").isdigit() for p in prompts):
            break
        assert time.monotonic() < deadline, f"not every cell ran: {prompts}"
        time.sleep(1)
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=60_000)

    outputs = page.locator(".jp-OutputArea-output")
    text = "\n".join(outputs.all_inner_texts())
    assert "Traceback" not in text and "Error" not in text.replace("ModelNotAvailableError", "")
    assert page.locator("[data-mime-type='application/vnd.jupyter.stderr']").count() == 0
    # the temperature grid, top-k mask and filter comparison plots (plus the slider panel's) render as images
    images = page.locator(".jp-OutputArea-output img")
    assert images.count() >= 4
    assert all(src.startswith("data:image/png") for src in
               [images.nth(i).get_attribute("src") for i in range(images.count())])

    # the ipywidgets panel is there, and moving a slider redraws its plot
    slider = page.locator(".widget-slider").first
    slider.scroll_into_view_if_needed()
    panel_image = page.locator(".widget-vbox .jp-OutputArea-output img").first
    panel_image.wait_for(timeout=30_000)
    before = panel_image.get_attribute("src")
    handle = slider.locator(".noUi-handle").first
    handle.focus()
    for _ in range(5):
        handle.press("ArrowRight")
    deadline = time.monotonic() + 30
    while panel_image.get_attribute("src") == before:
        assert time.monotonic() < deadline, "the plot did not change when the slider moved"
        time.sleep(0.5)

    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=60_000)
    time.sleep(1)  # let the last redraw reach the page
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "jupyterlab_05_sampling_loop.png"), full_page=False)
    page.close()
