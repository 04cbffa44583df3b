"""What every hardening probe needs: a served project, bounded waits, raw sockets, /proc.

A probe starts a fresh ``pipeline run`` (``--serve`` where it needs HTTP) from a
temporary folder, attacks it on 127.0.0.1 and returns one `Row`. Every wait here has a
deadline; nothing leaves loopback.
"""

from __future__ import annotations

import os
import resource
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypedDict

from bench.common import free_port

__all__ = [
    "CANARY",
    "PY",
    "Row",
    "fds",
    "frozen",
    "get",
    "rss_mib",
    "run_to_end",
    "server",
    "wait",
]

PY = sys.executable
CANARY = "canary-Zq8v7-s3cret"
"""The secret the probe configs take from ``${CANARY}``; no output may show it."""


class Row(TypedDict):
    """One probe's line of the report."""

    tried: str
    survived: bool
    lost: int | str
    figure: str


@contextmanager
def server(
    folder: Path, *names: str, config: str = "pipelines.yaml", nofile: int | None = None
) -> Iterator[tuple[subprocess.Popen[bytes], int, list[str]]]:
    """``pipeline run NAMES --serve`` on a free port, ready (``/healthz`` answers);
    yields (process, port, its stderr lines so far).

    ``nofile`` caps the server's open files (``RLIMIT_NOFILE``), as on a default host.
    """
    port = free_port()
    cmd = [PY, "-m", "pipeline", "run", *names, "-c", config, "--serve", "--port", str(port)]

    proc = subprocess.Popen(
        [*cmd, "--log-format", "json"],
        cwd=folder,
        env={**os.environ, "CANARY": CANARY},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    if nofile is not None:  # before it opens anything much: it is still importing
        resource.prlimit(proc.pid, resource.RLIMIT_NOFILE, (nofile, nofile))
    log: list[str] = []
    reader = threading.Thread(target=lambda: log.extend(_lines(proc)), daemon=True)
    reader.start()
    try:
        if not wait(lambda: get(port, "/healthz").startswith(b"HTTP/1.1 200"), 60):
            raise RuntimeError("the server did not answer /healthz within 60 s")
        yield proc, port, log
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        reader.join(5)


def _lines(proc: subprocess.Popen[bytes]) -> Iterator[str]:
    assert proc.stderr is not None
    for raw in proc.stderr:
        yield raw.decode(errors="replace")


def wait(predicate: Callable[[], Any], timeout: float, every: float = 0.05) -> bool:
    """Poll ``predicate`` until it is true (True) or ``timeout`` s passed (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return True
        except OSError:
            pass
        time.sleep(every)
    return False


def get(port: int, path: str, version: str = "1.1", headers: str = "") -> bytes:
    """One ``GET`` on a fresh connection; the whole answer, head included."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        head = f"GET {path} HTTP/{version}\r\nHost: x\r\n{headers}Connection: close\r\n\r\n"
        s.sendall(head.encode())
        data = bytearray()
        while chunk := s.recv(1 << 20):
            data += chunk
        return bytes(data)


def frozen(port: int, name: str) -> socket.socket:
    """A stream client of pipeline ``name`` that will never read (4 KiB receive buffer)."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", port))
    s.sendall(f"GET /pipelines/{name}/stream HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    return s


def run_to_end(
    folder: Path,
    name: str,
    log_format: str = "json",
    timeout: float = 120,
    config: str = "pipelines.yaml",
) -> subprocess.CompletedProcess[bytes]:
    """``pipeline run NAME -c CONFIG`` to its end, output captured."""
    return subprocess.run(
        [PY, "-m", "pipeline", "run", name, "-c", config, "--log-format", log_format],
        cwd=folder,
        env={**os.environ, "CANARY": CANARY},
        capture_output=True,
        timeout=timeout,
        check=False,
    )


def fds(pid: int) -> int:
    """Open file descriptors of process ``pid``."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def client_connections(pid: int, port: int) -> int:
    """Connections process ``pid`` holds to clients of its ``port`` (its other files,
    such as a coverage data file of a traced server, do not count)."""
    import psutil  # type: ignore[import-untyped]  # the bench extra; no stubs installed

    conns = psutil.Process(pid).net_connections(kind="tcp")
    return sum(1 for c in conns if c.laddr and c.laddr.port == port and c.status != "LISTEN")


def rss_mib(pid: int) -> float:
    """Resident memory of process ``pid`` in MiB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0
