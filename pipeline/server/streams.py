"""Stream bodies for the HTTP server: NDJSON (here), SSE and WebSocket (`framings`),
written straight to ASGI.

Each stream is a small ASGI callable, not a ``StreamingResponse`` behind middleware, so:

- **one ``send`` per ready batch.** The hub's `Subscription` already coalesces whatever
  is ready into one batch; a lone envelope goes out at once, a backlog in one piece;
- **no task switch for a caught-up client** (plain NDJSON over uvicorn's HTTP/1.1): its
  live batch is written straight to the transport from the hub's one callback per
  publish batch (`Subscription.write_directly`), when nothing is buffered for it; else
  (a backlog, a notice, a heartbeat, a full socket, the end) its pump task writes it;
- **a disconnect is noticed at once.** The body is pumped by one task while another
  waits for ``http.disconnect``; whichever ends first cancels the other, and the
  subscription (and, for ``trigger: request``, the run) is closed before we return;
- **heartbeats** after ``heartbeat`` seconds of silence, and **write deadlines**, from one
  timer per stream (the watchdog, re-armed only when it fires, at most every
  ``min(heartbeat, send_timeout)`` seconds): no timer is made per batch or per write. A
  heartbeat is due: the watchdog nudges the subscription, whose waiting read returns an
  empty batch;
- **gzip without holding back:** each write is compressed and ``Z_SYNC_FLUSH``-ed;
- **a client that does not read is cut:** a write that has not completed after
  ``send_timeout`` seconds (or once the hub dropped the client for lagging) cancels the
  pump and the connection is closed; it never holds envelopes in our memory. So is a
  client that has acknowledged nothing for `STALL_BEATS` heartbeats (at least
  `STALL_MIN` s) while bytes were waiting for it (``stalled``): its window stays
  shut, whatever the pipeline's pace.
- **an idle stream can be evicted:** `Stream.evict` (called by the server when it is
  full, see `pipeline.server.state.ServerState.open_stream`) ends the stream with a
  ``lagged(reason=evicted)`` notice carrying the ``resume`` token (for SSE also as the
  event ``id``, so ``EventSource`` resumes from it); ``StreamOptions.active_at`` is when
  the stream last carried data (heartbeats do not count).

Shutdown and ends of runs need nothing special here: when the hub ends a subscription
(after ``complete``, or at `pipeline.hub.hub.Hub.close`), the body ends cleanly.
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from collections.abc import Callable, Coroutine
from contextvars import ContextVar
from typing import Any

from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from pipeline.envelope import encode, heartbeat, lagged
from pipeline.hub.hub import Hub, Subscription
from pipeline.log import get_logger
from pipeline.server.protocol import CONNECTION, Connection

__all__ = [
    "SSE_RETRY_MS",
    "JSONLStream",
    "NDJSONStream",
    "Stream",
    "StreamOptions",
    "install_cut_filter",
]

GZIP_LEVEL = 5
DROP_GRACE = 1.0
"""Seconds a dropped (lagging) client gets to take its last ``lagged`` notice."""
SSE_RETRY_MS = 2000
STALL_BEATS = 2
"""Heartbeat intervals a client may take nothing while bytes wait for it; then it is cut."""
STALL_MIN = 5.0
"""... but at least this many seconds (a tiny heartbeat must not cut a busy reader)."""

_CUT: ContextVar[bool] = ContextVar("pipeline_stream_cut", default=False)
_INCOMPLETE = "ASGI callable returned without completing response."


class _CutFilter(logging.Filter):
    """Hide uvicorn's 'without completing response' error for streams we cut on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (_CUT.get() and record.msg == _INCOMPLETE)


_cut_filter = _CutFilter()


def install_cut_filter() -> None:
    """Attach the filter for deliberately cut streams to uvicorn's error logger."""
    logging.getLogger("uvicorn.error").addFilter(_cut_filter)


