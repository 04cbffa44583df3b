"""The framework's fan-out: one ``trigger: start`` run broadcast to K HTTP clients.

Each measurement starts a fresh framework server (``bench/configs/fanout.yaml``,
pinned to the server CPU) whose source waits for a gate file, connects every client
(``GET /pipelines/fanout/stream?since=0``) from this process (pinned to the client
CPU), checks on ``GET /pipelines/fanout`` that all of them are subscribed, then creates
the gate. Time runs from the gate to the last byte of the last client. Aggregate =
K x N / elapsed (N = ``processing`` envelopes per client, as in the baseline); every
client must get exactly N + 2 lines (``starting``, ``complete``). It prints one JSON
object (the `bench.harness.run_json` protocol)::

    python -m bench.fanout_fw throughput --clients 100 --n 20000
    python -m bench.fanout_fw throughput --clients 100 --n 20000 --frozen 1
    python -m bench.fanout_fw memory --seconds 60 --rate 10000
    python -m bench.fanout_fw latency --clients 100 --rate 10000 --n 20000

- ``--frozen F``: F more connections that send the request and never read (a 4 KiB
  ``SO_RCVBUF``). They are not counted; the hub must drop them (``dropped_clients``).
- ``latency``: the source paced at ``--rate`` envelopes/s to K clients; the first
  ``--sample`` clients decode every line and take, per ``processing`` envelope, the time
  from the reading's production in the source (its ``t``, `time.monotonic`, the same
  clock in both processes) to the line's read here: p50/p99/max in ms over every
  sampled envelope after the first ``--skip`` of each client.
- ``memory``: the source paced at ``--rate`` envelopes/s for ``--seconds``; one frozen
  client and one healthy one; server RSS sampled every ``--sample`` seconds.

Server RSS (``VmRSS``) is read from ``/proc/PID/status`` after the read, with the
peak (``VmHWM``) of the server's whole life.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import selectors
import socket
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from bench.client import BUF_SIZE, StreamDecoder
from bench.common import HOST, cpu_plan, free_port, proc_status
from bench.harness import ROOT, Server, StartError, start_server

CONFIG = "bench/configs/fanout.yaml"
PIPELINE = "fanout"
FROZEN_RCVBUF = 4096
CONNECT_TIMEOUT = 30.0
"""Seconds for every client to connect and be subscribed (before the gate)."""
SILENCE = 60.0
"""Longest silence on all connections before a read fails."""

Result = dict[str, Any]


def server_argv(port: int) -> list[str]:
    """The framework's server for the fan-out config, serving only ``fanout``."""
    return [
        *(sys.executable, "-m", "pipeline", "run", "--serve", "-c", CONFIG),
        *("--port", str(port), PIPELINE),
    ]


def pipeline_state(port: int) -> dict[str, Any]:
    """``GET /pipelines/fanout`` (the hub's ``clients``, ``dropped_clients``...)."""
    url = f"http://{HOST}:{port}/pipelines/{PIPELINE}"
    with urllib.request.urlopen(url, timeout=10) as resp:
        data = orjson.loads(resp.read())
    return data if isinstance(data, dict) else {}


