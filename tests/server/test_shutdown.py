"""SIGINT/SIGTERM with open streams: every stream ends with complete(shutdown), exit 0."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import orjson

from tests.http_helpers import RawStream, ServerProcess, ThreadServer, sse_events, wait_until

STAGES = """
import asyncio

async def slow(chunk):
    await asyncio.sleep(60)
    return chunk

async def endless():
    n = 0
    while True:
        yield {"n": n}
        n += 1
        await asyncio.sleep(0.01)
"""


def write(tmp_path: Path, body: str) -> Path:
    (tmp_path / "sdstages.py").write_text(STAGES)
    path = tmp_path / "pipelines.yaml"
    path.write_text(body)
    return path


def test_sigterm_ends_every_stream_with_complete_and_exits_0(tmp_path: Path) -> None:
    """50 NDJSON + 5 SSE + 5 gzip clients each end with complete(shutdown), cleanly."""
    out = tmp_path / "out.ndjson"
    path = write(
        tmp_path,
        f"""
server: {{heartbeat: 0.5, shutdown_timeout: 5}}
pipelines:
  live:
    source: {{use: counter, with: {{count: null, interval: 0.005}}}}
    sinks: [{{use: file, with: {{path: "{out}"}}}}]
  fresh:
    source: {{use: sdstages:endless}}
    trigger: request
""",
    )
    with ServerProcess(path) as srv:
        ndjson = [RawStream(srv.port, "/pipelines/live/stream") for _ in range(50)]
        gz = [
            RawStream(srv.port, "/pipelines/live/stream", {"Accept-Encoding": "gzip"})
            for _ in range(5)
        ]
        sse = [RawStream(srv.port, "/pipelines/live/events") for _ in range(5)]
        fresh = RawStream(srv.port, "/pipelines/fresh/stream")
        clients = [*ndjson, *gz, *sse, fresh]
        try:
            for c in clients:
                assert c.read_head() == 200
            for c in (*ndjson, *gz, fresh):
                assert c.envelopes(limit=1)
            wait_until(lambda: _count(srv) == 60, 10)
            start = time.monotonic()
            srv.signal(signal.SIGTERM)
            lasts = []
            for c in (*ndjson, *gz):
                envs = c.envelopes()
                assert c.clean_end, "chunked body not terminated"
                assert envs[-1]["status"] == "complete" and envs[-1]["reason"] == "shutdown"
                lasts.append(envs[-1]["seq"])
            for c in sse:
                events = sse_events(c)
                assert c.clean_end
                last = orjson.loads(events[-1]["data"])
                assert (last["status"], last["reason"]) == ("complete", "shutdown")
            envs = fresh.envelopes()
            assert envs[-1]["status"] == "complete" and envs[-1]["reason"] == "shutdown"
            assert fresh.clean_end
            assert srv.wait(15) == 0
            assert time.monotonic() - start < 15
        finally:
            for c in clients:
                c.close()
    last = orjson.loads(out.read_bytes().splitlines()[-1])
    assert last["status"] == "complete" and last["reason"] == "shutdown"
    assert set(lasts) == {last["seq"]}
    assert "shutdown_complete" in srv.log_text


def _count(srv: ServerProcess) -> int:
    with RawStream(srv.port, "/pipelines/live") as s:
        return int(s.json()["clients"])


def test_second_signal_forces_exit(tmp_path: Path) -> None:
    """A second signal during a long drain exits at once, with status 1."""
    path = write(
        tmp_path,
        """
server: {shutdown_timeout: 30}
pipelines:
  stuck:
    source: {use: counter, with: {count: null, interval: 0.01}}
    transforms: [{use: sdstages:slow}]
""",
    )
    with ServerProcess(path) as srv:
        with RawStream(srv.port, "/pipelines/stuck/stream?since=0") as s:
            assert s.envelopes(limit=1)[0]["status"] == "starting"
            srv.signal(signal.SIGTERM)
            wait_until(lambda: "drain_started" in srv.log_text)
            start = time.monotonic()
            srv.signal(signal.SIGINT)
            assert srv.wait(10) == 1
            assert time.monotonic() - start < 5
        assert "forced_exit" in srv.log_text


def test_idle_server_exits_0_on_sigint(tmp_path: Path) -> None:
    """With nothing running, SIGINT exits 0 promptly."""
    path = write(tmp_path, "pipelines:\n  one:\n    source: {use: counter, with: {count: 1}}\n")
    with ServerProcess(path) as srv:
        srv.signal(signal.SIGINT)
        assert srv.wait(15) == 0


def test_in_process_drain_ends_streams(tmp_path: Path) -> None:
    """`request_drain` (what a signal triggers) ends an open stream and the server thread."""
    path = write(
        tmp_path,
        "pipelines:\n  live:\n    source: {use: counter, with: {count: null, interval: 0.01}}\n",
    )
    srv = ThreadServer(path)
    with srv, RawStream(srv.port, "/pipelines/live/stream") as s:
        assert s.envelopes(limit=1)
        srv.server.request_drain()
        envs = s.envelopes()
        assert envs[-1]["reason"] == "shutdown" and s.clean_end
