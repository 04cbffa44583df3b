"""The HTTP server on a real uvicorn (subprocess, 127.0.0.1, port 0) with streaming clients."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect as ws_connect

from tests.http_helpers import ROOT, RawStream, ServerProcess, sse_events, wait_until

TOKEN = "s3cret-t0ken"
AUTH = {"Authorization": f"Bearer {TOKEN}"}

STAGES = """
import asyncio, os

async def marked(path: str, interval: float = 0.05):
    '''Endless; writes `path` in its finally (cleanup marker).'''
    try:
        n = 0
        while True:
            yield {"n": n}
            n += 1
            await asyncio.sleep(interval)
    finally:
        with open(path, "a") as f:
            f.write("closed\\n")

async def upto(count: int = 3):
    for n in range(count):
        yield {"n": n}

async def quiet():
    yield {"n": 0}
    await asyncio.sleep(60)
"""


def config(tmp_path: Path, *, server: str = "", extra: str = "") -> Path:
    """A config with a live endless pipeline, a finished one, a quiet one and request ones."""
    (tmp_path / "tstages.py").write_text(STAGES)
    marker = tmp_path / "marker.txt"
    text = f"""
server:
  heartbeat: 0.2
  {server}
pipelines:
  live:
    source: {{use: counter, with: {{count: null, interval: 0.02}}}}
    retain: 1000
  done:
    source: {{use: counter, with: {{count: 20}}}}
    retain: 10
  quiet:
    source: {{use: tstages:quiet}}
  fresh:
    source: {{use: tstages:upto}}
    trigger: request
    request_params: [count]
  endless:
    source: {{use: tstages:marked, with: {{path: "{marker}"}}}}
    trigger: request
{extra}
"""
    path = tmp_path / "pipelines.yaml"
    path.write_text(text)
    return path


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    with ServerProcess(config(tmp_path)) as srv:
        yield srv


def seqs(envs: list[dict]) -> list[int]:
    return [e["seq"] for e in envs if "seq" in e]


def test_listening_event_carries_the_real_port(server: ServerProcess) -> None:
    """`--port 0` logs `listening` with the host and the port actually bound."""
    assert server.host == "127.0.0.1" and server.port > 0
    assert httpx.get(server.url("/healthz")).json() == {"status": "ok"}


def test_port_in_use_exits_2_with_a_clear_message(tmp_path: Path) -> None:
    """A port in use is one clear line on stderr and exit code 2."""
    path = config(tmp_path)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        cmd = [sys.executable, "-m", "pipeline", "run", "--serve", "-c", str(path)]
        done = subprocess.run(
            [*cmd, "--port", str(port)], cwd=ROOT, capture_output=True, timeout=30
        )
    assert done.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in done.stderr.decode()
    assert b"Traceback" not in done.stderr


def test_pipelines_state_json(server: ServerProcess) -> None:
    """`/pipelines` and `/pipelines/{name}` report state, counts, clients and last seq."""
    wait_until(lambda: httpx.get(server.url("/pipelines/done")).json()["state"] == "completed")
    listing = httpx.get(server.url("/pipelines")).json()["pipelines"]
    assert [p["name"] for p in listing] == ["live", "done", "quiet", "fresh", "endless"]
    done = httpx.get(server.url("/pipelines/done")).json()
    assert done["counts"] == {"starting": 1, "processing": 20, "complete": 1}
    assert (done["last_seq"], done["clients"], done["dropped_clients"]) == (22, 0, 0)
    assert done["run"] and done["reason"] == "finished"
    with RawStream(server.port, "/pipelines/live/stream") as s:
        assert s.envelopes(limit=1)
        assert httpx.get(server.url("/pipelines/live")).json()["clients"] == 1


def test_duration_stops_at_complete(server: ServerProcess) -> None:
    """A finished run's `duration_s` on /pipelines is the one its `complete` carried."""
    wait_until(lambda: httpx.get(server.url("/pipelines/done")).json()["state"] == "completed")
    with RawStream(server.port, "/pipelines/done/stream?since=0") as s:
        complete = s.envelopes()[-1]
    time.sleep(0.05)  # time passes; a run with no end time would report more
    stats = httpx.get(server.url("/pipelines/done")).json()["stats"]
    assert stats == complete["stats"]


