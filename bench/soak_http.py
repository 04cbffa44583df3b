"""Soak probes at the HTTP door: hostile requests, slowloris, idle sockets, churn.

Each function takes the prepared folder (see `bench.soak.project`) and a size, attacks
a fresh server on 127.0.0.1 and returns a `bench.probe_kit.Row`.
"""

from __future__ import annotations

import re
import selectors
import socket
import threading
import time
from pathlib import Path

from bench.probe_kit import Row, fds, get, server, wait

__all__ = ["TOKEN", "connect_cycles", "hostile_http", "hostile_requests", "idle_sockets"]
__all__ += ["slowloris"]

TOKEN = "soak-t0ken-Xy81"
"""The soak server's bearer token: never echoed, never logged."""

_BASES: tuple[bytes, ...] = (
    b"GET /pipelines/live/stream?since=abc HTTP/1.1\r\nHost: x\r\n",
    b"GET /pipelines/live/stream?since=-1 HTTP/1.1\r\nHost: x\r\n",
    b"GET /pipelines/live/stream?since=99999999999999999999999999 HTTP/1.1\r\nHost: x\r\n",
    b"GET /pipelines/live/stream?since=run:x:1 HTTP/1.1\r\nHost: x\r\n",
    b"GET /pipelines/live/stream?since=%00 HTTP/1.1\r\nHost: x\r\n",
    b"GET /pipelines/live/stream?nope=1 HTTP/1.1\r\nHost: x\r\n",
    b"GET /pipelines/../../etc/passwd HTTP/1.1\r\nHost: x\r\n",
    b"GET /pipelines/..%2f..%2fetc%2fpasswd HTTP/1.1\r\nHost: x\r\n",
    b"GET /pipelines/live%2Fstream HTTP/1.1\r\nHost: x\r\n",
    b"GET /pipelines/%00 HTTP/1.1\r\nHost: x\r\n",
    b"GET /pipelines/\xc3\xa9\xff HTTP/1.1\r\nHost: x\r\n",
    b"GET /pipelines/" + b"a" * 8000 + b" HTTP/1.1\r\nHost: x\r\n",
    b"GET /pipelines?" + b"q=1&" * 2000 + b" HTTP/1.1\r\nHost: x\r\n",
    b"DELETE /pipelines/live HTTP/1.1\r\nHost: x\r\n",
    b"PUT /pipelines/live/stream HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}",
    b"TRACE / HTTP/1.1\r\nHost: x\r\n",
    b"CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: x\r\n",
    b"FOO /pipelines HTTP/1.1\r\nHost: x\r\n",
    b"OPTIONS * HTTP/1.1\r\nHost: x\r\n",
    b"GET http://evil.example/pipelines HTTP/1.1\r\nHost: x\r\n",
    b"GET /pipelines HTTP/1.1\r\n",
    b"GET /pipelines HTTP/1.1\r\nHost: a\r\nHost: b\r\n",
    b"GET /pipelines HTTP/1.1\r\nHost: x\r\nNoColonHere\r\n",
    b"GET /pipelines HTTP/1.1\r\nHost: x\r\nX-Nul: a\x00b\r\n",
    b"GET /pipelines HTTP/1.1\r\nHost: x\r\nX-Fold: a\r\n folded\r\n",
    b"GET /pipelines HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n",
    b"POST /pipelines/live/ingest HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
    b"Transfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"POST /pipelines/live/ingest HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"fffffffffffffffff\r\n",
    b"POST /pipelines/live/ingest HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\n\r\n{not json",
    b"POST /session HTTP/1.1\r\nHost: x\r\nContent-Length: 7\r\n\r\n\x00\x01\x02garb",
    b"GET /pipelines/live/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Version: 99\r\nSec-WebSocket-Key: bad\r\n",
    b"GET /pipelines/live/stream HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\n"
    b"Connection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n",
    b"GET /pipelines/live/ws HTTP/1.1\r\nHost: x\r\nOrigin: http://evil.example\r\n"
    b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n",
    b"GET /pipelines HTTP/9.9\r\nHost: x\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(32)),
    b"get /PIPELINES http/1.1\r\nHost: x\r\n",
)
"""Hostile request heads, each sent with no token, a wrong one and the right one."""


def hostile_requests() -> list[bytes]:
    """The 111 requests: every base of `_BASES` three times (no, wrong, right token)."""
    auths = (b"", b"Authorization: Bearer wr0ng\r\n", b"Authorization: Bearer %s\r\n")
    out = []
    for base in _BASES:
        head, sep, body = base.partition(b"\r\n\r\n")
        for auth in auths:
            extra = auth.replace(b"%s", TOKEN.encode()) + b"Connection: close\r\n"
            out.append(head + b"\r\n" + extra + b"\r\n" + body if sep else base + extra + b"\r\n")
    return out


def _answer(port: int, request: bytes, deadline: float = 5.0) -> bytes:
    """Send ``request``; read the answer: a sized body whole, a stream for 0.3 s."""
    end = time.monotonic() + deadline
    data = bytearray()
    with socket.create_connection(("127.0.0.1", port), timeout=deadline) as s:
        try:
            s.sendall(request)
            while time.monotonic() < end and len(data) < 1 << 20:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
                head, sep, body = bytes(data).partition(b"\r\n\r\n")
                if not sep:
                    continue
                sized = re.search(rb"(?im)^content-length: *(\d+)", head)
                if sized and len(body) >= int(sized[1]):
                    break
                if not sized:  # a stream: what comes in 0.3 s is enough to check
                    end = min(end, time.monotonic() + 0.3)
                    s.settimeout(0.3)
        except OSError:
            pass  # reset or timed out: what came so far is the answer
    return bytes(data)


