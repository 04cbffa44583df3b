"""Run a command on a real pseudo-terminal (``pty``), read its screen output, type keys.

`Terminal` starts ``argv`` with stdin and stdout (and stderr, unless it is captured
separately) on a fresh pty of a given size, reads what it writes with bounded waits, and
sends keys. Used for ``pipeline top`` (live table, ``q``, Ctrl-C) and for the progress
line of ``pipeline run`` (stderr on a terminal, stdout a pipe).
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path
from typing import Any

from tests.http_helpers import ROOT

ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]|\r")


def _controlling_terminal() -> None:
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class Terminal:
    """A subprocess whose terminal is a pty; use as a context manager."""

    def __init__(
        self,
        argv: list[str],
        *,
        cwd: Path = ROOT,
        env: dict[str, str] | None = None,
        pipe_stdout: bool = False,
        size: tuple[int, int] = (40, 160),
    ) -> None:
        self.master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", size[0], size[1], 0, 0))
        base = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "COLUMNS")}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline", *argv],
            cwd=cwd,
            env={**base, "TERM": "xterm-256color", **(env or {})},
            stdin=slave,
            stdout=subprocess.PIPE if pipe_stdout else slave,
            stderr=slave,
            start_new_session=True,
            preexec_fn=_controlling_terminal,  # so Ctrl-C on the pty sends SIGINT
        )
        os.close(slave)
        self.screen = b""

    def read(self, timeout: float = 0.2) -> bytes:
        """Read what arrived on the terminal within ``timeout`` seconds (b"" at EOF)."""
        ready, _, _ = select.select([self.master], [], [], timeout)
        if not ready:
            return b""
        try:
            data = os.read(self.master, 65536)
        except OSError:  # EIO: the child closed the terminal
            return b""
        self.screen += data
        return data

    def wait_for(self, pattern: str, timeout: float = 20.0) -> str:
        """Read until the plain text (ANSI codes removed) matches ``pattern``; return it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if re.search(pattern, self.text):
                return self.text
            if not self.read() and self.proc.poll() is not None:
                self.read(0)
                break
        if re.search(pattern, self.text):
            return self.text
        raise AssertionError(f"`{pattern}` not on the terminal within {timeout}s:\n{self.text}")

    @property
    def text(self) -> str:
        """Everything written so far, without escape sequences and carriage returns."""
        return ANSI.sub(b"", self.screen).decode(errors="replace")

    def type(self, keys: bytes) -> None:
        """Type ``keys`` on the terminal (b"\\x03" is Ctrl-C)."""
        os.write(self.master, keys)

    def wait(self, timeout: float = 20.0) -> int:
        """Wait for the process to exit, draining the terminal meanwhile."""
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            self.read(0.05)
        return self.proc.wait(max(deadline - time.monotonic(), 0.1))

    def __enter__(self) -> Terminal:
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        os.close(self.master)
