"""A stage that holds the event loop is named in the log, with how long and the hint."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson

STAGES = """
import time

def sleepy(chunk):
    time.sleep(1.2)
    return chunk
"""


def run_sleepy(tmp_path: Path, blocking: bool) -> tuple[bytes, list[dict[str, Any]]]:
    """`pipeline run` of two chunks through `sleepy`; its stdout and its JSON log events."""
    (tmp_path / "wstages.py").write_text(STAGES)
    option = ", blocking: true" if blocking else ""
    (tmp_path / "pipelines.yaml").write_text(
        "pipelines:\n  p:\n    source: {use: counter, with: {count: 2}}\n"
        f"    transforms: [{{use: wstages:sleepy{option}}}]\n"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline", "run", "--log-format", "json"],
        cwd=tmp_path,
        env=os.environ,
        capture_output=True,
        timeout=180,  # seconds of a loaded machine under coverage; the run itself takes ~3
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    return proc.stdout, [orjson.loads(line) for line in lines if line.startswith(b"{")]


def test_a_blocking_sync_transform_is_named_with_its_stall(tmp_path: Path) -> None:
    """`time.sleep` in a sync transform: `loop_blocked` names it, while it lasts and after,
    with the seconds held and the hint to set `blocking: true`."""
    _, events = run_sleepy(tmp_path, blocking=False)
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
    stdout, events = run_sleepy(tmp_path, blocking=True)
    assert stdout.count(b'"status":"processing"') == 2
    named = [e for e in events if e.get("event") == "loop_blocked" and e.get("stage")]
    assert all(e["stage"] != "transforms[0]:sleepy" for e in named)
