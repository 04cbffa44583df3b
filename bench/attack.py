"""``python -m bench attack``: re-measure issue 9's probes on loopback; tried/survived/lost.

Each probe starts a fresh ``pipeline run`` (``--serve`` where it needs HTTP) from a
temporary folder, attacks it, and reports one line: what was tried, whether the server
survived it (the property the issue asks for), what was lost and the figure measured.
Everything is bounded (timeouts on every wait) and stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import orjson

from bench import parsers
from bench.hostile_stages import write_stages
from bench.probe_kit import (
    CANARY,
    PY,
    Row,
    client_connections,
    fds,
    frozen,
    get,
    rss_mib,
    run_to_end,
    server,
    wait,
)
from bench.probe_report import Probe, run_probes

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
  huge:
    source:
      use: astages:huge
      with: {count: "${HUGE_COUNT:-10}"}
  loud:
    source: {use: counter, with: {count: 100}}
    transforms: [{use: astages:loud}]
  clash:
    source: {use: counter, with: {count: 10}}
    transforms: [{use: astages:clash}]
  done: {source: {use: counter, with: {count: 3}}}
"""
SLOW_CONFIG = """
server: {heartbeat: 1, client_buffer: 1000000, client_buffer_bytes: 1000000000}
pipelines:
  slow: {source: {use: astages:ticks, with: {size: 2000, interval: 0.002}}, retain: 10}
"""


def project(folder: Path) -> None:
    """Write the probes' stage module and configs into ``folder``."""
    write_stages(folder, "astages")
    (folder / "pipelines.yaml").write_text(CONFIG)
    (folder / "slow.yaml").write_text(SLOW_CONFIG)


def huge_header(folder: Path) -> Row:
    """A 128 MiB header on one connection; /healthz probed meanwhile."""
    with server(folder, "live") as (_, port, _log):
        got = parsers.huge_header(port, 128 << 20)
    return {
        "tried": "1 connection, 128 MiB header",
        "survived": got["status"] == 431 and got["healthz_worst_s"] < 1.0,
        "lost": 0,
        "figure": f"{got['status']} after {got['answer_s']:.2f} s; "
        f"worst /healthz {got['healthz_worst_s'] * 1000:.0f} ms",
    }


def frozen_clients(folder: Path, clients: int = 50) -> Row:
    """``clients`` streams that never read: are they dropped *and* closed?"""
    with server(folder, "live") as (proc, port, _log):
        socks = [frozen(port, "live") for _ in range(clients)]
        wait(lambda: client_connections(proc.pid, port) >= clients, 30)  # all connected
        t0 = time.monotonic()
        closed = wait(lambda: client_connections(proc.pid, port) == 0, 60)
        took = time.monotonic() - t0
        left = client_connections(proc.pid, port)
        for s in socks:
            s.close()
    return {
        "tried": f"{clients} frozen stream clients",
        "survived": closed,
        "lost": max(left, 0),
        "figure": f"all closed by the server after {took:.1f} s" if closed else f"{left} open",
    }


def sigterm(folder: Path, name: str) -> Row:
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


def full_disk(folder: Path) -> Row:
    """A file sink on /dev/full: the run must say error (exit 1)."""
    proc = run_to_end(folder, "full")
    last = orjson.loads(proc.stdout.splitlines()[-1])
    return {
        "tried": "file sink on /dev/full, 102 envelopes",
        "survived": proc.returncode == 1 and last["reason"] == "error",
        "lost": 102,
        "figure": f"exit {proc.returncode}, complete reason {last['reason']} (loss reported)",
    }


def canary(folder: Path, log_format: str = "json") -> Row:
    """A secret from ${CANARY} in a stage's error (and its traceback): never printed."""
    proc = run_to_end(folder, "leak", log_format)
    leaks = (proc.stdout + proc.stderr).count(CANARY.encode())
    return {
        "tried": f"secret in chunk_error messages and logs ({log_format} logs)",
        "survived": leaks == 0,
        "lost": leaks,
        "figure": f"{leaks} occurrences printed",
    }


