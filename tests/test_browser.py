"""Real-browser test: `streamlit run app.py` on 127.0.0.1, driven by Chromium through Playwright.

Visits every page, waits for the Plotly charts (WebGL canvas for 3D), checks that no Streamlit
exception box and no console error appears, and saves a screenshot per page under
test-artifacts/browser/. The store contains a five-step training series for the Training page. Requests to any host other than 127.0.0.1 are blocked and reported.
Skipped where /usr/bin/chromium is missing.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlencode, urlparse

import pytest
from synthetic_runs import make_run, seed_store, write_run

from spinal.store import TraceStore

CHROMIUM = Path("/usr/bin/chromium")
ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts" / "browser"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
START_TIMEOUT_S = 60
PAGE_TIMEOUT_MS = 60_000
XSS_LABEL = "<script>alert(1)</script>"
SERIES_STEPS = (0, 50, 100, 150, 200)

# Page url path -> (number of Plotly charts, whether one of them is 3D).
PAGES = {
    "": (0, False),
    "trajectories": (2, True),
    "heatmaps": (3, False),
    "compare": (2, False),
    "side_by_side": (3, False),
    "training": (3, False),
    "trace": (0, False),
    "export": (0, False),
}

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.is_file(), reason=f"{CHROMIUM} is missing; install chromium to run browser tests"),
]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_healthy(url: str, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"streamlit exited with status {process.returncode}")

        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.3)

    raise TimeoutError(f"streamlit at {url} was not healthy after {START_TIMEOUT_S} s")


@pytest.fixture(scope="module")
def browser_store(tmp_path_factory):
    store = TraceStore(tmp_path_factory.mktemp("browser-store"))
    runs = seed_store(store)
    hostile = write_run(store, make_run(XSS_LABEL, seed=5, alpha_shift=0.2, failed_layers=(0,)))
    for step in SERIES_STEPS:
        shift = 0.3 if step >= SERIES_STEPS[-2] else 0.0
        write_run(store, make_run(f"dpo-run step {step}", seed=10 + step, alpha_shift=shift, series={"name": "dpo-run", "step": step, "epoch": None}))
    roles = {role: run.run_id for role, run in runs.items()}
    roles["hostile"] = hostile.run_id
    return store, roles


@pytest.fixture(scope="module")
def server(browser_store, tmp_path_factory):
    store, _ = browser_store
    port = _free_port()
    log_path = tmp_path_factory.mktemp("streamlit-log") / "server.log"
    environment = dict(os.environ, SPINAL_STORE=str(store.root), HF_HUB_OFFLINE="1")
    command = [
        sys.executable, "-m", "streamlit", "run", "app.py",
        "--server.address", "127.0.0.1",
        "--server.port", str(port),
        "--server.headless", "true",
        "--browser.gatherUsageStats", "false",
    ]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=environment, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_healthy(url, process)
            yield url
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1600, "height": 1000},
            accept_downloads=True,
        )
        blocked: list[str] = []

        def only_loopback(route):
            host = urlparse(route.request.url).hostname
            if route.request.url.startswith(("data:", "blob:", "file:")) or host == "127.0.0.1":
                route.continue_()
            else:
                blocked.append(route.request.url)
                route.abort()

        context.route("**/*", only_loopback)
        context.blocked_requests = blocked
        try:
            yield context
        finally:
            context.close()


# Streamlit's frontend (1.67) first probes <page path>/_stcore/health and /host-config on a deep
# link to find its base path. The 404 responses are expected, and the browser logs them as errors.
BASE_PATH_PROBE = re.compile(r"^http://127\.0\.0\.1:\d+/[^/?]+/_stcore/(health|host-config)$")
NOT_FOUND_MESSAGE = "Failed to load resource: the server responded with a status of 404 (Not Found)"


class PageWatch:
    """Console errors, failed responses and dialogs (an ``alert`` would mean injected script ran)."""

    def __init__(self, page) -> None:
        self._console_errors: list[str] = []
        self.failed_responses: list[str] = []
        self.dialogs: list[str] = []
        page.on("console", lambda message: message.type == "error" and self._console_errors.append(message.text))
        page.on("response", lambda response: response.status >= 400 and self.failed_responses.append(response.url))
        page.on("dialog", self._on_dialog)

    def _on_dialog(self, dialog) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    @property
    def console_errors(self) -> list[str]:
        """Console errors, without the 404s of Streamlit's base-path probes."""
        only_probes = all(BASE_PATH_PROBE.match(url) for url in self.failed_responses)
        return [text for text in self._console_errors if not (only_probes and text == NOT_FOUND_MESSAGE)]


def _query(roles: dict[str, str]) -> str:
    runs = ",".join([roles["reference"], roles["target"], roles["hostile"]])
    return urlencode({"runs": runs, "ref": roles["reference"], "target": roles["target"]})


def _wait_for_page(page, charts: int, three_d: bool) -> None:
    page.wait_for_selector('[data-testid="stSidebar"] input', timeout=PAGE_TIMEOUT_MS)
    page.wait_for_selector("h1", timeout=PAGE_TIMEOUT_MS)
    if charts:
        page.wait_for_function(
            f"document.querySelectorAll('.js-plotly-plot .main-svg').length >= {charts}", timeout=PAGE_TIMEOUT_MS
        )
    if three_d:
        page.wait_for_selector(".js-plotly-plot .gl-container canvas", timeout=PAGE_TIMEOUT_MS)

    # Let Streamlit finish the run: its status widget shows while the script runs.
    page.wait_for_function(
        "!document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=PAGE_TIMEOUT_MS
    )
    page.wait_for_timeout(500)


