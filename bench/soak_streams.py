"""Soak probes on streams: many tailing clients, SIGTERM under 100 streams, integrity.

Each function takes the prepared folder (see `bench.soak.project`) and its sizes,
runs a fresh ``pipeline run`` on 127.0.0.1 and returns a `bench.probe_kit.Row`.
"""

from __future__ import annotations

import os
import re
import selectors
import signal
import socket
import threading
import time
from pathlib import Path

import orjson
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

from bench.probe_kit import Row, frozen, get, rss_mib, run_to_end, server, wait

__all__ = ["idle_tailers", "integrity", "sigterm_streams", "tailing"]

_SEQ = re.compile(rb'"seq":(\d+)')


class _Reader:
    """One healthy HTTP/1.0 client (close-delimited body): checks seqs have no gap."""

    def __init__(self, port: int, path: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.sendall(f"GET {path} HTTP/1.0\r\n\r\n".encode())
        self.sock.setblocking(False)
        self.pending = b""
        self.head = True
        self.last = 0
        self.gaps = 0
        self.complete = False

    def take(self, data: bytes) -> None:
        self.pending += data
        if self.head:
            if b"\r\n\r\n" not in self.pending:
                return
            self.head, self.pending = False, self.pending.partition(b"\r\n\r\n")[2]
        end = self.pending.rfind(b"\n")
        if end < 0:
            return
        block, self.pending = self.pending[: end + 1], self.pending[end + 1 :]
        for seq in map(int, _SEQ.findall(block)):
            self.gaps += seq != self.last + 1
            self.last = seq
        self.complete = self.complete or b'"status":"complete"' in block


def tailing(folder: Path, clients: int = 200, frozen_n: int = 20, seconds: float = 60) -> Row:
    """``clients`` stream clients for ``seconds`` (a run of 100 envelopes/s), of which
    ``frozen_n`` never read: healthy ones get every envelope, frozen ones are dropped."""
    os.environ["SOAK_TAIL_COUNT"] = str(int(seconds * 100))
    with server(folder, "tail", config="soak.yaml") as (proc, port, _log):
        readers = [
            _Reader(port, "/pipelines/tail/stream?since=0") for _ in range(clients - frozen_n)
        ]
        stuck = [frozen(port, "tail") for _ in range(frozen_n)]
        rss_start = rss_mib(proc.pid)
        sel = selectors.DefaultSelector()
        for r in readers:
            sel.register(r.sock, selectors.EVENT_READ, r)
        t0, open_ = time.monotonic(), len(readers)
        while open_ and time.monotonic() - t0 < seconds * 3 + 60:
            for key, _ in sel.select(1.0):
                reader: _Reader = key.data
                try:
                    data = reader.sock.recv(1 << 18)
                except OSError:
                    data = b""
                if data:
                    reader.take(data)
                else:
                    sel.unregister(reader.sock)
                    open_ -= 1
        took = time.monotonic() - t0
        rss_end = rss_mib(proc.pid)
        state = orjson.loads(get(port, "/pipelines/tail").partition(b"\r\n\r\n")[2])
        sel.close()
        for r in readers:
            r.sock.close()
        wait(lambda: all(_closed(s) for s in stuck), 30, 0.2)
        cut = sum(_closed(s) for s in stuck)
        for s in stuck:
            s.close()
    whole = sum(r.complete and r.gaps == 0 and r.last == state["last_seq"] for r in readers)
    return {
        "tried": f"{clients} tailing clients for {took:.0f} s ({state['last_seq']} envelopes), "
        f"{frozen_n} frozen",
        "survived": whole == len(readers) and cut == frozen_n,
        "lost": len(readers) - whole,
        "figure": f"{whole}/{len(readers)} healthy clients got every envelope, no gap; "
        f"{cut}/{frozen_n} frozen cut and closed by the server "
        f"({state['dropped_clients']} as lagging, the rest as stalled); "
        f"server RSS {rss_start:.0f} -> {rss_end:.0f} MiB (the issue's run: 52 -> 64 MB)",
    }


def _closed(sock: socket.socket) -> bool:
    """Whether the server closed (or reset) a frozen client's connection; drains it."""
    sock.setblocking(False)
    try:
        while sock.recv(1 << 20):
            pass
    except BlockingIOError:
        return False
    except OSError:
        return True
    return True


def _http_stream(port: int, path: str, results: list[bool]) -> None:
    """Read a chunked stream to its end: its last envelope is complete(reason=shutdown)
    and the body ends with the terminal chunk."""
    data = bytearray()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            while chunk := s.recv(1 << 18):
                data += chunk
                if data.endswith(b"\r\n0\r\n\r\n"):
                    break
    except OSError:
        pass
    tail = bytes(data[-4096:])
    ok = tail.endswith(b"\r\n0\r\n\r\n") and b'"reason":"shutdown"' in tail
    results.append(ok)


def _ws_stream(port: int, results: list[bool]) -> None:
    last = b""
    try:
        with ws_connect(f"ws://127.0.0.1:{port}/pipelines/mixed/ws", open_timeout=30) as ws:
            while True:
                message = ws.recv(timeout=30)
                last = message.encode() if isinstance(message, str) else message
    except ConnectionClosed as exc:
        results.append(exc.rcvd is not None and exc.rcvd.code == 1000 and b"shutdown" in last)
    except (OSError, TimeoutError):
        results.append(False)


def sigterm_streams(folder: Path, streams: int = 100) -> Row:
    """SIGTERM while ``streams`` clients (NDJSON, SSE, WebSocket) follow a live pipeline:
    each gets ``complete(reason=shutdown)`` and a clean end; exit 0; time to exit."""
    results: list[bool] = []
    with server(folder, "mixed", config="soak.yaml") as (proc, port, _log):
        threads = []
        for i in range(streams):
            kind = i % 3
            if kind == 2:
                t = threading.Thread(target=_ws_stream, args=(port, results))
            else:
                path = "/pipelines/mixed/" + ("stream" if kind == 0 else "events")
                t = threading.Thread(target=_http_stream, args=(port, path, results))
            t.start()
            threads.append(t)
        wait(lambda: b'"clients":%d' % streams in get(port, "/pipelines/mixed"), 60, 0.1)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(30)
        except Exception:
            code = None
        took = time.monotonic() - t0
        for t in threads:
            t.join(40)
    good = sum(results)
    return {
        "tried": f"SIGTERM with {streams} streams (NDJSON, SSE, WebSocket)",
        "survived": good == streams and code == 0,
        "lost": streams - good,
        "figure": f"{good}/{streams} got complete(reason=shutdown) and a clean end; "
        f"exit {code} in {took:.2f} s (the issue's run: 0.31 s)",
    }


def _exact(lines: list[bytes], n: int) -> bool:
    """``lines`` are one whole run of a counter of ``n``: seqs 1.., data 0..n-1, in order."""
    envs = [orjson.loads(line) for line in lines if line]
    data = [e["data"]["n"] for e in envs if e["status"] == "processing"]
    seqs = [e["seq"] for e in envs]
    return (
        data == list(range(n))
        and seqs == list(range(1, n + 3))
        and envs[-1]["status"] == "complete"
        and envs[-1]["reason"] == "finished"
    )


def integrity(folder: Path, n: int = 100_000) -> Row:
    """A run of ``n`` chunks, read three ways (stdout, a file sink, an HTTP client from
    the start): every one exact (each chunk once, in order, no gap)."""
    os.environ["SOAK_N"] = str(n)
    ways: dict[str, bool] = {}
    proc = run_to_end(folder, "counts", timeout=600, config="soak.yaml")
    ways["stdout"] = proc.returncode == 0 and _exact(proc.stdout.splitlines(), n)
    out = folder / "counts.ndjson"
    out.unlink(missing_ok=True)
    proc = run_to_end(folder, "counts_file", timeout=600, config="soak.yaml")
    lines = out.read_bytes().splitlines() if out.exists() else []
    ways["file sink"] = proc.returncode == 0 and _exact(lines, n)
    with server(folder, "counts_http", config="soak.yaml") as (_proc, port, _log):
        wait(lambda: b'"state":"completed"' in get(port, "/pipelines/counts_http"), 600, 0.2)
        body = get(port, "/pipelines/counts_http/stream?since=0", "1.0").partition(b"\r\n\r\n")[2]
    ways["HTTP since=0"] = _exact(body.splitlines(), n)
    exact = [k for k, ok in ways.items() if ok]
    return {
        "tried": f"{n:,} chunks read 3 ways (stdout, file sink, HTTP)",
        "survived": len(exact) == len(ways),
        "lost": len(ways) - len(exact),
        "figure": f"exact: {', '.join(exact) or 'none'}",
    }


def _stream_head(port: int, path: str) -> tuple[int, socket.socket]:
    """Open a stream; return its status and the socket (kept open by the caller)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head and (chunk := sock.recv(4096)):
        head += chunk
    return (int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/1.1 ") else 0), sock


def _drain(sock: socket.socket, seconds: float) -> bytes:
    sock.settimeout(seconds)
    data = b""
    try:
        while chunk := sock.recv(1 << 16):
            data += chunk
    except OSError:
        pass
    return data


def idle_tailers(folder: Path, tailers: int = 50, newcomers: int = 12) -> Row:
    """``tailers`` idle streams fill ``max_clients`` on an idle pipeline; once they are
    idle for ``evict_idle_after`` (3 s here), ``newcomers`` new streams each get served
    and as many idle ones end with ``lagged(reason=evicted)`` (was: 12/12 got 503)."""
    (folder / "idle.yaml").write_text(
        f"server: {{max_clients: {tailers}, heartbeat: 1, evict_idle_after: 3}}\n"
        "pipelines:\n  quiet: {source: {use: astages:deaf}}\n"
    )
    path = "/pipelines/quiet/stream?since=0"
    with server(folder, "quiet", config="idle.yaml") as (_proc, port, _log):
        idle = [_stream_head(port, path)[1] for _ in range(tailers)]
        held: list[socket.socket] = []
        t0, refused = time.monotonic(), 0
        while len(held) < newcomers and time.monotonic() - t0 < 60:
            status, sock = _stream_head(port, path)
            if status == 200:
                held.append(sock)
                continue
            refused += 1
            sock.close()
            time.sleep(0.2)
        took = time.monotonic() - t0
        notices = [_drain(sock, 0.5) for sock in idle]
        evicted = sum(b'"reason":"evicted"' in data and b'"resume":"' in data for data in notices)
        for sock in idle + held:
            sock.close()
    return {
        "tried": f"{tailers} idle tailers holding max_clients {tailers}, {newcomers} new streams",
        "survived": len(held) == newcomers and evicted == newcomers,
        "lost": newcomers - len(held),
        "figure": f"{len(held)}/{newcomers} new streams served within {took:.1f} s "
        f"(503 for the first {refused} tries, until the tailers were idle 3 s); "
        f"{evicted} tailers got lagged(reason=evicted) with a resume token (was: 12/12 "
        "new streams refused for as long as the tailers stayed)",
    }
