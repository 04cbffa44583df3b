"""Stream bodies at the ASGI level: fake ``receive``/``send``, as Starlette's own tests do.

These cover what a real socket makes slow or racy to reach: HEAD, a client that goes
away, a client that stops reading, heartbeats, gzip, WebSocket framing. The same
behaviour is checked end to end on a real port in test_server.py.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Awaitable
from typing import Any

import orjson
import pytest

from pipeline.envelope import encode
from pipeline.hub.hub import Hub
from pipeline.server.framings import SSEStream, WebSocketStream
from pipeline.server.protocol import CONNECTION
from pipeline.server.streams import NDJSONStream, StreamOptions

pytestmark = pytest.mark.anyio

Message = dict[str, Any]


def publish(hub: Hub, run: str, statuses: list[str], start: int = 1) -> None:
    for seq, status in enumerate(statuses, start):
        env = {"status": status, "pipeline": hub.name, "run": run, "seq": seq}
        hub.publish(env, encode(env))


def finished(hub: Hub, run: str = "r1", n: int = 3) -> None:
    publish(hub, run, ["starting", *["processing"] * n, "complete"])
    hub.end_run()


def options(**overrides: Any) -> StreamOptions:
    settings: dict[str, Any] = {"since": "0", "heartbeat": 30.0, "send_timeout": 5.0}
    return StreamOptions(**(settings | overrides))


class Client:
    """A fake ASGI client: records what is sent, and disconnects when told to."""

    def __init__(self, first: Message | None = None) -> None:
        self.sent: list[Message] = []
        self.gone = asyncio.Event()
        self.first = first

    async def receive(self) -> Message:
        if self.first is not None:
            message, self.first = self.first, None
            return message
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        self.sent.append(message)

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.sent if m["type"] == "http.response.body")

    def envelopes(self) -> list[dict[str, Any]]:
        return [orjson.loads(line) for line in self.body.splitlines()]


async def bounded(call: Awaitable[None], seconds: float = 10.0) -> None:
    async with asyncio.timeout(seconds):
        await call


async def test_ndjson_replays_a_finished_run_then_ends() -> None:
    """A finished run: head, every retained line in one write, then the end of the body."""
    hub = Hub("p", retain=100, client_buffer=10)
    finished(hub)
    client = Client()
    await bounded(NDJSONStream(hub, options())({"type": "http"}, client.receive, client.send))
    head = client.sent[0]
    assert (head["type"], head["status"]) == ("http.response.start", 200)
    headers = dict(head["headers"])
    assert headers[b"content-type"] == b"application/x-ndjson"
    assert (headers[b"cache-control"], headers[b"x-accel-buffering"]) == (b"no-cache", b"no")
    assert [e["seq"] for e in client.envelopes()] == [1, 2, 3, 4, 5]
    assert client.sent[-1] == {"type": "http.response.body", "body": b"", "more_body": False}
    assert hub.clients == 0


async def test_head_request_gets_the_head_and_no_body() -> None:
    """HEAD: the response head and an empty, final body; no run is started."""
    hub = Hub("p", retain=100, client_buffer=10)
    finished(hub)
    started: list[Hub] = []

    async def run(h: Hub) -> None:
        started.append(h)

    client = Client()
    stream = NDJSONStream(hub, options(run=run))
    await bounded(stream({"type": "http", "method": "HEAD"}, client.receive, client.send))
    assert [m["type"] for m in client.sent] == ["http.response.start", "http.response.body"]
    assert client.body == b"" and started == []


async def test_client_that_disconnects_ends_the_stream_and_closes_it() -> None:
    """A disconnect while the run is live ends the response and runs ``on_close`` once."""
    hub = Hub("p", retain=100, client_buffer=10)
    publish(hub, "r1", ["starting", "processing"])
    closed: list[bool] = []
    client = Client()
    stream = NDJSONStream(hub, options(on_close=lambda: closed.append(True)))
    task = asyncio.create_task(stream({"type": "http"}, client.receive, client.send))
    while not client.body:
        await asyncio.sleep(0.01)
    client.gone.set()
    await bounded(task)
    assert [e["seq"] for e in client.envelopes()] == [1, 2]
    assert closed == [True] and hub.clients == 0


async def test_request_run_is_cancelled_when_the_client_goes() -> None:
    """A ``trigger: request`` run belongs to its client: cancelled when the client leaves."""
    hub = Hub("p", retain=100, client_buffer=10)
    cancelled = asyncio.Event()

    async def run(h: Hub) -> None:
        publish(h, "r9", ["starting"])
        try:
            await asyncio.Event().wait()
        finally:
            cancelled.set()

    client = Client()
    stream = NDJSONStream(hub, options(since=None, run=run))
    task = asyncio.create_task(stream({"type": "http"}, client.receive, client.send))
    while not client.body:
        await asyncio.sleep(0.01)
    client.gone.set()
    await bounded(task)
    assert cancelled.is_set()
    assert [e["run"] for e in client.envelopes()] == ["r9"]


async def test_silence_sends_heartbeats() -> None:
    """After ``heartbeat`` seconds without an envelope, a heartbeat notice is written."""
    hub = Hub("p", retain=100, client_buffer=10)
    publish(hub, "r1", ["starting"])
    client = Client()
    stream = NDJSONStream(hub, options(heartbeat=0.02))
    task = asyncio.create_task(stream({"type": "http"}, client.receive, client.send))
    while b"heartbeat" not in client.body:
        await asyncio.sleep(0.01)
    publish(hub, "r1", ["processing", "complete"], start=2)
    hub.end_run()
    await bounded(task)
    statuses = [e["status"] for e in client.envelopes()]
    assert statuses[0] == "starting" and statuses[-2:] == ["processing", "complete"]
    assert set(statuses[1:-2]) == {"heartbeat"}


async def test_client_that_stops_reading_is_cut_after_the_send_timeout() -> None:
    """A send the client never takes is cut after ``send_timeout``: the pipeline is free."""
    hub = Hub("p", retain=100, client_buffer=10)
    publish(hub, "r1", ["starting"])
    stuck = asyncio.Event()

    async def frozen_send(message: Message) -> None:
        if message["type"] == "http.response.body":
            stuck.set()
            await asyncio.Event().wait()

    client = Client()
    stream = NDJSONStream(hub, options(send_timeout=0.05))
    await bounded(stream({"type": "http"}, client.receive, frozen_send))
    assert stuck.is_set() and stream.cut == "send_timeout" and hub.clients == 0


async def test_gzip_writes_decompress_to_the_lines_as_they_come() -> None:
    """With gzip each write is flushed: every body piece decompresses on its own."""
    hub = Hub("p", retain=100, client_buffer=10)
    finished(hub, n=2)
    client = Client()
    await bounded(
        NDJSONStream(hub, options(gzip=True))({"type": "http"}, client.receive, client.send)
    )
    assert dict(client.sent[0]["headers"])[b"content-encoding"] == b"gzip"
    z = zlib.decompressobj(16 + zlib.MAX_WBITS)
    first = next(m["body"] for m in client.sent[1:] if m["body"])
    assert z.decompress(first).endswith(b"\n")  # readable before the stream ends
    text = zlib.decompress(client.body, 16 + zlib.MAX_WBITS)
    assert [orjson.loads(line)["seq"] for line in text.splitlines()] == [1, 2, 3, 4]


async def test_sse_frames_carry_resume_ids() -> None:
    """SSE: a ``retry:`` hint, then one frame per envelope with ``id: RUN:SEQ``."""
    hub = Hub("p", retain=100, client_buffer=10)
    finished(hub, n=1)
    client = Client()
    await bounded(SSEStream(hub, options())({"type": "http"}, client.receive, client.send))
    frames = client.body.split(b"\n\n")
    assert frames[0].startswith(b"retry: ")
    ids = [line for frame in frames for line in frame.split(b"\n") if line.startswith(b"id: ")]
    assert ids == [b"id: r1:1", b"id: r1:2", b"id: r1:3"]
    datas = [line[6:] for frame in frames for line in frame.split(b"\n") if line[:6] == b"data: "]
    assert [orjson.loads(d)["status"] for d in datas] == ["starting", "processing", "complete"]


async def test_websocket_sends_one_text_frame_per_envelope_then_closes() -> None:
    """WebSocket: accept, one text message per envelope (no newline), close 1000."""
    hub = Hub("p", retain=100, client_buffer=10)
    finished(hub, n=1)
    client = Client(first={"type": "websocket.connect"})
    stream = WebSocketStream(hub, options())
    await bounded(stream({"type": "websocket"}, client.receive, client.send))
    kinds = [m["type"] for m in client.sent]
    assert kinds == ["websocket.accept", *["websocket.send"] * 3, "websocket.close"]
    texts = [m["text"] for m in client.sent if m["type"] == "websocket.send"]
    assert [orjson.loads(t)["seq"] for t in texts] == [1, 2, 3]
    assert client.sent[-1]["code"] == 1000


async def test_websocket_that_never_connects_sends_nothing() -> None:
    """A socket that disconnects before ``websocket.connect`` gets nothing."""
    hub = Hub("p", retain=100, client_buffer=10)
    finished(hub)
    client = Client(first={"type": "websocket.disconnect"})
    await bounded(
        WebSocketStream(hub, options())({"type": "websocket"}, client.receive, client.send)
    )
    assert client.sent == [] and hub.clients == 0


class HeldConnection:
    """A connection whose reset has not landed yet (the `Connection` of protocol.py)."""

    def __init__(self) -> None:
        self.aborted = False
        self.callbacks: list[Any] = []

    def abort(self) -> None:
        self.aborted = True

    def acked(self) -> None:
        return None  # not a TCP socket we can look into: no stall checks

    def unsent(self) -> int:
        return 1

    def body_send(self, scope: Any) -> None:
        return None  # no uvicorn cycle behind it: the stream keeps the app's send

    async def settled(self, grace: float) -> bool:
        return False

    def when_closed(self, callback: Any) -> None:
        self.callbacks.append(callback)

    def close(self) -> None:
        for callback in self.callbacks:
            callback()


async def test_a_cut_client_keeps_its_slot_until_its_connection_is_gone() -> None:
    """A client whose write is stuck is cut and its connection reset, but its slot
    (``on_close``) is freed only once the connection is really closed (issue 9 item 3)."""
    hub = Hub("p", retain=100, client_buffer=10)
    publish(hub, "r1", ["starting", "processing"])
    conn, closed = HeldConnection(), []

    async def stuck(message: Message) -> None:
        if message["type"] == "http.response.body":
            await asyncio.Event().wait()  # the client never takes the body

    client = Client()
    stream = NDJSONStream(hub, options(send_timeout=0.05, on_close=lambda: closed.append(1)))
    scope = {"type": "http", "extensions": {CONNECTION: conn}}
    await bounded(stream(scope, client.receive, stuck))
    assert stream.cut == "send_timeout" and conn.aborted
    assert closed == []  # still counted: its socket is not gone yet
    conn.close()
    assert closed == [1]