@pytest.fixture(scope="module")
def visited(server, browser, browser_store):
    """Visit every page once (a deep link first, on a fresh server) and keep what was seen."""
    _, roles = browser_store
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    results = {}
    order = ["compare", *[path for path in PAGES if path != "compare"]]
    for path in order:
        page = browser.new_page()
        watch = PageWatch(page)
        page.goto(f"{server}/{path}?{_query(roles)}", timeout=PAGE_TIMEOUT_MS)
        charts, three_d = PAGES[path]
        _wait_for_page(page, charts, three_d)
        name = path or "overview"
        page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
        results[path] = {
            "exceptions": page.locator('[data-testid="stException"]').count(),
            "charts": page.locator(".js-plotly-plot").count(),
            "canvases": page.locator(".js-plotly-plot .gl-container canvas").count(),
            "navigation": page.locator('[data-testid="stSidebarNav"]').inner_text(),
            "url": page.url,
            "console_errors": list(watch.console_errors),
            "dialogs": list(watch.dialogs),
        }
        page.close()

    return results


@pytest.mark.parametrize("path", list(PAGES))
def test_page_has_no_exception_box(visited, path):
    assert visited[path]["exceptions"] == 0


@pytest.mark.parametrize("path", list(PAGES))
def test_page_has_no_console_error(visited, path):
    assert visited[path]["console_errors"] == []


@pytest.mark.parametrize("path", list(PAGES))
def test_page_draws_its_charts(visited, path):
    assert visited[path]["charts"] >= PAGES[path][0]


@pytest.mark.parametrize("path", list(PAGES))
def test_page_runs_no_injected_script(visited, path):
    assert visited[path]["dialogs"] == []


def test_trajectories_draw_webgl(visited):
    assert visited["trajectories"]["canvases"] >= 1


def test_deep_link_uses_app_navigation(visited):
    assert "Trajectories" in visited["compare"]["navigation"]


def test_training_page_names_series(visited):
    assert "series=dpo-run" in visited["training"]["url"]


def test_url_keeps_selection(visited, browser_store):
    _, roles = browser_store
    assert f"ref={roles['reference']}" in visited["heatmaps"]["url"]


def test_screenshots_saved(visited):
    assert all((ARTIFACTS / f"{path or 'overview'}.png").stat().st_size > 10_000 for path in PAGES)


def test_no_request_leaves_loopback(visited, browser):
    assert browser.blocked_requests == []


def test_export_png_download(server, browser, browser_store):
    _, roles = browser_store
    page = browser.new_page()
    page.goto(f"{server}/export?{_query(roles)}", timeout=PAGE_TIMEOUT_MS)
    _wait_for_page(page, 0, False)
    # PNG renders the image in the page run, then Save PNG downloads it. kaleido starts its own
    # Chromium for the first image, which took over 60 s on a busy 2-core machine.
    page.get_by_role("button", name="PNG", exact=True).nth(2).click()
    save = page.get_by_role("button", name="Save PNG")
    save.wait_for(timeout=3 * PAGE_TIMEOUT_MS)
    with page.expect_download(timeout=PAGE_TIMEOUT_MS) as download_info:
        save.click()
    path = download_info.value.path()
    page.close()
    assert Path(path).read_bytes()[:4] == b"\x89PNG"


def test_report_opens_offline(browser, browser_store, tmp_path):
    from spinal import figures, report
    from spinal.stats import compare_runs

    store, roles = browser_store
    reference, target = store.get(roles["reference"]), store.get(roles["hostile"])
    comparison = compare_runs(reference, target)
    html_text = report.build_report(
        [reference, target],
        [("profiles", figures.profile_figure([reference, target])), ("3D", figures.trajectory_3d([reference, target]))],
        comparison=comparison,
    )
    path = tmp_path / "report.html"
    path.write_text(html_text, encoding="utf-8")

    page = browser.new_page()
    watch = PageWatch(page)
    browser.set_offline(True)
    try:
        page.goto(path.as_uri())
        page.wait_for_selector(".js-plotly-plot .gl-container canvas", timeout=PAGE_TIMEOUT_MS)
        drawn = page.locator(".js-plotly-plot").count()
        page.screenshot(path=str(ARTIFACTS / "report.png"), full_page=False)
    finally:
        browser.set_offline(False)
        page.close()

    assert (drawn, watch.console_errors, watch.dialogs) == (2, [], [])


def test_trace_page_runs_background_job(server, browser, browser_store, tmp_path):
    from tiny_models import save_tiny

    store, _ = browser_store
    before = {info.run_id for info in store.list_runs()}
    model_dir = save_tiny("llama", tmp_path / "tiny-llama")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(f"prompt {index} with several more words" for index in range(8)) + "\n", encoding="utf-8")

    page = browser.new_page()
    watch = PageWatch(page)
    page.goto(f"{server}/trace", timeout=PAGE_TIMEOUT_MS)
    _wait_for_page(page, 0, False)
    page.get_by_text("File path", exact=True).click()
    page.get_by_label("Prompt file (.txt, .jsonl, HH-RLHF .jsonl.gz)").wait_for(timeout=PAGE_TIMEOUT_MS)
    page.get_by_label("Model: local checkpoint directory or hub id").fill(str(model_dir))
    page.get_by_label("Prompt file (.txt, .jsonl, HH-RLHF .jsonl.gz)").fill(str(prompts))
    page.get_by_role("button", name="Start trace").click()
    page.get_by_text("computed.").wait_for(timeout=180_000)
    page.screenshot(path=str(ARTIFACTS / "trace-done.png"), full_page=True)
    exceptions = page.locator('[data-testid="stException"]').count()
    page.close()

    new_runs = {info.run_id for info in store.list_runs()} - before
    assert (len(new_runs), exceptions, watch.console_errors) == (1, 0, [])
