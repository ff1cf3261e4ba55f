"""A real browser drives JupyterLab: the analysis notebook runs through the UI and its explorer redraws.

Run by `make test-browser` (which installs Debian's chromium when missing and the user is root, and
the pinned Playwright of requirements-browser.txt), skipped otherwise: it needs /usr/bin/chromium
(or $CHROMIUM) and takes a minute or two. Playwright drives the system Chromium through
`executable_path`; its own browser download is never used (it cannot work on these machines).

The test builds three tiny runs (the tiny-world fixtures of conftest.py, scored by
`lib.protocol.run.evaluate`), prepares a copy of notebooks/analysis.ipynb whose parameters point at
them (papermill `prepare_only`: parameters injected, nothing executed), starts `jupyter lab` on a
free local port with a token and isolated settings, opens the notebook in headless Chromium, runs
all cells from the Run menu, asserts that no cell shows an error (in the page and in the notebook
as saved), then changes the explorer's pair selector and its quadrant selector and asserts that the
figure shown changes each time. Screenshots go to outputs/browser/.
"""
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

if os.environ.get("CXR_BROWSER_TEST") != "1":
    pytest.skip("real-browser test: run it with `make test-browser` (sets CXR_BROWSER_TEST=1)",
                allow_module_level=True)

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / "outputs" / "browser"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
# what this machine's closed network needs (see the project notes): no background connections
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage"]
PAIRS = (("llava", "mimic-cxr"), ("gemma3", "padchest"), ("llava", "padchest"))
# the error outputs of the open notebook, read from JupyterLab's own notebook model in the page
# (JupyterLab renders an error as stderr text: the DOM alone does not tell it from a warning)
ERRORS_JS = """() => {
  const panel = window.jupyterapp.shell.currentWidget, found = [];
  for (const cell of panel.content.widgets) {
    if (cell.model.type !== 'code') continue;
    const outputs = cell.model.outputs;
    for (let i = 0; i < outputs.length; i++) {
      const o = outputs.get(i).toJSON();
      if (o.output_type === 'error') found.push(o.ename + ': ' + o.evalue);
    }
  }
  return found;
}"""
TRACEBACK_IN_PAGE = '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]:has-text("Traceback")'
LAB_SETTINGS = {  # user settings of the isolated JupyterLab: every cell in the DOM, no news prompt
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
        "fetchNews": "false", "checkForUpdates": False},
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def notebook_dir(tiny_world, tmp_path_factory):
    """A folder with analysis.ipynb prepared over three tiny runs."""
    import papermill as pm

    from lib.protocol import config, run

    tmp = tmp_path_factory.mktemp("browser")
    runs = tmp / "runs"
    for family, dataset in PAIRS:
        run.evaluate(config.validate({
            "config": f"tiny-{family}", "model": str(tiny_world["models"][family]), "dataset": dataset,
            "data_root": str(tiny_world["data"][dataset]), "split": "train", "limit": 12,
            "bootstrap_resamples": 200, "output_dir": str(runs / f"tiny-{family}__{dataset}")}))
    lab_dir = tmp / "lab"
    lab_dir.mkdir()
    pm.execute_notebook(str(ROOT / "notebooks" / "analysis.ipynb"), str(lab_dir / "analysis.ipynb"),
                        parameters={"runs_dir": str(runs), "analysis_dir": str(tmp / "analysis"),
                                    "bootstrap_resamples": 200, "permutation_resamples": 999},
                        prepare_only=True)
    return lab_dir


