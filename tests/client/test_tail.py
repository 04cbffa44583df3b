"""``pipeline tail`` as a real subprocess against a scripted NDJSON server on loopback.

The fake server is a raw ASGI app on uvicorn in a thread; each route plays a script
(drops, errors, 4xx answers, lagged notices, heartbeats) and records every request.
"""

from __future__ import annotations

import asyncio
import contextlib
import doctest
import io
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import orjson
import pytest
import uvicorn

import pipeline.client.tail as tailmod
from pipeline.client.tail import TailError, Target, format_envelope, resolve_target, tail

ROOT = Path(__file__).resolve().parents[2]
Send = Callable[[dict[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[dict[str, Any]]]


def env(run: str, seq: int, status: str, **extra: Any) -> dict[str, Any]:
    """An envelope of pipeline `p` with a predictable timestamp."""
    stamp = f"2024-05-01T12:00:{seq:02d}.{seq * 1001:06d}Z"
    return {"status": status, "pipeline": "p", "run": run, "seq": seq, "timestamp": stamp, **extra}


def nd(*envs: dict[str, Any]) -> bytes:
    """Envelopes as NDJSON bytes."""
    return b"".join(orjson.dumps(e) + b"\n" for e in envs)


def complete(run: str, seq: int, reason: str = "finished", processed: int = 1) -> dict[str, Any]:
    """A `complete` envelope."""
    stats = {"processed": processed, "chunk_errors": 0, "errors": int(reason == "error")}
    return env(run, seq, "complete", stats={**stats, "duration_s": 0.5}, reason=reason)


HEARTBEAT = b'{"status":"heartbeat","pipeline":"p"}\n'
OK_RUN = [
    env("R1", 1, "starting"),
    env("R1", 2, "processing", data={"n": 1}),
    env("R1", 3, "processing", data={"n": 2, "s": "x"}),
    complete("R1", 4, processed=2),
]
OK_BODY = [nd(*OK_RUN[:2]), HEARTBEAT, nd(*OK_RUN[2:])]
FAIL_RUN = [
    env("R2", 1, "starting"),
    env(
        "R2",
        2,
        "chunk_error",
        stage="transforms[0]:f",
        error={"type": "KeyError", "message": "'k'"},
    ),
    env("R2", 3, "error", stage="source:dies", error={"type": "ValueError", "message": "boom"}),
    complete("R2", 4, reason="error", processed=0),
]
DROP_RUN = [env("R3", 1, "starting"), *(env("R3", i, "processing", data={"i": i}) for i in (2, 3))]
DROP_REST = [env("R3", 4, "processing", data={"i": 4}), complete("R3", 5, processed=3)]
LAGGED = b'{"status":"lagged","pipeline":"p","missed":3}\n'
NEW_RUN = [env("R9", 7, "processing", data={"late": True}), complete("R9", 8)]


@dataclass
class Request:
    """One request the fake server received."""

    path: str
    query: dict[str, str]
    headers: dict[str, str]
    nth: int  # 0 for the first request to this path


@dataclass
class FakeServer:
    """A scripted NDJSON server: route handlers play streams, requests are recorded."""

    port: int
    requests: list[Request] = field(default_factory=list)

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        """Record the request and play the route's script."""
        if scope["type"] != "http":
            return
        query = {k: v[0] for k, v in parse_qs(scope["query_string"].decode()).items()}
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        nth = sum(r.path == scope["path"] for r in self.requests)
        req = Request(scope["path"], query, headers, nth)
        self.requests.append(req)
        name = scope["path"].removeprefix("/pipelines/").removesuffix("/stream")
        handler = getattr(self, f"route_{name}", None)
        if handler is None:
            await answer(send, 404, {"error": f"unknown pipeline `{name}`"})
            return
        await handler(req, send, receive)

    async def route_ok(self, req: Request, send: Send, receive: Receive) -> None:
        await play(send, *OK_BODY)

    async def route_fail(self, req: Request, send: Send, receive: Receive) -> None:
        await play(send, nd(*FAIL_RUN))

    async def route_drop(self, req: Request, send: Send, receive: Receive) -> None:
        if req.nth == 0:  # the last line is cut short, then the connection drops
            await play(send, nd(*DROP_RUN), nd(DROP_REST[0])[:10], end=False)
        elif req.query.get("since") == "R3:3":
            await play(send, nd(*DROP_REST))
        else:
            await answer(send, 400, {"error": f"bad since {req.query}"})

    async def route_drophb(self, req: Request, send: Send, receive: Receive) -> None:
        if req.nth == 0:  # a heartbeat after the last envelope, then a clean early end
            await play(send, nd(*DROP_RUN) + HEARTBEAT)
        elif req.query.get("since") == "R3:3":
            await play(send, nd(*DROP_REST))
        else:
            await answer(send, 400, {"error": f"bad since {req.query}"})

    async def route_extra(self, req: Request, send: Send, receive: Receive) -> None:
        await play(send, nd(*OK_RUN) + b"after complete\n")

    async def route_secret(self, req: Request, send: Send, receive: Receive) -> None:
        if req.headers.get("authorization") != "Bearer s3cret":
            await answer(send, 401, {"error": "missing or wrong token"})
        else:
            await play(send, *OK_BODY)

    async def route_badsince(self, req: Request, send: Send, receive: Receive) -> None:
        await answer(send, 400, {"error": {"message": "bad `since`: expected SEQ or RUN:SEQ"}})

    async def route_lag(self, req: Request, send: Send, receive: Receive) -> None:
        assert req.query.get("since") == "OLD:5"
        await play(send, LAGGED, nd(*NEW_RUN))

    async def route_busy(self, req: Request, send: Send, receive: Receive) -> None:
        if req.nth == 0:
            await answer(send, 503, {"error": "too many clients"})
        else:
            await play(send, *OK_BODY)

    async def route_html(self, req: Request, send: Send, receive: Receive) -> None:
        await play(send, b"<html></html>\n", kind=b"text/html")

    async def route_endless(self, req: Request, send: Send, receive: Receive) -> None:
        await play(send, nd(OK_RUN[0]), end=False)
        await receive()  # the (empty) request body
        for _ in range(400):  # at most ~20 s
            await send({"type": "http.response.body", "body": HEARTBEAT, "more_body": True})
            try:
                if (await asyncio.wait_for(receive(), 0.05))["type"] == "http.disconnect":
                    return
            except TimeoutError:
                pass
        await send({"type": "http.response.body", "body": b""})


async def play(send: Send, *chunks: bytes, end: bool = True, kind: bytes = b"") -> None:
    """Start a 200 NDJSON response, send each chunk; without ``end`` just stop (a drop)."""
    headers = [(b"content-type", kind or b"application/x-ndjson")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    for chunk in chunks:
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await asyncio.sleep(0.01)
    if end:
        await send({"type": "http.response.body", "body": b""})


async def answer(send: Send, status: int, body: dict[str, Any]) -> None:
    """A JSON error answer."""
    headers = [(b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": orjson.dumps(body)})


def free_port_number() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serving(port: int | None = None) -> Iterator[FakeServer]:
    """Run a `FakeServer` on uvicorn in a thread; stop it and join the thread on exit."""
    fake = FakeServer(port or free_port_number())
    config = uvicorn.Config(
        fake,
        host="127.0.0.1",
        port=fake.port,
        lifespan="off",
        log_level="critical",
        access_log=False,
        timeout_graceful_shutdown=2,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.started, "fake server did not start"
    try:
        yield fake
    finally:
        server.should_exit = True
        thread.join(10)
        assert not thread.is_alive()


@pytest.fixture
def fake() -> Iterator[FakeServer]:
    """A running fake server."""
    with serving() as server:
        yield server


def url(fake: FakeServer, name: str, suffix: str = "/stream") -> str:
    """The stream URL of ``name`` on the fake server."""
    return f"http://127.0.0.1:{fake.port}/pipelines/{name}{suffix}"


def clean_env() -> dict[str, str]:
    """The environment without a token or config from the outside."""
    return {k: v for k, v in os.environ.items() if k not in ("PIPELINE_TOKEN", "PIPELINE_CONFIG")}


def run_tail(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    """`python -m pipeline tail ARGS` as a real subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "pipeline", "tail", *args],
        cwd=ROOT,
        env=clean_env(),
        capture_output=True,
        timeout=timeout,
        check=False,
    )


def pretty_lines(envs: list[dict[str, Any]]) -> list[str]:
    """What pretty mode prints for ``envs`` (no width limit)."""
    found = [format_envelope(e) for e in envs]
    return [t.plain for t in found if t is not None]


# -- the command as a subprocess -------------------------------------------------------------


def test_raw_prints_every_line_exactly_and_exits_zero(fake: FakeServer) -> None:
    """--raw: every line as received (heartbeats included), exit 0 after complete."""
    proc = run_tail(url(fake, "ok"), "--raw")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b"".join(OK_BODY)
    [req] = fake.requests
    assert req.headers["accept"] == "application/x-ndjson"
    assert "authorization" not in req.headers
    assert req.query == {}


def test_pretty_hides_heartbeats_and_takes_pipeline_url(fake: FakeServer) -> None:
    """Pretty: one line per envelope, no heartbeat; `/pipelines/NAME` means its /stream."""
    proc = run_tail(url(fake, "ok", suffix=""))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode().splitlines() == [
        "     1 12:00:01.001 starting    p  run R1",
        '     2 12:00:02.002 processing  p  {"n":1}',
        '     3 12:00:03.003 processing  p  {"n":2,"s":"x"}',
        "     4 12:00:04.004 complete    p  finished  processed=2 chunk_errors=0 errors=0 "
        "duration_s=0.5",
    ]
    assert b"\x1b[" not in proc.stdout  # no colour when not a terminal
    assert [r.path for r in fake.requests] == ["/pipelines/ok/stream"]


@pytest.mark.parametrize("route", ["drop", "drophb"])
def test_drop_midway_resumes_with_last_run_seq(fake: FakeServer, route: str) -> None:
    """A drop or an early end: reconnect with since=RUN:SEQ, no gap, no duplicate."""
    proc = run_tail(url(fake, route), "--raw")
    assert proc.returncode == 0, proc.stderr
    heartbeat = HEARTBEAT if route == "drophb" else b""
    assert proc.stdout == nd(*DROP_RUN) + heartbeat + nd(*DROP_REST)
    assert [r.query for r in fake.requests] == [{}, {"since": "R3:3"}]
    assert b"tail_retrying" in proc.stderr


def test_pretty_resumes_too(fake: FakeServer) -> None:
    """Pretty mode resumes the same way."""
    proc = run_tail(url(fake, "drop"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode().splitlines() == pretty_lines([*DROP_RUN, *DROP_REST])
    assert [r.query for r in fake.requests] == [{}, {"since": "R3:3"}]


def test_error_envelope_exits_one(fake: FakeServer) -> None:
    """An `error` envelope: exit 1; pretty shows stage and `Type: message`."""
    raw = run_tail(url(fake, "fail"), "--raw")
    assert (raw.returncode, raw.stdout) == (1, nd(*FAIL_RUN))
    pretty = run_tail(url(fake, "fail"))
    assert pretty.returncode == 1
    assert pretty.stdout.decode().splitlines() == [
        "     1 12:00:01.001 starting    p  run R2",
        "     2 12:00:02.002 chunk_error p  transforms[0]:f  KeyError: 'k'",
        "     3 12:00:03.003 error       p  source:dies  ValueError: boom",
        "     4 12:00:04.004 complete    p  error  processed=0 chunk_errors=0 errors=1 "
        "duration_s=0.5",
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("secret",), "HTTP 401: missing or wrong token (pass --token or set $PIPELINE_TOKEN)"),
        (("secret", "--token", "WRONG-t0ken"), "HTTP 401: missing or wrong token"),
        (("nope",), "HTTP 404: unknown pipeline `nope`"),
        (("badsince", "--since", "x:y:z"), "HTTP 400: bad `since`: expected SEQ or RUN:SEQ"),
    ],
)
def test_client_errors_exit_two_without_retry(
    fake: FakeServer, args: tuple[str, ...], message: str
) -> None:
    """401/404/400: the server's JSON message on stderr, exit 2, one request only."""
    proc = run_tail(url(fake, args[0]), *args[1:], "--raw")
    assert proc.returncode == 2
    assert proc.stdout == b""
    assert message in proc.stderr.decode()
    assert b"WRONG-t0ken" not in proc.stderr
    assert b"Traceback" not in proc.stderr
    assert len(fake.requests) == 1


def test_token_is_sent_as_bearer(fake: FakeServer) -> None:
    """--token goes in `Authorization: Bearer` and never to the output."""
    proc = run_tail(url(fake, "secret"), "--token", "s3cret", "--raw")
    assert (proc.returncode, proc.stdout) == (0, b"".join(OK_BODY))
    assert b"s3cret" not in proc.stderr


def test_name_uses_config_server_and_token(fake: FakeServer, tmp_path: Path) -> None:
    """A NAME: URL from server.host/port (0.0.0.0 means loopback), token from the config."""
    config = tmp_path / "pipelines.yaml"
    config.write_text(
        f"server: {{host: 0.0.0.0, port: {fake.port}, token: s3cret}}\n"
        "pipelines:\n  secret:\n    source: {use: counter}\n"
    )
    proc = run_tail("secret", "-c", str(config), "--raw")
    assert (proc.returncode, proc.stdout) == (0, b"".join(OK_BODY)), proc.stderr
    assert fake.requests[0].path == "/pipelines/secret/stream"
    assert b"s3cret" not in proc.stderr


def test_lagged_notice_is_shown(fake: FakeServer) -> None:
    """--since names a lost run: the `lagged` notice is printed raw, and as a warning."""
    raw = run_tail(url(fake, "lag"), "--since", "OLD:5", "--raw")
    assert (raw.returncode, raw.stdout) == (0, LAGGED + nd(*NEW_RUN))
    pretty = run_tail(url(fake, "lag"), "--since", "OLD:5")
    assert pretty.returncode == 0
    assert pretty.stdout.decode().splitlines() == [
        "! lagged: 3 envelopes were no longer retained and are missed",
        *pretty_lines(NEW_RUN),
    ]


def test_server_busy_is_retried(fake: FakeServer) -> None:
    """A 503 answer is retried like a drop."""
    proc = run_tail(url(fake, "busy"), "--raw")
    assert (proc.returncode, proc.stdout) == (0, b"".join(OK_BODY))
    assert len(fake.requests) == 2


def test_not_ndjson_exits_two(fake: FakeServer) -> None:
    """A 200 answer that is not NDJSON is a usage error, not a stream."""
    proc = run_tail(url(fake, "html"), "--raw")
    assert proc.returncode == 2
    assert b"answered `text/html`, not NDJSON" in proc.stderr


def test_server_that_starts_late_is_waited_for() -> None:
    """Connection refused at first: retried with backoff until the server is up."""
    port = free_port_number()
    with subprocess.Popen(
        [sys.executable, "-m", "pipeline", "tail", f"127.0.0.1:{port}/pipelines/ok", "--raw"],
        cwd=ROOT,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as proc:
        err_lines: list[bytes] = []
        assert proc.stderr is not None
        reader = threading.Thread(target=lambda: err_lines.extend(proc.stderr), daemon=True)
        reader.start()
        try:
            refused = threading.Event()
            deadline = time.monotonic() + 30
            while not refused.is_set() and time.monotonic() < deadline:
                if any(b"ConnectError" in line for line in list(err_lines)):
                    refused.set()
                time.sleep(0.02)
            assert refused.is_set(), b"".join(err_lines)
            with serving(port):
                assert proc.stdout is not None
                out = proc.stdout.read()
                proc.wait(timeout=30)
        finally:
            proc.kill()
            reader.join(5)
    assert (proc.returncode, out) == (0, b"".join(OK_BODY)), b"".join(err_lines)


def test_ctrl_c_exits_130_quietly(fake: FakeServer) -> None:
    """SIGINT while following: exit 130, no traceback."""
    with subprocess.Popen(
        [sys.executable, "-m", "pipeline", "tail", url(fake, "endless"), "--raw"],
        cwd=ROOT,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as proc:
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline() == nd(OK_RUN[0])
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=30)
        finally:
            proc.kill()
    assert proc.returncode == 130
    assert b"Traceback" not in err and b"KeyboardInterrupt" not in err


# -- in process ------------------------------------------------------------------------------


def test_gives_up_after_max_retries() -> None:
    """Nothing listening: `TailError` after max_retries + 1 attempts."""
    target = f"http://127.0.0.1:{free_port_number()}/pipelines/x/stream"
    with pytest.raises(TailError, match=r"after 3 attempts: ConnectError"):
        tail(target, since=None, raw=True, token=None, config_path=Path("-"), max_retries=2)


def test_drop_without_retries_raises_and_keeps_whole_lines(fake: FakeServer) -> None:
    """max_retries=0 and a drop: the whole lines received are written, the cut one is not."""
    out = io.BytesIO()
    with pytest.raises(TailError, match="after 1 attempts"):
        tail(
            url(fake, "drop"),
            since=None,
            raw=True,
            token=None,
            config_path=Path("-"),
            out=out,
            max_retries=0,
        )
    assert out.getvalue() == nd(*DROP_RUN)


@pytest.mark.parametrize("raw", [True, False])
def test_nothing_is_shown_after_complete(fake: FakeServer, raw: bool) -> None:
    """Lines after `complete` in the same read are not shown."""
    out = io.StringIO()
    assert (
        tail(url(fake, "extra"), since=None, raw=raw, token=None, config_path=Path("-"), out=out)
        == 0
    )
    expected = nd(*OK_RUN).decode() if raw else "\n".join(pretty_lines(OK_RUN)) + "\n"
    assert out.getvalue() == expected


def test_raw_and_pretty_accept_text_and_binary_files(fake: FakeServer) -> None:
    """`out` may be a text or a binary file in both modes."""
    kwargs: dict[str, Any] = {"since": None, "token": None, "config_path": Path("-")}
    text, binary = io.StringIO(), io.BytesIO()
    assert tail(url(fake, "ok"), raw=True, out=text, **kwargs) == 0
    assert text.getvalue().encode() == b"".join(OK_BODY)
    assert tail(url(fake, "ok"), raw=False, out=binary, **kwargs) == 0
    assert binary.getvalue().decode().splitlines() == pretty_lines(OK_RUN)


# -- units -----------------------------------------------------------------------------------


def test_format_envelope_cuts_to_width_and_styles_status() -> None:
    """A width cuts the line with an ellipsis; the status carries its colour."""
    line = format_envelope(env("R", 12, "processing", data={"text": "x" * 100}), width=40)
    assert line is not None
    assert line.plain == '    12 12:00:12.012 processing  p  {"te…'
    assert len(line.plain) == 40
    styles = {line.plain[s.start : s.end]: str(s.style) for s in line.spans}
    assert styles == {"    12 12:00:12.012 ": "dim", "processing ": "green"}
    assert str(line.style) == ""  # the data keeps the terminal's own colour
    error = format_envelope(FAIL_RUN[2])
    assert error is not None
    assert {str(s.style) for s in error.spans} >= {"bold red"}


def test_format_envelope_edge_cases() -> None:
    """Heartbeats vanish; odd envelopes still print something readable."""
    assert format_envelope({"status": "heartbeat"}) is None
    odd = format_envelope({"status": "custom", "seq": 1, "timestamp": "nope", "x": [1]})
    assert odd is not None and odd.plain == '     1 ??:??:??.??? custom        {"x":[1]}'
    bare = format_envelope({"status": "error"})
    assert bare is not None and bare.plain.endswith("error         ?  Error: ")


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("http://h:1/pipelines/a/stream", "http://h:1/pipelines/a/stream"),
        ("http://h:1/pipelines/a/", "http://h:1/pipelines/a/stream"),
        ("https://h/x/pipelines/a?k=v", "https://h/x/pipelines/a/stream?k=v"),
        ("localhost:9/pipelines/a", "http://localhost:9/pipelines/a/stream"),
        ("http://h:1/custom/path", "http://h:1/custom/path"),
        ("counter", "http://127.0.0.1:8000/pipelines/counter/stream"),
    ],
)
def test_resolve_target(target: str, expected: str) -> None:
    """URLs are normalised to the /stream endpoint; a NAME without config is local:8000."""
    found = resolve_target(target, token="t", config_path=Path("/nonexistent.yaml"))
    assert found == Target(expected, "t")


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("http://h/pipelines/a/events", "is not an NDJSON stream"),
        ("no such thing", "is neither a URL nor a pipeline name"),
    ],
)
def test_resolve_target_rejects(target: str, message: str) -> None:
    """SSE/WebSocket URLs and garbage are refused with a clear message."""
    with pytest.raises(TailError, match=message):
        resolve_target(target, token=None, config_path=Path("-"))


PIPES = "pipelines: {a: {source: {use: counter}}}\n"


def test_resolve_name_with_ipv6_and_port_zero(tmp_path: Path) -> None:
    """`::` means ::1 in brackets; `port: 0` cannot be tailed by name."""
    config = tmp_path / "p.yaml"
    config.write_text("server: {host: '::', port: 81, heartbeat: 40}\n" + PIPES)
    assert resolve_target("a", token=None, config_path=config) == Target(
        "http://[::1]:81/pipelines/a/stream", None, 120.0
    )
    config.write_text("server: {port: 0}\n" + PIPES)
    with pytest.raises(TailError, match=r"server\.port is 0"):
        resolve_target("a", token=None, config_path=config)


# -- against the real server -----------------------------------------------------------------

REAL_CONFIG = """\
server: {{port: {port}, token: s3cret-t0ken}}
pipelines:
  count:
    source: {{use: counter, with: {{count: 5}}}}
"""


def _log_events(proc: subprocess.Popen[bytes]) -> queue.Queue[dict[str, Any]]:
    """The JSON log lines of ``proc``'s stderr, decoded by a reader thread."""
    events: queue.Queue[dict[str, Any]] = queue.Queue()

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            with contextlib.suppress(orjson.JSONDecodeError):
                events.put(orjson.loads(line))

    threading.Thread(target=read, daemon=True).start()
    return events


def _wait_event(events: queue.Queue[dict[str, Any]], name: str) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while (left := deadline - time.monotonic()) > 0:
        event = events.get(timeout=left)
        if event.get("event") == name:
            return event
    raise AssertionError(f"no `{name}` log event within 30 s")


@contextmanager
def _served(tmp_path: Path) -> Iterator[int]:
    """A real ``pipeline run --serve`` of the ``count`` pipeline, its run completed; yields
    its port and stops it with SIGINT (killed if it does not stop)."""
    served = tmp_path / "served.yaml"
    served.write_text(REAL_CONFIG.format(port=0))
    cmd = [sys.executable, "-m", "pipeline", "run", "--serve", "--port", "0", "-c", str(served)]
    with subprocess.Popen(
        [*cmd, "--log-format", "json"],
        cwd=tmp_path,
        env=clean_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    ) as server:
        try:
            events = _log_events(server)
            port = _wait_event(events, "listening")["port"]
            _wait_event(events, "run_completed")
            yield port
            server.send_signal(signal.SIGINT)
            server.wait(timeout=30)
        finally:
            server.kill()


def test_end_to_end_with_real_server(tmp_path: Path) -> None:
    """`pipeline tail NAME -c config --raw` against `run --serve`: starting..complete, exit 0."""
    with _served(tmp_path) as port:
        config = tmp_path / "pipelines.yaml"
        config.write_text(REAL_CONFIG.format(port=port))
        proc = run_tail("count", "-c", str(config), "--raw")
    assert proc.returncode == 0, proc.stderr
    envs = [orjson.loads(line) for line in proc.stdout.splitlines()]
    assert [e["status"] for e in envs] == ["starting", *["processing"] * 5, "complete"]
    assert [e["seq"] for e in envs] == list(range(1, 8))
    assert [e["data"]["n"] for e in envs[1:-1]] == list(range(5))
    assert envs[-1]["reason"] == "finished"
    assert b"s3cret-t0ken" not in proc.stdout + proc.stderr


def test_resume_into_another_run_is_announced(tmp_path: Path) -> None:
    """A resume token of a run that is gone (a restart): the real server says so with a
    `lagged` notice (`run_changed`), and `pipeline tail` prints it before the new run."""
    with _served(tmp_path) as port:
        stream = f"http://127.0.0.1:{port}/pipelines/count/stream"
        raw = run_tail(stream, "--since", "deadbeef:654", "--raw", "--token", "s3cret-t0ken")
        pretty = run_tail(stream, "--since", "deadbeef:654", "--token", "s3cret-t0ken")
    assert raw.returncode == 0, raw.stderr
    envs = [orjson.loads(line) for line in raw.stdout.splitlines()]
    notice = envs[0]
    assert (notice["status"], notice["reason"], notice["previous_run"]) == (
        "lagged",
        "run_changed",
        "deadbeef",
    )
    assert notice["missed"] == 0 and notice["run"] == envs[1]["run"]
    assert [e["seq"] for e in envs[1:]] == list(range(1, 8))
    first = pretty.stdout.decode().splitlines()[0]
    assert first == (
        f"! run changed: run deadbeef is gone, following run {notice['run']} "
        "from its first retained envelope (0 no longer retained)"
    )


def test_docstring_examples_run() -> None:
    """The `>>>` examples in `pipeline.client.tail` and `pipeline.client.render` hold."""
    from pipeline.client import render as _pretty

    results = [doctest.testmod(m, optionflags=doctest.ELLIPSIS) for m in (tailmod, _pretty)]
    assert sum(r.attempted for r in results) >= 3
    assert sum(r.failed for r in results) == 0