def test_stream_arrives_incrementally(server: ServerProcess) -> None:
    """The first envelopes of an endless run are read while it goes on, with stream headers."""
    with httpx.stream("GET", server.url("/pipelines/live/stream?since=0")) as resp:
        assert resp.headers["content-type"] == "application/x-ndjson"
        assert resp.headers["cache-control"] == "no-cache"
        assert resp.headers["x-accel-buffering"] == "no"
        assert resp.headers["transfer-encoding"] == "chunked"
        lines = []
        for line in resp.iter_lines():
            lines.append(orjson.loads(line))
            if len(lines) == 5:
                break
    assert [e["seq"] for e in lines] == [1, 2, 3, 4, 5]
    assert lines[0]["status"] == "starting"


def test_jsonl_accept_gets_the_same_stream(server: ServerProcess) -> None:
    """`Accept: application/jsonl` is served the NDJSON stream."""
    wait_until(lambda: httpx.get(server.url("/pipelines/done")).json()["state"] == "completed")
    with RawStream(
        server.port, "/pipelines/done/stream?since=0", {"Accept": "application/jsonl"}
    ) as s:
        envs = s.envelopes()
        assert s.headers["content-type"] == "application/jsonl"
    assert seqs(envs) == list(range(13, 23)) and envs[0]["status"] == "lagged"


def test_finished_run_replays_retained_and_ends(server: ServerProcess) -> None:
    """A finished run: since=0 gets `lagged` (exact missed) then what is retained, then ends."""
    wait_until(lambda: httpx.get(server.url("/pipelines/done")).json()["state"] == "completed")
    with RawStream(server.port, "/pipelines/done/stream?since=0") as s:
        envs = s.envelopes()
        assert s.clean_end
    assert envs[0]["status"] == "lagged" and envs[0]["missed"] == 12
    assert seqs(envs) == list(range(13, 23))
    assert envs[-1]["status"] == "complete"
    run = envs[-1]["run"]
    with RawStream(server.port, f"/pipelines/done/stream?since={run}:20") as s:
        assert seqs(s.envelopes()) == [21, 22]


def test_since_resumes_exactly_on_a_live_run(server: ServerProcess) -> None:
    """Reconnecting with RUN:SEQ continues with SEQ+1: no gap, no duplicate."""
    with RawStream(server.port, "/pipelines/live/stream?since=0") as s:
        first = s.envelopes(limit=8)
    token = f"{first[-1]['run']}:{first[-1]['seq']}"
    time.sleep(0.1)
    with RawStream(server.port, f"/pipelines/live/stream?since={token}") as s:
        second = s.envelopes(limit=10)
    assert seqs(first + second) == list(range(1, 19))


def test_sse_framing_and_last_event_id(server: ServerProcess) -> None:
    """SSE: retry hint first, `id: RUN:SEQ`, envelope as data, no `event:`; resumes."""
    with RawStream(server.port, "/pipelines/live/events?since=0") as s:
        assert s.read_head() == 200
        assert s.headers["content-type"] == "text/event-stream; charset=utf-8"
        events = sse_events(s, limit=4)
    assert events[0] == {"retry": "2000"}
    run = orjson.loads(events[1]["data"])["run"]
    assert [e["id"] for e in events[1:]] == [f"{run}:1", f"{run}:2", f"{run}:3"]
    assert [set(e) for e in events[1:]] == [{"id", "data"}] * 3
    statuses = [orjson.loads(e["data"])["status"] for e in events[1:]]
    assert statuses == ["starting", "processing", "processing"]
    assert orjson.loads(events[2]["data"])["seq"] == 2
    headers = {"Last-Event-ID": f"{run}:3"}
    with RawStream(server.port, "/pipelines/live/events?since=0", headers) as s:
        events = sse_events(s, limit=3)
    assert [e["id"] for e in events[1:]] == [f"{run}:4", f"{run}:5"]