def _raise_nofile(need: int) -> None:
    """Raise the soft open-files limit to ``need`` if the hard limit allows it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        top = need if hard == resource.RLIM_INFINITY else min(need, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (top, hard))


def _request(port: int) -> bytes:
    return (
        f"GET /pipelines/{PIPELINE}/stream?since=0 HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
        "Accept: application/x-ndjson\r\nConnection: close\r\n\r\n"
    ).encode()


class Clients:
    """K reading connections in one selector loop, plus F frozen ones that never read."""

    def __init__(self, port: int, k: int, frozen: int, keep: int = 0) -> None:
        self.sel = selectors.DefaultSelector()
        self.socks: list[socket.socket] = []
        self.frozen: list[socket.socket] = []
        self.decs: list[StreamDecoder] = []
        self.done_at: list[float] = []
        self.open = 0
        self.buf = bytearray(BUF_SIZE)
        req = _request(port)
        for _ in range(frozen):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.frozen.append(s)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, FROZEN_RCVBUF)
            s.settimeout(CONNECT_TIMEOUT)
            s.connect((HOST, port))
            s.sendall(req)
        for i in range(k):
            s = socket.create_connection((HOST, port), timeout=CONNECT_TIMEOUT)
            self.socks.append(s)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.sendall(req)
            s.setblocking(False)
            self.sel.register(s, selectors.EVENT_READ, i)
            self.decs.append(StreamDecoder(keep=i < keep))
            self.done_at.append(float("nan"))
        self.open = k
        self.on_lines: Callable[[int, list[bytes]], None] | None = None

    def close(self) -> None:
        """Close every socket (idempotent)."""
        self.sel.close()
        for s in (*self.socks, *self.frozen):
            s.close()

    def pump(
        self,
        until: Callable[[], bool],
        *,
        deadline: float,
        tick: Callable[[], None] | None = None,
    ) -> str | None:
        """Read until ``until()`` or every stream ended; return an error or None.

        ``deadline`` is a `time.perf_counter` time; ``tick`` runs at least every 0.1 s.
        """
        buf = self.buf
        silent_since = time.perf_counter()
        while self.open and not until():
            now = time.perf_counter()
            if now > deadline:
                return "deadline passed"
            events = self.sel.select(0.1)
            if tick is not None:
                tick()
            if not events:
                if now - silent_since > SILENCE:
                    return f"no data for {SILENCE} s"
                continue
            silent_since = now
            for key, _ in events:
                i = key.data
                s, dec = self.socks[i], self.decs[i]
                try:
                    n = s.recv_into(buf)
                except BlockingIOError:
                    continue
                except OSError as exc:
                    return f"connection {i}: {type(exc).__name__}: {exc}"
                if n:
                    try:
                        dec.feed(buf, n)
                    except ValueError as exc:
                        return f"connection {i}: {exc}"
                    if dec.payload is not None and self.on_lines is not None:
                        self.on_lines(i, dec.take_lines())
                elif not dec.done:
                    return f"connection {i} closed before the end of the stream"
                if dec.done:
                    self.done_at[i] = time.perf_counter()
                    self.sel.unregister(s)
                    self.open -= 1
        return None


def _wait_subscribed(port: int, clients: Clients, want: int, server: Server) -> str | None:
    """Until every reader has its ``starting`` line and the hub counts ``want`` clients."""
    stop = time.perf_counter() + CONNECT_TIMEOUT
    err = clients.pump(lambda: all(d.lines >= 1 for d in clients.decs), deadline=stop)
    if err is not None:
        return f"before the gate: {err}"
    while time.perf_counter() < stop:
        if server.proc.poll() is not None:
            return "server exited before the gate"
        if pipeline_state(port).get("clients", 0) >= want:
            return None
        time.sleep(0.02)
    return f"the hub did not count {want} clients within {CONNECT_TIMEOUT} s"


def _cpus() -> tuple[int | None, int | None]:
    """The parent's (server CPU, client CPU) plan.

    The harness starts this process pinned to the server CPU; widen our affinity back to
    every allowed CPU first (the kernel keeps only those of our cpuset), or the plan would
    see one CPU and the server and the clients would share it.
    """
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, range(os.cpu_count() or 1))
    return cpu_plan()


def _start(env: dict[str, str], logname: str) -> tuple[Server, int | None]:
    server_cpu, client_cpu = _cpus()
    port = free_port()
    server = start_server(
        logname,
        server_argv(port),
        env,
        port=port,
        cpu=server_cpu,
        logdir=ROOT / "bench" / "results" / "logs",
        ready_timeout=30.0,
    )
    return server, client_cpu


def throughput(k: int, n: int, frozen: int, timeout: float) -> Result:
    """One fan-out run of ``n`` envelopes to ``k`` readers (+ ``frozen`` non-readers)."""
    _raise_nofile(2 * (k + frozen) + 256)
    with tempfile.TemporaryDirectory(prefix="bench-fanout-") as tmp:
        gate = Path(tmp) / "gate"
        env = {"BENCH_N": str(n), "BENCH_GATE": str(gate), "BENCH_RATE": "0"}
        try:
            server, client_cpu = _start(env, f"fanout-fw-k{k}-f{frozen}")
        except StartError as exc:
            return {"ok": False, "skipped": str(exc)}
        clients: Clients | None = None
        try:
            if client_cpu is not None:
                os.sched_setaffinity(0, {client_cpu})
            clients = Clients(server.port, k, frozen)
            error = _wait_subscribed(server.port, clients, k + frozen, server)
            if error is not None:
                return {"ok": False, "error": error}
            rss0 = proc_status(server.proc.pid).get("VmRSS", 0)
            cpu0, ccpu0 = server.cpu_seconds(), time.process_time()
            gate.touch()
            t0 = time.perf_counter()
            error = clients.pump(lambda: False, deadline=t0 + timeout)
            last = max((t for t in clients.done_at if t == t), default=time.perf_counter())
            elapsed = last - t0
            cpu1, ccpu1 = server.cpu_seconds(), time.process_time()
            mem = proc_status(server.proc.pid)
            state = pipeline_state(server.port)
            return _throughput_result(clients, k, n, frozen, elapsed, error, state) | {
                "server_cpu_frac": (cpu1 - cpu0) / elapsed if elapsed > 0 else 0.0,
                "client_cpu_frac": (ccpu1 - ccpu0) / elapsed if elapsed > 0 else 0.0,
                "server_rss_before": rss0,
                "server_rss": mem.get("VmRSS", 0),
                "server_hwm": mem.get("VmHWM", 0),
            }
        except (OSError, ValueError) as exc:
            return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        finally:
            if clients is not None:
                clients.close()
            server.stop()


def _throughput_result(
    clients: Clients,
    k: int,
    n: int,
    frozen: int,
    elapsed: float,
    error: str | None,
    state: dict[str, Any],
) -> Result:
    decs = clients.decs
    expect = n + 2
    if error is None:
        bad = [d.status for d in decs if d.status != 200]
        if bad:
            error = f"{len(bad)} connections got HTTP status {bad[0]}"
    if error is None:
        short = [d.lines for d in decs if d.lines != expect]
        if short:
            error = f"{len(short)} connections did not get {expect} lines (e.g. {short[0]})"
    dropped = int(state.get("dropped_clients", 0))
    if error is None and dropped < frozen:
        error = f"{frozen} frozen client(s) but dropped_clients = {dropped}"
    nbytes = sum(d.nbytes for d in decs)
    return {
        "ok": error is None,
        "error": error,
        "clients": k,
        "frozen": frozen,
        "n": n,
        "lines": sum(d.lines for d in decs),
        "min_lines": min((d.lines for d in decs), default=0),
        "bytes": nbytes,
        "elapsed": elapsed,
        "rate": k * n / elapsed if elapsed > 0 else 0.0,
        "mb_s": nbytes / elapsed / 1e6 if elapsed > 0 else 0.0,
        "dropped_clients": dropped,
    }


def latency(k: int, n: int, rate: float, sample: int, skip: int, timeout: float) -> Result:
    """``n`` envelopes paced at ``rate``/s to ``k`` readers; latency on ``sample`` of them."""
    _raise_nofile(2 * k + 256)
    sample = min(sample, k)
    with tempfile.TemporaryDirectory(prefix="bench-fanout-lat-") as tmp:
        gate = Path(tmp) / "gate"
        env = {"BENCH_N": str(n), "BENCH_GATE": str(gate), "BENCH_RATE": str(rate)}
        try:
            server, client_cpu = _start(env, f"fanout-lat-k{k}")
        except StartError as exc:
            return {"ok": False, "skipped": str(exc)}
        clients: Clients | None = None
        lat: list[float] = []
        seen = [0] * sample

        def on_lines(i: int, lines: list[bytes]) -> None:
            now = time.monotonic()
            for line in lines:
                env = orjson.loads(line)
                data = env.get("data")
                if env.get("status") != "processing" or not isinstance(data, dict):
                    continue
                seen[i] += 1
                if seen[i] > skip and "t" in data:
                    lat.append((now - data["t"]) * 1000.0)

        try:
            if client_cpu is not None:
                os.sched_setaffinity(0, {client_cpu})
            clients = Clients(server.port, k, 0, keep=sample)
            error = _wait_subscribed(server.port, clients, k, server)
            if error is not None:
                return {"ok": False, "error": error}
            clients.on_lines = on_lines
            gate.touch()
            t0 = time.perf_counter()
            error = clients.pump(lambda: False, deadline=t0 + timeout)
            elapsed = time.perf_counter() - t0
            state = pipeline_state(server.port)
            res = _throughput_result(clients, k, n, 0, elapsed, error, state)
        except (OSError, ValueError) as exc:
            return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        finally:
            if clients is not None:
                clients.close()
            server.stop()
    if res["ok"] and not lat:
        res |= {"ok": False, "error": "no latency samples"}
    lat.sort()

    def pct(q: float) -> float:
        return lat[min(len(lat) - 1, int(q * len(lat)))] if lat else 0.0

    return res | {
        "rate": n / elapsed if elapsed > 0 else 0.0,
        "target_rate": rate,
        "samples": len(lat),
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "max_ms": lat[-1] if lat else 0.0,
    }


def memory(seconds: float, rate: float, sample: float) -> Result:
    """A paced run with one frozen and one healthy client; RSS every ``sample`` s."""
    n = int(seconds * rate)
    with tempfile.TemporaryDirectory(prefix="bench-fanout-mem-") as tmp:
        gate = Path(tmp) / "gate"
        env = {"BENCH_N": str(n), "BENCH_GATE": str(gate), "BENCH_RATE": str(rate)}
        try:
            server, client_cpu = _start(env, "fanout-fw-memory")
        except StartError as exc:
            return {"ok": False, "skipped": str(exc)}
        clients: Clients | None = None
        try:
            if client_cpu is not None:
                os.sched_setaffinity(0, {client_cpu})
            clients = Clients(server.port, 1, 1)
            error = _wait_subscribed(server.port, clients, 2, server)
            if error is not None:
                return {"ok": False, "error": error}
            pid = server.proc.pid
            samples: list[tuple[float, int, int]] = []
            gate.touch()
            t0 = time.perf_counter()
            nxt = [t0]

            def tick() -> None:
                now = time.perf_counter()
                if now >= nxt[0]:
                    nxt[0] += sample
                    lines = clients.decs[0].lines if clients else 0
                    samples.append((now - t0, proc_status(pid).get("VmRSS", 0), lines))

            tick()
            error = clients.pump(lambda: False, deadline=t0 + seconds * 3 + 60, tick=tick)
            elapsed = time.perf_counter() - t0
            samples.append((elapsed, proc_status(pid).get("VmRSS", 0), clients.decs[0].lines))
            state = pipeline_state(server.port)
            return _memory_result(clients, n, seconds, rate, elapsed, error, state, samples)
        except (OSError, ValueError) as exc:
            return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        finally:
            if clients is not None:
                clients.close()
            server.stop()


MEMORY_FROM = 10.0
"""Growth is measured from the sample at this many seconds to the end."""


def _memory_result(
    clients: Clients,
    n: int,
    seconds: float,
    rate: float,
    elapsed: float,
    error: str | None,
    state: dict[str, Any],
    samples: list[tuple[float, int, int]],
) -> Result:
    dec = clients.decs[0]
    if error is None and (dec.status != 200 or dec.lines != n + 2):
        error = f"healthy client: status {dec.status}, {dec.lines} lines, expected {n + 2}"
    dropped = int(state.get("dropped_clients", 0))
    if error is None and dropped < 1:
        error = f"the frozen client was not dropped (dropped_clients = {dropped})"
    start = min(MEMORY_FROM, seconds / 2)
    first = next((s for s in samples if s[0] >= start - 0.5), samples[-1])
    return {
        "ok": error is None,
        "error": error,
        "n": n,
        "seconds": seconds,
        "rate_target": rate,
        "elapsed": elapsed,
        "rate": dec.lines / elapsed if elapsed > 0 else 0.0,
        "healthy_lines": dec.lines,
        "dropped_clients": dropped,
        "samples": samples,
        "growth_from": first[0],
        "rss_from": first[1],
        "rss_end": samples[-1][1],
        "rss_max": max(s[1] for s in samples),
        "growth": samples[-1][1] - first[1],
    }


def main(argv: list[str] | None = None) -> int:
    """CLI: print one JSON object."""
    ap = argparse.ArgumentParser(prog="python -m bench.fanout_fw")
    sub = ap.add_subparsers(dest="what", required=True)
    t = sub.add_parser("throughput")
    t.add_argument("--clients", type=int, default=100)
    t.add_argument("--n", type=int, default=20_000, help="envelopes per client")
    t.add_argument("--frozen", type=int, default=0, help="connections that never read")
    t.add_argument("--timeout", type=float, default=240.0, help="the read, seconds")
    lt = sub.add_parser("latency")
    lt.add_argument("--clients", type=int, default=100)
    lt.add_argument("--n", type=int, default=20_000, help="envelopes per client")
    lt.add_argument("--rate", type=float, default=10_000.0, help="envelopes/s")
    lt.add_argument("--sample", type=int, default=5, help="clients whose lines are timed")
    lt.add_argument("--skip", type=int, default=100, help="first envelopes not timed")
    lt.add_argument("--timeout", type=float, default=240.0, help="the read, seconds")
    m = sub.add_parser("memory")
    m.add_argument("--seconds", type=float, default=60.0)
    m.add_argument("--rate", type=float, default=10_000.0, help="envelopes/s")
    m.add_argument("--sample", type=float, default=5.0, help="seconds between RSS samples")
    args = ap.parse_args(argv)
    if args.what == "throughput":
        res = throughput(max(1, args.clients), max(1, args.n), max(0, args.frozen), args.timeout)
    elif args.what == "latency":
        k, n = max(1, args.clients), max(1, args.n)
        res = latency(k, n, max(1.0, args.rate), max(1, args.sample), args.skip, args.timeout)
    else:
        res = memory(max(1.0, args.seconds), max(1.0, args.rate), max(0.5, args.sample))
    sys.stdout.write(orjson.dumps(res).decode() + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
