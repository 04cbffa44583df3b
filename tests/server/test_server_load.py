"""Load on a real server: fan-out, a frozen client, connection churn (bounded in count and time)."""

from __future__ import annotations

import contextlib
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import orjson
import psutil
from websockets.sync.client import connect as ws_connect

from tests.http_helpers import (
    RawStream,
    ServerProcess,
    ThreadServer,
    fd_count,
    sse_events,
    wait_until,
)

STAGES = """
import asyncio

async def big(count: int = 100, size: int = 1000):
    pad = "x" * size
    for n in range(count):
        yield {"n": n, "pad": pad}
        if n % 4 == 0:
            await asyncio.sleep(0.001)
"""


def write(tmp_path: Path, body: str) -> Path:
    (tmp_path / "ldstages.py").write_text(STAGES)
    path = tmp_path / "pipelines.yaml"
    path.write_text(body)
    return path


def _state(srv: ServerProcess | ThreadServer, name: str) -> dict:
    with RawStream(srv.port, f"/pipelines/{name}") as s:
        return s.json()


def test_100_mixed_clients_get_identical_sequences(tmp_path: Path) -> None:
    """40 NDJSON, 30 SSE and 30 WebSocket clients of one run get the same full sequence."""
    count = 3000
    path = write(
        tmp_path,
        f"""
server: {{client_buffer: 8192}}
pipelines:
  fan:
    source: {{use: counter, with: {{count: {count}, interval: 0.001}}}}
    retain: 10000
""",
    )
    results: dict[int, list[int]] = {}

    def ndjson(i: int, port: int) -> None:
        with RawStream(port, "/pipelines/fan/stream?since=0", timeout=60) as s:
            results[i] = [e["seq"] for e in s.envelopes()]

    def sse(i: int, port: int) -> None:
        with RawStream(port, "/pipelines/fan/events?since=0", timeout=60) as s:
            results[i] = [orjson.loads(e["data"])["seq"] for e in sse_events(s) if "data" in e]

    def ws(i: int, port: int) -> None:
        with ws_connect(f"ws://127.0.0.1:{port}/pipelines/fan/ws?since=0") as conn:
            results[i] = [orjson.loads(m)["seq"] for m in conn]

    with ServerProcess(path) as srv:
        kinds = [ndjson] * 40 + [sse] * 30 + [ws] * 30
        threads = [
            threading.Thread(target=fn, args=(i, srv.port), daemon=True)
            for i, fn in enumerate(kinds)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(90)
        assert not any(t.is_alive() for t in threads)
    expected = list(range(1, count + 3))
    assert len(results) == 100
    assert all(seqs == expected for seqs in results.values())


def test_frozen_client_is_dropped_and_memory_stays_bounded(tmp_path: Path) -> None:
    """A client that never reads is dropped; a healthy one gets everything; RSS is bounded.

    The run is 12,000 envelopes of 16 KB (~190 MB): buffering it for the frozen client
    would cost far more than the 100 MB bound.
    """
    count, size = 12000, 16000
    path = write(
        tmp_path,
        f"""
server: {{client_buffer: 512}}
pipelines:
  big:
    source: {{use: ldstages:big, with: {{count: {count}, size: {size}}}}}
    trigger: start
    retain: 64
""",
    )
    with ServerProcess(path) as srv:
        proc = psutil.Process(srv.pid)
        frozen = RawStream(srv.port, "/pipelines/big/stream", rcvbuf=4096, timeout=30)
        healthy = RawStream(srv.port, "/pipelines/big/stream", timeout=60)
        got: list[dict] = []
        with frozen, healthy:
            frozen.read_head()
            healthy.read_head()
            base = proc.memory_info().rss
            reader = threading.Thread(target=lambda: got.extend(healthy.envelopes()))
            reader.start()
            peak = base
            deadline = time.monotonic() + 90
            while reader.is_alive() and time.monotonic() < deadline:
                peak = max(peak, proc.memory_info().rss)
                time.sleep(0.05)
            reader.join(1)
            assert not reader.is_alive()
            state = _state(srv, "big")
            tail: list[dict] = []
            with contextlib.suppress(ConnectionResetError):  # a frozen client is reset
                tail.extend(frozen.envelopes())  # what the kernel held, then the end
        assert got[-1]["status"] == "complete"
        seqs = [e["seq"] for e in got]
        assert seqs == list(range(seqs[0], count + 3))
        assert state["dropped_clients"] >= 1
        assert all(e["status"] != "complete" for e in tail)
        assert not frozen.clean_end or tail[-1]["status"] == "lagged"
        assert peak - base < 100 * 2**20, f"RSS grew by {(peak - base) / 2**20:.0f} MB"
        wait_until(lambda: _state(srv, "big")["clients"] == 0)


def _cycle(port: int, i: int) -> None:
    path = ("/pipelines/live/stream", "/pipelines/live/events", "/pipelines/live")[i % 3]
    with RawStream(port, path, timeout=20) as s:
        assert s.read_head() == 200
        if i % 3 == 0:
            assert s.envelopes(limit=1)


def _churn(port: int, cycles: int) -> None:
    with ThreadPoolExecutor(20) as pool:
        for fut in [pool.submit(_cycle, port, i) for i in range(cycles)]:
            fut.result(60)


LIVE = "pipelines:\n  live:\n    source: {use: counter, with: {count: null, interval: 0.01}}\n"


def test_connection_churn_leaves_no_fds_behind(tmp_path: Path) -> None:
    """2,000 connect/read/close cycles: client count back to 0, open fds back to baseline."""
    with ServerProcess(write(tmp_path, LIVE)) as srv:
        _churn(srv.port, 30)
        wait_until(lambda: _state(srv, "live")["clients"] == 0)
        before = fd_count(srv.pid)
        _churn(srv.port, 2000)
        wait_until(lambda: _state(srv, "live")["clients"] == 0, 20)
        wait_until(lambda: fd_count(srv.pid) <= before + 5, 20)


def test_connection_churn_leaves_no_tasks_behind(tmp_path: Path) -> None:
    """Connect/close cycles against an in-process server leave no asyncio task behind."""
    srv = ThreadServer(write(tmp_path, LIVE))
    with srv:
        _churn(srv.port, 30)
        wait_until(lambda: _state(srv, "live")["clients"] == 0)
        time.sleep(0.2)
        before = srv.tasks()
        _churn(srv.port, 600)
        wait_until(lambda: _state(srv, "live")["clients"] == 0, 20)
        wait_until(lambda: srv.tasks() <= before + 3, 20)
