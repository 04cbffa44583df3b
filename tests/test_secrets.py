"""A canary value from the environment is masked in every output, run time included."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.http_helpers import RawStream, ServerProcess

CANARY = "canary-Zq8v7-s3cret"

STAGES = """
def boom(chunk, secret: str):
    raise ValueError(f"cannot reach https://user:{secret}@db.example")
"""

CONFIG = """
pipelines:
  leaky:
    description: "feed of ${CANARY}"
    source: {use: counter, with: {count: 3}}
    transforms:
      - use: cstages:boom
        with: {secret: "${CANARY}"}
    sinks:
      - {use: file, with: {path: out/leaky.ndjson}}
    dead_letter: {use: file, with: {path: out/dead.ndjson}}
  missing:
    description: reads a file named after the secret
    source: {use: file, with: {path: "/nonexistent/${CANARY}/in.ndjson"}}
    sinks:
      - {use: file, with: {path: out/missing.ndjson}}
"""


def project(tmp_path: Path) -> Path:
    (tmp_path / "cstages.py").write_text(STAGES)
    (tmp_path / "pipelines.yaml").write_text(CONFIG)
    return tmp_path / "pipelines.yaml"


@pytest.mark.parametrize("log_format", ["json", "console"])
def test_canary_never_printed_by_run(tmp_path: Path, log_format: str) -> None:
    """`pipeline run`: stdout envelopes, stderr logs (with tracebacks, as JSON or as
    console text) and sink files."""
    path = project(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline", "run", "-c", str(path), "--log-format", log_format],
        cwd=tmp_path,
        env={**os.environ, "CANARY": CANARY},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1, proc.stderr
    assert '"status":"chunk_error"' in proc.stdout
    assert "cannot reach https://user:***@db.example" in proc.stdout
    assert "/nonexistent/***/in.ndjson" in proc.stdout
    assert ("Traceback" if log_format == "console" else '"exception"') in proc.stderr
    files = [p.read_text() for p in (tmp_path / "out").iterdir()]
    assert len(files) == 3
    for text in (proc.stdout, proc.stderr, *files):
        assert CANARY not in text


def test_canary_never_printed_by_the_server(tmp_path: Path) -> None:
    """`--serve`: /pipelines, one pipeline, the stream bodies and the server's log."""
    path = project(tmp_path)
    with ServerProcess(path, env={"CANARY": CANARY}) as srv:
        bodies = [
            httpx.get(srv.url(u), timeout=10).text for u in ("/pipelines", "/pipelines/leaky")
        ]
        for name in ("leaky", "missing"):
            with RawStream(srv.port, f"/pipelines/{name}/stream?since=0") as s:
                envs = s.envelopes()
            assert envs[-1]["status"] == "complete"
            bodies.append(repr(envs))
    assert '"description":"feed of ***"' in bodies[0]
    for text in (*bodies, srv.log_text):
        assert CANARY not in text


def test_bind_error_masks_a_host_from_the_environment(tmp_path: Path) -> None:
    """A `server.host` from the environment that cannot be bound is not echoed."""
    (tmp_path / "pipelines.yaml").write_text(
        "server: {host: '${CANARY_HOST}'}\npipelines:\n  p:\n    source: {use: counter}\n"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline", "run", "--serve", "--port", "0"],
        cwd=tmp_path,
        env={**os.environ, "CANARY_HOST": f"{CANARY}.invalid"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "cannot listen on ***:0" in proc.stderr
    assert CANARY not in proc.stderr + proc.stdout
