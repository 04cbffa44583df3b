"""Logging: stderr only, JSON lines off a terminal, tracebacks without local variables."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

STAGE = """
def leaky(chunk):
    api_key = "hunter2-local-secret"
    raise RuntimeError("upstream refused")
"""


def test_traceback_logged_without_locals(tmp_path: Path) -> None:
    """A failing stage's traceback reaches the logs, its local variables never do."""
    (tmp_path / "leaky_stages.py").write_text(STAGE)
    (tmp_path / "pipelines.yaml").write_text(
        "pipelines:\n  p:\n    source: {use: counter, with: {count: 1}}\n"
        "    transforms: [{use: 'leaky_stages:leaky'}]\n"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline", "run", "--log-format", "json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0
    logs = [json.loads(line) for line in proc.stderr.splitlines()]
    failed = next(entry for entry in logs if entry["event"] == "chunk_failed")
    assert failed["exception"][0]["exc_value"] == "upstream refused"
    assert "hunter2-local-secret" not in proc.stderr
    assert all(line.startswith("{") for line in proc.stdout.splitlines())
