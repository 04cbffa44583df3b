"""``pipeline top``: one table with ``--once``, and the live table on a real terminal."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.client.top import Sample, TopError, render, server_url
from tests.http_helpers import ROOT, ServerProcess
from tests.pty_helpers import Terminal

TOKEN = "t0p-s3cret"

CONFIG = """
server:
  {server}
pipelines:
  busy:
    source: {{use: counter, with: {{count: null, interval: 0.005}}}}
    transforms:
      - use: tstages:odd
  done:
    source: {{use: counter, with: {{count: 10}}}}
"""

STAGES = """
def odd(chunk):
    return chunk if chunk["n"] % 2 else None
"""


def start(tmp_path: Path, server: str = "") -> ServerProcess:
    (tmp_path / "tstages.py").write_text(STAGES)
    path = tmp_path / "pipelines.yaml"
    path.write_text(CONFIG.format(server=server))
    return ServerProcess(path)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    with start(tmp_path) as srv:
        yield srv


def run_top(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k != "PIPELINE_TOKEN"}
    return subprocess.run(
        [sys.executable, "-m", "pipeline", "top", *args],
        cwd=ROOT,
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


def rows(text: str) -> dict[str, list[str]]:
    return {line.split()[0]: line.split()[1:] for line in text.splitlines() if line.strip()}


def test_once_prints_pipelines_stages_and_rates(server: ServerProcess) -> None:
    """`--once`: a row per pipeline and per stage, with rates over one interval."""
    done = run_top(f"127.0.0.1:{server.port}", "--once")
    assert done.returncode == 0, done.stderr
    table = rows(done.stdout)
    busy = table["busy"]
    assert busy[0] == "running"
    in_rate, out_rate = float(busy[1].replace(",", "")), float(busy[2].replace(",", ""))
    assert in_rate > 0 and 0 < out_rate < in_rate  # the filter passes about half
    assert table["done"][0] == "completed"
    assert "source:counter" in table and "transforms[0]:odd" in table
    assert table["transforms[0]:odd"][-1].endswith(("µs", "ms"))  # a p99
    assert "HTTP Request" not in done.stderr


def test_token_from_option_and_environment(tmp_path: Path) -> None:
    """With `server.token`: --token or $PIPELINE_TOKEN works; none is a clear exit 2."""
    with start(tmp_path, f"token: {TOKEN}") as srv:
        url = f"127.0.0.1:{srv.port}"
        refused = run_top(url, "--once")
        assert refused.returncode == 2
        assert "pipeline top:" in refused.stderr and "token" in refused.stderr
        assert "Traceback" not in refused.stderr
        by_option = run_top(url, "--once", "--token", TOKEN)
        by_env = run_top(url, "--once", env={"PIPELINE_TOKEN": TOKEN})
        for done in (by_option, by_env):
            assert done.returncode == 0, done.stderr
            assert "busy" in rows(done.stdout)
            assert TOKEN not in done.stdout + done.stderr


def test_no_server_is_exit_2(free_port: int) -> None:
    """`--once` against a port nobody listens on: one line, exit 2."""
    done = run_top(f"http://127.0.0.1:{free_port}", "--once")
    assert done.returncode == 2
    assert f"cannot reach http://127.0.0.1:{free_port}" in done.stderr
    assert "Traceback" not in done.stderr


def test_bad_url_is_exit_2() -> None:
    """A URL that is not http(s) is refused before any request."""
    done = run_top("ftp://example/", "--once")
    assert done.returncode == 2 and "is not a server URL" in done.stderr


def test_live_table_on_a_terminal_quits_on_q(server: ServerProcess) -> None:
    """On a real terminal the table refreshes (rates appear) and `q` quits with 0."""
    with Terminal(["top", f"127.0.0.1:{server.port}"]) as term:
        term.wait_for(r"busy\s+running\s+[\d,.]+k?\s+[\d,.]+k?")  # rates: a second poll
        term.type(b"q")
        assert term.wait() == 0
        assert "Traceback" not in term.text


def test_live_table_quits_on_ctrl_c(server: ServerProcess) -> None:
    """Ctrl-C ends the live table quietly with 0 and restores the terminal."""
    with Terminal(["top", f"127.0.0.1:{server.port}"]) as term:
        term.wait_for(r"transforms\[0\]:odd")
        term.type(b"\x03")
        assert term.wait() == 0
        assert "Traceback" not in term.text and "KeyboardInterrupt" not in term.text


def test_live_shows_an_unreachable_server_and_keeps_polling(free_port: int) -> None:
    """Live, a server that is not there is shown in the title; `q` still quits."""
    with Terminal(["top", f"127.0.0.1:{free_port}"]) as term:
        term.wait_for("cannot reach")
        term.type(b"q")
        assert term.wait() == 0


def test_render_without_a_previous_poll_shows_no_rates() -> None:
    """The first table has no rates yet ("-"), and an empty server says so."""
    sample = Sample(1.0, [{"name": "p", "state": "pending", "metrics": {}}])
    table = render(sample, None, "http://h:1")
    assert table.row_count == 1
    assert render(Sample(1.0), None, "http://h:1").caption == "no pipelines"


def test_server_url_forms(tmp_path: Path) -> None:
    """URLs lose their path; no URL means the config's server and token."""
    assert server_url("http://h:1/pipelines/x", token=None, config_path=Path("-")) == (
        "http://h:1",
        "",
    )
    cfg = tmp_path / "pipelines.yaml"
    one = "pipelines: {p: {source: {use: counter}}}\n"
    cfg.write_text(f"server: {{port: 9123, token: {TOKEN}}}\n{one}")
    assert server_url(None, token=None, config_path=cfg) == ("http://127.0.0.1:9123", TOKEN)
    assert server_url(None, token="x", config_path=cfg) == ("http://127.0.0.1:9123", "x")
    cfg.write_text(f"server: {{port: 0}}\n{one}")
    with pytest.raises(TopError, match="port is 0"):
        server_url(None, token=None, config_path=cfg)