def hostile_http(folder: Path) -> Row:
    """111 hostile requests: no 5xx, no traceback in any body, the token never echoed."""
    requests = hostile_requests()
    bad: list[str] = []
    statuses: dict[int, int] = {}
    with server(folder, "live", config="hostile.yaml") as (proc, port, log):
        for i, request in enumerate(requests):
            answer = _answer(port, request)
            status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.") else 0
            statuses[status] = statuses.get(status, 0) + 1
            if status >= 500 or b"Traceback" in answer or TOKEN.encode() in answer:
                bad.append(f"#{i} {status}")
        healthy = get(port, "/healthz").startswith(b"HTTP/1.1 200")
        logged = sum(TOKEN in line or "Traceback" in line for line in log)
        alive = proc.poll() is None
    codes = ", ".join(f"{n}x {c or 'closed'}" for c, n in sorted(statuses.items()))
    return {
        "tried": f"{len(requests)} hostile HTTP requests",
        "survived": not bad and healthy and alive and logged == 0,
        "lost": len(bad) + logged,
        "figure": f"answers: {codes}; 0 bodies with a 5xx, traceback or the token"
        if not bad
        else "bad: " + ", ".join(bad[:10]),
    }


def _healthz_worst(port: int, done: threading.Event, worst: list[float]) -> None:
    while not done.is_set():
        t = time.perf_counter()
        try:
            get(port, "/healthz")
        except OSError:
            worst[0] = max(worst[0], 10.0)
        worst[0] = max(worst[0], time.perf_counter() - t)
        time.sleep(0.05)


def slowloris(folder: Path, count: int = 500) -> Row:
    """``count`` connections trickling a head a byte at a time: closed by the head timeout
    (2 s in the soak config); ``/healthz`` meanwhile."""
    with server(folder, "live", config="soak.yaml") as (proc, port, _log):
        base = fds(proc.pid)
        socks = []
        for _ in range(count):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            s.setblocking(False)
            socks.append(s)
        done, worst = threading.Event(), [0.0]
        prober = threading.Thread(target=_healthz_worst, args=(port, done, worst))
        prober.start()
        t0 = time.monotonic()
        open_ = set(socks)
        while open_ and time.monotonic() - t0 < 30:
            for s in list(open_):
                try:
                    if s.recv(4096) == b"":
                        open_.discard(s)
                        continue
                except BlockingIOError:
                    pass
                except OSError:
                    open_.discard(s)
                    continue
                try:
                    s.send(b"X")  # one header byte: the head never completes
                except OSError:
                    open_.discard(s)
            time.sleep(0.2)
        took = time.monotonic() - t0
        done.set()
        prober.join(30)
        for s in socks:
            s.close()
        back = wait(lambda: fds(proc.pid) <= base, 20)
    return {
        "tried": f"{count} slowloris connections (a header byte every 0.2 s)",
        "survived": not open_ and back,
        "lost": len(open_),
        "figure": f"{count - len(open_)}/{count} closed by the server after {took:.1f} s "
        f"(head_timeout 2 s); worst /healthz meanwhile {worst[0] * 1000:.0f} ms "
        "(was: never closed)",
    }


def idle_sockets(folder: Path, count: int = 1000) -> Row:
    """``count`` connections that send nothing, to a server limited to 1024 open files:
    ``/healthz`` still answers, and the server's open files come back."""
    with server(folder, "live", config="soak.yaml", nofile=1024) as (proc, port, _log):
        base = fds(proc.pid)
        socks = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(count)]
        wait(lambda: fds(proc.pid) >= base + count, 5)  # accepted (or the limit reached)
        peak = fds(proc.pid)
        t0 = time.monotonic()
        answered = wait(lambda: get(port, "/healthz").startswith(b"HTTP/1.1 200"), 30, 0.1)
        first = time.monotonic() - t0
        sel = selectors.DefaultSelector()
        for s in socks:
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ)
        closed = 0
        while closed < count and time.monotonic() - t0 < 30:
            for key, _ in sel.select(1.0):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                try:
                    gone = sock.recv(4096) == b""
                except OSError:
                    gone = True
                if gone:
                    sel.unregister(sock)
                    closed += 1
        sel.close()
        for s in socks:
            s.close()
        back = wait(lambda: fds(proc.pid) <= base, 20)
        after = fds(proc.pid)
    return {
        "tried": f"{count} idle connections, server limited to 1024 open files",
        "survived": answered and back and closed == count,
        "lost": count - closed,
        "figure": f"/healthz answered after {first:.2f} s; {closed}/{count} closed by the "
        f"server (head_timeout 2 s); open files {base} -> {peak} -> {after} (was: the "
        "server locked out)",
    }


def connect_cycles(folder: Path, count: int = 4000) -> Row:
    """``count`` connect/close cycles (bare, a /healthz, a stream head): no file leaks."""
    with server(folder, "live", config="soak.yaml") as (proc, port, _log):
        get(port, "/healthz")
        before = fds(proc.pid)
        failed = 0
        for i in range(count):
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                    if i % 3 == 1:
                        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                        while s.recv(65536):
                            pass
                    elif i % 3 == 2:
                        s.sendall(b"GET /pipelines/live/stream HTTP/1.1\r\nHost: x\r\n\r\n")
                        s.recv(256)
            except OSError:
                failed += 1
        back = wait(lambda: fds(proc.pid) <= before, 20)
        after = fds(proc.pid)
        alive = get(port, "/healthz").startswith(b"HTTP/1.1 200")
    return {
        "tried": f"{count} connect/close cycles (bare, /healthz, stream)",
        "survived": back and failed == 0 and alive,
        "lost": failed,
        "figure": f"open files {before} -> {after}; {failed} cycles failed "
        "(the issue's run: 14 -> 14)",
    }