def test_sse_reconnect_after_the_end_of_a_run_gets_204(server: ServerProcess) -> None:
    """Last-Event-ID of a completed run's last envelope: 204; an earlier one: the rest."""
    wait_until(lambda: httpx.get(server.url("/pipelines/done")).json()["state"] == "completed")
    state = httpx.get(server.url("/pipelines/done")).json()
    run, last = state["run"], state["last_seq"]
    with RawStream(server.port, "/pipelines/done/events", {"Last-Event-ID": f"{run}:{last}"}) as s:
        assert s.read_head() == 204 and "content-type" not in s.headers
    with RawStream(
        server.port, "/pipelines/done/events", {"Last-Event-ID": f"{run}:{last - 1}"}
    ) as s:
        assert [orjson.loads(e["data"])["seq"] for e in sse_events(s)[1:]] == [last]
    with RawStream(server.port, "/pipelines/done/events", {"Last-Event-ID": f"old:{last}"}) as s:
        assert s.read_head() == 200  # another run: the current one from its start
    with RawStream(server.port, "/pipelines/fresh/events", {"Last-Event-ID": "gone:5"}) as s:
        assert s.read_head() == 204  # a request run is over once its client left
    assert httpx.get(server.url("/pipelines/fresh")).json()["runs"] == 0
    live = httpx.get(server.url("/pipelines/live")).json()
    headers = {"Last-Event-ID": f"{live['run']}:{live['last_seq']}"}
    with RawStream(server.port, "/pipelines/live/events", headers) as s:
        assert s.read_head() == 200  # a live run: what comes next


@pytest.mark.parametrize(
    ("body", "status", "kind"),
    [
        (b"not json", 400, "bad_request"),
        (b'{"token": 5}', 400, "bad_request"),
        (b"[]", 400, "bad_request"),
        (b'{"token": "' + b"x" * 5000 + b'"}', 400, "bad_request"),
        (b'{"token": "wrong"}', 401, "unauthorized"),
    ],
)
def test_session_refuses_bad_bodies_and_wrong_tokens(
    secured: ServerProcess, body: bytes, status: int, kind: str
) -> None:
    """POST /session: JSON errors, no cookie, for a malformed body or a wrong token."""
    resp = httpx.post(secured.url("/session"), content=body)
    assert resp.status_code == status and resp.json()["error"]["type"] == kind
    assert "set-cookie" not in resp.headers


def test_session_cookie_flags_and_logout(secured: ServerProcess) -> None:
    """The cookie is HttpOnly, SameSite=Strict, Path=/; DELETE clears it; GET is 405."""
    resp = httpx.post(secured.url("/session"), json={"token": TOKEN})
    assert resp.status_code == 204
    cookie = resp.headers["set-cookie"]
    assert cookie.startswith("pipeline_token=") and TOKEN not in cookie
    assert {"HttpOnly", "Path=/", "SameSite=strict"} <= {p.strip() for p in cookie.split(";")}
    value = resp.cookies["pipeline_token"]
    jar = {"pipeline_token": value}
    with RawStream(
        secured.port, "/pipelines/done/stream?since=0", {"Cookie": f"pipeline_token={value}"}
    ) as s:
        assert s.envelopes()[-1]["status"] == "complete"
    assert httpx.get(secured.url("/pipelines"), cookies={"pipeline_token": "x"}).status_code == 401
    cleared = httpx.delete(secured.url("/session"), cookies=jar)
    assert cleared.status_code == 204 and "Max-Age=0" in cleared.headers["set-cookie"]
    assert httpx.get(secured.url("/session")).status_code == 405
    allowed = {"Origin": "http://app.example"}
    assert httpx.delete(secured.url("/session"), headers=allowed).status_code == 204


