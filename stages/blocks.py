"""Reading a file in blocks, in worker threads: to its end, or followed like ``tail -F``.

`read_blocks` yields the bytes of a file as they are read, an `Opened` marker each time
a file is opened (saying where in which file, by device and inode, reading starts) and
``None`` when a followed file is left behind (rotated away or truncated), so a partial
last line can be flushed. From a `Position`, reading resumes there; a file rotated away
from that position while nobody was reading is found in its folder and finished first.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal

import structlog

from stages.checkpoint import Position, find_inode

__all__ = ["Block", "LineSplitter", "Opened", "absolute", "read_blocks"]

_BLOCK = 64 * 1024
"""Bytes read per call, in a worker thread."""

_log = structlog.get_logger("stages.file")


def absolute(path: str) -> str:
    """``path`` made absolute against the working directory (for messages)."""
    return os.path.abspath(path)


@dataclass(frozen=True, slots=True)
class Opened:
    """A file was opened: the blocks that follow are its bytes from ``at.offset`` on."""

    at: Position


Block = bytes | Opened | None
"""Bytes read; an `Opened` file; None when a file is left behind (flush a partial line)."""


async def read_blocks(
    path: str, start: Position | None, *, follow: bool, from_end: bool, poll_interval: float
) -> AsyncGenerator[Block, None]:
    """A file's blocks from ``start`` on; a file rotated away from ``start`` comes first."""
    if start is not None:
        try:
            st = os.stat(path)
            current: tuple[int, int] | None = (st.st_dev, st.st_ino)
        except FileNotFoundError:
            current = None
        if current != (start.dev, start.ino):
            old = find_inode(Path(absolute(path)).parent, start.dev, start.ino)
            if old is not None:
                _log.info("file_resuming_rotated", path=path, rotated=str(old))
                inner = _read_blocks(str(old), start)
                async with aclosing(inner):
                    async for block in inner:
                        yield block
                yield None
            start = None
    inner = (
        _tail_blocks(path, start, from_end=from_end, poll_interval=poll_interval)
        if follow
        else _read_blocks(path, start)
    )
    async with aclosing(inner):
        async for block in inner:
            yield block


def _seek(fh: IO[bytes], start: Position | None) -> Opened:
    """Move to ``start`` when it is this file and not past its end; say where reading starts."""
    st = os.fstat(fh.fileno())
    offset = 0
    if start is not None and (st.st_dev, st.st_ino) == (start.dev, start.ino):
        offset = start.offset if start.offset <= st.st_size else 0
        fh.seek(offset)
    return Opened(Position(st.st_dev, st.st_ino, offset))


async def _read_blocks(path: str, start: Position | None) -> AsyncGenerator[Block, None]:
    """Yield a file's bytes in blocks, to its end."""
    try:
        fh = await asyncio.to_thread(open, path, "rb")
    except FileNotFoundError:
        msg = f"no such file `{absolute(path)}`"
        raise FileNotFoundError(msg) from None
    try:
        yield _seek(fh, start)
        while data := await asyncio.to_thread(fh.read, _BLOCK):
            yield data
    finally:
        fh.close()


async def _tail_blocks(
    path: str, start: Position | None, *, from_end: bool, poll_interval: float
) -> AsyncGenerator[Block, None]:
    """Yield bytes appended to ``path`` forever; ``None`` when a file is left behind."""
    fh = await _open_or_none(path)
    if fh is not None and from_end and start is None:  # a file created later is all new
        fh.seek(0, os.SEEK_END)
        start = Position(*_identity(fh), fh.tell())
    if fh is None:
        fh = await _wait_open(path, poll_interval)
    yield _seek(fh, start)
    try:
        while True:
            if data := await asyncio.to_thread(fh.read, _BLOCK):
                yield data
            elif (change := _change(path, fh)) == "truncated":
                yield None
                fh.seek(0)
                yield Opened(Position(*_identity(fh), 0))
            elif change == "rotated":
                while data := await asyncio.to_thread(fh.read, _BLOCK):
                    yield data  # what was written to the old file before it moved
                yield None
                fh.close()
                fh = await _wait_open(path, poll_interval)
                yield Opened(Position(*_identity(fh), 0))
            else:
                await asyncio.sleep(poll_interval)
    finally:
        fh.close()


def _identity(fh: IO[bytes]) -> tuple[int, int]:
    st = os.fstat(fh.fileno())
    return st.st_dev, st.st_ino


async def _wait_open(path: str, poll_interval: float) -> IO[bytes]:
    """Open ``path``, waiting while it does not exist (logged once per wait)."""
    fh = await _open_or_none(path)
    if fh is None:
        _log.info("file_waiting", path=absolute(path))
    while fh is None:
        await asyncio.sleep(poll_interval)
        fh = await _open_or_none(path)
    return fh


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


class LineSplitter:
    """Split a byte stream into complete lines, keeping a partial last line back.

    Example:
        >>> s = LineSplitter()
        >>> s.feed(b"a\\nb"), s.feed(b"c\\n"), s.flush()
        ([bytearray(b'a')], [bytearray(b'bc')], [])
    """

    __slots__ = ("_pending",)

    def __init__(self) -> None:
        self._pending = bytearray()

    def feed(self, data: bytes) -> list[bytearray]:
        """The lines ``data`` completes, without their ``\\n``."""
        self._pending += data
        if b"\n" not in data:
            return []
        *lines, self._pending = self._pending.split(b"\n")
        return lines

    def flush(self) -> list[bytearray]:
        """The partial last line, if any (the stream ended)."""
        rest, self._pending = self._pending, bytearray()
        return [rest] if rest else []
