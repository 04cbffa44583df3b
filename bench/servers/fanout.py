"""Fan-out baseline: one source broadcast to K clients through per-client bounded queues.

``GET /fanout?n=N&clients=K&run=ID``: the K-th request with the same ``run`` starts one
source of N envelopes. Each envelope is built and encoded once (right-sized with
``memoryview(...).tobytes()``, since K queues hold it) and put into every client's
``asyncio.Queue(1024)``; the source awaits a full queue (backpressure, nothing lost).
Each response drains its queue coalesced, like (C). A client that goes away is
unsubscribed so the source never waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from bench.common import ENCODE_OPTS, Clock, envelope, reading, transform
from bench.servers._serve import MAX_CHUNK, query_int, serve

QUEUE_SIZE = 1024


class Subscriber:
    """One client's bounded queue."""

    __slots__ = ("closed", "queue")

    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue(QUEUE_SIZE)
        self.closed = False


class Broadcast:
    """One source, started once ``clients`` subscribers have joined."""

    def __init__(self, n: int, clients: int) -> None:
        self.n = n
        self.clients = clients
        self.subs: list[Subscriber] = []
        self.task: asyncio.Task[None] | None = None

    def subscribe(self) -> Subscriber:
        """Join; the last expected client starts the source."""
        sub = Subscriber()
        self.subs.append(sub)
        if len(self.subs) == self.clients:
            self.task = asyncio.create_task(self.run())
        return sub

    async def run(self) -> None:
        """Produce N envelopes into every open queue, then ``None``."""
        clock = Clock()
        dumps = orjson.dumps
        subs = tuple(self.subs)
        for seq in range(1, self.n + 1):
            raw = dumps(envelope(seq, transform(reading(seq)), clock), option=ENCODE_OPTS)
            line = memoryview(raw).tobytes()
            for sub in subs:
                if sub.closed:
                    continue
                if sub.queue.full():
                    await sub.queue.put(line)
                else:
                    sub.queue.put_nowait(line)
        for sub in subs:
            if not sub.closed:
                await sub.queue.put(None)


RUNS: dict[str, Broadcast] = {}


async def chunks(run: str, bc: Broadcast, sub: Subscriber) -> AsyncIterator[bytes]:
    """Drain one subscriber's queue, coalesced."""
    try:
        ended = False
        while not ended:
            first = await sub.queue.get()
            if first is None:
                break
            buf = bytearray(first)
            while len(buf) < MAX_CHUNK:
                try:
                    item = sub.queue.get_nowait()
                except asyncio.QueueEmpty:
                    break
                if item is None:
                    ended = True
                    break
                buf += item
            yield bytes(buf)
    finally:
        sub.closed = True
        while not sub.queue.empty():
            sub.queue.get_nowait()
        if all(s.closed for s in bc.subs):
            RUNS.pop(run, None)
            if bc.task is not None and not bc.task.done():
                bc.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await bc.task


async def fanout(request: Request) -> Response:
    """``GET /fanout?n=N&clients=K&run=ID``."""
    n = query_int(request.query_params, "n", 1000)
    clients = query_int(request.query_params, "clients", 1)
    run = request.query_params.get("run", "default")
    bc = RUNS.get(run)
    if bc is None:
        bc = RUNS[run] = Broadcast(n, clients)
    if len(bc.subs) >= bc.clients:
        return PlainTextResponse("run is full", status_code=409)
    sub = bc.subscribe()
    return StreamingResponse(chunks(run, bc, sub), media_type="application/x-ndjson")


app = Starlette(routes=[Route("/fanout", fanout)])

if __name__ == "__main__":
    raise SystemExit(serve(app))
