"""(A) The Nexios streaming guide pattern: ``response.stream(gen())``, json.dumps per item.

``NexiosApp()`` with its defaults, as the guide writes it.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from nexios import NexiosApp

from bench.common import Clock, envelope, reading, transform
from bench.servers._serve import Pacer, query_float, query_int, serve

app = NexiosApp()


async def lines(n: int, interval: float) -> AsyncIterator[str]:
    """Yield N envelopes as ``json.dumps(...) + "\\n"`` strings."""
    clock = Clock()
    pacer = Pacer(interval)
    for seq in range(1, n + 1):
        if interval:
            await pacer.wait(seq)
        yield json.dumps(envelope(seq, transform(reading(seq)), clock)) + "\n"


@app.get("/stream")
async def stream(request: Any, response: Any) -> Any:
    """``GET /stream?n=N&interval=S``."""
    query = dict(request.query_params)
    n = query_int(query, "n", 1000)
    interval = query_float(query, "interval", 0.0)
    return response.stream(lines(n, interval), content_type="application/x-ndjson")


if __name__ == "__main__":
    raise SystemExit(serve(app, lifespan="auto"))
