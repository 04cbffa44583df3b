"""(B) Starlette ``StreamingResponse`` yielding one orjson line per item."""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

from bench.common import ENCODE_OPTS, Clock, envelope, reading, transform
from bench.servers._serve import Pacer, query_float, query_int, serve


async def lines(n: int, interval: float) -> AsyncIterator[bytes]:
    """Yield N envelopes, one orjson line each."""
    clock = Clock()
    pacer = Pacer(interval)
    dumps = orjson.dumps
    for seq in range(1, n + 1):
        if interval:
            await pacer.wait(seq)
        yield dumps(envelope(seq, transform(reading(seq)), clock), option=ENCODE_OPTS)


async def stream(request: Request) -> StreamingResponse:
    """``GET /stream?n=N&interval=S``."""
    n = query_int(request.query_params, "n", 1000)
    interval = query_float(request.query_params, "interval", 0.0)
    return StreamingResponse(lines(n, interval), media_type="application/x-ndjson")


app = Starlette(routes=[Route("/stream", stream)])

if __name__ == "__main__":
    raise SystemExit(serve(app))
