"""examples/scale_out end to end: a producer, two workers, one node serving the merged output."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from tests.http_helpers import RawStream, ServerProcess, wait_until
from tests.stages.connectors.brokers import ROOT, Worker, unique

pytestmark = [pytest.mark.services, pytest.mark.slow]
CONFIG = ROOT / "examples" / "scale_out" / "pipelines.yaml"
ORDERS = 300


@pytest.fixture
def prefix() -> Iterator[str]:
    """A unique key prefix; the example's streams are deleted afterwards."""
    name = unique("scale_out")
    yield name
    client = redis.Redis()
    client.delete(f"{name}:orders", f"{name}:results")
    client.close()


def test_workers_share_orders_and_one_node_serves_them_all(prefix: str, tmp_path: Path) -> None:
    """Every order is priced by one of two workers and shows up on the serving node."""
    env = {"SCALE_OUT": prefix, "ORDERS": str(ORDERS)}
    local = tmp_path / "pipelines.yaml"
    local.write_text(CONFIG.read_text())  # beside its own worker logs
    with ServerProcess(CONFIG, "merged", env=env) as node:
        workers = [Worker(local, "work", env=env).start() for _ in range(2)]
        try:
            produced = subprocess.run(
                [sys.executable, "-m", "pipeline", "run", "produce", "-c", str(CONFIG)],
                cwd=ROOT,
                env={**os.environ, **env},
                capture_output=True,
                timeout=120,
            )
            assert produced.returncode == 0, produced.stderr.decode()
            wait_until(lambda: _processed(node.port) >= ORDERS + 2, timeout=120, every=0.2)
            for w in workers:
                w.signal(signal.SIGTERM)
            assert [w.wait(60) for w in workers] == [0, 0]
        finally:
            for w in workers:
                w.stop()
        with RawStream(node.port, "/pipelines/merged/stream?since=0", timeout=30) as stream:
            envelopes = stream.envelopes(limit=1 + ORDERS + 4)  # + 2 starting, 2 complete
    carried = [e["data"] for e in envelopes if e["status"] == "processing"]
    orders = [e["data"] for e in carried if e["status"] == "processing"]
    assert sorted(o["id"] for o in orders) == sorted(f"order-{n}" for n in range(ORDERS))
    assert all(o["total"] == o["qty"] * o["unit_price"] for o in orders)
    assert {e["pipeline"] for e in carried} == {"work"}
    runs = {e["run"] for e in carried}
    assert len(runs) == 2  # both workers' envelopes reach the one node
    assert [e["reason"] for e in carried if e["status"] == "complete"] == ["shutdown"] * 2


def _processed(port: int) -> int:
    state = httpx.get(f"http://127.0.0.1:{port}/pipelines/merged", timeout=10).json()
    return int(state["counts"].get("processing", 0))
