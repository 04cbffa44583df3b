"""(C) Starlette ``StreamingResponse`` draining an ``asyncio.Queue`` fed by a producer task.

The response takes one item (waiting if there is none), then everything else that is
ready without waiting, and sends it as one chunk (at most ~256 KB). It never waits to
fill a batch, so at a low rate every chunk is one envelope.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

from bench.common import ENCODE_OPTS, Clock, envelope, reading, transform
from bench.servers._serve import MAX_CHUNK, Pacer, query_float, query_int, serve

QUEUE_SIZE = 1024


async def produce(queue: asyncio.Queue[bytes | None], n: int, interval: float) -> None:
    """Put N encoded envelopes, then ``None``."""
    clock = Clock()
    pacer = Pacer(interval)
    dumps = orjson.dumps
    for seq in range(1, n + 1):
        if interval:
            await pacer.wait(seq)
        line = dumps(envelope(seq, transform(reading(seq)), clock), option=ENCODE_OPTS)
        if queue.full():
            await queue.put(line)
        else:
            queue.put_nowait(line)
    await queue.put(None)


async def chunks(n: int, interval: float) -> AsyncIterator[bytes]:
    """Yield whatever is ready as one chunk until the producer is done."""
    queue: asyncio.Queue[bytes | None] = asyncio.Queue(QUEUE_SIZE)
    task = asyncio.create_task(produce(queue, n, interval))
    try:
        ended = False
        while not ended:
            first = await queue.get()
            if first is None:
                break
            buf = bytearray(first)
            while len(buf) < MAX_CHUNK:
                try:
                    item = queue.get_nowait()
                except asyncio.QueueEmpty:
                    break
                if item is None:
                    ended = True
                    break
                buf += item
            yield bytes(buf)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def stream(request: Request) -> StreamingResponse:
    """``GET /stream?n=N&interval=S``."""
    n = query_int(request.query_params, "n", 1000)
    interval = query_float(request.query_params, "interval", 0.0)
    return StreamingResponse(chunks(n, interval), media_type="application/x-ndjson")


app = Starlette(routes=[Route("/stream", stream)])

if __name__ == "__main__":
    raise SystemExit(serve(app))
