"""Retention and client buffers are bounded in bytes (`retain_bytes`, `client_buffer_bytes`)."""

from __future__ import annotations

from pathlib import Path

import httpx
import orjson

from tests.http_helpers import ServerProcess, wait_until

MIB = 1024 * 1024

STAGES = """
def ten_big():
    for n in range(10):
        yield {"n": n, "pad": "x" * (1024 * 1024)}
"""


def test_ten_big_chunks_leave_a_bounded_ring_and_a_late_client_is_told(tmp_path: Path) -> None:
    """Ten 1 MiB chunks with retain_bytes 3 MiB: after the run the hub holds at most
    retain_bytes + client_buffer_bytes plus one envelope, and a late client gets the
    newest envelopes that fit, after a `lagged` notice counting the nine it misses."""
    (tmp_path / "bigstages.py").write_text(STAGES)
    (tmp_path / "pipelines.yaml").write_text(
        f"""
server:
  client_buffer_bytes: {MIB}
pipelines:
  big:
    source: {{use: bigstages:ten_big}}
    retain_bytes: {3 * MIB}
"""
    )
    with ServerProcess(tmp_path / "pipelines.yaml") as srv:
        url = srv.url("/pipelines/big")
        state = wait_until(
            lambda: (s := httpx.get(url, timeout=10).json())["state"] == "completed" and s, 30
        )
        assert state["last_seq"] == 12
        assert 3 * MIB < state["held_bytes"] <= 5 * MIB + 1024
        body = httpx.get(url + "/stream", params={"since": "0"}, timeout=30).content
    got = [orjson.loads(line) for line in body.splitlines()]
    assert [(e["status"], e.get("seq")) for e in got] == [
        ("lagged", None),
        ("processing", 10),
        ("processing", 11),
        ("complete", 12),
    ]
    assert (got[0]["missed"], got[0]["reason"]) == (9, "not_retained")
