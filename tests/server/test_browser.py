"""Streams as a real browser sees them: headless Chromium's EventSource and WebSocket.

The page is a document of the server's own origin (``/healthz``) or of another one
(`tests.browser.other_origin`); the browser code is what anyone writes first.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect as ws_connect

from tests.browser import js_wait
from tests.http_helpers import ServerProcess, wait_until

TOKEN = "br0wser-t0ken"

STAGES = """
async def fails_after(count: int = 2):
    for n in range(count):
        yield {"n": n}
    raise RuntimeError("the source broke")
"""

# EventSource code as a newcomer writes it: onmessage, onerror; the page records both.
LISTEN = """url => {
  window.got = []; window.errors = 0; window.states = [];
  const es = new EventSource(url, {withCredentials: true});
  window.es = es;
  es.onmessage = e => window.got.push({id: e.lastEventId, env: JSON.parse(e.data)});
  es.onerror = () => { window.errors += 1; window.states.push(es.readyState); };
}"""

WS = """url => {
  window.wsframes = []; window.wsclosed = null; window.wserror = false;
  const ws = new WebSocket(url);
  ws.onmessage = e => window.wsframes.push(JSON.parse(e.data));
  ws.onerror = () => { window.wserror = true; };
  ws.onclose = e => { window.wsclosed = {code: e.code}; };
}"""


def _config(tmp_path: Path, server: str = "") -> Path:
    (tmp_path / "bstages.py").write_text(STAGES)
    path = tmp_path / "pipelines.yaml"
    path.write_text(
        f"""
server:
  heartbeat: 5
  {server}
pipelines:
  done:
    source: {{use: counter, with: {{count: 5}}}}
  broken:
    source: {{use: bstages:fails_after}}
  fresh:
    source: {{use: counter, with: {{count: 3}}}}
    trigger: request
