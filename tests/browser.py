"""A real headless Chromium (the Debian package) driven by Playwright, for page tests.

Fixtures (re-exported by ``tests/conftest.py``):

- ``browser``: one Chromium per test module (``/usr/bin/chromium``; never
  ``playwright install``). Missing chromium fails the test with the command to install it.
  Not session-wide: Playwright's sync API keeps its event loop marked as running in
  this thread while it is open, which would break the anyio tests of other modules.
- ``page``: a fresh context (no cookies) and page per test, closed afterwards.
- ``other_origin``: the URL of a blank page served from another loopback port, i.e.
  another origin of the same site (what SameSite cookies do not protect against).

`js_wait` polls a JavaScript expression under a bound, for tests that wait on the page.
"""

from __future__ import annotations

import http.server
import os
import threading
from collections.abc import Iterator
from typing import Any

import pytest

CHROMIUM = os.environ.get("PIPELINE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
BLANK = b"<!doctype html><html><head><title>blank</title></head><body></body></html>"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium for the test module."""
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"`{CHROMIUM}` not found: apt-get install -y chromium", pytrace=False)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A page in a fresh browser context (its own cookies), closed after the test."""
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(15_000)
    try:
        yield page
    finally:
        context.close()


class _Blank(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/html; charset=utf-8")
        self.send_header("content-length", str(len(BLANK)))
        self.end_headers()
        self.wfile.write(BLANK)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def other_origin() -> Iterator[str]:
    """``http://127.0.0.1:PORT/``: a blank page on another origin (same site)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Blank)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def js_wait(page: Any, expression: str, timeout: float = 15.0) -> Any:
    """Wait until the JavaScript ``expression`` is truthy on ``page``; return its value."""
    handle = page.wait_for_function(expression, timeout=timeout * 1000, polling=50)
    return handle.json_value()
