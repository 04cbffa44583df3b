"""``python -m bench attack``: re-measure issue 9's probes on loopback; tried/survived/lost.

Each probe starts a fresh ``pipeline run`` (``--serve`` where it needs HTTP) from a
temporary folder, attacks it, and reports one line: what was tried, whether the server
survived it (the property the issue asks for), what was lost and the figure measured.
Everything is bounded (timeouts on every wait) and stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import orjson

from bench.common import free_port

PY = sys.executable
CANARY = "canary-Zq8v7-s3cret"
STAGES = """
import asyncio, time

async def ticks(size: int = 100, interval: float = 0.001):
    n = 0
    while True:
        yield {"n": n, "pad": "x" * size}
        n += 1
        await asyncio.sleep(interval)

async def slow_sink(envelope):
    await asyncio.sleep(1)

async def deaf():
    yield {"n": 0}
    while True:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            pass

def boom(chunk, secret: str):
    raise ValueError(f"cannot reach {secret}")

def sleepy(chunk):
    time.sleep(1.0)
    return chunk
"""
CONFIG = """
server: {shutdown_timeout: 2, client_buffer: 64, max_clients: 100}
pipelines:
  live: {source: {use: astages:ticks, with: {size: 2000}}, retain: 100}
  slow_sink:
    source: {use: astages:ticks}
    sinks: [{use: astages:slow_sink}]
  deaf: {source: {use: astages:deaf}}
  full: {source: {use: counter, with: {count: 102}}, sinks: [{use: file, with: {path: /dev/full}}]}
  leak:
    source: {use: counter, with: {count: 3}}
    transforms: [{use: astages:boom, with: {secret: "${CANARY}"}}]
  stall:
    source: {use: counter, with: {count: 2}}
    transforms: [{use: astages:sleepy}]
"""


@contextmanager
def server(folder: Path, *names: str) -> Iterator[tuple[subprocess.Popen[bytes], int, list[str]]]:
    """``pipeline run NAMES --serve`` on a free port; yields (process, port, log lines)."""
    port = free_port()
    cmd = [PY, "-m", "pipeline", "run", *names, "--serve", "--port", str(port)]
    env = {**os.environ, "CANARY": CANARY}
    proc = subprocess.Popen(
        [*cmd, "--log-format", "json"], cwd=folder, env=env, stderr=subprocess.PIPE
    )
    log: list[str] = []
    threading.Thread(target=lambda: log.extend(_lines(proc)), daemon=True).start()
    try:
        _wait(lambda: _get(port, "/healthz").startswith(b"HTTP/1.1 200"), 30)
        yield proc, port, log
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def _lines(proc: subprocess.Popen[bytes]) -> Iterator[str]:
    assert proc.stderr is not None
    for raw in proc.stderr:
        yield raw.decode(errors="replace")


def _wait(predicate: Callable[[], Any], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return True
        except OSError:
            pass
        time.sleep(0.05)
    return False


def _get(port: int, path: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        return data


def huge_header(folder: Path) -> dict[str, Any]:
    """A 128 MiB header on one connection; /healthz probed meanwhile."""
    with server(folder, "live") as (_, port, _log):
        sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        worst = [0.0]
        stop = threading.Event()

        def probe() -> None:
            while not stop.is_set():
                t = time.perf_counter()
                _get(port, "/healthz")
                worst[0] = max(worst[0], time.perf_counter() - t)
                time.sleep(0.05)

        def attack() -> None:
            with suppress(OSError):
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (128 << 20))

        t0 = time.perf_counter()
        threads = [threading.Thread(target=probe), threading.Thread(target=attack, daemon=True)]
        for t in threads:
            t.start()
        answer = sock.recv(64)
        took = time.perf_counter() - t0
        stop.set()
        threads[0].join(30)
        sock.close()
    status = int(answer.split()[1]) if answer else 0
    return {
        "tried": "1 connection, 128 MiB header",
        "survived": status == 431 and worst[0] < 1.0,
        "lost": 0,
        "figure": f"431 after {took:.2f} s; worst /healthz {worst[0] * 1000:.0f} ms",
    }


def frozen_clients(folder: Path, clients: int = 50) -> dict[str, Any]:
    """``clients`` streams that never read: are they dropped *and* closed?"""
    with server(folder, "live") as (proc, port, _log):
        base = len(os.listdir(f"/proc/{proc.pid}/fd"))
        socks = []
        for _ in range(clients):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.connect(("127.0.0.1", port))
            s.sendall(b"GET /pipelines/live/stream HTTP/1.1\r\nHost: x\r\n\r\n")
            socks.append(s)

        def fds() -> int:
            return len(os.listdir(f"/proc/{proc.pid}/fd"))

        _wait(lambda: fds() >= base + clients, 30)  # every client connected and streaming
        t0 = time.monotonic()
        closed = _wait(lambda: fds() <= base + 1, 60)
        took = time.monotonic() - t0
        left = fds() - base
        for s in socks:
            s.close()
    return {
        "tried": f"{clients} frozen stream clients",
        "survived": closed,
        "lost": max(left, 0),
        "figure": f"all closed by the server after {took:.1f} s" if closed else f"{left} open",
    }


def sigterm(folder: Path, name: str) -> dict[str, Any]:
    """SIGTERM with a misbehaving stage: exit code and time (bound: timeout 2 s + 1 s)."""
    cmd = [PY, "-m", "pipeline", "run", name, "--log-format", "json"]
    proc = subprocess.Popen(cmd, cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    proc.stdout.readline()
    proc.stdout.readline()
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        out, _ = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate(timeout=10)
    took = time.monotonic() - t0
    last = orjson.loads(out.splitlines()[-1]) if out.strip() else {}
    return {
        "tried": f"SIGTERM, {name.replace('_', ' ')} stage, shutdown_timeout 2",
        "survived": proc.returncode == 0 and took <= 3.0 and last.get("reason") == "shutdown",
        "lost": 0,
        "figure": f"exit {proc.returncode} in {took:.2f} s, last {last.get('status')}",
    }


def full_disk(folder: Path) -> dict[str, Any]:
    """A file sink on /dev/full: the run must say error (exit 1)."""
    proc = subprocess.run(
        [PY, "-m", "pipeline", "run", "full"], cwd=folder, capture_output=True, timeout=60
    )
    last = orjson.loads(proc.stdout.splitlines()[-1])
    return {
        "tried": "file sink on /dev/full, 102 envelopes",
        "survived": proc.returncode == 1 and last["reason"] == "error",
        "lost": 102,
        "figure": f"exit {proc.returncode}, complete reason {last['reason']} (loss reported)",
    }


def canary(folder: Path) -> dict[str, Any]:
    """A secret from ${CANARY} in a stage's error: never printed."""
    proc = subprocess.run(
        [PY, "-m", "pipeline", "run", "leak", "--log-format", "json"],
        cwd=folder,
        env={**os.environ, "CANARY": CANARY},
        capture_output=True,
        timeout=60,
    )
    leaks = (proc.stdout + proc.stderr).count(CANARY.encode())
    return {
        "tried": "secret in chunk_error messages and logs",
        "survived": leaks == 0,
        "lost": leaks,
        "figure": f"{leaks} occurrences printed",
    }


