"""A real browser on a running service: headless Chromium driven over the DevTools protocol.

Starts `auditor serve` (a subprocess, as in production) on a free port over a copy of the
small Fashion-MNIST store, loads a sample report, and checks what a person would see: the
attribution maps, the source thumbnails and the timeline are in the rendered DOM, pointing
at a pixel lists the training images auditor.store.attribution.pixel_sources gives for it, the
step selector works, and the page logs no console error, throws nothing and fails no
request. The exported single file is then opened from disk and must make no request at all.
Screenshots are kept under $PSPC_TEST_ARTIFACTS (else the test's temporary folder).
Skipped when Chromium or the `websockets` package is absent.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from auditor.store import attribution
from auditor.workflows.quickstart import COMMITTED_STUDIES, import_studies
from tests.support.pages import artifacts_dir
from tests.support.paths import REPO

CHROMIUM = next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p), None)
websockets_sync = pytest.importorskip("websockets.sync.client", reason="the browser test needs `websockets`")

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed (apt-get install chromium)")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, process: subprocess.Popen, seconds: float = 90.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with status {process.returncode}:\n{process.stdout.read()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer within {seconds} s")


@pytest.fixture(scope="module")
def server(fashion_store, tmp_path_factory):
    db = tmp_path_factory.mktemp("browser") / "provenance.duckdb"
    shutil.copy(fashion_store.db, db)
    import_studies(db, COMMITTED_STUDIES, log=lambda line: None)  # a fidelity study for the /fidelity pages
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    process = subprocess.Popen([sys.executable, "-m", "auditor.cli", "--db", str(db), "serve", "--port", str(port)],
                               cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_http(base + "/", process)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class Browser:
    """Headless Chromium and one page, over the DevTools protocol (a websocket, JSON messages)."""

    def __init__(self, profile: Path, width: int = 1400, height: int = 1000):
        self.process = subprocess.Popen(
            [CHROMIUM, "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run", "--no-default-browser-check",
             "--disable-extensions", "--disable-background-networking", "--remote-debugging-port=0",
             f"--user-data-dir={profile}", f"--window-size={width},{height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        endpoint = None
        deadline = time.monotonic() + 30
        while endpoint is None and time.monotonic() < deadline:
            line = self.process.stderr.readline()
            if "DevTools listening on" in line:
                endpoint = line.split("DevTools listening on", 1)[1].strip()
            elif not line and self.process.poll() is not None:
                break
        if endpoint is None:
            self.process.kill()
            raise RuntimeError("Chromium did not open its DevTools endpoint")
        port = endpoint.split("//", 1)[1].split("/", 1)[0]
        with urllib.request.urlopen(f"http://{port}/json/list", timeout=10) as response:
            page = next(t for t in json.load(response) if t["type"] == "page")
        self._stack = contextlib.ExitStack()
        self.ws = self._stack.enter_context(websockets_sync.connect(page["webSocketDebuggerUrl"], max_size=None,
                                                                    open_timeout=20))
        self.ids = itertools.count(1)
        self.events: list[dict] = []
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.call(f"{domain}.enable")
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)

    def call(self, method: str, timeout: float = 60.0, **params) -> dict:
        message_id = next(self.ids)
        self.ws.send(json.dumps({"id": message_id, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while True:
            message = json.loads(self.ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            if message.get("id") == message_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    def wait_event(self, method: str, timeout: float = 60.0, after: int = 0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events[after:]:
                if event.get("method") == method:
                    return event
            message = json.loads(self.ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            self.events.append(message)

    def navigate(self, url: str) -> None:
        mark = len(self.events)
        self.call("Page.navigate", url=url)
        self.wait_event("Page.loadEventFired", after=mark)

    def js(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def settle(self, seconds: float = 0.3) -> None:
        """Collect the events that arrive within `seconds` (console messages after an action)."""
        self.js(f"new Promise(resolve => setTimeout(resolve, {int(seconds * 1000)}))")

    def mouse(self, kind: str, x: float, y: float) -> None:
        self.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left" if kind != "mouseMoved" else "none",
                  clickCount=1 if kind != "mouseMoved" else 0)

    def screenshot(self, path: Path) -> None:
        metrics = self.call("Page.getLayoutMetrics")
        size = metrics.get("cssContentSize") or metrics["contentSize"]
        shot = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                         clip={"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1})
        path.write_bytes(base64.b64decode(shot["data"]))

    def problems(self) -> list[str]:
        """Console errors and warnings, uncaught exceptions, failed requests and HTTP errors so far."""
        out = []
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "warning", "assert"):
                out.append(f"console.{params['type']}: {[a.get('value') for a in params.get('args', [])]}")
            elif method == "Runtime.exceptionThrown":
                out.append(f"exception: {params['exceptionDetails'].get('text')} "
                           f"{params['exceptionDetails'].get('exception', {}).get('description', '')}")
            elif method == "Log.entryAdded" and params["entry"].get("level") in ("error", "warning"):
                out.append(f"log {params['entry']['level']}: {params['entry'].get('text')} {params['entry'].get('url', '')}")
            elif method == "Network.loadingFailed" and not params.get("canceled"):
                out.append(f"request failed: {params.get('errorText')}")
            elif method == "Network.responseReceived" and params["response"]["status"] >= 400:
                out.append(f"HTTP {params['response']['status']}: {params['response']['url']}")
        return out

    def requests(self) -> list[str]:
        return [e["params"]["request"]["url"] for e in self.events if e.get("method") == "Network.requestWillBeSent"]

    def close(self) -> None:
        try:
            self._stack.close()
        finally:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def browser(tmp_path):
    instance = Browser(tmp_path / "profile")
    yield instance
    instance.close()


def _center_of_pixel(browser: Browser, element_id: str, y: int, x: int, size: int) -> tuple[float, float]:
    browser.js(f"document.getElementById('{element_id}').scrollIntoView({{block: 'center'}})")
    rect = browser.js(f"(() => {{ const r = document.getElementById('{element_id}').getBoundingClientRect();"
                      f" return [r.left, r.top, r.width, r.height]; }})()")
    return rect[0] + (x + 0.5) * rect[2] / size, rect[1] + (y + 0.5) * rect[3] / size


def _drill_ids(browser: Browser) -> list[str]:
    return browser.js("Array.from(document.querySelectorAll('#drill-body .drill-row .small > :first-child'))"
                      ".map(e => e.textContent)")


def test_sample_report_in_a_real_browser(server, browser, fashion_store, tmp_path):
    run = fashion_store.complete_run
    browser.navigate(f"{server}/runs/{run}/samples/0")
    assert browser.js("document.title").startswith("Run 1")
    # the attribution maps, the source thumbnails and the timeline are in the rendered DOM, decoded
    for element in ("sample-image", "map-denoised", "map-dominant", "map-concentration"):
        assert browser.js(f"(() => {{ const i = document.getElementById('{element}');"
                          f" return i.complete && i.naturalWidth === 28 && i.getBoundingClientRect().width >= 250; }})()"), element
    thumbnails = browser.js("Array.from(document.querySelectorAll('#sources table.sources img'))"
                            ".map(i => i.complete && i.naturalWidth > 0)")
    assert len(thumbnails) == 10 and all(thumbnails)
    assert browser.js("document.querySelectorAll('#timeline tbody tr').length") == 6
    assert browser.js("Array.from(document.querySelectorAll('#timeline img')).every(i => i.complete && i.naturalWidth > 0)")
    assert browser.js("document.querySelectorAll('#legend tbody tr').length") == 11
    assert browser.js("Array.from(document.querySelectorAll('#plots img')).every(i => i.naturalWidth >= 600)")

    # pointing at a pixel lists the training images pixel_sources gives for it
    final = 5
    for y, x in [(14, 14), (6, 20)]:
        browser.mouse("mouseMoved", *_center_of_pixel(browser, "map-dominant", y, x, 28))
        expected = [r["image_id"] for r in attribution.pixel_sources(fashion_store.db, run, 0, final, y, x, top=5)]
        assert _drill_ids(browser) == expected
        assert browser.js("document.querySelector('#drill-body .drill-head').textContent") == \
            f"Pixel (y {y}, x {x}) at step {final}"
    # click pins the pixel: moving elsewhere keeps it
    browser.mouse("mousePressed", *_center_of_pixel(browser, "map-concentration", 3, 4, 28))
    browser.mouse("mouseReleased", *_center_of_pixel(browser, "map-concentration", 3, 4, 28))
    browser.mouse("mouseMoved", *_center_of_pixel(browser, "map-denoised", 20, 20, 28))
    assert "Pixel (y 3, x 4)" in browser.js("document.getElementById('drill-body').textContent")
    browser.screenshot(artifacts_dir(tmp_path) / "sample-report.png")

    # the step selector loads that step's maps
    mark = len(browser.events)
    browser.js("(() => { const s = document.getElementById('step-select'); s.value = '2';"
               " s.dispatchEvent(new Event('change')); })()")
    browser.wait_event("Page.loadEventFired", after=mark)
    assert browser.js("document.getElementById('maps-title').textContent").startswith("Attribution at step 2")
    browser.mouse("mouseMoved", *_center_of_pixel(browser, "map-dominant", 10, 10, 28))
    expected = [r["image_id"] for r in attribution.pixel_sources(fashion_store.db, run, 0, 2, 10, 10, top=5)]
    assert _drill_ids(browser) == expected
    browser.settle()
    assert browser.problems() == []
    assert all(url.startswith((server, "data:")) for url in browser.requests())


def test_exported_report_works_offline(server, browser, fashion_store, tmp_path):
    run = fashion_store.complete_run
    with urllib.request.urlopen(f"{server}/runs/{run}/samples/1/export.html", timeout=60) as response:
        page = response.read()
    path = tmp_path / "report.html"
    path.write_bytes(page)
    browser.navigate(path.as_uri())
    assert browser.js("document.querySelectorAll('#timeline tbody tr').length") == 6
    assert browser.js("document.querySelectorAll('#sources table.sources img').length") == 10
    # every step's maps are inside the file: switching steps does not leave the page
    browser.js("(() => { const s = document.getElementById('step-select'); s.value = '3';"
               " s.dispatchEvent(new Event('change')); })()")
    assert browser.js("document.getElementById('maps-title').textContent").startswith("Attribution at step 3")
    assert browser.js("location.href") == path.as_uri()
    point = _center_of_pixel(browser, "map-dominant", 12, 15, 28)
    browser.mouse("mouseMoved", *point)
    expected = [r["image_id"] for r in attribution.pixel_sources(fashion_store.db, run, 1, 3, 12, 15, top=5)]
    assert _drill_ids(browser) == expected
    browser.mouse("mousePressed", *point)  # pinned, so the screenshot shows the drill-down
    browser.mouse("mouseReleased", *point)
    browser.screenshot(artifacts_dir(tmp_path) / "exported-report.png")
    browser.settle()
    assert browser.problems() == []
    assert [url for url in browser.requests() if not url.startswith("data:")] == [path.as_uri()]


# Elements sticking out past the right edge of the viewport, outside any container that scrolls
# or clips them (what makes the page itself scroll sideways): named for the failure message.
_OVERFLOWING = """(() => {
  const limit = window.innerWidth + 0.5, out = [];
  for (const e of document.querySelectorAll('body *')) {
    const r = e.getBoundingClientRect();
    if (r.right <= limit || r.width === 0) { continue; }
    let p = e.parentElement, contained = false;
    for (; p && p !== document.body; p = p.parentElement) {
      if (getComputedStyle(p).overflowX !== 'visible') { contained = true; break; }
    }
    if (!contained) { out.push(e.tagName.toLowerCase() + (e.id ? '#' + e.id : '') +
                               (e.className && typeof e.className === 'string' ? '.' + e.className.split(' ').join('.') : '') +
                               ' right=' + Math.round(r.right)); }
  }
  return out.slice(0, 8);
})()"""


def _layout_pages(server: str, fashion_store) -> list[str]:
    """Every kind of page of the service, with the sample report at its final and at an early step."""
    run = fashion_store.complete_run
    top = attribution.sample_sources(fashion_store.db, run, 0, top=1)[0]["image_index"]
    return [f"{server}/", f"{server}/?q=train-0001", f"{server}/runs/{run}", f"{server}/runs/{run}/samples/0",
            f"{server}/runs/{run}/samples/0?step=1", f"{server}/datasets/1/images/{top}",
            f"{server}/sql?sql=" + urllib.parse.quote("SELECT * FROM runs"), f"{server}/sql", f"{server}/fidelity",
            f"{server}/fidelity/1", f"{server}/runs/999"]


@pytest.mark.parametrize("width", [390, 1400])
def test_no_page_scrolls_sideways(server, fashion_store, tmp_path, width):
    """At a phone's 390 px and a desktop's 1400 px, no page (nor the exported report) is wider
    than the window: wide tables scroll inside their own container, never the page."""
    browser = Browser(tmp_path / "profile", width=width, height=900)
    try:
        with urllib.request.urlopen(f"{server}/runs/{fashion_store.complete_run}/samples/0/export.html",
                                    timeout=60) as response:
            (tmp_path / "report.html").write_bytes(response.read())
        wide = {}
        for url in [*_layout_pages(server, fashion_store), (tmp_path / "report.html").as_uri()]:
            browser.navigate(url)
            if not browser.js("document.documentElement.scrollWidth <= window.innerWidth"):
                wide[url] = (browser.js("document.documentElement.scrollWidth"), browser.js(_OVERFLOWING))
        browser.navigate(f"{server}/runs/{fashion_store.complete_run}/samples/0")
        browser.screenshot(artifacts_dir(tmp_path) / f"sample-report-{width}px.png")
        assert wide == {}, f"pages wider than {width} px: {wide}"
        assert [p for p in browser.problems() if "/runs/999" not in p] == []  # that one is the 404 page
    finally:
        browser.close()
