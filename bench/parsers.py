"""What a bounded request head costs: the framework on three HTTP parsers.

``python -m bench.parsers [--n N] [--reps R]`` serves ``bench/configs/http.yaml`` with

- ``httptools``: uvicorn's own httptools protocol (no head limit),
- ``limited``: our `pipeline.server.protocol.LimitedHttpTools` (the default),
- ``h11``: uvicorn's h11 protocol with ``h11_max_incomplete_event_size`` = 64 KiB,

and measures, round-robin: one stream of N envelopes (lines/s), small keep-alive
requests on one connection (``GET /healthz``, requests/s), and a 16 MiB header (seconds
until the server answers it, and the slowest ``/healthz`` meanwhile).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from typing import Any

from bench.client import read_stream
from bench.common import free_port
from bench.harness import ROOT

PARSERS = ("httptools", "limited", "h11")
CONFIG = "bench/configs/http.yaml"


def serve(parser: str, port: int) -> None:
    """Run the framework's server on ``parser`` (``python -m bench.parsers serve ...``)."""
    from pipeline.config import loader, models
    from pipeline.log import configure
    from pipeline.server import process

    configure("json")
    cfg = models.load(CONFIG)
    server = process.build(cfg, loader.resolve(cfg))
    server.config.access_log = False
    if parser == "httptools":
        server.config.http = "httptools"
    elif parser == "h11":
        server.config.http = "h11"
        server.config.h11_max_incomplete_event_size = 64 * 1024
    with process.bind("127.0.0.1", port) as sock:
        server.run(sockets=[sock])


def _get(port: int, path: str, sock: socket.socket | None = None) -> bytes:
    own = sock is None
    s = sock or socket.create_connection(("127.0.0.1", port), timeout=30)
    try:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        data = b""
        while b"\r\n\r\n" not in data or not data.endswith(b"}"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        return data
    finally:
        if own:
            s.close()


def requests_per_s(port: int, seconds: float = 2.0) -> float:
    """Sequential keep-alive ``GET /healthz`` on one connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            _get(port, "/healthz", sock)
            n += 1
        return n / (time.perf_counter() - t0)


def huge_header(port: int, size: int = 16 << 20) -> dict[str, float]:
    """Send a ``size``-byte header; time the answer and the slowest /healthz meanwhile."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=300)
    done = threading.Event()
    worst = [0.0]

    def probe() -> None:
        while not done.is_set():
            t = time.perf_counter()
            _get(port, "/healthz")
            worst[0] = max(worst[0], time.perf_counter() - t)
            time.sleep(0.05)

    def attack() -> None:
        try:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * size)
            sock.sendall(b"\r\n\r\n")
        except OSError:
            pass

    t0 = time.perf_counter()
    threads = [threading.Thread(target=probe), threading.Thread(target=attack, daemon=True)]
    for t in threads:
        t.start()
    answer = sock.recv(64)
    answered = time.perf_counter() - t0
    done.set()
    threads[0].join(300)
    sock.close()
    status = int(answer.split()[1]) if answer else 0
    return {"answer_s": answered, "status": status, "healthz_worst_s": worst[0]}


def measure(parser: str, n: int) -> dict[str, Any]:
    """One repetition for ``parser``: a fresh server, three measurements."""
    port = free_port()
    env = {**os.environ, "BENCH_N": str(n), "BENCH_INTERVAL": "0"}
    cmd = [sys.executable, "-m", "bench.parsers", "serve", parser, str(port)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                _get(port, "/healthz")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        stream = read_stream("127.0.0.1", port, "/pipelines/bench/stream", expect=n + 2)
        return {
            "stream_rate": stream["rate"] if stream["ok"] else 0.0,
            "requests_s": requests_per_s(port),
            **huge_header(port),
        }
    finally:
        proc.terminate()
        proc.wait(30)


def main(argv: list[str] | None = None) -> int:
    """The CLI: measure, print one line per parser (medians)."""
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["serve"]:
        serve(args[1], int(args[2]))
        return 0
    ap = argparse.ArgumentParser(prog="python -m bench.parsers")
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--reps", type=int, default=3)
    opts = ap.parse_args(args)
    results: dict[str, list[dict[str, Any]]] = {p: [] for p in PARSERS}
    for rep in range(opts.reps):
        order = PARSERS[rep % 3 :] + PARSERS[: rep % 3]
        for parser in order:
            results[parser].append(measure(parser, opts.n))
    print(
        "| parser | stream lines/s | /healthz req/s | 16 MiB header: answer | status "
        "| worst /healthz |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for parser, reps in results.items():
        med = {k: statistics.median(r[k] for r in reps) for k in reps[0]}
        print(
            f"| {parser} | {med['stream_rate']:,.0f} | {med['requests_s']:,.0f} | "
            f"{med['answer_s']:.2f} s | {med['status']:.0f} | {med['healthz_worst_s']:.2f} s |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
