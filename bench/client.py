"""A raw-socket HTTP/1.1 NDJSON client, cheap enough not to be the bottleneck.

It sends one ``GET``, decodes ``Transfer-Encoding: chunked`` incrementally and counts
``\\n`` in the payload with ``bytearray.count`` (no per-line work). Time runs from the
request being sent to the last byte. It checks status 200 and the expected line count.

Modes:

- throughput (default): one connection, blocking socket;
- ``--latency``: also records the arrival time of every line and reports p50/p99 of
  ``arrival - data.t`` (``data.t`` is `time.monotonic()` at production in the server;
  CLOCK_MONOTONIC is system-wide on Linux) or of ``--latency-field timestamp``
  (wall clock, RFC 3339);
- ``-k K``: K concurrent connections read by one process with ``selectors`` (fan-out).

It prints one JSON object on stdout. Run it in its own process (the harness does, pinned
to its own CPU)::

    python -m bench.client http://127.0.0.1:8000/stream?n=1000 --expect 1000
"""

from __future__ import annotations

import argparse
import selectors
import socket
import sys
import time
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import orjson

BUF_SIZE = 256 * 1024


class StreamDecoder:
    """Incremental HTTP/1.1 response decoder: headers, then chunked (or identity) body.

    ``lines`` counts ``\\n`` in the decoded payload. With ``keep=True`` the payload's
    complete lines are also handed out with `take_lines` (latency mode).
    """

    __slots__ = (
        "_head",
        "_headers_buf",
        "_remaining",
        "_skip",
        "chunked",
        "done",
        "headers_done",
        "lines",
        "nbytes",
        "payload",
        "status",
    )

    def __init__(self, *, keep: bool = False) -> None:
        self._headers_buf = bytearray()
        self._head = b""
        self._remaining = 0
        self._skip = 0
        self.headers_done = False
        self.chunked = True
        self.done = False
        self.status = 0
        self.lines = 0
        self.nbytes = 0
        self.payload: bytearray | None = bytearray() if keep else None

    def feed(self, buf: bytes | bytearray, end: int) -> None:
        """Feed ``buf[:end]`` (the bytes of one ``recv``)."""
        start = 0
        if not self.headers_done:
            self._headers_buf += buf[:end]
            pos = self._headers_buf.find(b"\r\n\r\n")
            if pos < 0:
                if len(self._headers_buf) > 65536:
                    raise ValueError("response headers larger than 64 KiB")
                return
            self._parse_headers(bytes(self._headers_buf[:pos]))
            rest = bytes(self._headers_buf[pos + 4 :])
            self._headers_buf = bytearray()
            self.headers_done = True
            if rest:
                self._body(rest, 0, len(rest))
            return
        self._body(buf, start, end)

    def _parse_headers(self, raw: bytes) -> None:
        lines = raw.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        self.status = int(parts[1])
        length: int | None = None
        chunked = False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            key = name.strip().lower()
            if key == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
            elif key == b"content-length":
                length = int(value.strip())
        self.chunked = chunked
        if not chunked:
            # identity body: up to content-length, or to EOF when absent
            self._remaining = length if length is not None else 1 << 62
            if length == 0:
                self.done = True

    def _body(self, buf: bytes | bytearray, i: int, end: int) -> None:
        payload = self.payload
        while i < end:
            remaining = self._remaining
            if remaining:
                take = remaining if remaining < end - i else end - i
                self.lines += buf.count(b"\n", i, i + take)
                if payload is not None:
                    payload += buf[i : i + take]
                self.nbytes += take
                self._remaining = remaining - take
                i += take
                if not self._remaining:
                    if not self.chunked:
                        self.done = True
                        return
                    self._skip = 2
                continue
            if self._skip:
                take = self._skip if self._skip < end - i else end - i
                self._skip -= take
                i += take
                continue
            if self.done:
                return  # the last chunk's trailer section: nothing we need
            if self._head:
                data = self._head + bytes(buf[i:end])
                self._head = b""
                self._body(data, 0, len(data))
                return
            j = buf.find(b"\r\n", i, end)
            if j < 0:
                self._head = bytes(buf[i:end])
                if len(self._head) > 1024:
                    raise ValueError("malformed chunk size line")
                return
            size = int(buf[i:j].split(b";", 1)[0], 16)
            i = j + 2
            if size == 0:
                self.done = True
                return
            self._remaining = size

    def take_lines(self) -> list[bytes]:
        """Return the complete lines decoded so far (latency mode) and drop them."""
        payload = self.payload
        if not payload:
            return []
        cut = payload.rfind(b"\n")
        if cut < 0:
            return []
        lines = bytes(payload[:cut]).split(b"\n")
        del payload[: cut + 1]
        return lines


