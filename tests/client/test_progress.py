"""Progress of ``pipeline run``: live lines on a terminal's stderr, nothing otherwise;
stdout stays pure NDJSON either way."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson

from tests.pty_helpers import Terminal

STAGES = """
def picky(chunk):
    if chunk["n"] % 50 == 0:
        raise ValueError("every fiftieth")
    return chunk
"""

CONFIG = """
pipelines:
  ticks:
    source: {use: counter, with: {count: 200, interval: 0.01}}
    transforms:
      - use: pstages:picky
"""


def project(tmp_path: Path) -> Path:
    (tmp_path / "pstages.py").write_text(STAGES)
    path = tmp_path / "pipelines.yaml"
    path.write_text(CONFIG)
    return path


def assert_pure_ndjson(out: bytes) -> None:
    envs = [orjson.loads(line) for line in out.splitlines()]
    assert [e["seq"] for e in envs] == list(range(1, len(envs) + 1))
    assert envs[0]["status"] == "starting" and envs[-1]["status"] == "complete"
    assert envs[-1]["stats"]["processed"] == 196 and envs[-1]["stats"]["chunk_errors"] == 4


def test_progress_on_a_terminal(tmp_path: Path) -> None:
    """stderr a terminal, stdout a pipe: live lines with counts, rate and errors."""
    cfg = project(tmp_path)
    with Terminal(["run", "-c", str(cfg)], cwd=tmp_path, pipe_stdout=True) as term:
        term.wait_for(r"ticks\s+running\s+[\d,]+ in\s+[\d,]+ out\s+[\d,]+/s")
        assert term.wait(60) == 0
        assert term.proc.stdout is not None
        out = term.proc.stdout.read()
    assert_pure_ndjson(out)
    final = term.text.rstrip().splitlines()[-1]
    assert "completed" in final and "200 in" in final and "196 out" in final
    assert "4 chunk errors" in final
    assert "run_completed" in term.text  # the logs still reach the terminal


def test_no_progress_when_stderr_is_not_a_terminal(tmp_path: Path) -> None:
    """Piped stderr gets JSON log lines only; stdout is the same pure NDJSON."""
    cfg = project(tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "run", "-c", str(cfg)],
        cwd=tmp_path,
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 0
    assert_pure_ndjson(done.stdout)
    logs = [orjson.loads(line) for line in done.stderr.splitlines()]
    assert logs and all("event" in entry for entry in logs)
    assert b"chunk errors" not in done.stderr