def stall(folder: Path) -> Row:
    """A sync transform sleeping 1 s on the loop: is it named?"""
    proc = run_to_end(folder, "stall")
    named = proc.stderr.count(b'"stage":"transforms[0]:sleepy"')
    return {
        "tried": "sync transform sleeping 1 s per chunk",
        "survived": named > 0,
        "lost": 0,
        "figure": f"{named} loop_blocked lines name the stage",
    }


def big_retention(folder: Path, count: int = 10) -> Row:
    """``count`` 50 MB chunks: what the hub holds after the run, a late client's replay."""
    os.environ["HUGE_COUNT"] = str(count)  # the config interpolates it
    with server(folder, "huge") as (proc, port, _log):
        done = wait(lambda: b'"state":"completed"' in get(port, "/pipelines/huge"), 120)
        state = orjson.loads(get(port, "/pipelines/huge").partition(b"\r\n\r\n")[2])
        held = state.get("held_bytes", 0) / (1 << 20)
        rss = rss_mib(proc.pid)
        body = get(port, "/pipelines/huge/stream?since=0", "1.0").partition(b"\r\n\r\n")[2]
    first = body.partition(b"\n")[0]
    missed = orjson.loads(first).get("missed") if first.startswith(b"{") else None
    bound = 64 + 16 + 48  # retain_bytes + client_buffer_bytes + one envelope (MiB)
    return {
        "tried": f"{count} chunks of 50 MB, default retain_bytes (64 MiB)",
        "survived": done and held <= bound and missed is not None,
        "lost": 0,
        "figure": f"hub holds {held:.0f} MiB after the run, server RSS {rss:.0f} MiB; "
        f"a late client gets lagged(missed={missed}) then the newest (was: 549 MiB held)",
    }


def stalled_client(folder: Path) -> Row:
    """A client that stops reading on a slow pipeline (never lapped): is it closed?"""
    with server(folder, "slow", config="slow.yaml") as (proc, port, _log):
        base = fds(proc.pid)
        s = frozen(port, "slow")
        t0 = time.monotonic()
        wait(lambda: fds(proc.pid) > base, 10)
        closed = wait(lambda: fds(proc.pid) <= base, 60)
        took = time.monotonic() - t0
        s.close()
    return {
        "tried": "1 frozen client of a slow pipeline (heartbeat 1 s, never lapped)",
        "survived": closed,
        "lost": 0 if closed else 1,
        "figure": f"cut as stalled and reset {took:.1f} s after connecting "
        "(was: not cut within 60 s)",
    }


def stage_print(folder: Path) -> Row:
    """A stage that prints: is stdout still NDJSON?"""
    proc = run_to_end(folder, "loud")
    lines = proc.stdout.splitlines()
    bad = sum(not line.startswith(b'{"status"') for line in lines)
    return {
        "tried": "100 chunks through a stage calling print()",
        "survived": bad == 0 and len(lines) == 102,
        "lost": bad,
        "figure": f"{bad} non-envelope lines on stdout of {len(lines)}",
    }


def key_clash(folder: Path) -> Row:
    """Data with keys 1 and "1": any line with a duplicate key?"""

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [k for k, _ in items]
        dupes[0] += len(keys) - len(set(keys))
        return dict(items)

    dupes = [0]
    proc = run_to_end(folder, "clash")
    for line in proc.stdout.splitlines():
        json.loads(line, object_pairs_hook=pairs)
    errors = proc.stdout.count(b'"status":"chunk_error"')
    return {
        "tried": '10 chunks with keys 1 and "1" in one dict',
        "survived": dupes[0] == 0 and errors == 10,
        "lost": dupes[0],
        "figure": f"{dupes[0]} duplicate keys; {errors} chunk_errors naming the keys",
    }