def test_session_without_a_token_sets_no_cookie(server: ServerProcess) -> None:
    """With no `server.token` everything is open: POST /session is 204 without a cookie."""
    resp = httpx.post(server.url("/session"), json={"token": "anything"})
    assert resp.status_code == 204 and "set-cookie" not in resp.headers


def test_websocket_one_frame_per_envelope(server: ServerProcess) -> None:
    """WS: one text frame per envelope, same `since`; closes 1000 after `complete`."""
    url = f"ws://127.0.0.1:{server.port}/pipelines/done/ws?since=15"
    with ws_connect(url, open_timeout=10) as ws:
        frames = [orjson.loads(m) for m in ws]
        assert ws.close_code == 1000
    assert seqs(frames) == list(range(16, 23)) and frames[-1]["status"] == "complete"
    with ws_connect(f"ws://127.0.0.1:{server.port}/pipelines/live/ws?since=0") as ws:
        got = [orjson.loads(ws.recv(timeout=10)) for _ in range(5)]
    assert seqs(got) == [1, 2, 3, 4, 5]


def test_gzip_decodes_incrementally(server: ServerProcess) -> None:
    """gzip: every write is flushed, so a live run's first envelopes decode at once."""
    headers = {"Accept-Encoding": "gzip"}
    with RawStream(server.port, "/pipelines/live/stream?since=0", headers) as s:
        assert s.read_head() == 200
        assert s.headers["content-encoding"] == "gzip"
        envs = s.envelopes(limit=4)
    assert seqs(envs) == [1, 2, 3, 4]
    with RawStream(server.port, "/pipelines/done/stream", {"Accept-Encoding": "gzip;q=0"}) as s:
        s.read_head()
        assert "content-encoding" not in s.headers


def test_heartbeat_on_an_idle_stream(server: ServerProcess) -> None:
    """After `heartbeat` seconds of silence: a heartbeat line (NDJSON), a comment (SSE)."""
    wait_until(lambda: httpx.get(server.url("/pipelines/quiet")).json()["last_seq"] == 2)
    with RawStream(server.port, "/pipelines/quiet/stream") as s:
        beats = s.envelopes(limit=2)
    assert [b["status"] for b in beats] == ["heartbeat", "heartbeat"]
    assert beats[0]["pipeline"] == "quiet" and beats[0]["timestamp"].endswith("Z")
    with RawStream(server.port, "/pipelines/quiet/events") as s:
        events = sse_events(s, limit=2)
    assert events[1] == {"comment": "keepalive"}


def test_head_on_a_stream_returns_at_once(server: ServerProcess) -> None:
    """HEAD gets the stream's headers and no body, at once."""
    resp = httpx.head(server.url("/pipelines/live/stream"), timeout=5)
    assert resp.status_code == 200 and resp.headers["content-type"] == "application/x-ndjson"


def test_request_trigger_runs_afresh_with_params(server: ServerProcess) -> None:
    """`trigger: request`: each request gets its own run, with its declared params."""
    runs = []
    for count in (2, 4):
        with RawStream(server.port, f"/pipelines/fresh/stream?count={count}") as s:
            envs = s.envelopes()
        assert [e["status"] for e in envs] == ["starting", *["processing"] * count, "complete"]
        assert seqs(envs) == list(range(1, count + 3))
        runs.append(envs[0]["run"])
    assert runs[0] != runs[1]
    assert httpx.get(server.url("/pipelines/fresh")).json()["runs"] == 2


def test_request_trigger_disconnect_cancels_the_run(server: ServerProcess, tmp_path: Path) -> None:
    """A client that leaves cancels its run at once; the source's cleanup runs."""
    marker = tmp_path / "marker.txt"
    for path in ("/pipelines/endless/stream", "/pipelines/endless/events"):
        with RawStream(server.port, path) as s:
            assert len(list(zip(range(3), s.lines(), strict=False))) == 3
            assert httpx.get(server.url("/pipelines/endless")).json()["clients"] == 1
    with ws_connect(f"ws://127.0.0.1:{server.port}/pipelines/endless/ws") as ws:
        ws.recv(timeout=10)
    wait_until(lambda: marker.exists() and marker.read_text().count("closed") == 3)
    wait_until(lambda: httpx.get(server.url("/pipelines/endless")).json()["clients"] == 0)


