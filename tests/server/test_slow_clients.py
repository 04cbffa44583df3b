"""Clients the server gives up on are closed, and hold their `max_clients` slot until then."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.http_helpers import RawStream, ServerProcess, fd_count, wait_until

STAGES = """
import asyncio

async def big(size: int = 10000):
    n = 0
    while True:
        yield {"n": n, "pad": "x" * size}
        n += 1
        await asyncio.sleep(0.001)
"""


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    (tmp_path / "slowstages.py").write_text(STAGES)
    (tmp_path / "pipelines.yaml").write_text(
        """
server:
  client_buffer: 20
  max_clients: 1
  heartbeat: 0.5
pipelines:
  live:
    source: {use: slowstages:big}
    retain: 10
"""
    )
    with ServerProcess(tmp_path / "pipelines.yaml") as srv:
        yield srv


def state(srv: ServerProcess) -> dict:
    return httpx.get(srv.url("/pipelines/live"), timeout=10).json()


def _stream_opens(server: ServerProcess) -> bool:
    with RawStream(server.port, "/pipelines/live/stream") as other:
        return other.read_head() == 200


def test_a_frozen_client_is_dropped_and_its_connection_closed(server: ServerProcess) -> None:
    """A client that stops reading is dropped, its socket reset (the server's file
    descriptors come back to where they were) and its slot freed."""
    httpx.get(server.url("/healthz"), timeout=10)
    before = fd_count(server.pid)
    frozen = RawStream(server.port, "/pipelines/live/stream", rcvbuf=4096, timeout=30)
    try:
        assert frozen.read_head() == 200
        wait_until(lambda: state(server)["dropped_clients"] >= 1, 60)
        wait_until(lambda: fd_count(server.pid) <= before, 60)
        assert state(server)["clients"] == 0
        wait_until(lambda: _stream_opens(server), 30)  # the slot is freed once the close lands
        with pytest.raises((ConnectionResetError, BrokenPipeError)):
            for _ in range(10_000):  # what was sent before the reset, then the reset
                if not frozen.sock.recv(1 << 20):
                    break
    finally:
        frozen.close()


def test_a_slow_reader_gets_the_lagged_notice_before_the_close(server: ServerProcess) -> None:
    """A client that reads, but too slowly, is dropped with a `lagged` notice naming where
    to resume, then the body ends cleanly."""
    with RawStream(server.port, "/pipelines/live/stream", rcvbuf=4096, timeout=30) as slow:
        assert slow.read_head() == 200
        wait_until(lambda: state(server)["dropped_clients"] >= 1, 60)
        envs = slow.envelopes()
    assert envs[-1]["status"] == "lagged"
    assert envs[-1]["reason"] == "slow_client"
    assert envs[-1]["resume"] == f"{envs[-2]['run']}:{envs[-2]['seq']}"
    assert slow.clean_end


def test_exit_does_not_wait_on_a_client_that_takes_nothing(server: ServerProcess) -> None:
    """SIGTERM while a dropped client has not taken what it was sent: its connection is
    reset at shutdown, so the process exits 0 without uvicorn cancelling the stream (no
    `Exception in ASGI application`, no `Cancel ... running task(s)` in the log)."""
    frozen = RawStream(server.port, "/pipelines/live/stream", rcvbuf=4096, timeout=30)
    try:
        assert frozen.read_head() == 200
        wait_until(lambda: state(server)["dropped_clients"] >= 1, 60)
        server.signal()
        assert server.wait(30) == 0
    finally:
        frozen.close()
    assert "Exception in ASGI application" not in server.log_text
    assert "timeout graceful shutdown exceeded" not in server.log_text


def test_a_client_taking_nothing_is_cut_at_its_heartbeat_deadline(tmp_path: Path) -> None:
    """A client that stops reading on a slow pipeline (never lapped: big buffers) is cut
    as `stalled` once it has acknowledged nothing for two heartbeats while bytes waited
    for it, long before the 30 s write timeout; its slot is freed."""
    (tmp_path / "slowstages.py").write_text(STAGES)
    (tmp_path / "pipelines.yaml").write_text(
        """
server:
  client_buffer: 1000000
  client_buffer_bytes: 500000000
  max_clients: 1
  heartbeat: 0.5
pipelines:
  live:
    source: {use: slowstages:big, with: {size: 2000}}
    retain: 10
"""
    )
    with ServerProcess(tmp_path / "pipelines.yaml") as srv:
        frozen = RawStream(srv.port, "/pipelines/live/stream", rcvbuf=4096, timeout=30)
        try:
            assert frozen.read_head() == 200
            wait_until(lambda: '"reason":"stalled"' in srv.log_text, 60)
            assert state(srv)["dropped_clients"] == 0  # cut for stalling, not for lagging
            wait_until(lambda: _stream_opens(srv), 30)
        finally:
            frozen.close()
    assert '"reason":"send_timeout"' not in srv.log_text