def http_edges(folder: Path) -> Row:
    """Encoded slash, HTTP/1.0, WebSocket refusals: right status, JSON, no chunked 1.0."""
    upgrade = (
        b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
        b"Sec-WebSocket-Key: %s\r\n"
    )
    probes = {
        "encoded slash -> 404 JSON": (b"GET /pipelines/done%2Fstream HTTP/1.1\r\nHost: x\r\n"),
        "HTTP/1.0 stream, not chunked": b"GET /pipelines/done/stream?since=0 HTTP/1.0\r\n",
        "WS upgrade of /stream -> JSON": b"GET /pipelines/done/stream HTTP/1.1\r\nHost: x\r\n"
        + upgrade % b"dGhlIHNhbXBsZSBub25jZQ==",
        "bad WS key -> JSON": b"GET /pipelines/done/ws HTTP/1.1\r\nHost: x\r\n" + upgrade % b"bad",
    }
    failed = []
    with server(folder, "done") as (_, port, _log):
        for name, head in probes.items():
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                close = b"" if b"Upgrade" in head else b"Connection: close\r\n"
                s.sendall(head + close + b"\r\n")
                answer = b""
                while chunk := s.recv(65536):
                    answer += chunk
            top = answer.partition(b"\r\n\r\n")[0].lower()
            ok = b"transfer-encoding" not in top if "1.0" in name else b"application/json" in top
            if not ok:
                failed.append(name)
    return {
        "tried": f"{len(probes)} edge requests",
        "survived": not failed,
        "lost": len(failed),
        "figure": "all answered as documented" if not failed else "wrong: " + ", ".join(failed),
    }


def sigterm_dropped(folder: Path, clients: int = 5) -> Row:
    """SIGTERM while dropped clients have not taken what they were sent: exit time."""
    with server(folder, "live") as (proc, port, log):
        socks = [frozen(port, "live") for _ in range(clients)]
        wait(lambda: b'"dropped_clients":0' not in get(port, "/pipelines/live"), 30)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        took = time.monotonic() - t0
        for s in socks:
            s.close()
        cancelled = sum("Exception in ASGI application" in line for line in log)
    return {
        "tried": f"SIGTERM with {clients} dropped clients not reading",
        "survived": proc.returncode == 0 and cancelled == 0 and took < 1.0,
        "lost": cancelled,
        "figure": f"exit {proc.returncode} in {took:.2f} s, {cancelled} streams cancelled "
        "with a traceback (was: 1.4 s, tracebacks)",
    }


def probes(quick: bool = False) -> dict[str, Probe]:
    """The probes by name; ``quick``: fewer frozen clients and 50 MB chunks (tests)."""
    return {
        "huge-header": huge_header,
        "frozen-clients": lambda f: frozen_clients(f, 5 if quick else 50),
        "sigterm-slow-sink": lambda f: sigterm(f, "slow_sink"),
        "sigterm-deaf-source": lambda f: sigterm(f, "deaf"),
        "full-disk": full_disk,
        "canary": canary,
        "stall": stall,
        "big-retention": lambda f: big_retention(f, 2 if quick else 10),
        "stalled-client": stalled_client,
        "sigterm-dropped-clients": sigterm_dropped,
        "stage-print": stage_print,
        "key-clash": key_clash,
        "http-edges": http_edges,
        "canary-console": lambda f: canary(f, "console"),
    }


def main(argv: list[str] | None = None) -> int:
    """Run the probes (all, or ``--only``); print one table row each; exit 1 if any failed."""
    ap = argparse.ArgumentParser(prog="python -m bench attack", description=__doc__)
    ap.add_argument("--only", action="append", default=[], choices=sorted(probes()))
    args = ap.parse_args(argv)
    rows = run_probes(probes(), args.only or list(probes()), project, "bench-attack-")
    return 1 if any(not row["survived"] for _, row, _ in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
