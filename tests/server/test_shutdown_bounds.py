"""SIGTERM ends the process within `shutdown_timeout` + 1 s whatever the stages do;
a second signal exits 1 at once. (The waits below are bounds with slack, not timings.)"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from bench.hostile_stages import write_stages
from tests.http_helpers import ServerProcess, wait_until

TIMEOUT = 1.0
SLACK = 6.0  # a loaded machine; before the fix each case took minutes or forever

PIPELINES = {
    "slow_sink": "source: {use: bstages:ticks, with: {interval: 0.01}}\n"
    "    sinks: [{use: bstages:slow_sink}]",
    "deaf": "source: {use: bstages:deaf}",
    "mute": "source: {use: counter, with: {count: 3}}\n    sinks: [{use: bstages:mute}]",
    "stuck": "source: {use: bstages:stuck, blocking: true}",
    "spinning": "source: {use: bstages:spinning, with: {marker: spinning.marker}}",
}


def project(tmp_path: Path) -> Path:
    write_stages(tmp_path, "bstages")
    body = "".join(f"  {name}:\n    {text}\n" for name, text in PIPELINES.items())
    path = tmp_path / "pipelines.yaml"
    path.write_text(f"server: {{shutdown_timeout: {TIMEOUT}}}\npipelines:\n{body}")
    return path


def start(path: Path, name: str) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "pipeline", "run", name, "-c", str(path)]
    cmd += ["--log-format", "json"]
    pipe = subprocess.PIPE
    return subprocess.Popen(cmd, cwd=path.parent, stdout=pipe, stderr=pipe)


def first_envelopes(proc: subprocess.Popen[bytes], n: int) -> None:
    assert proc.stdout is not None
    for _ in range(n):
        assert proc.stdout.readline(), "the run did not start"


def stop(proc: subprocess.Popen[bytes]) -> tuple[int, list[dict[str, Any]], str]:
    """SIGTERM, then wait at most `shutdown_timeout` + 1 s + slack."""
    proc.send_signal(signal.SIGTERM)
    try:
        out, err = proc.communicate(timeout=TIMEOUT + 1 + SLACK)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate(timeout=10)
        pytest.fail("still running long after shutdown_timeout + 1 s")
    return proc.returncode, [orjson.loads(line) for line in out.splitlines()], err.decode()


@pytest.mark.parametrize("name", ["slow_sink", "deaf", "stuck", "mute"])
def test_sigterm_ends_a_run_whatever_its_stages_do(tmp_path: Path, name: str) -> None:
    """A slow sink, a source that swallows cancellation, a blocking source stuck in its
    thread, a confirming sink that never answers: SIGTERM still ends the run with
    `complete(reason=shutdown)` and exit 0."""
    proc = start(project(tmp_path), name)
    first_envelopes(proc, 2)
    code, envs, err = stop(proc)
    assert code == 0, err
    assert envs[-1]["status"] == "complete"
    assert envs[-1]["reason"] == "shutdown"
    assert [e["seq"] for e in envs] == list(range(envs[0]["seq"], envs[-1]["seq"] + 1))


def test_a_spinning_stage_cannot_hold_the_process(tmp_path: Path) -> None:
    """A source spinning on the event loop: SIGTERM still ends the process (exit 1,
    the run could not complete), and a second signal ends it at once."""
    path = project(tmp_path)
    marker = tmp_path / "spinning.marker"
    proc = start(path, "spinning")
    wait_until(marker.exists, 30)
    code, _, err = stop(proc)
    assert code == 1
    assert "shutdown_deadline" in err
    marker.unlink()
    proc = start(path, "spinning")
    wait_until(marker.exists, 30)
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err2 = proc.communicate(timeout=SLACK)
    assert proc.returncode == 1
    assert "forced_exit" in err2.decode()


def test_server_with_a_stuck_blocking_source_exits_0(tmp_path: Path) -> None:
    """Under --serve, a `blocking: true` source stuck in its thread does not keep the
    process alive after the server stopped."""
    with ServerProcess(project(tmp_path), "stuck") as srv:
        srv.signal(signal.SIGTERM)
        assert srv.wait(TIMEOUT + 1 + SLACK) == 0, srv.log_text
    assert '"reason":"shutdown"' in srv.log_text
