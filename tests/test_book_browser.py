"""The rendered book in headless Chromium: every page loads, every image is non-empty, Colab buttons are right.

Needs a built book (`jupyter-book build .`) and Debian's `chromium`; skipped otherwise, unless
NEUROSEG_REQUIRE_BOOK=1 (as in .ci/run), where a missing book or browser is a failure.
"""
from __future__ import annotations

import functools
import http.server
import os
import shutil
import threading
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
HTML = ROOT / "_build" / "html"
SCREENSHOTS = ROOT / "_build" / "screenshots"
pytestmark = pytest.mark.browser


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _require(condition: bool, reason: str) -> None:
    if condition:
        return
    if os.environ.get("NEUROSEG_REQUIRE_BOOK") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep the test output readable
        pass


def _toc_pages() -> list[str]:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    return [toc["root"]] + [c["file"] for part in toc["parts"] for c in part["chapters"]]


@pytest.fixture(scope="module")
def site():
    _require((HTML / "index.html").exists(), "no built book in _build/html: run jupyter-book build . first")
    handler = functools.partial(_QuietHandler, directory=str(HTML))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture(scope="module")
def browser():
    executable = _chromium()
    _require(executable is not None, "Chromium is not installed (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=executable,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run", "--disable-quic"],
        )
        yield browser
        browser.close()


def _open(browser, url: str):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    # The machine is offline: fail external requests (fonts, MathJax) at once instead of waiting for them.
    page.route("**/*", lambda route: route.continue_() if route.request.url.startswith("http://127.0.0.1")
               else route.abort())
    response = page.goto(url, wait_until="load")
    return page, response


@pytest.mark.parametrize("name", _toc_pages())
def test_page_loads_and_images_are_not_empty(site, browser, name):
    page, response = _open(browser, f"{site}/{name}.html")
    try:
        assert response is not None and response.ok, f"{name}: HTTP {response and response.status}"
        assert page.locator("article, main").count() > 0
        broken = page.evaluate(
            "() => Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0 && i.naturalHeight > 0))"
            ".map(i => i.src)")
        assert broken == [], f"{name}: empty or broken images {broken}"
        if name.startswith("notebooks/"):
            assert page.evaluate("() => document.images.length") > 0, f"{name} shows no figure"
    finally:
        page.close()


@pytest.mark.parametrize("name", [p for p in _toc_pages() if p.startswith("notebooks/")])
def test_colab_button_links_to_this_notebook(site, browser, name):
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    repository = config["repository"]["url"].removeprefix("https://github.com/").rstrip("/")
    expected = f"colab.research.google.com/github/{repository}/blob/{config['repository']['branch']}/{name}.ipynb"
    page, _ = _open(browser, f"{site}/{name}.html")
    try:
        links = page.evaluate("() => Array.from(document.querySelectorAll('a')).map(a => a.href)")
        assert any(expected in link for link in links), f"no Colab link to {expected}"
    finally:
        page.close()


def test_screenshot_of_the_evaluation_chapter(site, browser):
    page, response = _open(browser, f"{site}/notebooks/06_evaluation.html")
    try:
        assert response is not None and response.ok
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        target = SCREENSHOTS / "06_evaluation.png"
        page.screenshot(path=str(target), full_page=True)
        assert target.stat().st_size > 20_000
    finally:
        page.close()