def _request(host: str, port: int, path: str) -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        "Accept: application/x-ndjson\r\nConnection: close\r\n\r\n"
    ).encode()


def _percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, round(q * (len(sorted_values) - 1))))
    return sorted_values[k]


def _wall(ts: str) -> float:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def read_stream(
    host: str,
    port: int,
    path: str,
    *,
    expect: int | None,
    latency: bool = False,
    latency_field: str = "data.t",
    skip: int = 5,
    timeout: float = 60.0,
    deadline: float = 900.0,
) -> dict[str, Any]:
    """Read one stream to its end; return counts, timing and (``latency``) percentiles.

    ``timeout`` bounds each ``recv``; ``deadline`` bounds the whole read (seconds).
    """
    dec = StreamDecoder(keep=latency)
    buf = bytearray(BUF_SIZE)
    arrivals: list[tuple[float, float, bytes]] = []
    cpu0 = time.process_time()
    error: str | None = None
    first_byte = float("nan")
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        req = _request(host, port, path)
        t0 = time.perf_counter()
        stop_at = t0 + deadline
        sock.sendall(req)
        try:
            while not dec.done:
                n = sock.recv_into(buf)
                if latency:
                    mono, wall = time.monotonic(), time.time()
                if not n:
                    if dec.headers_done and not dec.chunked:
                        dec.done = True  # identity body ended by EOF
                    else:
                        error = "connection closed before the end of the stream"
                    break
                if first_byte != first_byte:  # NaN: first read
                    first_byte = time.perf_counter() - t0
                dec.feed(buf, n)
                if latency:
                    arrivals.extend((mono, wall, line) for line in dec.take_lines())
                if time.perf_counter() > stop_at:
                    error = f"deadline of {deadline} s passed"
                    break
        except (TimeoutError, OSError, ValueError) as exc:
            error = f"{type(exc).__name__}: {exc}"
        elapsed = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    if error is None and dec.status != 200:
        error = f"HTTP status {dec.status}"
    if error is None and expect is not None and dec.lines != expect:
        error = f"expected {expect} lines, got {dec.lines}"
    out: dict[str, Any] = {
        "ok": error is None,
        "error": error,
        "status": dec.status,
        "lines": dec.lines,
        "bytes": dec.nbytes,
        "elapsed": elapsed,
        "first_byte": first_byte,
        "client_cpu": cpu,
        "rate": dec.lines / elapsed if elapsed > 0 else 0.0,
        "mb_s": dec.nbytes / elapsed / 1e6 if elapsed > 0 else 0.0,
    }
    if latency:
        out.update(_latencies(arrivals, latency_field, skip))
    return out


def _latencies(arrivals: list[tuple[float, float, bytes]], field: str, skip: int) -> dict[str, Any]:
    lats: list[float] = []
    for mono, wall, line in arrivals:
        if not line:
            continue
        env = orjson.loads(line)
        if field == "timestamp":
            ts = env.get("timestamp")
            if isinstance(ts, str):
                lats.append(wall - _wall(ts))
            continue
        data = env.get("data")
        t = data.get("t") if isinstance(data, dict) else None
        if isinstance(t, int | float):
            lats.append(mono - t)
    lats = sorted(x * 1000.0 for x in lats[skip:])
    return {
        "latency_n": len(lats),
        "p50_ms": _percentile(lats, 0.50),
        "p99_ms": _percentile(lats, 0.99),
        "max_ms": lats[-1] if lats else float("nan"),
    }