@pytest.mark.parametrize(
    ("path", "headers", "status", "kind"),
    [
        ("/pipelines/nope", {}, 404, "not_found"),
        ("/pipelines/nope/stream", {}, 404, "not_found"),
        ("/pipelines/nope/events", {}, 404, "not_found"),
        ("/pipelines/live/stream?since=abc", {}, 400, "bad_since"),
        ("/pipelines/live/stream?since=-1", {}, 400, "bad_since"),
        ("/pipelines/live/events", {"Last-Event-ID": "x:y"}, 400, "bad_since"),
        ("/pipelines/live/stream?limit=3", {}, 400, "bad_request_params"),
        ("/pipelines/fresh/stream?count=abc", {}, 400, "bad_request_params"),
        ("/pipelines/fresh/stream?other=1", {}, 400, "bad_request_params"),
        ("/pipelines/live/ws", {}, 426, "upgrade_required"),
        ("/nothing", {}, 404, "not_found"),
    ],
)
def test_bad_input_gets_a_json_error(
    server: ServerProcess, path: str, headers: dict[str, str], status: int, kind: str
) -> None:
    """Each bad request gets its 4xx with a JSON error body and no traceback."""
    resp = httpx.get(server.url(path), headers=headers)
    assert resp.status_code == status
    body = resp.json()
    assert body["error"]["type"] == kind and body["error"]["message"]
    assert "Traceback" not in resp.text


def test_method_not_allowed_is_json(server: ServerProcess) -> None:
    """POST on a stream gets 405 JSON."""
    resp = httpx.post(server.url("/pipelines/live/stream"))
    assert resp.status_code == 405 and resp.json()["error"]["type"] == "method_not_allowed"


def test_websocket_refusal_is_a_json_4xx(server: ServerProcess) -> None:
    """A refused WebSocket gets the same JSON error as an HTTP response."""
    with pytest.raises(InvalidStatus) as info:
        ws_connect(f"ws://127.0.0.1:{server.port}/pipelines/nope/ws", open_timeout=10)
    assert info.value.response.status_code == 404
    assert orjson.loads(info.value.response.body)["error"]["type"] == "not_found"


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[ServerProcess]:
    path = config(tmp_path, server=f"token: {TOKEN}\n  cors_origins: [http://app.example]")
    with ServerProcess(path) as srv:
        yield srv


@pytest.mark.parametrize(
    "auth",
    [None, "Bearer wrong", "Basic " + TOKEN, f"Bearer {TOKEN}x", "Bearer \xe9\xff"],
)
@pytest.mark.parametrize("path", ["/pipelines", "/pipelines/live", "/pipelines/live/stream"])
def test_bad_token_gets_401(secured: ServerProcess, auth: str | None, path: str) -> None:
    """Missing, wrong or non-ASCII bearer tokens get 401 JSON, never a 500."""
    headers = {} if auth is None else {"Authorization": auth}
    with RawStream(secured.port, path, headers) as s:
        assert s.read_head() == 401
        assert s.json()["error"]["type"] == "unauthorized"
        assert s.headers["www-authenticate"] == "Bearer"


def test_two_authorization_headers_get_401(secured: ServerProcess) -> None:
    """Two `Authorization` headers, even with the right token in one: 401 (a proxy and
    the server might each pick a different one)."""
    for first, second in ((f"Bearer {TOKEN}", "Bearer wrong"), ("Bearer wrong", f"Bearer {TOKEN}")):
        with socket.create_connection(("127.0.0.1", secured.port), timeout=10) as sock:
            sock.sendall(
                b"GET /pipelines HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                + f"Authorization: {first}\r\nAuthorization: {second}\r\n\r\n".encode()
            )
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        assert data.startswith(b"HTTP/1.1 401")
        assert b'"unauthorized"' in data


