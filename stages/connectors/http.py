"""The ``http`` source: follow another server's NDJSON or SSE stream, resuming after drops.

The reading loop, in short: connect (``since`` on the first request, then the last
``RUN:SEQ`` or SSE ``id`` delivered), parse envelopes as they arrive, and on any drop
reconnect after a jittered backoff (``backoff`` doubling to ``max_backoff``; reset once
an attempt delivered something). ``pipeline tail`` (`pipeline.client.tail`) has the same
loop, synchronous, for a terminal; stages may not import `pipeline.client`, and the
shared part is a dozen lines, so each keeps its own.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncGenerator, Iterator
from contextlib import aclosing
from typing import Annotated, Any, Literal

import httpx
import orjson
import structlog
from pydantic import AfterValidator, NonNegativeInt, PositiveFloat

from pipeline import BadChunk, Chunk
from stages.blocks import LineSplitter
from stages.connectors._common import mask_url, url_check

__all__ = ["UpstreamLagged", "follow"]

Format = Literal["ndjson", "sse", "auto"]
RETRY_STATUSES = frozenset({408, 425, 429})
NOTICES = frozenset({"heartbeat", "lagged"})
_log = structlog.get_logger("stages.http")


class UpstreamLagged(Exception):
    """The upstream server no longer had envelopes this source asked for (a gap)."""


HttpUrl = Annotated[str, AfterValidator(url_check("http[s]://host[:port]/path", "http", "https"))]
"""The URL of an upstream stream."""


class UpstreamRefused(Exception):
    """The upstream server refused the stream for good (a 4xx other than 408/425/429)."""


async def follow(
    *,
    url: HttpUrl,
    format: Format = "auto",
    since: str | int | None = "0",
    token: str | None = None,
    headers: dict[str, str] | None = None,
    envelopes: bool = False,
    until_complete: bool = False,
    max_retries: NonNegativeInt | None = None,
    backoff: PositiveFloat = 0.2,
    max_backoff: PositiveFloat = 5.0,
    connect_timeout: PositiveFloat = 5.0,
    read_timeout: PositiveFloat = 60.0,
) -> AsyncGenerator[Chunk | BadChunk, None]:
    """Follow another server's NDJSON or SSE stream, such as another ``pipeline run --serve``.

    Each upstream ``processing`` envelope's ``data`` becomes a chunk (with
    ``envelopes: true``, every upstream envelope is a chunk, whole). A stream of plain
    JSON values (not envelopes) gives each value as a chunk. On a drop (network, upstream
    restart, a 5xx, 408, 425 or 429) the source reconnects after a jittered backoff and
    resumes after the last ``RUN:SEQ`` (NDJSON ``since=``) or SSE ``id`` (``Last-Event-ID``)
    it delivered: no gap and no duplicate within an upstream run. When the upstream run
    it followed is gone (the server restarted), it gets the current run from its first
    retained envelope. An upstream ``lagged`` notice that says envelopes were not retained
    becomes a ``chunk_error`` (type ``UpstreamLagged``, the notice as its ``chunk``) and a
    warning log line; a ``lagged`` for a slow client only makes it reconnect. Another 4xx
    (401, 404, ...) ends the run with ``error``. The token and ``headers`` are never
    logged; a password in ``url`` is masked.

    Args:
        url: The stream: ``http://host:port/pipelines/NAME`` (its ``/stream``, or
            ``/events`` with ``format: sse``) or any NDJSON or SSE URL.
        format: ``ndjson``, ``sse``, or ``auto`` (by the answer's ``Content-Type``).
        since: What the first request asks for: ``0`` (the default) everything the
            upstream retained, ``RUN:SEQ`` after that envelope, ``null`` only what comes
            from now on.
        token: Sent as ``Authorization: Bearer``.
        headers: More request headers (never logged).
        envelopes: Pass whole upstream envelopes instead of their ``data``.
        until_complete: End after the ``complete`` envelope of an upstream run
            (default: follow for ever, across upstream restarts).
        max_retries: Failed attempts in a row before the run ends with ``error``;
            ``null`` retries for ever (at most one attempt every ``max_backoff`` s).
        backoff: Seconds before the first retry, doubled after each failed attempt.
        max_backoff: The longest wait between two attempts, in seconds.
        connect_timeout: Seconds to connect.
        read_timeout: Seconds without a byte before the connection counts as dropped
            (a ``pipeline`` server sends heartbeats well within it).

    Example:
        source:
          use: http
          with: {url: "http://10.0.0.5:8000/pipelines/sensors", token: "${UPSTREAM_TOKEN}"}
    """
    reader = _Reader(url, format, None if since is None else str(since), envelopes)
    timeout = httpx.Timeout(connect_timeout, read=read_timeout)
    sent = {**(headers or {})}
    if token:
        sent["Authorization"] = f"Bearer {token}"
    failures = 0
    async with httpx.AsyncClient(timeout=timeout, headers=sent, follow_redirects=True) as client:
        while True:
            async with aclosing(reader.attempt(client)) as attempt:
                async for item in attempt:
                    yield item
            if until_complete and reader.completed:
                return
            failures = 0 if reader.progress else failures + 1
            if max_retries is not None and failures > max_retries:
                msg = f"giving up on `{reader.shown}` after {failures} attempts: {reader.why}"
                raise ConnectionError(msg)
            delay = min(max_backoff, backoff * 2 ** max(0, failures - 1))
            delay *= random.uniform(0.5, 1.0)
            _log.warning(
                "http_source_retrying",
                url=reader.shown,
                reason=reader.why,
                since=reader.token,
                delay_s=round(delay, 3),
            )
            await asyncio.sleep(delay)


class _Reader:
    """One follower's resume state and one attempt at a time."""

    def __init__(self, url: str, fmt: Format, since: str | None, envelopes: bool) -> None:
        self.url = _stream_url(url, fmt)
        self.shown = mask_url(str(httpx.URL(self.url).copy_with(query=None)))
        self.format = fmt
        self.token = since
        self.sse_id: str | None = None
        self.envelopes = envelopes
        self.last: tuple[str, int] | None = None  # (run, seq) last delivered
        self.completed = False
        self.progress = 0  # values taken in by the current attempt
        self.why = ""

    def request(self) -> tuple[httpx.URL, dict[str, str]]:
        url = httpx.URL(self.url)
        if self.token is not None:
            url = url.copy_set_param("since", self.token)
        extra = {"Last-Event-ID": self.sse_id} if self.sse_id else {}
        accept = {
            "ndjson": "application/x-ndjson",
            "sse": "text/event-stream",
            "auto": "application/x-ndjson, text/event-stream",
        }
        return url, {"Accept": accept[self.format], **extra}

    async def attempt(self, client: httpx.AsyncClient) -> AsyncGenerator[Chunk | BadChunk, None]:
        """Open the stream once and yield what it delivers; ``why`` says how it ended."""
        self.progress, self.completed = 0, False
        url, headers = self.request()
        try:
            async with client.stream("GET", url, headers=headers) as response:
                if response.status_code == 204:
                    self.why = "HTTP 204: nothing newer upstream"
                    return
                if response.status_code >= 400:
                    self.why = await _refused(response, self.shown)
                    return
                sse = _is_sse(response, self.format)
                parse = _SSE() if sse else _Lines()
                async for raw in response.aiter_bytes():
                    for event_id, value in parse.feed(raw):
                        for item in self.handle(value, event_id):
                            yield item
                        if self.completed:
                            self.why = "complete"
                            return
                self.why = "the stream ended"
        except httpx.TransportError as exc:
            self.why = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__

    def handle(self, value: Any, event_id: str | None) -> Iterator[Chunk | BadChunk]:
        """What one upstream value gives: a chunk, a `BadChunk` for a gap, or nothing."""
        self.progress += 1
        if not (isinstance(value, dict) and isinstance(value.get("status"), str)):
            if event_id is not None:
                self.sse_id = event_id
            yield value  # a plain JSON stream: each value is a chunk
            return
        status = value["status"]
        if status in NOTICES:
            self.progress -= status == "heartbeat"  # a heartbeat is no progress
            yield from self.notice(value)
            return
        run, seq = value.get("run"), value.get("seq")
        if isinstance(run, str) and isinstance(seq, int):
            if self.last is not None and self.last[0] == run and seq <= self.last[1]:
                return  # already delivered (a server that replays more than asked)
            self.last, self.token = (run, seq), f"{run}:{seq}"
        if event_id is not None:
            self.sse_id = event_id
        if status == "complete":
            self.completed = True
        if self.envelopes:
            yield value
        elif status == "processing":
            yield value.get("data")

    def notice(self, value: dict[str, Any]) -> Iterator[BadChunk]:
        if value["status"] != "lagged":
            return
        missed = value.get("missed")
        if value.get("reason") == "slow_client":
            _log.warning("upstream_dropped_us", url=self.shown, missed=missed)
            return
        if value.get("reason") == "evicted":  # idle at a full upstream: nothing missed
            _log.info("upstream_evicted_us", url=self.shown)
            return
        _log.warning("upstream_lagged", url=self.shown, missed=missed)
        msg = f"`{self.shown}` no longer had {missed} envelopes asked for (not retained)"
        yield BadChunk(value, UpstreamLagged(msg))


def _stream_url(url: str, fmt: Format) -> str:
    """``.../pipelines/NAME`` means its ``/stream`` (``/events`` for SSE)."""
    parsed = httpx.URL(url)
    path = parsed.path.rstrip("/")
    parent = path.rpartition("/")[0]
    if parent.endswith("/pipelines"):
        path += "/events" if fmt == "sse" else "/stream"
    return str(parsed.copy_with(path=path))


def _is_sse(response: httpx.Response, fmt: Format) -> bool:
    if fmt != "auto":
        return fmt == "sse"
    kind: str = response.headers.get("content-type", "")
    return kind.split(";")[0].strip().lower() == "text/event-stream"


async def _refused(response: httpx.Response, shown: str) -> str:
    """A 4xx/5xx answer: the reason to retry, or `UpstreamRefused` for good."""
    body = b""
    async for part in response.aiter_bytes():
        body += part
        if len(body) > 4096:
            break
    try:
        detail = orjson.loads(body)["error"]["message"]
    except Exception:  # not our JSON error: show the start of the text
        detail = body.decode("utf-8", "replace").strip()[:200] or response.reason_phrase
    code = response.status_code
    if code < 500 and code not in RETRY_STATUSES:
        msg = f"`{shown}` answered HTTP {code}: {detail}"
        raise UpstreamRefused(msg)
    return f"HTTP {code}: {detail}"


class _Lines:
    """NDJSON: each whole line is one JSON value."""

    def __init__(self) -> None:
        self._split = LineSplitter()

    def feed(self, data: bytes) -> Iterator[tuple[str | None, Any]]:
        for line in self._split.feed(data):
            if line.strip():
                yield None, _json(bytes(line))


class _SSE:
    """Server-Sent Events: ``id:`` and ``data:`` fields, dispatched at a blank line."""

    def __init__(self) -> None:
        self._split = LineSplitter()
        self._data: list[bytes] = []
        self._id: str | None = None

    def feed(self, data: bytes) -> Iterator[tuple[str | None, Any]]:
        for raw in self._split.feed(data):
            line = bytes(raw).rstrip(b"\r")
            if not line:
                if self._data:
                    yield self._id, _json(b"\n".join(self._data))
                self._data, self._id = [], None
                continue
            field, _, value = line.partition(b":")
            value = value.removeprefix(b" ")
            if field == b"data":
                self._data.append(value)
            elif field == b"id":
                self._id = value.decode("utf-8", "replace")


def _json(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw.decode("utf-8", "replace")  # not JSON: the text itself