"""
    )
    return path


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    with ServerProcess(_config(tmp_path)) as srv:
        _wait_completed(srv, "done", "broken")
        yield srv


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[ServerProcess]:
    with ServerProcess(_config(tmp_path, f"token: {TOKEN}")) as srv:
        _wait_completed(srv, "done", headers={"Authorization": f"Bearer {TOKEN}"})
        yield srv


def _wait_completed(srv: ServerProcess, *names: str, headers: Any = None) -> None:
    def done() -> bool:
        states = httpx.get(srv.url("/pipelines"), headers=headers).json()["pipelines"]
        return all(p["state"] in ("completed", "failed") for p in states if p["name"] in names)

    wait_until(done, 20)


def _statuses(got: list[dict[str, Any]]) -> list[str]:
    return [g["env"]["status"] for g in got]


def _runs(srv: ServerProcess, name: str) -> int:
    return int(httpx.get(srv.url(f"/pipelines/{name}")).json()["runs"])


def test_eventsource_onmessage_gets_every_envelope_and_stops_after_complete(
    server: ServerProcess, page: Any
) -> None:
    """onmessage gets the whole run; the reconnect after `complete` gets 204 and stops."""
    page.goto(server.url("/healthz"))
    page.evaluate(LISTEN, "/pipelines/done/events?since=0")
    js_wait(page, "window.es.readyState === EventSource.CLOSED")
    got = page.evaluate("window.got")
    assert _statuses(got) == ["starting"] + ["processing"] * 5 + ["complete"]
    run = got[0]["env"]["run"]
    assert [g["id"] for g in got] == [f"{run}:{n}" for n in range(1, 8)]
    # One error event: the reconnect that got 204 (the server ended the first response).
    assert page.evaluate("[window.errors, window.states]") == [2, [0, 2]]
    assert "204" in server.log_text


def test_request_pipeline_is_not_run_again_by_a_reconnect(server: ServerProcess, page: Any) -> None:
    """A browser on a `trigger: request` pipeline causes exactly one run."""
    page.goto(server.url("/healthz"))
    page.evaluate(LISTEN, "/pipelines/fresh/events")
    js_wait(page, "window.es.readyState === EventSource.CLOSED")
    assert _statuses(page.evaluate("window.got")) == ["starting"] + ["processing"] * 3 + [
        "complete"
    ]
    assert _runs(server, "fresh") == 1


def test_run_error_envelope_reaches_onmessage_not_onerror(server: ServerProcess, page: Any) -> None:
    """A run's `error` envelope is an ordinary message; EventSource's onerror is not fired."""
    page.goto(server.url("/healthz"))
    page.evaluate(LISTEN, "/pipelines/broken/events?since=0")
    js_wait(page, "window.es.readyState === EventSource.CLOSED")
    got = page.evaluate("window.got")
    assert _statuses(got) == ["starting", "processing", "processing", "error", "complete"]
    assert got[3]["env"]["error"] == {"type": "RuntimeError", "message": "the source broke"}
    assert page.evaluate("window.errors") == 2  # the end of the stream, then the 204


def test_websocket_from_the_servers_own_page_reads_every_frame(
    server: ServerProcess, page: Any
) -> None:
    """Same origin: the WebSocket reads the whole run and closes with 1000."""
    page.goto(server.url("/healthz"))
    page.evaluate(WS, f"ws://127.0.0.1:{server.port}/pipelines/done/ws?since=0")
    js_wait(page, "window.wsclosed !== null")
    frames = page.evaluate("window.wsframes")
    assert [f["seq"] for f in frames] == list(range(1, 8))
    assert page.evaluate("window.wsclosed") == {"code": 1000}


def test_websocket_from_another_origin_is_refused(
    server: ServerProcess, page: Any, other_origin: str
) -> None:
    """A page of another origin gets no frame: the upgrade is refused with 403."""
    page.goto(other_origin)
    page.evaluate(WS, f"ws://127.0.0.1:{server.port}/pipelines/done/ws?since=0")
    js_wait(page, "window.wsclosed !== null")
    assert page.evaluate("[window.wsframes, window.wserror, window.wsclosed]") == [
        [],
        True,
        {"code": 1006},
    ]
    url = f"ws://127.0.0.1:{server.port}/pipelines/done/ws?since=0"
    with pytest.raises(InvalidStatus) as refused:
        ws_connect(url, origin=other_origin.rstrip("/"), open_timeout=10)  # type: ignore[arg-type]
    assert refused.value.response.status_code == 403
    assert orjson.loads(refused.value.response.body or b"")["error"]["type"] == ("forbidden_origin")


def test_websocket_allowed_origin_from_cors_origins(tmp_path: Path, other_origin: str) -> None:
    """An origin listed in `server.cors_origins` may open the WebSocket."""
    origin = other_origin.rstrip("/")
    with ServerProcess(_config(tmp_path, f"cors_origins: ['{origin}']")) as srv:
        _wait_completed(srv, "done")
        url = f"ws://127.0.0.1:{srv.port}/pipelines/done/ws?since=0"
        with ws_connect(url, origin=origin, open_timeout=10) as ws:  # type: ignore[arg-type]
            frames = [orjson.loads(m) for m in ws]
    assert [f["seq"] for f in frames] == list(range(1, 8))


LOGIN = """async ([method, body]) => {
  const r = await fetch('/session', {method, body,
    headers: {'content-type': 'application/json'}});
  return [r.status, await r.text()];
}"""


def test_cookie_session_grants_eventsource_websocket_and_fetch(
    secured: ServerProcess, page: Any
) -> None:
    """POST /session sets an HttpOnly cookie that every stream endpoint accepts."""
    page.goto(secured.url("/healthz"))
    status = "async () => (await fetch('/pipelines')).status"
    assert page.evaluate(status) == 401
    wrong = page.evaluate(LOGIN, ["POST", '{"token": "nope"}'])
    assert wrong[0] == 401 and orjson.loads(wrong[1])["error"]["type"] == "unauthorized"
    assert page.evaluate(LOGIN, ["POST", f'{{"token": "{TOKEN}"}}']) == [204, ""]
    assert page.evaluate("document.cookie") == ""  # HttpOnly: the page cannot read it
    cookie = page.context.cookies()[0]
    assert (cookie["name"], cookie["httpOnly"], cookie["sameSite"]) == (
        "pipeline_token",
        True,
        "Strict",
    )
    assert TOKEN not in cookie["value"]
    assert page.evaluate(status) == 200
    page.evaluate(LISTEN, "/pipelines/done/events?since=0")
    js_wait(page, "window.es.readyState === EventSource.CLOSED")
    assert len(page.evaluate("window.got")) == 7
    page.evaluate(WS, f"ws://127.0.0.1:{secured.port}/pipelines/done/ws?since=0")
    js_wait(page, "window.wsclosed !== null")
    assert len(page.evaluate("window.wsframes")) == 7
    assert page.evaluate(LOGIN, ["DELETE", None]) == [204, ""]
    assert page.evaluate(status) == 401
    assert TOKEN not in secured.log_text


def test_cookie_is_useless_from_another_origin(
    secured: ServerProcess, page: Any, other_origin: str
) -> None:
    """A same-site page of another origin can neither log in nor read with the cookie."""
    page.goto(secured.url("/healthz"))
    assert page.evaluate(LOGIN, ["POST", f'{{"token": "{TOKEN}"}}']) == [204, ""]
    page.goto(other_origin)
    page.evaluate(WS, f"ws://127.0.0.1:{secured.port}/pipelines/done/ws?since=0")
    js_wait(page, "window.wsclosed !== null")
    assert page.evaluate("window.wsframes") == []
    page.evaluate(LISTEN, secured.url("/pipelines/done/events?since=0"))
    js_wait(page, "window.es.readyState === EventSource.CLOSED")
    assert page.evaluate("window.got") == []
    origin = {"Origin": other_origin.rstrip("/")}
    login = httpx.post(secured.url("/session"), json={"token": TOKEN}, headers=origin)
    assert login.status_code == 403 and "set-cookie" not in login.headers
    assert login.json()["error"]["type"] == "forbidden_origin"
    cookies = {"pipeline_token": page.context.cookies()[0]["value"]}
    stolen = httpx.get(secured.url("/pipelines"), cookies=cookies, headers=origin)
    assert stolen.status_code == 401
    assert httpx.get(secured.url("/pipelines"), cookies=cookies).status_code == 200


def test_eventsource_follows_a_reload_into_the_new_run(tmp_path: Path, page: Any) -> None:
    """A page's EventSource, left to itself, follows a SIGHUP reload: the old run ends
    with complete(reason=reload), the browser reconnects with its Last-Event-ID and gets
    the `run_changed` notice, then the new run (new code) from seq 1, without a gap."""
    from tests.server.test_reload import sighup, write_project

    config = write_project(tmp_path)
    with ServerProcess(config) as server:
        page.goto(server.url("/healthz"))
        page.evaluate(LISTEN, "/pipelines/a/events")
        js_wait(page, "window.got.length > 3")
        old = page.evaluate("window.got[0].env.run")
        (tmp_path / "helpers.py").write_text("def label():\n    return 'v2'\n")
        sighup(server)
        js_wait(page, "window.got.some(g => g.env.data && g.env.data.label === 'v2')")
        got = [g["env"] for g in page.evaluate("window.got")]
    end = next(i for i, e in enumerate(got) if e["status"] == "complete")
    assert (got[end]["run"], got[end]["reason"]) == (old, "reload")
    notice, new = got[end + 1], got[end + 2]
    assert (notice["status"], notice["reason"], notice["previous_run"]) == (
        "lagged",
        "run_changed",
        old,
    )
    assert (new["status"], new["seq"], new["run"]) == ("starting", 1, notice["run"])
    seqs = [e["seq"] for e in got[end + 2 :]]
    assert seqs == list(range(1, len(seqs) + 1))
    assert {e["data"]["label"] for e in got[end + 2 :] if "data" in e} == {"v2"}
    assert {e["data"]["label"] for e in got[:end] if "data" in e} == {"v1"}