@pytest.fixture(scope="module")
def lab(notebook_dir, tmp_path_factory):
    """`jupyter lab` on a free port with a token, isolated settings; its URL and token."""
    home = tmp_path_factory.mktemp("lab-home")
    for name, values in LAB_SETTINGS.items():
        path = home / "settings" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    port, token = free_port(), secrets.token_hex(16)
    env = {**os.environ, "JUPYTERLAB_SETTINGS_DIR": str(home / "settings"),
           "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces"), "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
           "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
               f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
               f"--ServerApp.root_dir={notebook_dir}", "--LabApp.extension_manager=readonly",
               "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
               "--LabApp.expose_app_in_browser=True"]  # window.jupyterapp: the notebook model, for ERRORS_JS
    if os.geteuid() == 0:
        command.append("--allow-root")
    SHOTS.mkdir(parents=True, exist_ok=True)
    log = open(SHOTS / "jupyter-lab.log", "w")
    server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"jupyter lab did not start (see {SHOTS / 'jupyter-lab.log'})")
            time.sleep(0.5)
        yield {"base": base, "token": token, "dir": notebook_dir}
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        log.close()


def code_prompts(page) -> list[str]:
    return page.eval_on_selector_all(".jp-CodeCell .jp-InputPrompt", "els => els.map(e => e.textContent.trim())")


