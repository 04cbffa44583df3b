"""Reload outcomes on a real server: metrics, an unexpected failure, ``server:`` settings."""

from __future__ import annotations

import re
import shutil
import signal
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.http_helpers import ServerProcess, wait_until
from tests.server.test_metrics import Samples, samples, value
from tests.server.test_reload import envelopes, pipelines, sighup, state, write_project


def scrape(server: ServerProcess, token: str | None = None) -> Samples:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    resp = httpx.get(server.url("/metrics"), headers=headers, timeout=5)
    assert resp.status_code == 200, resp.text
    return samples(resp.text)


def outcomes(got: Samples) -> dict[str, float]:
    return {
        o: value(got, "pipeline_reloads_total", outcome=o)
        for o in ("applied", "rejected", "failed")
    }


def times(got: Samples) -> dict[str, float]:
    """The reload timestamp gauges present in a scrape (absent before the first reload)."""
    names = {
        "attempt": "pipeline_reload_last_attempt_timestamp_seconds",
        "success": "pipeline_reload_last_success_timestamp_seconds",
    }
    return {k: got[(n, ())] for k, n in names.items() if (n, ()) in got}


def unix(rfc3339: str) -> Any:
    """The UNIX time of a `/pipelines` timestamp (microseconds: compared to the metric's)."""
    return pytest.approx(datetime.fromisoformat(rfc3339).timestamp(), abs=2e-6)


def logged(server: ServerProcess, event: str) -> list[dict[str, Any]]:
    return [orjson.loads(x) for x in server.stderr if f'"event":"{event}"' in x]


def test_each_reload_outcome_is_a_metric(tmp_path: Path) -> None:
    """`pipeline_reloads_total{outcome}` counts an applied and a rejected SIGHUP; the
    timestamp gauges match `/pipelines`, and `last_successful` drops to 0 on a rejection."""
    config = write_project(tmp_path)
    helpers = tmp_path / "helpers.py"
    with ServerProcess(config) as server:
        got = scrape(server)
        assert outcomes(got) == {"applied": 0, "rejected": 0, "failed": 0}
        assert value(got, "pipeline_reload_last_successful") == 1
        assert times(got) == {}

        helpers.write_text("def label():\n    return 'v2'\n")
        sighup(server)
        got, body = scrape(server), pipelines(server)["reload"]
        assert outcomes(got) == {"applied": 1, "rejected": 0, "failed": 0}
        assert value(got, "pipeline_reload_last_successful") == 1
        first = times(got)
        assert first["attempt"] == first["success"] == unix(body["last_success"])

        helpers.write_text("def label(:\n")
        sighup(server)
        got, body = scrape(server), pipelines(server)["reload"]
        assert outcomes(got) == {"applied": 1, "rejected": 1, "failed": 0}
        assert value(got, "pipeline_reload_last_successful") == 0
        second = times(got)
        assert second["success"] == first["success"]
        assert second["attempt"] == unix(body["last_attempt"])
        assert second["attempt"] > first["attempt"]


def test_an_unexpected_error_fails_the_reload_and_the_runs_go_on(tmp_path: Path) -> None:
    """The server's working directory is deleted under it, so a relative `-c` cannot be
    resolved: the SIGHUP reload fails (one log line: step, error, where), is counted as
    `failed`, the pipelines keep their runs, and the server goes on serving."""
    project, out = tmp_path / "project", tmp_path / "out"
    write_project(project, out)
    with ServerProcess(Path("pipelines.yaml"), cwd=project) as server:
        wait_until(lambda: len(envelopes(out / "a.ndjson")) > 5)
        runs = {n: state(server, n)["run"] for n in ("a", "b")}
        shutil.rmtree(project)
        sighup(server)
        [line] = logged(server, "reload_failed")
        assert (line["trigger"], line["step"], line["level"]) == ("SIGHUP", "validate", "error")
        assert line["error"].startswith("FileNotFoundError: ")
        assert "/pipeline/config/snapshot.py:" in line["where"], line["where"]
        body = pipelines(server)["reload"]
        assert (body["applied"], body["rejected"], body["failed"]) == (0, 0, 1)
        assert body["last_outcome"] == "failed" and body["error"] == line["error"]
        assert body["last_success"] is None and body["last_attempt"] is not None
        got = scrape(server)
        assert outcomes(got) == {"applied": 0, "rejected": 0, "failed": 1}
        assert value(got, "pipeline_reload_last_successful") == 0

        seen = len(envelopes(out / "a.ndjson"))
        wait_until(lambda: len(envelopes(out / "a.ndjson")) > seen + 5)
        assert {n: state(server, n)["run"] for n in ("a", "b")} == runs
        assert all(state(server, n)["state"] == "running" for n in ("a", "b"))
        sighup(server)  # and again: still no crash
        assert pipelines(server)["reload"]["failed"] == 2
        server.signal(signal.SIGTERM)
        assert server.wait(30) == 0
    assert "Traceback" not in server.log_text