def test_token_grants_access_and_is_never_logged(secured: ServerProcess) -> None:
    """The right token opens every route; /healthz is open; the token never reaches logs."""
    assert httpx.get(secured.url("/healthz")).status_code == 200
    assert httpx.get(secured.url("/pipelines"), headers=AUTH).status_code == 200
    with RawStream(secured.port, "/pipelines/done/stream?since=0", AUTH) as s:
        assert s.envelopes()[-1]["status"] == "complete"
    resp = httpx.get(secured.url(f"/pipelines/live/stream?token={TOKEN}"), headers=AUTH)
    assert resp.status_code == 400
    with pytest.raises(InvalidStatus) as info:
        ws_connect(f"ws://127.0.0.1:{secured.port}/pipelines/live/ws", open_timeout=10)
    assert info.value.response.status_code == 401
    ws = ws_connect(f"ws://127.0.0.1:{secured.port}/pipelines/live/ws", additional_headers=AUTH)
    with ws:
        assert orjson.loads(ws.recv(timeout=10))["pipeline"] == "live"
    wait_until(lambda: "token=***" in secured.log_text)
    assert TOKEN not in secured.log_text


def test_cors_headers_on_a_stream_without_buffering(secured: ServerProcess) -> None:
    """An allowed Origin gets CORS headers on a live stream, still read incrementally."""
    headers = {**AUTH, "Origin": "http://app.example"}
    with RawStream(secured.port, "/pipelines/live/stream?since=0", headers) as s:
        assert s.read_head() == 200
        assert s.headers["access-control-allow-origin"] == "http://app.example"
        assert seqs(s.envelopes(limit=3)) == [1, 2, 3]
    pre = httpx.options(
        secured.url("/pipelines/live/stream"),
        headers={
            "Origin": "http://app.example",
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization",
        },
    )
    assert pre.status_code == 200
    assert pre.headers["access-control-allow-origin"] == "http://app.example"


def test_max_clients_gets_503_json(tmp_path: Path) -> None:
    """Streams beyond `max_clients` get 503 JSON; a freed slot can be taken again."""
    with ServerProcess(config(tmp_path, server="max_clients: 2")) as srv:
        a = RawStream(srv.port, "/pipelines/live/stream")
        b = RawStream(srv.port, "/pipelines/live/events")
        with a, b:
            assert a.read_head() == 200 and b.read_head() == 200
            for path in ("/pipelines/live/stream", "/pipelines/fresh/stream"):
                resp = httpx.get(srv.url(path))
                assert resp.status_code == 503
                assert resp.json()["error"]["type"] == "too_many_clients"
            assert httpx.get(srv.url("/pipelines")).status_code == 200
        wait_until(lambda: httpx.get(srv.url("/pipelines/live")).json()["clients"] == 0)
        with RawStream(srv.port, "/pipelines/live/stream") as c:
            assert c.read_head() == 200


def test_idle_keep_alive_connection_is_closed(server: ServerProcess) -> None:
    """A kept-alive connection idle after a response is closed by the server (keep-alive 5 s):
    the reads end with EOF, not with the client's own 15 s socket timeout."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=15) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        assert data.startswith(b"HTTP/1.1 200")


def test_idle_and_trickling_connections_do_not_hold_others(server: ServerProcess) -> None:
    """Connections that send nothing, or a header byte now and then, stay open within
    `server.head_timeout` without taking stream slots or slowing others."""
    idle = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(20)]
    trickler = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    try:
        for byte in b"GET /heal":
            trickler.sendall(bytes([byte]))
            time.sleep(0.02)
        with RawStream(server.port, "/pipelines/done/stream?since=0") as s:
            assert s.envelopes()[-1]["status"] == "complete"
        state = httpx.get(server.url("/pipelines/live")).json()
        assert state["clients"] == 0
        trickler.sendall(b"thz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := trickler.recv(65536):
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 200")
    finally:
        trickler.close()
        for sock in idle:
            sock.close()
