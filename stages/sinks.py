r"""Built-in sinks: `stdout` and `file`, both writing envelopes as NDJSON lines.

Both are batch stream sinks receiving the envelopes already encoded by
`pipeline.envelope` (one line of UTF-8 JSON ending in ``\n`` each), so the bytes they
write are exactly the bytes HTTP clients get. Each batch is what was ready when the sink
asked: a burst is written in one call, a lone envelope at once; each batch is flushed
as soon as it is written, so a reader never waits for a line that was produced.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import BinaryIO, Literal

from pipeline import sink

__all__ = ["file", "stdout"]

_NO_SYNC = (errno.EINVAL, errno.EOPNOTSUPP, errno.EROFS)


@sink(stream=True, receives="lines", batch=True)
async def stdout(lines: AsyncIterator[list[bytes]]) -> None:
    """Write every envelope to standard output, one NDJSON line each, flushed at once.

    What is ready is written in one call and flushed: a lone envelope at once, a burst
    in one write.

    ``pipeline run`` already writes every envelope to stdout; list this sink only when
    running pipelines from your own code, or to make the output explicit.

    Args:
        lines: The encoded envelopes, in batches (given by the engine).

    Example:
        sinks:
          - use: stdout
    """
    write, flush = _stdout_writer()
    try:
        async for batch in lines:
            write(b"".join(batch))
            flush()
    finally:
        flush()


@sink(stream=True, receives="lines", batch=True)
async def file(
    lines: AsyncIterator[list[bytes]],
    *,
    path: Path,
    mode: Literal["append", "truncate"] = "append",
    fsync: bool = True,
) -> None:
    """Write every envelope to a file, one NDJSON line each.

    Missing parent folders are created. By default (``mode: append``) lines are added to
    the end of an existing file, so a restarted pipeline never destroys what an earlier
    run wrote; ``mode: truncate`` empties the file when the run starts. What is ready is
    written whole to the operating system in one call as soon as it comes (a lone
    envelope at once), so ``tail -f`` sees it at once; a write that fails part-way (a
    full disk) is cut back to the last whole line and fails the run. When the run ends
    (normally, with an error, or cancelled) the file is flushed, synced to disk and
    closed. Relative paths are relative to the working directory.

    Args:
        lines: The encoded envelopes, in batches (given by the engine).
        path: The file to write.
        mode: ``append`` (the default) adds to an existing file; ``truncate`` replaces
            its content at the start of each run.
        fsync: Sync the file to disk when the run ends.

    Example:
        sinks:
          - use: file
            with: {path: out/sensors.ndjson, mode: truncate}
    """
    target = Path(path)
    await asyncio.to_thread(target.parent.mkdir, parents=True, exist_ok=True)
    fh = await asyncio.to_thread(_open, target, mode)
    try:
        good = fh.seek(0, os.SEEK_END) if fh.seekable() else 0
        async for batch in lines:
            good = _write_lines(fh, b"".join(batch), good)
    finally:
        # In a thread: the close runs to its end even if this task is cancelled again.
        await asyncio.to_thread(_finish, fh, fsync)


def _open(target: Path, mode: str) -> BinaryIO:
    if mode not in ("append", "truncate"):
        msg = f"`mode` must be 'append' or 'truncate', got {mode!r}"
        raise ValueError(msg)
    # Unbuffered: each batch is written whole by `_write_lines`, nothing waits in a buffer.
    return target.open("ab" if mode == "append" else "wb", buffering=0)


def _write_lines(fh: BinaryIO, lines: bytes, good: int) -> int:
    """Write ``lines`` whole at offset ``good``; return the new end.

    A write that fails part-way (a full disk) is cut back to the last whole line it
    wrote, so the file never ends in a torn line; the error is raised again (the sink
    fails, the run fails).
    """
    view = memoryview(lines)
    written = 0
    try:
        while written < len(lines):
            written += fh.write(view[written:]) or 0
    except OSError:
        with contextlib.suppress(OSError):
            fh.truncate(good + lines.rfind(b"\n", 0, written) + 1)
        raise
    return good + len(lines)


def _finish(fh: BinaryIO, fsync: bool) -> None:
    """Optionally fsync, and close ``fh``; it is closed whatever fails."""
    try:
        if fsync:
            try:
                os.fsync(fh.fileno())
            except OSError as exc:
                if exc.errno not in _NO_SYNC:  # /dev/null and pipes cannot be synced
                    raise
    finally:
        fh.close()


def _stdout_writer() -> tuple[Callable[[bytes], object], Callable[[], None]]:
    """Return ``write`` and ``flush`` for the current ``sys.stdout`` (bytes if it can)."""
    out = sys.stdout
    buffer = getattr(out, "buffer", None)
    if buffer is not None:
        out.flush()  # text written earlier goes first
        return buffer.write, buffer.flush
    return (lambda line: out.write(line.decode())), out.flush