def wait_until_all_ran(page, timeout_s=600) -> None:
    """Every code cell shows an execution count and none is queued or running ([*])."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        prompts = code_prompts(page)
        if prompts and all(p.startswith("[") and p[1:-2].isdigit() for p in prompts):
            return
        if page.evaluate(ERRORS_JS):
            return  # an error stops Run All: reported by the caller
        time.sleep(1)
    raise AssertionError(f"cells still not run after {timeout_s} s: prompts {code_prompts(page)}")


def run_all(page, started_within_s=90) -> None:
    """Run > Run All Cells; once more if no cell has started after a while (a busy machine)."""
    for attempt in range(2):
        page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
        page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
        deadline = time.monotonic() + started_within_s
        while time.monotonic() < deadline:
            if any(p not in ("[ ]:", "") for p in code_prompts(page)):
                return
            time.sleep(1)
        page.screenshot(path=str(SHOTS / f"run_all_not_started_{attempt}.png"))
    raise AssertionError(f"Run All Cells started no cell: prompts {code_prompts(page)}")


def test_analysis_notebook_and_explorer_in_jupyterlab(lab):
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).is_file(), f"no Chromium at {CHROMIUM}: apt-get install -y chromium"
    console = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1200})
        try:
            page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
            page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
            page.goto(f"{lab['base']}/lab/tree/analysis.ipynb?token={lab['token']}")
            page.wait_for_selector(".jp-NotebookPanel .jp-Cell", timeout=120_000)
            page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=120_000)
            prepared = json.loads((lab["dir"] / "analysis.ipynb").read_text())
            n_code = sum(c["cell_type"] == "code" for c in prepared["cells"])
            page.wait_for_function(f"() => document.querySelectorAll('.jp-CodeCell').length === {n_code}",
                                   timeout=60_000)

            page.locator(".jp-StatusBar-TextItem", has_text="| Idle").first.wait_for(timeout=120_000)

            # Run > Run All Cells, through the menu bar as a person would
            run_all(page)
            wait_until_all_ran(page)
            page.screenshot(path=str(SHOTS / "analysis_run_all.png"), full_page=True)
            errors = page.evaluate(ERRORS_JS)
            assert not errors, f"cells show errors: {errors}"
            shown = page.locator(TRACEBACK_IN_PAGE)
            assert shown.count() == 0, f"a cell shows a traceback: {shown.all_inner_texts()[:2]}"

            explorer = page.locator(".cxr-explorer")
            explorer.wait_for(timeout=60_000)
            explorer.scroll_into_view_if_needed()
            figure = explorer.locator("img.widget-image").first
            figure.wait_for()
            pair_select = explorer.locator(".widget-dropdown select").nth(0)
            finding_select = explorer.locator(".widget-dropdown select").nth(1)
            quadrant_select = explorer.locator(".widget-dropdown select").nth(2)
            pairs = pair_select.locator("option").all_text_contents()
            assert len(pairs) == len(PAIRS), pairs
            assert pairs[0] in explorer.inner_text()  # the numbers beside the figure name the pair
            assert "followup: answer changed" in explorer.inner_text()   # the local tests' rates too

            def shown():
                return figure.get_attribute("src"), figure.screenshot()

            def wait_for_new_figure(before_src):
                page.wait_for_function(
                    "([el, before]) => el.src !== before && el.complete && el.naturalWidth > 0",
                    arg=[figure.element_handle(), before_src], timeout=60_000)

            first_src, first_png = shown()
            explorer.screenshot(path=str(SHOTS / "explorer_pair_1.png"))

            pair_select.select_option(label=pairs[1])
            wait_for_new_figure(first_src)
            second_src, second_png = shown()
            assert second_png != first_png, "the figure stayed the same after choosing another pair"
            assert pairs[1] in explorer.inner_text()
            explorer.screenshot(path=str(SHOTS / "explorer_pair_2.png"))

            quadrant_select.select_option(label="Dangerous")
            wait_for_new_figure(second_src)
            _, third_png = shown()
            assert third_png != second_png, "the figure stayed the same after choosing a quadrant"
            assert f"{pairs[1]}: Dangerous" in explorer.inner_text()
            explorer.screenshot(path=str(SHOTS / "explorer_pair_2_dangerous.png"))

            # a finding, then a click through to one sample: its predictions and (synthetic) image
            third_src = figure.get_attribute("src")
            quadrant_select.select_option(label="all quadrants")
            wait_for_new_figure(third_src)
            finding = finding_select.locator("option").all_text_contents()[1]
            finding_select.select_option(label=finding)
            page.wait_for_function("el => el.innerText.includes('Wilson intervals')",
                                   arg=explorer.element_handle(), timeout=60_000)
            explorer.screenshot(path=str(SHOTS / "explorer_finding.png"))
            explorer.locator(".widget-select select").select_option(index=0)
            page.wait_for_function("el => el.innerText.includes('p_yes per prompt and condition')",
                                   arg=explorer.element_handle(), timeout=60_000)
            assert "text_only" in explorer.inner_text() and "local tests: occlude:" in explorer.inner_text()
            sample_image = explorer.locator("img.widget-image").nth(1)
            sample_image.wait_for(state="visible", timeout=60_000)
            sample_image.evaluate("el => el.scrollIntoView({block: 'end'})")   # the sample, below the list
            page.screenshot(path=str(SHOTS / "explorer_sample.png"))
            listed = explorer.locator(".widget-select select option").all_text_contents()
            assert listed and all(f"| {finding} |" in o.replace("\xa0", " ") for o in listed), listed   # that finding's samples only
            assert f"{finding} (Wilson intervals)" in explorer.inner_text()

            # the notebook as saved from the browser holds no error output either
            page.keyboard.press("Control+s")
            page.wait_for_timeout(2000)
            saved = json.loads((lab["dir"] / "analysis.ipynb").read_text())
            outputs = [o for c in saved["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])]
            assert outputs, "the saved notebook has no outputs"
            assert not [o for o in outputs if o["output_type"] == "error"]

            # and the error check does see an error: a failing cell typed in through the UI
            page.locator(".jp-CodeCell").last.click()
            page.keyboard.press("Escape")
            page.keyboard.press("b")
            page.keyboard.press("Enter")
            page.keyboard.type('raise ValueError("probe of the error check")')
            page.keyboard.press("Shift+Enter")
            page.wait_for_function(f"() => ({ERRORS_JS})().length > 0", timeout=60_000)
            assert page.evaluate(ERRORS_JS) == ["ValueError: probe of the error check"]
            assert page.locator(TRACEBACK_IN_PAGE).count() == 1
        except Exception:
            page.screenshot(path=str(SHOTS / "failure.png"))
            raise
        finally:
            (SHOTS / "console.txt").write_text("\n".join(console))
            browser.close()
