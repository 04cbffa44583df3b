"""Where a file source resumes: a small JSON file saved once the sinks accepted.

The checkpoint names the file by device and inode (so a rotated file is recognised
under its new name) and the byte offset just after the last line every sink accepted::

    {"path": "/var/log/app.log", "dev": 2049, "ino": 131, "offset": 5120}

Lines are acknowledged in any order; the offset only moves over a run of acknowledged
lines with no gap (a watermark), so a line is never skipped. The file is written
atomically (a temporary file, fsync, rename), at most once every ``interval`` seconds
while lines flow, and at once when the source has stopped (shutdown, end of the file).
After a crash, at most the lines acknowledged during the last ``interval`` are read again.
"""

from __future__ import annotations

import asyncio
import os
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import structlog

__all__ = ["Checkpoint", "Position", "find_inode"]

_log = structlog.get_logger("stages.file")


@dataclass(frozen=True, slots=True)
class Position:
    """A byte offset in one file, named by device and inode."""

    dev: int
    ino: int
    offset: int


class Checkpoint:
    """The watermark of acknowledged lines of a file source, saved to ``path``."""

    def __init__(self, path: str, source: str, interval: float) -> None:
        self.path = Path(path)
        self.source = source
        self.interval = interval
        self.saved: Position | None = self.load()
        self.mark: Position | None = self.saved
        self.closed = False
        self._open: deque[list[Any]] = deque()  # [position, acknowledged]
        self._timer: asyncio.TimerHandle | None = None

    def load(self) -> Position | None:
        """The position saved by an earlier run, if any (a bad file is ignored, logged)."""
        try:
            data = orjson.loads(self.path.read_bytes())
            return Position(int(data["dev"]), int(data["ino"]), int(data["offset"]))
        except FileNotFoundError:
            return None
        except Exception as exc:  # unreadable or not ours: start over, say so
            _log.warning("checkpoint_unreadable", checkpoint=str(self.path), error=str(exc))
            return None

    def issue(self, pos: Position) -> Callable[[], None]:
        """Track one line ending at ``pos``; return its ack."""
        entry: list[Any] = [pos, False]
        self._open.append(entry)

        def ack() -> None:
            entry[1] = True
            self._advance()

        return ack

    def _advance(self) -> None:
        moved = False
        while self._open and self._open[0][1]:
            self.mark = self._open.popleft()[0]
            moved = True
        if not moved:
            return
        if self.closed:
            self.save()
        elif self._timer is None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self.interval, self._due)

    def _due(self) -> None:
        self._timer = None
        self.save()

    def close(self) -> None:
        """The source stopped: save now, and after each later ack."""
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.save()

    def save(self) -> None:
        """Write the watermark atomically, if it moved since the last save."""
        mark = self.mark
        if mark is None or mark == self.saved:
            return
        body = {"path": self.source, "dev": mark.dev, "ino": mark.ino, "offset": mark.offset}
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with tmp.open("wb") as fh:
                fh.write(orjson.dumps(body) + b"\n")
                fh.flush()
                os.fsync(fh.fileno())
            tmp.replace(self.path)
        except OSError as exc:
            _log.error("checkpoint_not_saved", checkpoint=str(self.path), error=str(exc))
            return
        self.saved = mark


def find_inode(folder: Path, dev: int, ino: int) -> Path | None:
    """The entry of ``folder`` that is the file ``(dev, ino)`` (a rotated file), if any."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return None
    for entry in entries:
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (dev, ino) and entry.is_file(follow_symlinks=False):
            return Path(entry.path)
    return None
