"""Stages of the access-log example: parse Combined Log Format and count statuses.

The built-in ``file`` source reads ``access.log`` line by line; `parse_line` turns
each line into an event (a damaged line becomes a ``chunk_error``), then either
`per_minute_status` counts the status classes of each minute, or `only_errors` keeps
the failed requests. The flow::

    file -> parse_line -> per_minute_status        (pipeline access_logs)
    file -> parse_line -> only_errors              (pipeline access_events)

Example:
    >>> line = ('203.0.113.9 - - [12/Mar/2024:14:00:01 +0100] "GET / HTTP/1.1" 200 512 '
    ...         '"-" "curl/8.5.0"')
    >>> event = parse_line(line)
    >>> event["time"], event["status"], event["referrer"]
    ('2024-03-12T13:00:01Z', 200, None)
"""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator, AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from pipeline import Chunk, stream_transform

__all__ = ["LINE", "only_errors", "parse_line", "parse_time", "per_minute_status"]

LINE = re.compile(
    r"(?P<ip>\S+) \S+ (?P<user>\S+) \[(?P<time>[^\]]+)\] "
    r'"(?P<method>[A-Z]+) (?P<path>\S+) (?P<protocol>HTTP/[0-9.]+)" '
    r'(?P<status>\d{3}) (?P<bytes>\d+|-) "(?P<referrer>[^"]*)" "(?P<agent>[^"]*)"'
)
"""One Combined Log Format line, matched whole (``LINE.fullmatch``)."""

_TIME = re.compile(
    r"(?P<day>\d{2})/(?P<month>[A-Z][a-z]{2})/(?P<year>\d{4}):"
    r"(?P<hour>\d{2}):(?P<minute>\d{2}):(?P<second>\d{2}) (?P<sign>[+-])(?P<hh>\d{2})(?P<mm>\d{2})"
)
_MONTHS = {
    m: i
    for i, m in enumerate(
        ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"),
        start=1,
    )
}
_CLASSES = ("2xx", "3xx", "4xx", "5xx")


def parse_time(text: str) -> datetime:
    """Parse a log timestamp such as ``12/Mar/2024:14:00:01 +0100`` (locale-independent).

    Raises:
        ValueError: ``text`` is not such a timestamp, or not a real date and time.

    Example:
        >>> parse_time("12/Mar/2024:14:00:01 +0100").isoformat()
        '2024-03-12T14:00:01+01:00'
    """
    m = _TIME.fullmatch(text)
    if m is None or m["month"] not in _MONTHS:
        msg = f"bad timestamp {text!r}; expected like `12/Mar/2024:14:00:01 +0100`"
        raise ValueError(msg)
    offset = timedelta(hours=int(m["hh"]), minutes=int(m["mm"]))
    zone = timezone(offset if m["sign"] == "+" else -offset)
    return datetime(
        int(m["year"]),
        _MONTHS[m["month"]],
        int(m["day"]),
        int(m["hour"]),
        int(m["minute"]),
        int(m["second"]),
        tzinfo=zone,
    )


def parse_line(chunk: Chunk) -> Chunk:
    """Parse one access-log line into an event.

    Args:
        chunk: One line of text (from the ``file`` source with ``format: lines``).

    Returns:
        ``{"ip", "user", "time", "method", "path", "status", "bytes", "referrer",
        "agent"}`` with ``time`` in RFC 3339 UTC, ``status`` and ``bytes`` as ints
        (``-`` bytes is ``0``), and ``-`` user and referrer as ``null``.

    Raises:
        ValueError: The line is not in Combined Log Format (cut short, run together
            with another line, noise) or its timestamp is not a real one.

    Example:
        transforms:
          - use: examples.access_logs.stages:parse_line
    """
    if not isinstance(chunk, str):
        msg = f"expected a line of text, got `{type(chunk).__name__}`"
        raise ValueError(msg)
    m = LINE.fullmatch(chunk)
    if m is None:
        preview = chunk if len(chunk) <= 60 else f"{chunk[:57]}..."
        msg = f"not a Combined Log Format line: {preview!r}"
        raise ValueError(msg)
    when = parse_time(m["time"]).astimezone(UTC)
    return {
        "ip": m["ip"],
        "user": None if m["user"] == "-" else m["user"],
        "time": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "method": m["method"],
        "path": m["path"],
        "status": int(m["status"]),
        "bytes": 0 if m["bytes"] == "-" else int(m["bytes"]),
        "referrer": None if m["referrer"] == "-" else m["referrer"],
        "agent": m["agent"],
    }


def only_errors(chunk: Chunk, *, min_status: int = 400) -> Chunk | None:
    """Keep the requests that failed: drop events whose status is below ``min_status``.

    Args:
        chunk: An event from `parse_line`.
        min_status: The lowest status kept; ``500`` keeps server errors only.

    Example:
        transforms:
          - use: examples.access_logs.stages:only_errors
            with: {min_status: 500}
    """
    return chunk if chunk["status"] >= min_status else None


@stream_transform
async def per_minute_status(chunks: AsyncIterator[Chunk]) -> AsyncGenerator[Chunk, None]:
    """Count the requests of each minute by status class.

    Emits ``{"minute": "2024-03-12T13:05:00Z", "requests": 57, "2xx": 41, "3xx": 12,
    "4xx": 3, "5xx": 1}`` each time the minute changes, and the last minute when the
    stream ends. Events are expected in time order, as a server writes them; an event
    of another minute closes the current one.

    Args:
        chunks: Events from `parse_line` (given by the engine).

    Example:
        transforms:
          - use: examples.access_logs.stages:parse_line
          - use: examples.access_logs.stages:per_minute_status
    """
    current: dict[str, Any] | None = None
    async for event in chunks:
        minute = f"{event['time'][:16]}:00Z"
        if current is not None and current["minute"] != minute:
            yield current
            current = None
        if current is None:
            current = {"minute": minute, "requests": 0, **dict.fromkeys(_CLASSES, 0)}
        current["requests"] += 1
        status_class = f"{event['status'] // 100}xx"
        current[status_class] = current.get(status_class, 0) + 1
    if current is not None:
        yield current
