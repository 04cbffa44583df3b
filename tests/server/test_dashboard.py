"""The dashboard page (``GET /``) in real headless Chromium: pipelines, live feed, token.

The page is served by a real server; Playwright drives Debian's Chromium (see
`tests.browser`). Every request the page makes is recorded: all go to the server's own
origin and none carries the token in its URL.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.http_helpers import ServerProcess, wait_until

TOKEN = "d4shb0ard-t0ken"

STAGES = """
def picky(chunk):
    if chunk["n"] % 5 == 0:
        raise ValueError(f"no multiples of five: {chunk['n']}")
    return chunk
"""

CONFIG = """
server:
  heartbeat: 5
  {server}
pipelines:
  live:
    description: endless, a chunk error every fifth chunk
    source: {{use: counter, with: {{count: null, interval: 0.05}}}}
    transforms:
      - use: dstages:picky
    retain: 200
  done:
    source: {{use: counter, with: {{count: 7}}}}
"""


def start(tmp_path: Path, server: str = "") -> ServerProcess:
    (tmp_path / "dstages.py").write_text(STAGES)
    path = tmp_path / "pipelines.yaml"
    path.write_text(CONFIG.format(server=server))
    return ServerProcess(path)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    with start(tmp_path) as srv:
        yield srv


def js_wait(page: Any, expression: str, timeout: float = 15.0) -> Any:
    """Poll a JavaScript expression until truthy (from Python: the page's CSP forbids the
    `eval` that Playwright's own `wait_for_function` uses, and the CSP stays on)."""
    return wait_until(lambda: page.evaluate(expression), timeout=timeout, every=0.05)


def record(page: Any) -> list[str]:
    """Every URL the page requests, in order."""
    urls: list[str] = []
    page.on("request", lambda req: urls.append(req.url))
    return urls


def cell(page: Any, name: str, column: str) -> str:
    return str(page.locator(f'tr[data-name="{name}"] td.{column}').inner_text())


def test_page_is_self_contained(server: ServerProcess) -> None:
    """`/` and its two files are served with a CSP allowing this origin only."""
    page = httpx.get(server.url("/"))
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert "http" not in page.text.replace("http-equiv", "")  # no absolute URL at all
    for name in ("dashboard.js", "dashboard.css"):
        asset = httpx.get(server.url(f"/dashboard/{name}"))
        assert asset.status_code == 200 and len(asset.text) < 20_000
        assert "://" not in asset.text.replace("http://www.w3.org/2000/svg", "")
    assert httpx.get(server.url("/dashboard/secret.py")).status_code == 404


def test_lists_pipelines_live_and_follows_one(server: ServerProcess, page: Any) -> None:
    """Pipelines with state and growing counters; a click opens the live feed."""
    urls = record(page)
    page.goto(server.url("/"))
    page.wait_for_selector('tr[data-name="live"]')
    assert page.locator("tbody tr").count() == 2
    js_wait(
        page, "document.querySelector('tr[data-name=\"done\"] .state').textContent === 'completed'"
    )
    assert cell(page, "done", "processed") == "7"
    assert page.locator('tr[data-name="live"] td.state').inner_text() == "running"
    first = int(cell(page, "live", "processed").replace(",", ""))
    js_wait(
        page,
        f"+document.querySelector('tr[data-name=\"live\"] .processed')"
        f".textContent.replace(/,/g, '') > {first}",
    )
    js_wait(
        page,
        "document.querySelector('tr[data-name=\"live\"] polyline')"
        ".getAttribute('points').split(' ').length >= 2",
    )  # the sparkline grows
    page.click('tr[data-name="live"]')
    page.wait_for_selector('#envelopes li[data-status="processing"]')
    seen = page.locator("#envelopes li").count()
    js_wait(page, f"document.querySelectorAll('#envelopes li').length > {seen + 2}")
    statuses = page.eval_on_selector_all("#envelopes li", "els => els.map(e => e.dataset.status)")
    assert statuses[0] == "starting"  # since=0: the retained start of the run first
    origin = server.url("")
    assert urls and all(u.startswith(origin) for u in urls)
    assert any("/pipelines/live/events" in u for u in urls)


def test_filter_and_chunk_error_details(server: ServerProcess, page: Any) -> None:
    """Unticking `processing` hides those rows; a chunk_error shows stage, type, message, chunk."""
    page.goto(server.url("/"))
    page.click('tr[data-name="live"]')
    page.wait_for_selector('#envelopes li[data-status="chunk_error"]')
    page.uncheck("#show-processing")
    visible = page.eval_on_selector_all(
        "#envelopes li", "els => els.filter(e => !e.hidden).map(e => e.dataset.status)"
    )
    assert "processing" not in visible and "chunk_error" in visible
    error = page.locator('#envelopes li[data-status="chunk_error"]').first
    error.locator("summary").click()
    assert error.locator("dd.stage").inner_text() == "transforms[0]:picky"
    assert error.locator("dd.type").inner_text() == "ValueError"
    assert error.locator("dd.message").inner_text().startswith("no multiples of five: ")
    assert '"n"' in error.locator("dd.chunk").inner_text()
    page.check("#show-processing")
    js_wait(
        page,
        "[...document.querySelectorAll('#envelopes li')]"
        ".some(e => e.dataset.status === 'processing' && !e.hidden)",
    )


def test_pause_holds_and_resume_releases(server: ServerProcess, page: Any) -> None:
    """Paused, the feed stops growing while envelopes are held; resume shows them all."""
    page.goto(server.url("/"))
    page.click('tr[data-name="live"]')
    page.wait_for_selector('#envelopes li[data-status="processing"]')
    page.click("#pause")
    frozen = page.locator("#envelopes li").count()
    js_wait(page, "/paused: [1-9]/.test(document.getElementById('feed-info').textContent)")
    js_wait(page, "/paused: ([3-9]|\\d\\d)/.test(document.getElementById('feed-info').textContent)")
    assert page.locator("#envelopes li").count() == frozen
    page.click("#pause")
    js_wait(page, f"document.querySelectorAll('#envelopes li').length >= {frozen + 3}")
    seqs = page.eval_on_selector_all("#envelopes li .seq", "els => els.map(e => +e.textContent)")
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)  # no gap in order, no duplicate
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))


