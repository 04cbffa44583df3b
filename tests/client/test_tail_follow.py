"""``pipeline tail -F``: follows across reloads and server restarts; plain ``tail`` stops."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import orjson

from tests.http_helpers import ROOT, ServerProcess, wait_until
from tests.server.test_reload import HELPERS_V1, STAGES

CONFIG = """
    pipelines:
      a:
        source: {use: my_stages:ticks, with: {interval: 0.02}}
        transforms:
          - use: my_stages:tag
"""

FINITE = """
    pipelines:
      a:
        source: {use: counter, with: {count: 3, interval: 0}}
"""


class Tail:
    """``pipeline tail --raw`` in a subprocess, its stdout envelopes collected."""

    def __init__(self, url: str, *args: str) -> None:
        cmd = [sys.executable, "-m", "pipeline", "tail", url, "--raw", *args]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.envelopes: list[dict[str, Any]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.envelopes.append(orjson.loads(line))

    def statuses(self, run: str) -> list[str]:
        """Statuses of ``run``'s envelopes (transport notices such as `lagged` left out)."""
        return [e["status"] for e in self.envelopes if e.get("run") == run and "seq" in e]

    def run_changes(self) -> list[str]:
        """The runs announced by `lagged` notices with reason `run_changed`."""
        return [e["run"] for e in self.envelopes if e.get("reason") == "run_changed"]

    def completes(self) -> list[str]:
        return [e["reason"] for e in self.envelopes if e["status"] == "complete"]

    def close(self) -> tuple[int, bytes]:
        try:
            code = self.proc.wait(30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(5)
        self._reader.join(5)
        assert self.proc.stderr is not None
        err = self.proc.stderr.read()
        self.proc.stderr.close()
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        return code, err


def write_project(tmp_path: Path) -> Path:
    (tmp_path / "my_stages.py").write_text(textwrap.dedent(STAGES))
    (tmp_path / "helpers.py").write_text(textwrap.dedent(HELPERS_V1))
    config = tmp_path / "pipelines.yaml"
    config.write_text(textwrap.dedent(CONFIG))
    return config


def test_follow_goes_on_across_a_reload_and_a_server_restart(
    tmp_path: Path, free_port: int
) -> None:
    """`tail -F` shows complete(reload), then the new run; complete(shutdown), then the
    run of the server started in its place; it exits 0 after a run that finished."""
    config = write_project(tmp_path)
    port = ("--port", str(free_port))
    with ServerProcess(config, args=port) as server:
        tail = Tail(server.url("/pipelines/a"), "-F")
        wait_until(lambda: len(tail.envelopes) > 3, timeout=20)
        first = tail.envelopes[0]["run"]
        (tmp_path / "helpers.py").write_text("def label():\n    return 'v2'\n")
        server.signal(signal.SIGHUP)
        wait_until(lambda: len({e["run"] for e in tail.envelopes}) == 2, timeout=20)
        wait_until(lambda: tail.envelopes[-1].get("data", {}).get("label") == "v2")
        second = tail.envelopes[-1]["run"]
        server.signal(signal.SIGTERM)
        assert server.wait(30) == 0
    wait_until(lambda: tail.completes() == ["reload", "shutdown"], timeout=20)
    assert tail.proc.poll() is None  # still following, waiting for a server
    config.write_text(textwrap.dedent(FINITE))
    with ServerProcess(config, args=port):
        code, err = tail.close()
    assert code == 0, err
    assert b"stream ended before" not in err  # waiting for the next run is no warning
    runs = list(dict.fromkeys(e["run"] for e in tail.envelopes if "run" in e))
    assert runs[:2] == [first, second] and len(runs) == 3
    assert tail.statuses(first)[-1] == "complete" and tail.statuses(second)[0] == "starting"
    assert tail.statuses(runs[2]) == [
        "starting",
        "processing",
        "processing",
        "processing",
        "complete",
    ]
    assert tail.completes() == ["reload", "shutdown", "finished"]
    assert set(tail.run_changes()) <= {second, runs[2]}  # resuming into another run says so
    for run in runs:
        seqs = [e["seq"] for e in tail.envelopes if e.get("run") == run and "seq" in e]
        assert seqs == sorted(set(seqs))  # no duplicate across reconnects


def test_plain_tail_exits_after_complete_reload(tmp_path: Path) -> None:
    """Without -F, `tail` ends (0) with the run that a reload completed."""
    config = write_project(tmp_path)
    with ServerProcess(config) as server:
        tail = Tail(server.url("/pipelines/a"))
        wait_until(lambda: len(tail.envelopes) > 3, timeout=20)
        (tmp_path / "helpers.py").write_text("def label():\n    return 'v3'\n")
        server.signal(signal.SIGHUP)
        code, err = tail.close()
    assert code == 0, err
    assert tail.completes() == ["reload"]
    assert len({e["run"] for e in tail.envelopes}) == 1