SETTINGS = """
server:
  token: {token}
  metrics_token: {metrics_token}
  max_clients: {max_clients}
  port: {port}
pipelines:
  live:
    source: {{use: counter, with: {{count: null, interval: 0.05}}}}
"""

OLD: dict[str, Any] = {
    "token": "old-t0ken",
    "metrics_token": "old-m3trics",
    "max_clients": 10,
    "port": 8000,
}
NEW: dict[str, Any] = {
    "token": "new-t0ken",
    "metrics_token": "new-m3trics",
    "max_clients": 1,
    "port": 8001,
}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_a_reload_rotates_tokens_and_lists_what_needs_a_restart(tmp_path: Path) -> None:
    """SIGHUP applies new tokens (an old token, its session cookie and the old metrics
    token get 401) and `max_clients`; a new `port` is logged and listed under
    `restart_needed`, and the server keeps its address. No token is ever logged."""
    config = tmp_path / "pipelines.yaml"
    config.write_text(SETTINGS.format(**OLD))
    with ServerProcess(config) as server:
        url = server.url("/pipelines/live")
        login = httpx.post(server.url("/session"), json={"token": OLD["token"]}, timeout=5)
        cookies = {"pipeline_token": login.cookies["pipeline_token"]}
        assert httpx.get(url, cookies=cookies, timeout=5).status_code == 200
        assert httpx.get(url, headers=bearer(OLD["token"]), timeout=5).status_code == 200

        config.write_text(SETTINGS.format(**NEW))
        sighup(server)
        assert httpx.get(url, headers=bearer(OLD["token"]), timeout=5).status_code == 401
        assert httpx.get(url, cookies=cookies, timeout=5).status_code == 401
        resp = httpx.get(server.url("/pipelines"), headers=bearer(NEW["token"]), timeout=5)
        body = resp.json()["reload"]
        assert body["restart_needed"] == ["server.port"] and body["changed"] == {}
        assert state_of(resp.json(), "live")["state"] == "running"
        old_metrics = httpx.get(server.url("/metrics"), headers=bearer(OLD["metrics_token"]))
        assert old_metrics.status_code == 401
        assert outcomes(scrape(server, NEW["metrics_token"]))["applied"] == 1
        with httpx.stream("GET", f"{url}/stream", headers=bearer(NEW["token"]), timeout=10) as r:
            assert r.status_code == 200  # the one stream max_clients now allows
            second = httpx.get(f"{url}/stream", headers=bearer(NEW["token"]), timeout=5)
            assert second.status_code == 503
    [line] = logged(server, "reloaded")
    assert line["server_applied"] == ["server.token", "server.max_clients", "server.metrics_token"]
    assert line["restart_needed"] == ["server.port"]
    for secret in (
        *(OLD[k] for k in ("token", "metrics_token")),
        NEW["token"],
        NEW["metrics_token"],
    ):
        assert secret not in server.log_text


def state_of(body: dict[str, Any], name: str) -> dict[str, Any]:
    return next(p for p in body["pipelines"] if p["name"] == name)


def test_every_server_setting_is_documented_as_reloaded_or_not() -> None:
    """docs/reload.md names every `server:` setting in the column that matches
    `RELOADABLE` (a new setting must be placed there)."""
    from pipeline.config.models import ServerConfig
    from pipeline.server.reload import RELOADABLE

    doc = (Path(__file__).parents[2] / "docs" / "reload.md").read_text()
    table = doc[doc.index("| applied by a reload | needs a restart |") :].split("\n\n")[0]
    rows = [line.split("|")[1:3] for line in table.splitlines()[2:]]
    applied = {n for left, _ in rows for n in re.findall(r"`(\w+)`", left)}
    restart = {n for _, right in rows for n in re.findall(r"`(\w+)`", right)}
    assert applied == set(RELOADABLE)
    assert restart == set(ServerConfig.model_fields) - RELOADABLE
