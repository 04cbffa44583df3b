"""Logging: stderr only, JSON lines off a terminal, tracebacks without local variables."""

from __future__ import annotations

import http.server
import json
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import orjson

from tests.http_helpers import ServerProcess, wait_until

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


STAGES = """
import httpx

def fetch(chunk: dict, *, url: str) -> dict:
    return {**chunk, "code": httpx.get(url).status_code}

def picky(chunk: dict) -> dict:
    if chunk["n"] % 2:
        raise ValueError(f"odd {chunk['n']}")
    return chunk
"""


PIPELINE_RUN = [sys.executable, "-m", "pipeline", "run"]


def _blank_server() -> tuple[http.server.ThreadingHTTPServer, threading.Thread]:
    class Ok(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(204)
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Ok)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, thread


def test_every_stderr_line_is_json_with_log_format_json(tmp_path: Path) -> None:
    """uvicorn's start/access/shutdown lines and httpx's lines are JSON too; token masked."""
    token = "l0g-t0ken-secret"
    upstream, thread = _blank_server()
    (tmp_path / "lstages.py").write_text(STAGES)
    (tmp_path / "pipelines.yaml").write_text(
        f"server: {{token: {token}}}\n"
        "pipelines:\n  p:\n    source: {use: counter, with: {count: 3}}\n"
        f"    transforms: [{{use: 'lstages:fetch', with: {{url: "
        f"'http://127.0.0.1:{upstream.server_address[1]}/x'}}}}]\n"
    )
    auth = {"Authorization": f"Bearer {token}"}
    try:
        with ServerProcess(tmp_path / "pipelines.yaml") as srv:
            wait_until(lambda: "run_completed" in srv.log_text, 30)
            assert httpx.get(srv.url("/pipelines/p"), headers=auth).status_code == 200
            bad = httpx.get(srv.url(f"/pipelines/p/stream?token={token}"), headers=auth)
            assert bad.status_code == 400
            wait_until(lambda: srv.log_text.count('"http_request"') >= 2)
            srv.signal()
            assert srv.wait(30) == 0
    finally:
        upstream.shutdown()
        upstream.server_close()
        thread.join(5)
    lines = srv.log_text.splitlines()
    logs = [orjson.loads(line) for line in lines]  # every line parses
    assert all(isinstance(entry, dict) and "event" in entry for entry in logs)
    events = [entry["event"] for entry in logs]
    access = [e for e in logs if e["event"] == "http_request"]
    assert [(a["method"], a["status"]) for a in access] == [("GET", 200), ("GET", 400)]
    assert access[1]["path"] == "/pipelines/p/stream?token=***"
    assert {"listening", "watch_with", "run_completed", "drain_started"} <= set(events)
    assert any(e.get("logger", "").startswith("uvicorn") for e in logs)
    assert token not in srv.log_text


def test_debug_level_logs_httpx_as_json(tmp_path: Path) -> None:
    """At debug, httpx's per-request lines show up, as JSON; at info they are hidden."""
    upstream, thread = _blank_server()
    (tmp_path / "lstages.py").write_text(STAGES)
    url = f"http://127.0.0.1:{upstream.server_address[1]}/x"
    (tmp_path / "pipelines.yaml").write_text(
        "pipelines:\n  p:\n    source: {use: counter, with: {count: 2}}\n"
        f"    transforms: [{{use: 'lstages:fetch', with: {{url: '{url}'}}}}]\n"
    )
    try:
        runs = {
            level: subprocess.run(
                [*PIPELINE_RUN, "--log-format", "json", "--log-level", level],
                cwd=tmp_path,
                capture_output=True,
                timeout=60,
                check=True,
            )
            for level in ("debug", "info")
        }
    finally:
        upstream.shutdown()
        upstream.server_close()
        thread.join(5)
    debug = [orjson.loads(line) for line in runs["debug"].stderr.splitlines()]
    info = [orjson.loads(line) for line in runs["info"].stderr.splitlines()]
    assert len([e for e in debug if e.get("logger") == "httpx"]) == 2
    assert [e for e in info if e.get("logger") == "httpx"] == []


def test_chunk_error_is_one_line_with_the_first_traceback_per_stage(tmp_path: Path) -> None:
    """Each chunk error: one line with stage, type, message; a traceback only the first."""
    (tmp_path / "lstages.py").write_text(STAGES)
    (tmp_path / "pipelines.yaml").write_text(
        "pipelines:\n  p:\n    source: {use: counter, with: {count: 6}}\n"
        "    transforms: [{use: 'lstages:picky'}]\n"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline", "run", "--log-format", "json"],
        cwd=tmp_path,
        capture_output=True,
        timeout=60,
        check=True,
    )
    failed = [
        entry
        for entry in map(orjson.loads, proc.stderr.splitlines())
        if entry["event"] == "chunk_failed"
    ]
    assert [(f["stage"], f["error"], f["message"]) for f in failed] == [
        ("transforms[0]:picky", "ValueError", f"odd {n}") for n in (1, 3, 5)
    ]
    assert ["exception" in f for f in failed] == [True, False, False]