def read_many(
    host: str,
    port: int,
    path: str,
    k: int,
    *,
    expect: int | None,
    timeout: float = 60.0,
    deadline: float = 900.0,
) -> dict[str, Any]:
    """Read ``k`` concurrent streams of ``path`` with one selector loop; aggregate them.

    ``timeout``: the longest silence on all connections; ``deadline``: the whole read.
    """
    sel = selectors.DefaultSelector()
    socks: list[socket.socket] = []
    decs: list[StreamDecoder] = []
    buf = bytearray(BUF_SIZE)
    error: str | None = None
    cpu0 = time.process_time()
    try:
        for _ in range(k):
            s = socket.create_connection((host, port), timeout=timeout)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            socks.append(s)
            decs.append(StreamDecoder())
        req = _request(host, port, path)
        t0 = time.perf_counter()
        stop_at = t0 + deadline
        for i, s in enumerate(socks):
            s.sendall(req)
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ, i)
        open_count = k
        while open_count:
            events = sel.select(timeout)
            if not events:
                error = f"no data for {timeout} s"
                break
            for key, _ in events:
                i = key.data
                s = socks[i]
                dec = decs[i]
                try:
                    n = s.recv_into(buf)
                except BlockingIOError:
                    continue
                if n:
                    dec.feed(buf, n)
                elif not dec.done:
                    error = f"connection {i} closed before the end of the stream"
                    dec.done = True
                if dec.done:
                    sel.unregister(s)
                    open_count -= 1
            if time.perf_counter() > stop_at:
                error = f"deadline of {deadline} s passed"
                break
        elapsed = time.perf_counter() - t0
    except (TimeoutError, OSError, ValueError) as exc:
        error = f"{type(exc).__name__}: {exc}"
        elapsed = float("nan")
    finally:
        sel.close()
        for s in socks:
            s.close()
    cpu = time.process_time() - cpu0
    lines = sum(d.lines for d in decs)
    nbytes = sum(d.nbytes for d in decs)
    if error is None:
        bad = [d.status for d in decs if d.status != 200]
        if bad:
            error = f"{len(bad)} connections got HTTP status {bad[0]}"
    if error is None and expect is not None:
        short = [d.lines for d in decs if d.lines != expect]
        if short:
            error = f"{len(short)} connections did not get {expect} lines (e.g. {short[0]})"
    return {
        "ok": error is None,
        "error": error,
        "clients": k,
        "lines": lines,
        "bytes": nbytes,
        "elapsed": elapsed,
        "client_cpu": cpu,
        "rate": lines / elapsed if elapsed > 0 else 0.0,
        "mb_s": nbytes / elapsed / 1e6 if elapsed > 0 else 0.0,
        "min_lines": min((d.lines for d in decs), default=0),
    }


def main(argv: list[str] | None = None) -> int:
    """CLI: read ``url`` and print one JSON object."""
    ap = argparse.ArgumentParser(prog="python -m bench.client", description=__doc__.split("\n")[0])
    ap.add_argument("url", help="http://127.0.0.1:PORT/path (loopback only)")
    ap.add_argument("--expect", type=int, default=None, help="lines per connection")
    ap.add_argument("--latency", action="store_true", help="record per-line latency")
    ap.add_argument("--latency-field", default="data.t", choices=["data.t", "timestamp"])
    ap.add_argument("--skip", type=int, default=5, help="latency: drop the first N lines")
    ap.add_argument("-k", type=int, default=1, help="concurrent connections (fan-out)")
    ap.add_argument("--timeout", type=float, default=60.0, help="longest silence, seconds")
    ap.add_argument("--deadline", type=float, default=900.0, help="whole read, seconds")
    args = ap.parse_args(argv)
    url = urlsplit(args.url)
    if url.hostname != "127.0.0.1" or url.port is None:
        ap.error("the benchmark client only talks to 127.0.0.1:PORT")
    path = url.path + (f"?{url.query}" if url.query else "")
    if args.k > 1:
        res = read_many(
            url.hostname,
            url.port,
            path,
            args.k,
            expect=args.expect,
            timeout=args.timeout,
            deadline=args.deadline,
        )
    else:
        res = read_stream(
            url.hostname,
            url.port,
            path,
            expect=args.expect,
            latency=args.latency,
            latency_field=args.latency_field,
            skip=args.skip,
            timeout=args.timeout,
            deadline=args.deadline,
        )
    sys.stdout.write(orjson.dumps(res).decode() + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