def test_token_flow(tmp_path: Path, page: Any) -> None:
    """With `server.token`: the page asks once, the cookie is HttpOnly and Strict, no URL
    carries the token, a wrong token is refused, and the feed works on the cookie."""
    with start(tmp_path, f"token: {TOKEN}") as srv:
        urls = record(page)
        page.goto(srv.url("/"))
        page.wait_for_selector("#login:not([hidden])")
        page.fill("#token", "wrong")
        page.click("#login button")
        js_wait(page, "document.getElementById('login-error').textContent === 'wrong token'")
        page.fill("#token", TOKEN)
        page.click("#login button")
        page.wait_for_selector('tr[data-name="live"]')
        cookies = page.context.cookies()
        assert [c["name"] for c in cookies] == ["pipeline_token"]
        assert cookies[0]["httpOnly"] and cookies[0]["sameSite"] == "Strict"
        assert TOKEN not in cookies[0]["value"]
        assert page.evaluate("document.cookie") == ""  # the script cannot read it
        page.click('tr[data-name="live"]')
        page.wait_for_selector('#envelopes li[data-status="processing"]')
        page.reload()  # the cookie alone is enough afterwards: no second prompt
        page.wait_for_selector('tr[data-name="live"]')
        assert page.locator("#login").is_hidden()
        assert urls and not [u for u in urls if TOKEN in u]
        assert all(u.startswith(srv.url("")) for u in urls)
    assert TOKEN not in srv.log_text
