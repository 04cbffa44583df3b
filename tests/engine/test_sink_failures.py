"""A sink that fails late still fails the run; the file sink never leaves a torn line."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.test_cli import cli, envelopes

STAGES = """
from pipeline import sink

@sink(stream=True)
async def fails_on_close(envelopes):
    async for _ in envelopes:
        pass
    raise OSError("disk vanished at close")
"""


def project(tmp_path: Path, sink: str, count: int = 102) -> Path:
    (tmp_path / "fstages.py").write_text(STAGES)
    (tmp_path / "pipelines.yaml").write_text(
        f"""
pipelines:
  p:
    source: {{use: counter, with: {{count: {count}}}}}
    sinks:
      - {sink}
"""
    )
    return tmp_path


def outcome(stdout: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    envs = envelopes(stdout)
    assert [e["seq"] for e in envs] == list(range(1, len(envs) + 1))
    return envs, envs[-1]


def test_file_sink_on_a_full_device_fails_the_run(tmp_path: Path) -> None:
    """/dev/full: every write fails after `complete` would have gone out; the run says error."""
    proc = cli("run", "p", cwd=project(tmp_path, "{use: file, with: {path: /dev/full}}"))
    assert proc.returncode == 1, proc.stderr
    envs, last = outcome(proc.stdout)
    errors = [e for e in envs if e["status"] == "error"]
    assert [(e["stage"], e["error"]["type"]) for e in errors] == [("sinks[0]:file", "OSError")]
    assert "No space left on device" in errors[0]["error"]["message"]
    assert last["status"] == "complete"
    assert (last["reason"], last["stats"]["errors"]) == ("error", 1)
    assert [e["status"] for e in envs].count("processing") == 102


def test_a_sink_failing_at_close_makes_exit_one(tmp_path: Path) -> None:
    """A sink that fails only when it closes (after `complete`) still makes the exit 1."""
    proc = cli("run", "p", cwd=project(tmp_path, "{use: fstages:fails_on_close}", 5))
    assert proc.returncode == 1, proc.stderr
    _, last = outcome(proc.stdout)
    assert (last["status"], last["reason"]) == ("complete", "finished")
    assert "run_failed_after_complete" in proc.stderr
    assert "disk vanished at close" in proc.stderr


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs (root only; skipped where it cannot be mounted)."""
    mnt = tmp_path / f"tiny-{uuid.uuid4().hex[:8]}"
    mnt.mkdir()
    cmd = ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"cannot mount a tmpfs: {exc}")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root): {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=10)


def test_file_sink_on_a_full_disk_keeps_only_whole_lines(tmp_path: Path, tiny_disk: Path) -> None:
    """A 64 KiB disk fills up mid-run: exit 1, and the file holds whole lines only,
    exactly the first envelopes of the run."""
    out = tiny_disk / "out.ndjson"
    proc = cli("run", "p", cwd=project(tmp_path, f"{{use: file, with: {{path: {out}}}}}", 2000))
    assert proc.returncode == 1, proc.stderr
    envs, last = outcome(proc.stdout)
    assert (last["status"], last["reason"]) == ("complete", "error")
    data = out.read_bytes()
    assert data.endswith(b"\n")
    kept = [json.loads(line) for line in data.splitlines()]
    assert 100 < len(kept) < 2000
    assert kept == envs[: len(kept)]
    assert os.statvfs(tiny_disk).f_bavail == 0 or len(data) > 60_000