class StreamOptions:
    """What one stream needs besides its hub: its settings and its lifecycle hooks."""

    __slots__ = (
        "active_at",
        "evict",
        "gzip",
        "heartbeat",
        "on_close",
        "run",
        "send_timeout",
        "since",
    )

    def __init__(
        self,
        *,
        since: str | None,
        heartbeat: float,
        send_timeout: float,
        gzip: bool = False,
        run: Callable[[Hub], Coroutine[Any, Any, object]] | None = None,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self.since = since
        self.heartbeat = heartbeat
        self.send_timeout = send_timeout
        self.gzip = gzip
        self.run = run
        self.on_close = on_close
        self.active_at = 0.0
        """Loop time the stream last carried data (or opened): how long it has been idle."""
        self.evict: Callable[[], None] | None = None
        """Set while the stream serves: end it with a ``lagged(reason=evicted)`` notice."""


class Stream(Response):
    """Shared machinery: subscribe, start the run, pump vs disconnect, cut stuck writes."""

    media_type = "application/x-ndjson"
    websocket = False

    def __init__(self, hub: Hub, options: StreamOptions) -> None:
        self.hub = hub
        self.opts = options
        self.status_code = 200
        self.background = None
        self._limit = options.send_timeout
        self._pump_task: asyncio.Task[None] | None = None
        self._dropped = False
        self.conn: Connection | None = None
        self._sub: Subscription | None = None
        self._loop: asyncio.AbstractEventLoop  # set when called
        self._timer: asyncio.TimerHandle | None = None  # the watchdog
        self._deadline: float | None = None  # when the write under way is cut
        self._reason = "send_timeout"  # ... and why
        self._last_write = 0.0
        self._stall_timer: asyncio.TimerHandle | None = None
        self._writer: Callable[[bytes | memoryview], bool] | None = None
        self.evicted = False
        self.cut: str | None = None
        headers = {"cache-control": "no-cache", "x-accel-buffering": "no"}
        if options.gzip:
            headers |= {"content-encoding": "gzip", "vary": "Accept-Encoding"}
            self._z: Any = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        self.init_headers(headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.conn = scope.get("extensions", {}).get(CONNECTION)
        self._loop = asyncio.get_running_loop()
        try:
            sub = self.hub.subscribe(self.opts.since, on_drop=self._on_drop)
            async with sub:
                run: asyncio.Task[object] | None = None
                if self.opts.run is not None and scope.get("method") != "HEAD":
                    run = asyncio.get_running_loop().create_task(self.opts.run(self.hub))
                try:
                    await self._serve(scope, receive, send, sub)
                finally:
                    if run is not None:
                        run.cancel()
                        await asyncio.gather(run, return_exceptions=True)
        finally:
            self._release()
        if self.cut is not None:
            _CUT.set(True)
            get_logger(pipeline=self.hub.name).warning("client_cut", reason=self.cut)

    def _release(self) -> None:
        """Free the stream's slot; a client we gave up on keeps it until its socket is gone.

        A cut client's connection is reset at once (its buffered bytes are dropped), so
        neither its socket nor the kernel's buffers outlive the stream.
        """
        on_close, conn = self.opts.on_close, self.conn
        if conn is not None and self.cut is not None:
            conn.abort()
        if on_close is None:
            return
        if conn is not None and (self.cut is not None or self._dropped):
            conn.when_closed(on_close)
        else:
            on_close()

    async def _serve(self, scope: Scope, receive: Receive, send: Send, sub: Subscription) -> None:
        if not await self._start(scope, receive, send):
            return
        loop = self._loop
        self._sub = sub
        if self.conn is not None and not self.websocket:  # the start went through the app
            body_send = self.conn.body_send(scope)
            if body_send is not None:  # uvicorn's: a plain NDJSON body may skip the task
                send = body_send
                if type(self)._pump is Stream._pump and not self.opts.gzip:
                    self._writer = self.conn.body_writer(scope)
                    sub.write_directly(self._write_now if self._writer else None)
        pump = self._pump_task = loop.create_task(self._pump(sub, send))
        watch = loop.create_task(self._watch(receive))
        self._check_progress(None, loop.time())
        self._arm(loop.time() + min(self.opts.heartbeat, self._limit))
        self.opts.active_at, self.opts.evict = loop.time(), self.evict
        try:
            await asyncio.wait((pump, watch), return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.opts.evict = None
            for timer in (self._stall_timer, self._timer):
                if timer is not None:
                    timer.cancel()
            for task in (pump, watch):
                task.cancel()
            await asyncio.gather(pump, watch, return_exceptions=True)

    def _arm(self, when: float) -> None:
        """(Re)schedule the watchdog at loop time ``when``."""
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_at(when, self._watchdog)

    def _watchdog(self) -> None:
        """Cut a write past its deadline; nudge the subscription when a heartbeat is due.

        It fires again before any write that starts from now on can pass its deadline
        (within ``send_timeout``), and when the next heartbeat would be due.
        """
        self._timer = None
        now, deadline = self._loop.time(), self._deadline
        if deadline is not None:  # a write is under way
            if now >= deadline:
                self._cut_now(self._reason)
                return
            self._arm(deadline)
            return
        beat = self.opts.heartbeat
        if now - self._last_write >= beat and self._sub is not None:
            self._sub.nudge()
            self._last_write = now  # the heartbeat's write follows
        self._arm(min(self._last_write + beat, now + self._limit))

    def _check_progress(self, last: int | None, since: float) -> None:
        """Every heartbeat: cut a client that has acknowledged nothing for `stall_after`
        seconds while bytes were waiting for it (its receive window stays shut)."""
        conn = self.conn
        acked = None if conn is None else conn.acked()
        if acked is None or self.cut is not None or self._dropped:
            return  # not a TCP connection we can look into (WebSocket, tests), or over,
            # or dropped for lagging: that has its own bounds (`DROP_GRACE`)
        assert conn is not None
        loop = asyncio.get_running_loop()
        if acked != last or not conn.unsent():
            since = loop.time()  # it took something, or nothing waits for it
        elif loop.time() - since >= self.stall_after:
            self._cut_now("stalled")
            return
        self._stall_timer = loop.call_later(self.opts.heartbeat, self._check_progress, acked, since)

    @property
    def stall_after(self) -> float:
        """Seconds a client may take nothing while bytes wait for it: `STALL_BEATS`
        heartbeats, at least `STALL_MIN`."""
        return max(STALL_BEATS * self.opts.heartbeat, STALL_MIN)

    async def _start(self, scope: Scope, receive: Receive, send: Send) -> bool:
        """Send the response head; return whether a body follows (not for HEAD)."""
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        if scope.get("method") == "HEAD":
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return False
        return True

    async def _watch(self, receive: Receive) -> None:
        """Return when the client is gone."""
        while (await receive())["type"] not in ("http.disconnect", "websocket.disconnect"):
            pass

    def _on_drop(self) -> None:
        """The hub lapped this client: a write stuck on it is cut, the next ones hurry;
        the connection closes after the ``lagged`` notice (reset if not gone in time)."""
        self._limit = min(self._limit, DROP_GRACE)
        self._dropped = True
        if self._deadline is not None:  # the write under way gets DROP_GRACE from now
            self._deadline = min(self._deadline, self._loop.time() + DROP_GRACE)
            self._reason = "lagging"
            self._arm(self._deadline)

    def evict(self) -> None:
        """End the stream now with a ``lagged(reason=evicted)`` notice (idempotent); one
        that has not taken it within `DROP_GRACE` is cut and reset."""
        if self.evicted or self._sub is None:
            return
        self.evicted = True
        self.opts.evict = None
        idle = round(self._loop.time() - self.opts.active_at, 1)
        get_logger(pipeline=self.hub.name).info("client_evicted", idle_s=idle)
        self._sub.close()
        self._loop.call_later(DROP_GRACE, self._cut_now, "evicted")

    def _cut_now(self, reason: str) -> None:
        if self.cut is None and self._pump_task is not None and not self._pump_task.done():
            self.cut = reason
            self._pump_task.cancel()

    async def _send(self, send: Send, message: Message) -> None:
        """One ASGI send, cut (by the watchdog) if the client has not taken it within the
        limit."""
        now = self._last_write = self._loop.time()
        self._deadline, self._reason = now + self._limit, "send_timeout"
        try:
            await send(message)
        finally:
            self._deadline = None

    def _write_now(self, batch: bytes | memoryview) -> bool:
        """A caught-up client's batch written straight from the hub's callback (no task
        switch), unless a write is under way or the transport is not free: the pump's
        task takes it then."""
        if self._deadline is not None or self.cut is not None or self._writer is None:
            return False
        if not self._writer(batch):
            return False
        self._last_write = self.opts.active_at = self._loop.time()
        return True

    async def _write(self, send: Send, data: bytes) -> None:
        if self.opts.gzip:
            data = self._z.compress(data) + self._z.flush(zlib.Z_SYNC_FLUSH)
        await self._send(send, {"type": "http.response.body", "body": data, "more_body": True})

    async def _end(self, send: Send) -> None:
        tail = self._z.flush(zlib.Z_FINISH) if self.opts.gzip else b""
        await self._send(send, {"type": "http.response.body", "body": tail, "more_body": False})

    async def _pump(self, sub: Subscription, send: Send) -> None:
        gzip = self.opts.gzip
        async for batch in sub:  # empty: a heartbeat is due (`_watchdog`)
            if not batch:
                await self._write(send, self._heartbeat())
                continue
            self.opts.active_at = self._loop.time()
            if gzip:
                await self._write(send, batch)
            else:  # `_write`, inlined
                message = {"type": "http.response.body", "body": batch, "more_body": True}
                await self._send(send, message)
        if sub.dropped or self.evicted:
            await self._write(send, self._lagged_line(sub)[0])
            if sub.dropped and not await self._settled():
                return
        await self._end(send)

    async def _settled(self) -> bool:
        """Whether a dropped client took what it was sent within `DROP_GRACE`; if not, the
        stream is cut (the connection is reset, freeing its socket and kernel buffers)."""
        if self.conn is None or await self.conn.settled(DROP_GRACE):
            return True
        self.cut = "lagging"
        return False

    def _heartbeat(self) -> bytes:
        return encode(heartbeat(self.hub.name))

    def _lagged_line(self, sub: Subscription) -> tuple[bytes, str | None]:
        """The notice a dropped or evicted client gets last, and where to resume from."""
        hub, last = self.hub, sub.last
        if not sub.dropped:  # evicted while idle: it has everything up to the last seq
            if last is None and hub.run is not None and hub.last_seq:
                last = f"{hub.run}:{hub.last_seq}"
            return encode(lagged(hub.name, hub.run, 0, "evicted", resume=last)), last
        seen = int(last.rpartition(":")[2]) if last and last.startswith(f"{hub.run}:") else 0
        missed = max(hub.last_seq - seen, 0)
        return encode(lagged(hub.name, hub.run, missed, "slow_client", resume=last)), last


class NDJSONStream(Stream):
    """``application/x-ndjson``: the encoded lines as they are, one write per batch."""


class JSONLStream(NDJSONStream):
    """The same stream, labelled ``application/jsonl`` for clients that ask for that."""

    media_type = "application/jsonl"
