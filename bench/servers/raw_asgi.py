"""(D) Raw ASGI: the wire reference, and the same with live per-item work.

- ``GET /stream?n=N``: pre-encoded bytes (256 envelopes built once at import), one
  ``http.response.body`` per 256 envelopes. No per-item work: what uvicorn and loopback
  can carry.
- ``GET /live?n=N``: the per-item work done live, each line appended to a ``bytearray``,
  one body per 256 envelopes (a fixed count: fine for throughput, never for latency).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

import orjson

from bench.common import ENCODE_OPTS, Clock, encoded, envelope, reading, transform
from bench.servers._serve import query_int, serve

PER_SEND = 256
_clock = Clock()
LINES = [encoded(i + 1, _clock) for i in range(PER_SEND)]
BLOCK = b"".join(LINES)
HEADERS = [(b"content-type", b"application/x-ndjson")]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The ASGI app: ``/stream`` (pre-encoded) and ``/live``."""
    if scope["type"] != "http":
        return
    query = dict(parse_qsl(scope["query_string"].decode()))
    n = query_int(query, "n", 1000)
    path = scope["path"]
    if path not in ("/stream", "/live"):
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b"not found"})
        return
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    if path == "/stream":
        full, rest = divmod(n, PER_SEND)
        msg = {"type": "http.response.body", "body": BLOCK, "more_body": True}
        for _ in range(full):
            await send(msg)
        if rest:
            tail = b"".join(LINES[:rest])
            await send({"type": "http.response.body", "body": tail, "more_body": True})
    else:
        clock = Clock()
        dumps = orjson.dumps
        buf = bytearray()
        for seq in range(1, n + 1):
            buf += dumps(envelope(seq, transform(reading(seq)), clock), option=ENCODE_OPTS)
            if seq % PER_SEND == 0:
                await send({"type": "http.response.body", "body": bytes(buf), "more_body": True})
                buf = bytearray()
        if buf:
            await send({"type": "http.response.body", "body": bytes(buf), "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


if __name__ == "__main__":
    raise SystemExit(serve(app))
