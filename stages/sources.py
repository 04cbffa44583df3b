"""Built-in sources: `counter`, `file` (with ``follow``, like ``tail -F``) and `stdin`.

Every source is an async generator function whose keyword parameters are its config.
Reads happen in worker threads in blocks, so a large or slow file never stalls the
event loop; followers poll with `asyncio.sleep`.
"""

from __future__ import annotations

import asyncio
import codecs
import functools
import os
import sys
import threading
from collections.abc import AsyncGenerator, Callable, Iterable, Iterator
from contextlib import aclosing
from typing import IO, Literal

import orjson
from pydantic import NonNegativeFloat, NonNegativeInt, PositiveFloat

from pipeline import BadChunk, Chunk

__all__ = ["counter", "file", "stdin"]

Format = Literal["lines", "ndjson"]

_BLOCK = 64 * 1024
"""Bytes read per call, in a worker thread."""

_YIELD_EVERY = 100
"""`counter` without an interval gives the loop a turn this often."""

_STDIN_BLOCKS = 4
"""Blocks the stdin reader thread may read ahead of the pipeline."""


async def counter(
    *, count: NonNegativeInt | None = 10, interval: NonNegativeFloat = 0.0, start: int = 0
) -> AsyncGenerator[Chunk, None]:
    """Count upward: yields ``{"n": start}``, ``{"n": start + 1}``, and so on.

    Handy for trying a pipeline out and for tests. Ticks are scheduled on a fixed grid,
    so a slow consumer does not make the interval drift.

    Args:
        count: How many chunks to yield; ``null`` counts forever.
        interval: Seconds between two chunks; ``0`` yields as fast as the pipeline takes
            them (still giving other tasks a turn every 100 chunks).
        start: The first number.

    Example:
        source:
          use: counter
          with: {count: 1000, interval: 0.01}
    """
    if count is not None and count < 0:
        msg = f"`count` must be 0 or more, got {count}"
        raise ValueError(msg)
    if interval < 0:
        msg = f"`interval` must be 0 or more, got {interval}"
        raise ValueError(msg)
    loop = asyncio.get_running_loop()
    next_at = loop.time()
    i = 0
    while count is None or i < count:
        if i:
            if interval > 0:
                next_at += interval
                await asyncio.sleep(max(0.0, next_at - loop.time()))
            elif i % _YIELD_EVERY == 0:
                await asyncio.sleep(0)
        yield {"n": start + i}
        i += 1


async def file(
    *,
    path: str,
    format: Literal["lines", "ndjson"] = "lines",
    follow: bool = False,
    poll_interval: PositiveFloat = 0.25,
    from_end: bool = False,
    encoding: str = "utf-8",
) -> AsyncGenerator[Chunk, None]:
    r"""Read a file line by line, or keep tailing it as it grows, like ``tail -F``.

    A line is yielded without its line ending (``\n`` or ``\r\n``). With
    ``format: ndjson`` every non-blank line is parsed as JSON; a line that is not JSON
    (or not valid text in ``encoding``) becomes a ``chunk_error`` and the run goes on.

    With ``follow`` the source never ends by itself: it keeps reading appended data and
    only yields complete lines (a partial last line waits for its newline). When the path
    is rotated (it now names another file) it first reads what is left of the old file,
    then goes on from the start of the new one; when the file shrinks (truncation) it
    starts again from the top. While the path is missing it waits for it to come back.
    A partial last line is yielded when its file is left behind this way.

    Args:
        path: The file to read.
        format: ``lines`` yields each line as a string; ``ndjson`` yields each line
            parsed as JSON.
        follow: Keep reading as the file grows, across rotation and truncation.
        poll_interval: Seconds between checks for new data when following.
        from_end: When following, skip what the file holds at the start and yield only
            lines appended afterwards.
        encoding: The text encoding of the file; any ASCII-compatible encoding.

    Example:
        source:
          use: file
          with: {path: /var/log/app.ndjson, format: ndjson, follow: true}
    """
    decode = _decoder(format, encoding)
    if poll_interval <= 0:
        msg = f"`poll_interval` must be more than 0, got {poll_interval}"
        raise ValueError(msg)
    blocks = (
        _tail_blocks(path, from_end=from_end, poll_interval=poll_interval)
        if follow
        else _read_blocks(path)
    )
    splitter = _Splitter()
    async with aclosing(blocks):
        async for block in blocks:
            lines = splitter.flush() if block is None else splitter.feed(block)
            for chunk in decode(lines):
                yield chunk
    for chunk in decode(splitter.flush()):
        yield chunk


async def stdin(
    *, format: Literal["lines", "ndjson"] = "lines", encoding: str = "utf-8"
) -> AsyncGenerator[Chunk, None]:
    """Read standard input line by line until it ends.

    A daemon thread does the reading, so the event loop never waits on a pipe or a
    terminal, and a run that is cancelled while nothing arrives still ends at once.

    Args:
        format: ``lines`` yields each line as a string; ``ndjson`` yields each line
            parsed as JSON (a line that is not JSON becomes a ``chunk_error``).
        encoding: The text encoding of the input; any ASCII-compatible encoding.

    Example:
        source:
          use: stdin
          with: {format: ndjson}
    """
    decode = _decoder(format, encoding)
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[bytes | BaseException] = asyncio.Queue(maxsize=_STDIN_BLOCKS)
    slots = threading.Semaphore(_STDIN_BLOCKS)
    stop = threading.Event()
    reader = threading.Thread(
        target=_pump_stdin,
        args=(_stdin_reader(), loop, queue, slots, stop),
        name="pipeline-stdin",
        daemon=True,
    )
    reader.start()
    splitter = _Splitter()
    try:
        while block := await _next_block(queue, slots):
            for chunk in decode(splitter.feed(block)):
                yield chunk
        for chunk in decode(splitter.flush()):
            yield chunk
    finally:
        stop.set()
        slots.release()


