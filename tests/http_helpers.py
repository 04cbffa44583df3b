"""Helpers for the HTTP tests: real servers on 127.0.0.1 and streaming readers.

- `ServerProcess`: ``python -m pipeline run --serve --port 0`` as a subprocess; the port
  comes from its structured ``listening`` log line.
- `ThreadServer`: the same server in a thread of this process (to count asyncio tasks).
- `RawStream`: a raw-socket HTTP/1.1 GET with an incremental chunked decoder (fast, and
  able to stop reading, shrink its receive buffer or see an unclean end).
- `wait_until`: poll a predicate under a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent


def ndjson_file(path: Path) -> list[Any]:
    """The whole lines of an NDJSON file another process may be writing, decoded.

    A sink writes many lines in one call, so a reader can see the last one half-written:
    only what ends in a newline counts.
    """
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().split(b"\n")[:-1] if line]


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, every: float = 0.02) -> Any:
    """Return the first truthy value of ``predicate()``; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(every)


class ServerProcess:
    """``pipeline run --serve`` in a subprocess; use as a context manager."""

    def __init__(
        self,
        config: Path,
        *names: str,
        env: dict[str, str] | None = None,
        args: tuple[str, ...] = (),
        cwd: Path = ROOT,
    ) -> None:
        self.config = config
        self.names = names
        self.args = args
        self.cwd = cwd
        self.env = {**os.environ, **(env or {})}
        self.stderr: list[str] = []
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._listening = threading.Event()
        self._reader: threading.Thread | None = None

    def __enter__(self) -> ServerProcess:
        cmd = [sys.executable, "-m", "pipeline", "run", *self.names, "--serve"]
        cmd += ["-c", str(self.config), "--port", "0", "--log-format", "json", *self.args]
        self.proc = subprocess.Popen(
            cmd, cwd=self.cwd, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()
        if not self._listening.wait(30):
            self.__exit__(None, None, None)
            raise AssertionError("server did not log `listening`:\n" + self.log_text)
        return self

    def _read_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = raw.decode(errors="replace")
            self.stderr.append(line)
            if '"listening"' in line:
                event = orjson.loads(line)
                self.port = int(event["port"])
                self.host = event["host"]
                self._listening.set()

    @property
    def log_text(self) -> str:
        return "".join(self.stderr)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def signal(self, sig: int = signal.SIGTERM) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        code = self.proc.wait(timeout)
        if self._reader is not None:
            self._reader.join(5)
        return code

    def __exit__(self, *exc: object) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if self._reader is not None:
            self._reader.join(5)
        if proc.stderr is not None:
            proc.stderr.close()


class ThreadServer:
    """The server in a thread of this process: ``build`` + ``serve`` on a loopback socket."""

    def __init__(self, config: Path, names: list[str] | None = None) -> None:
        from pipeline.config import loader, models as configmod
        from pipeline.server import process as serve

        cfg = configmod.load(config)
        self.server = serve.build(cfg, loader.resolve(cfg), names=names)
        self.sock = serve.bind("127.0.0.1", 0)
        self.port = int(self.sock.getsockname()[1])
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        self.server.run(sockets=[self.sock])

    def __enter__(self) -> ThreadServer:
        self.thread.start()
        wait_until(lambda: self.server.started, 20)
        return self

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the server's loop and return its result."""

        async def run() -> Any:
            return fn()

        loop = self.server._loop
        assert loop is not None
        return asyncio.run_coroutine_threadsafe(run(), loop).result(10)

    def tasks(self) -> int:
        return int(self.call(lambda: len(asyncio.all_tasks())))

    def __exit__(self, *exc: object) -> None:
        self.server.request_drain()
        self.thread.join(30)
        self.sock.close()
        assert not self.thread.is_alive(), "server thread did not stop"


class RawStream:
    """A raw-socket ``GET`` reading a chunked body incrementally."""

    def __init__(
        self,
        port: int,
        path: str,
        headers: dict[str, str] | None = None,
        *,
        rcvbuf: int | None = None,
        timeout: float = 15.0,
        method: str = "GET",
    ) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect(("127.0.0.1", port))
        head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        for key, value in (headers or {}).items():
            head += f"{key}: {value}\r\n"
        self.sock.sendall(head.encode("latin-1") + b"\r\n")
        self.buf = b""
        self.status = 0
        self.headers: dict[str, str] = {}
        self.clean_end = False
        self.eof = False

    def _fill(self) -> bool:
        data = self.sock.recv(1 << 20)
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    def read_head(self) -> int:
        while b"\r\n\r\n" not in self.buf:
            if not self._fill():
                raise AssertionError("connection closed before the response head")
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split()[1])
        for line in lines[1:]:
            key, _, value = line.partition(":")
            self.headers[key.strip().lower()] = value.strip()
        return self.status

    def chunks(self) -> Iterator[bytes]:
        """Yield each chunk's payload; stop at the terminal chunk or at EOF."""
        if not self.status:
            self.read_head()
        while True:
            while b"\r\n" not in self.buf:
                if not self._fill():
                    return
            size_line, _, rest = self.buf.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            while len(rest) < size + 2:
                if not self._fill():
                    return
                rest = self.buf.partition(b"\r\n")[2]
            if size == 0:
                self.buf = rest[2:]
                self.clean_end = rest[:2] == b"\r\n"
                return
            yield rest[:size]
            self.buf = rest[size + 2 :]

    def body(self) -> Iterator[bytes]:
        """The decoded body as it arrives (gunzipped when the response is gzip)."""
        z = None
        if self.status == 0:
            self.read_head()
        if self.headers.get("content-encoding") == "gzip":
            z = zlib.decompressobj(16 + zlib.MAX_WBITS)
        for chunk in self.chunks():
            yield z.decompress(chunk) if z is not None else chunk

    def lines(self) -> Iterator[bytes]:
        """Complete ``\\n``-terminated lines of the body, as they arrive."""
        pending = b""
        for data in self.body():
            pending += data
            *done, pending = pending.split(b"\n")
            yield from done

    def envelopes(self, limit: int | None = None) -> list[dict[str, Any]]:
        """Read NDJSON envelopes until the body ends (or ``limit`` were read)."""
        out: list[dict[str, Any]] = []
        for line in self.lines():
            if line:
                out.append(orjson.loads(line))
                if limit is not None and len(out) >= limit:
                    break
        return out

    def json(self) -> Any:
        """The whole body of a non-chunked JSON response."""
        if self.status == 0:
            self.read_head()
        length = int(self.headers["content-length"])
        while len(self.buf) < length:
            if not self._fill():
                break
        return orjson.loads(self.buf[:length])

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def __enter__(self) -> RawStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def sse_events(stream: RawStream, limit: int | None = None) -> list[dict[str, str]]:
    """Parse SSE frames (blocks separated by a blank line) until the end or ``limit``."""
    out: list[dict[str, str]] = []
    block: dict[str, str] = {}
    for line in stream.lines():
        if line == b"":
            if block:
                out.append(block)
                block = {}
                if limit is not None and len(out) >= limit:
                    break
            continue
        key, _, value = line.decode().partition(":")
        key = key or "comment"
        block[key] = block.get(key, "") + value.removeprefix(" ")
    return out


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))
