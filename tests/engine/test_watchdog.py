"""A stage that holds the event loop is named in the log, with how long and the hint."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson

STAGES = """
import time

def sleepy(chunk):
    time.sleep(1.2)
    return chunk
"""


def test_a_blocking_sync_transform_is_named_with_its_stall(tmp_path: Path) -> None:
    """`time.sleep` in a sync transform: `loop_blocked` names it, while it lasts and after,
    with the seconds held and the hint to set `blocking: true`."""
    (tmp_path / "wstages.py").write_text(STAGES)
    (tmp_path / "pipelines.yaml").write_text(
        "pipelines:\n  p:\n    source: {use: counter, with: {count: 2}}\n"
        "    transforms: [{use: wstages:sleepy}]\n"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline", "run", "--log-format", "json"],
        cwd=tmp_path,
        env=os.environ,
        capture_output=True,
        timeout=180,  # seconds of a loaded machine under coverage; the run itself takes ~3
    )
    assert proc.returncode == 0, proc.stderr
    events = [orjson.loads(line) for line in proc.stderr.splitlines() if line.startswith(b"{")]
    blocked = [e for e in events if e.get("event") == "loop_blocked"]
    ongoing = [e for e in blocked if e["ongoing"]]
    ended = [e for e in blocked if not e["ongoing"]]
    assert ongoing and ended
    assert {e["stage"] for e in ongoing} == {"transforms[0]:sleepy"}
    assert all(e["seconds"] >= 0.5 for e in blocked)
    assert max(e["seconds"] for e in ended) >= 1.0
    assert all("`blocking: true`" in e["hint"] for e in blocked)


def test_a_blocking_stage_marked_blocking_is_not_reported(tmp_path: Path) -> None:
    """The same transform with `blocking: true` runs in a thread: it is never named (a
    loaded machine may still stall the loop now and then)."""
    (tmp_path / "wstages.py").write_text(STAGES)
    (tmp_path / "pipelines.yaml").write_text(
        "pipelines:\n  p:\n    source: {use: counter, with: {count: 2}}\n"
        "    transforms: [{use: wstages:sleepy, blocking: true}]\n"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline", "run", "--log-format", "json"],
        cwd=tmp_path,
        env=os.environ,
        capture_output=True,
        timeout=180,  # seconds of a loaded machine under coverage; the run itself takes ~3
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count(b'"status":"processing"') == 2
    events = [orjson.loads(line) for line in proc.stderr.splitlines() if line.startswith(b"{")]
    named = [e for e in events if e.get("event") == "loop_blocked" and e.get("stage")]
    assert all(e["stage"] != "transforms[0]:sleepy" for e in named)