# -- lines and decoding -------------------------------------------------------------------


class _Splitter:
    """Split a byte stream into complete lines, keeping a partial last line back."""

    __slots__ = ("_pending",)

    def __init__(self) -> None:
        self._pending = bytearray()

    def feed(self, data: bytes) -> list[bytearray]:
        self._pending += data
        if b"\n" not in data:
            return []
        *lines, self._pending = self._pending.split(b"\n")
        return lines

    def flush(self) -> list[bytearray]:
        rest, self._pending = self._pending, bytearray()
        return [rest] if rest else []


def _decoder(fmt: Format, encoding: str) -> Callable[[Iterable[bytearray]], Iterator[Chunk]]:
    """Return a function turning raw lines into chunks (or `BadChunk` for a bad line)."""
    if fmt not in ("lines", "ndjson"):
        msg = f"`format` must be 'lines' or 'ndjson', got {fmt!r}"
        raise ValueError(msg)
    codecs.lookup(encoding)  # an unknown encoding fails before anything is read
    utf8 = codecs.lookup(encoding).name == "utf-8"

    def decode(lines: Iterable[bytearray]) -> Iterator[Chunk]:
        for raw in lines:
            if raw.endswith(b"\r"):
                del raw[-1:]
            if fmt == "ndjson":
                if raw.strip():
                    yield _parse(raw, encoding, utf8=utf8)
                continue
            try:
                yield raw.decode(encoding)
            except UnicodeDecodeError as exc:
                yield BadChunk(raw.decode(encoding, "replace"), exc)

    return decode


def _parse(raw: bytearray, encoding: str, *, utf8: bool) -> Chunk:
    try:
        text: bytearray | str = raw if utf8 else raw.decode(encoding)
        return orjson.loads(text)
    except UnicodeDecodeError as exc:
        return BadChunk(raw.decode(encoding, "replace"), exc)
    except orjson.JSONDecodeError as exc:
        return BadChunk(raw.decode(encoding, "replace"), ValueError(f"invalid JSON: {exc}"))


# -- reading files ------------------------------------------------------------------------


async def _read_blocks(path: str) -> AsyncGenerator[bytes | None, None]:
    """Yield a file's bytes in blocks, to its end."""
    try:
        fh = await asyncio.to_thread(open, path, "rb")
    except FileNotFoundError:
        msg = f"no such file `{path}`"
        raise FileNotFoundError(msg) from None
    try:
        while data := await asyncio.to_thread(fh.read, _BLOCK):
            yield data
    finally:
        fh.close()


async def _tail_blocks(
    path: str, *, from_end: bool, poll_interval: float
) -> AsyncGenerator[bytes | None, None]:
    """Yield bytes appended to ``path`` forever; ``None`` when a file is left behind."""
    fh = await _open_or_none(path)
    if fh is not None and from_end:
        fh.seek(0, os.SEEK_END)
    try:
        while True:
            if fh is None:
                await asyncio.sleep(poll_interval)
                fh = await _open_or_none(path)
            elif data := await asyncio.to_thread(fh.read, _BLOCK):
                yield data
            elif (change := _change(path, fh)) == "truncated":
                yield None
                fh.seek(0)
            elif change == "rotated":
                while data := await asyncio.to_thread(fh.read, _BLOCK):
                    yield data  # what was written to the old file before it moved
                yield None
                fh.close()
                fh = await _open_or_none(path)
            else:
                await asyncio.sleep(poll_interval)
    finally:
        if fh is not None:
            fh.close()


async def _open_or_none(path: str) -> IO[bytes] | None:
    try:
        return await asyncio.to_thread(open, path, "rb")
    except FileNotFoundError:
        return None


def _change(path: str, fh: IO[bytes]) -> Literal["same", "rotated", "truncated"]:
    """Compare ``path`` with the open file: another file now, or shorter than read."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "same"  # moved away, nothing new yet: keep reading the old file
    own = os.fstat(fh.fileno())
    if (st.st_ino, st.st_dev) != (own.st_ino, own.st_dev):
        return "rotated"
    return "truncated" if st.st_size < fh.tell() else "same"


# -- reading stdin ------------------------------------------------------------------------


def _stdin_reader() -> Callable[[int], bytes]:
    """Return a ``read(n)`` for standard input.

    The file descriptor is read directly: a daemon thread blocked inside a buffered
    ``sys.stdin`` read would hold its lock and abort the interpreter at exit.
    """
    if sys.stdin is None:
        msg = "there is no standard input to read"
        raise RuntimeError(msg)
    try:
        fd = sys.stdin.fileno()
    except (AttributeError, OSError, ValueError):  # replaced by an in-memory stream
        text = sys.stdin
        return lambda n: text.read(n).encode()
    return functools.partial(os.read, fd)


def _pump_stdin(
    read: Callable[[int], bytes],
    loop: asyncio.AbstractEventLoop,
    queue: asyncio.Queue[bytes | BaseException],
    slots: threading.Semaphore,
    stop: threading.Event,
) -> None:
    """Thread body: read blocks while the pipeline has room; ``b""`` marks the end."""
    item: bytes | BaseException = b"-"
    while item:
        slots.acquire()
        if stop.is_set():
            return
        try:
            item = read(_BLOCK)
        except Exception as exc:  # handed to the source, which raises it
            item = exc
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody is reading any more
            return
        if isinstance(item, BaseException):
            return


async def _next_block(
    queue: asyncio.Queue[bytes | BaseException], slots: threading.Semaphore
) -> bytes:
    item = await queue.get()
    slots.release()
    if isinstance(item, BaseException):
        raise item
    return item