def stall(folder: Path) -> dict[str, Any]:
    """A sync transform sleeping 1 s on the loop: is it named?"""
    proc = subprocess.run(
        [PY, "-m", "pipeline", "run", "stall", "--log-format", "json"],
        cwd=folder,
        capture_output=True,
        timeout=60,
    )
    named = proc.stderr.count(b'"stage":"transforms[0]:sleepy"')
    return {
        "tried": "sync transform sleeping 1 s per chunk",
        "survived": named > 0,
        "lost": 0,
        "figure": f"{named} loop_blocked lines name the stage",
    }


PROBES: dict[str, Callable[[Path], dict[str, Any]]] = {
    "huge-header": huge_header,
    "frozen-clients": frozen_clients,
    "sigterm-slow-sink": lambda f: sigterm(f, "slow_sink"),
    "sigterm-deaf-source": lambda f: sigterm(f, "deaf"),
    "full-disk": full_disk,
    "canary": canary,
    "stall": stall,
}


def main(argv: list[str] | None = None) -> int:
    """Run the probes (all, or ``--only``); print one table row each; exit 1 if any failed."""
    ap = argparse.ArgumentParser(prog="python -m bench attack", description=__doc__)
    ap.add_argument("--only", action="append", default=[], choices=sorted(PROBES))
    args = ap.parse_args(argv)
    picked = args.only or list(PROBES)
    os.environ["CANARY"] = CANARY  # the config interpolates it
    print("| probe | tried | survived | lost | measured |")
    print("| --- | --- | --- | ---: | --- |")
    failed = 0
    with tempfile.TemporaryDirectory(prefix="bench-attack-") as tmp:
        folder = Path(tmp)
        (folder / "astages.py").write_text(STAGES)
        (folder / "pipelines.yaml").write_text(CONFIG)
        for name in picked:
            try:
                row = PROBES[name](folder)
            except Exception as exc:  # a probe that breaks is a failed probe, not a crash
                row = {"tried": name, "survived": False, "lost": "?", "figure": repr(exc)}
            failed += not row["survived"]
            mark = "yes" if row["survived"] else "NO"
            print(f"| {name} | {row['tried']} | {mark} | {row['lost']} | {row['figure']} |")
            sys.stdout.flush()
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
