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
from pathlib import Path
from typing import Literal

import orjson
from pydantic import NonNegativeFloat, NonNegativeInt, PositiveFloat

from pipeline import BadChunk, Chunk, Message
from stages.blocks import LineSplitter, Opened, absolute, read_blocks
from stages.checkpoint import Checkpoint, Position

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
    path: Path,
    format: Literal["lines", "ndjson"] = "lines",
    follow: bool = False,
    poll_interval: PositiveFloat = 0.25,
    from_end: bool = False,
    encoding: str = "utf-8",
    checkpoint: str | None = None,
    checkpoint_interval: PositiveFloat = 1.0,
) -> AsyncGenerator[Chunk, None]:
    r"""Read a file line by line, or keep tailing it as it grows, like ``tail -F``.

    A line is yielded without its line ending (``\n`` or ``\r\n``). With
    ``format: ndjson`` every non-blank line is parsed as JSON; a line that is not JSON
    (or not valid text in ``encoding``) becomes a ``chunk_error`` and the run goes on.

    With ``follow`` the source never ends by itself: it keeps reading appended data and
    only yields complete lines (a partial last line waits for its newline). When the path
    is rotated (it now names another file) it first reads what is left of the old file,
    then goes on from the start of the new one; when the file shrinks (truncation) it
    starts again from the top. While the path is missing it waits for it to come back
    (and logs ``file_waiting`` once). A partial last line is yielded when its file is
    left behind this way.

    With ``checkpoint`` the source resumes where it stopped: each line is acknowledged
    once every sink accepted it, and the position after the last line accepted (with
    no gap before it) is saved in the ``checkpoint`` file as the file's device, inode and
    byte offset (atomically, at most every ``checkpoint_interval`` seconds, and when the
    source stops). A restart reads on from there: after a clean stop no line is read
    twice and none is lost; after a crash, the lines of the last ``checkpoint_interval``
    may be read again. A file rotated while the pipeline was down is found in its folder
    by its inode and finished first; a file that shrank is read from the top. Relative
    paths are relative to the working directory.

    Args:
        path: The file to read.
        format: ``lines`` yields each line as a string; ``ndjson`` yields each line
            parsed as JSON.
        follow: Keep reading as the file grows, across rotation and truncation.
        poll_interval: Seconds between checks for new data when following.
        from_end: When following, skip what the file holds at the start and yield only
            lines appended afterwards.
        encoding: The text encoding of the file; any ASCII-compatible encoding.
        checkpoint: A file where the position is kept across restarts (created when
            missing); without it every run reads the file from the top.
        checkpoint_interval: Seconds between two saves of the checkpoint while lines flow.

    Example:
        source:
          use: file
          with: {path: /var/log/app.ndjson, format: ndjson, follow: true,
                 checkpoint: state/app.checkpoint.json}
    """
    decode = _decoder(format, encoding)
    if poll_interval <= 0:
        msg = f"`poll_interval` must be more than 0, got {poll_interval}"
        raise ValueError(msg)
    name = str(path)
    if checkpoint is not None:
        resumed = _resumed(name, decode, checkpoint, checkpoint_interval, follow, poll_interval)
        async with aclosing(resumed):
            async for item in resumed:
                yield item
        return
    blocks = read_blocks(name, None, follow=follow, from_end=from_end, poll_interval=poll_interval)
    splitter = LineSplitter()
    async with aclosing(blocks):
        async for block in blocks:
            if isinstance(block, Opened):
                continue
            lines = splitter.flush() if block is None else splitter.feed(block)
            for chunk in decode(lines):
                yield chunk
    for chunk in decode(splitter.flush()):
        yield chunk


async def _resumed(
    path: str,
    decode: Callable[[Iterable[bytearray]], Iterator[Chunk]],
    checkpoint: str,
    interval: float,
    follow: bool,
    poll_interval: float,
) -> AsyncGenerator[Message | BadChunk, None]:
    """The file source with a checkpoint: each line a `Message` whose ack moves the mark."""
    ck = Checkpoint(checkpoint, absolute(path), interval)
    blocks = read_blocks(path, ck.saved, follow=follow, from_end=False, poll_interval=poll_interval)
    splitter = LineSplitter()
    at = Position(0, 0, 0)
    try:
        async with aclosing(blocks):
            async for block in blocks:
                if isinstance(block, Opened):
                    at = block.at
                    continue
                whole = block is not None
                for raw in splitter.feed(block) if block is not None else splitter.flush():
                    at = Position(at.dev, at.ino, at.offset + len(raw) + whole)
                    for item in _acked(decode([raw]), ck.issue(at)):
                        yield item
        for raw in splitter.flush():
            at = Position(at.dev, at.ino, at.offset + len(raw))
            for item in _acked(decode([raw]), ck.issue(at)):
                yield item
    finally:
        ck.close()


def _acked(chunks: Iterator[Chunk], ack: Callable[[], None]) -> Iterator[Message | BadChunk]:
    """The chunk of one line with its ack (a blank line has none: acknowledged at once)."""
    for chunk in chunks:
        if type(chunk) is BadChunk:
            yield BadChunk(chunk.raw, chunk.error, ack)
        else:
            yield Message(chunk, ack)
        return
    ack()


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
    splitter = LineSplitter()
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
