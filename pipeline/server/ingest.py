"""``POST /pipelines/{name}/ingest``: a request body becomes chunks of a running pipeline.

The body is NDJSON, one chunk a line (blank lines are skipped, ``\\r\\n`` is fine); a body
that is one JSON array is taken as its elements. A line that is not JSON becomes a
``chunk_error`` (counted in the answer), never a 400 for the whole body. The body flows
into the pipeline's `pipeline.inlet.Inlet` as it arrives, line by line, bounded by the
source's ``max_body`` bytes (``413``, on ``Content-Length`` or as soon as a streamed body
passes it) and ``max_pending`` records in the pipeline: a body whose first records do not
fit is refused whole with ``429`` and ``Retry-After``; once part of it is taken, the rest
waits for room (the server stops reading it, and TCP holds the client back). A body that
starts with ``[`` may be one JSON array: it is kept until it ends (at most ``max_body``
bytes). The answer comes once every record was delivered to every sink::

    {"accepted": N, "chunk_errors": K, "run": RUN, "first_seq": S, "last_seq": T}

A client that disconnects mid-body loses only what it did not send: the whole lines that
arrived are still delivered (nobody is left to answer). A run that ends before the body
was delivered answers ``503`` with the counts so far.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from pipeline.inlet import Inlet, InletClosed, InletFull, Receipt, Record
from pipeline.types import BadChunk

__all__ = ["RETRY_AFTER", "BodyTooLarge", "IngestRefused", "receive"]

RETRY_AFTER = 1
"""Seconds a client refused with ``429`` is told to wait (``Retry-After``)."""


class IngestRefused(Exception):
    """The request is refused; the app answers with its JSON error."""

    def __init__(
        self, status: int, kind: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.kind, self.message, self.headers = status, kind, message, headers


class BodyTooLarge(Exception):
    """The body passes ``max_body`` bytes."""


class _Lines:
    """Splits arriving bytes into records, keeping a partial last line back.

    A body whose first non-blank byte is ``[`` may be one JSON array: it is kept whole
    (at most ``max_body`` bytes) and decided on when it ends.
    """

    def __init__(self) -> None:
        self.array: bool | None = None  # None until the first non-blank byte
        self._pending = bytearray()

    def feed(self, data: bytes) -> list[Record]:
        """The records of the lines ``data`` completes."""
        if self.array is None and (head := data.lstrip()):
            self.array = head[:1] == b"["
        self._pending += data
        if self.array or b"\n" not in data:
            return []
        *lines, rest = self._pending.split(b"\n")
        self._pending = bytearray(rest)
        return _records(lines)

    def finish(self) -> list[Record]:
        """The records left when the body ended: its array's elements, or its last lines."""
        body, self._pending = self._pending, bytearray()
        if self.array:
            try:
                value = orjson.loads(body)
            except orjson.JSONDecodeError:
                value = None
            if isinstance(value, list):
                return value
        return _records(body.split(b"\n"))


def _records(lines: list[bytearray]) -> list[Record]:
    out = []
    for line in lines:
        line = line.rstrip(b"\r")
        if line.strip():
            out.append(_decode(line))
    return out


def _decode(line: bytes | bytearray) -> Record:
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        return BadChunk(line.decode("utf-8", "replace"), ValueError(f"invalid JSON: {exc}"))


class _Body:
    """One request body flowing into the inlet as its lines arrive."""

    def __init__(self, inlet: Inlet) -> None:
        self.inlet = inlet
        self.lines = _Lines()
        self.receipt: Receipt | None = None

    async def take(self, records: list[Record], *, last: bool = False) -> None:
        """Hand ``records`` on: the first ones all or none, the next ones as room frees."""
        if self.receipt is None:
            if not records and not last:
                return
            self.receipt = self.inlet.open(records)
            records = records[self.receipt.total :]
        await self.inlet.more(self.receipt, records)

    async def read(self, request: Request) -> bool:
        """Read the body to its end; return whether the client went away first.

        Raises:
            BodyTooLarge: over ``max_body`` bytes (what came before it is taken).
            InletClosed, InletFull: from `take`.
        """
        limit, size = self.inlet.max_body, 0
        try:
            async for data in request.stream():
                size += len(data)
                if size > limit:
                    msg = f"the body passes max_body={limit} bytes"
                    raise BodyTooLarge(msg)
                await self.take(self.lines.feed(data))
        except ClientDisconnect:
            return True  # whole lines only: a cut last line was not sent
        await self.take(self.lines.finish(), last=True)
        return False

    def close(self) -> None:
        if self.receipt is not None:
            self.inlet.close(self.receipt)


async def receive(request: Request, inlet: Inlet) -> Response:
    """Answer one ingest request for a pipeline whose source reads ``inlet``.

    Raises:
        IngestRefused: 409 (not running), 413 (too large), 429 (full; with ``Retry-After``).
    """
    if not inlet.accepting:
        raise IngestRefused(409, "not_running", f"pipeline `{inlet.pipeline}` is not running")
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > inlet.max_body:
        msg = f"the body is {int(length)} bytes, more than max_body={inlet.max_body}"
        raise IngestRefused(413, "body_too_large", msg, {"connection": "close"})
    body = _Body(inlet)
    try:
        gone = await body.read(request)
    except BodyTooLarge as exc:
        taken = body.receipt.total if body.receipt is not None else 0
        msg = f"{exc} ({taken} records before it were taken)" if taken else str(exc)
        raise IngestRefused(413, "body_too_large", msg, {"connection": "close"}) from None
    except InletFull as exc:
        raise IngestRefused(429, "full", str(exc), {"retry-after": str(RETRY_AFTER)}) from None
    except InletClosed as exc:
        if body.receipt is None:
            raise IngestRefused(409, "not_running", str(exc)) from None
        body.receipt.fail("the run ended before the body was delivered")
        gone = False  # answered below with the counts
    finally:
        body.close()
    receipt = body.receipt
    if gone or receipt is None:  # nobody to answer; what was taken is still delivered
        return Response(status_code=204)
    await receipt.done.wait()
    result: dict[str, Any] = receipt.result()
    if receipt.failed is not None:
        result["error"] = {"type": "run_ended", "message": receipt.failed}
        return JSONResponse(result, status_code=503)
    return JSONResponse(result)
