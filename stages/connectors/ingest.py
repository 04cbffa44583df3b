"""The ``ingest`` source: chunks posted to ``POST /pipelines/{name}/ingest``."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import aclosing

from pydantic import PositiveInt

from pipeline import BadChunk, Inlet, Message

__all__ = ["ingest"]

MAX_BODY = 10 * 1024 * 1024
"""The default ``max_body``: 10 MiB."""


async def ingest(
    *,
    max_pending: PositiveInt = 10_000,
    max_body: PositiveInt = MAX_BODY,
    inlet: Inlet | None = None,
) -> AsyncGenerator[Message | BadChunk, None]:
    r"""Take chunks posted over HTTP: each line of an NDJSON request body is one chunk.

    Under ``pipeline run --serve``, ``POST /pipelines/NAME/ingest`` with an NDJSON body
    (a JSON array is accepted too) feeds the pipeline, line by line as the body arrives;
    the answer comes once every chunk of the body was delivered to every sink:
    ``{"accepted": N, "chunk_errors": K, "run": RUN, "first_seq": S, "last_seq": T}``.
    A line that is not JSON becomes a ``chunk_error`` (counted in ``chunk_errors``). A
    body whose first lines would pass ``max_pending`` is refused whole with ``429`` and
    ``Retry-After``; the rest of a body already taken waits for room. Over ``max_body``:
    ``413``.
    The server's token applies. The run never ends by itself: it serves until shutdown.
    See docs/http.md.

    Args:
        max_pending: Chunks accepted and not yet delivered to every sink, across all
            requests; a body whose first lines do not fit is refused whole (429).
        max_body: The largest body taken, in bytes (413 beyond); 10 MiB by default.
        inlet: Bound by the server (not given in ``with:``).

    Example:
        source:
          use: ingest
          with: {max_pending: 10000}
    """
    if inlet is None:
        msg = "the `ingest` source takes chunks over HTTP: run it with `pipeline run --serve`"
        raise RuntimeError(msg)
    items = inlet.items(max_pending=max_pending, max_body=max_body)
    async with aclosing(items):
        async for item in items:
            yield item
