"""``POST /pipelines/{name}/ingest``: a request body becomes chunks of a running pipeline.

The body is NDJSON, one chunk a line (blank lines are skipped, ``\\r\\n`` is fine); a body
that is one JSON array is taken as its elements. A line that is not JSON becomes a
``chunk_error`` (counted in the answer), never a 400 for the whole body. The body is read
as it arrives, bounded by the source's ``max_body`` bytes (``413``, checked on
``Content-Length`` and while reading) and ``max_pending`` records; when it has ended, it
is handed to the pipeline's `pipeline.inlet.Inlet` whole, or refused whole with ``429``
and ``Retry-After`` when the records pending would pass ``max_pending``. The answer comes
once every record was delivered to every sink::

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

from pipeline.inlet import Inlet, InletClosed, InletFull, Record
from pipeline.log import get_logger
from pipeline.types import BadChunk

__all__ = ["RETRY_AFTER", "BodyTooLarge", "IngestRefused", "read_records", "receive"]

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
    """The body passes ``max_body`` bytes or ``max_pending`` records."""


class _Lines:
    """Splits arriving bytes into records, keeping a partial last line back."""

    def __init__(self, max_records: int) -> None:
        self.max_records = max_records
        self.records: list[Record] = []
        self.raw = bytearray()  # the whole body, kept only while it may be one JSON array
        self.array: bool | None = None  # None until the first non-blank byte
        self._pending = bytearray()

    def feed(self, data: bytes) -> None:
        if self.array is None and (head := data.lstrip()):
            self.array = head[:1] == b"["
        if self.array:
            self.raw += data
        self._pending += data
        if b"\n" in data:
            *lines, rest = self._pending.split(b"\n")
            self._pending = bytearray(rest)
            for line in lines:
                self._line(line)

    def _line(self, line: bytes | bytearray) -> None:
        line = line.rstrip(b"\r")
        if not line.strip():
            return
        if len(self.records) >= self.max_records:
            msg = f"the body has more than max_pending={self.max_records} records"
            raise BodyTooLarge(msg)
        self.records.append(_decode(line))

    def finish(self) -> list[Record]:
        """All records of a body that ended: its array's elements, or its lines."""
        if self.array:
            try:
                value = orjson.loads(self.raw)
            except orjson.JSONDecodeError:
                value = None
            if isinstance(value, list):
                if len(value) > self.max_records:
                    msg = f"the body has more than max_pending={self.max_records} records"
                    raise BodyTooLarge(msg)
                return value
        self._line(bytes(self._pending))
        self._pending.clear()
        return self.records


def _decode(line: bytes | bytearray) -> Record:
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        return BadChunk(line.decode("utf-8", "replace"), ValueError(f"invalid JSON: {exc}"))


async def read_records(request: Request, inlet: Inlet) -> tuple[list[Record], bool]:
    """Read and decode the body; return its records and whether the client went away.

    Raises:
        BodyTooLarge: over ``max_body`` bytes or ``max_pending`` records.
    """
    limit = inlet.max_body
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        msg = f"the body is {int(length)} bytes, more than max_body={limit}"
        raise BodyTooLarge(msg)
    lines = _Lines(inlet.max_pending)
    size = 0
    try:
        async for data in request.stream():
            size += len(data)
            if size > limit:
                msg = f"the body passes max_body={limit} bytes"
                raise BodyTooLarge(msg)
            lines.feed(data)
    except ClientDisconnect:
        return lines.records, True  # whole lines only: a cut last line was not sent
    return lines.finish(), False


async def receive(request: Request, inlet: Inlet) -> Response:
    """Answer one ingest request for a pipeline whose source reads ``inlet``.

    Raises:
        IngestRefused: 409 (not running), 413 (too large), 429 (full; with ``Retry-After``).
    """
    if not inlet.accepting:
        raise IngestRefused(409, "not_running", f"pipeline `{inlet.pipeline}` is not running")
    try:
        records, gone = await read_records(request, inlet)
    except BodyTooLarge as exc:
        raise IngestRefused(413, "body_too_large", str(exc), {"connection": "close"}) from None
    try:
        receipt = inlet.admit(records)
    except (InletClosed, InletFull) as exc:
        if gone:  # nobody to answer
            log = get_logger(pipeline=inlet.pipeline)
            log.warning("ingest_dropped", records=len(records), reason=str(exc))
            return Response(status_code=204)
        if isinstance(exc, InletClosed):
            raise IngestRefused(409, "not_running", str(exc)) from None
        raise IngestRefused(429, "full", str(exc), {"retry-after": str(RETRY_AFTER)}) from None
    if gone:
        return Response(status_code=204)
    await receipt.done.wait()
    body: dict[str, Any] = receipt.result()
    if receipt.failed is not None:
        body["error"] = {"type": "run_ended", "message": receipt.failed}
        return JSONResponse(body, status_code=503)
    return JSONResponse(body)
