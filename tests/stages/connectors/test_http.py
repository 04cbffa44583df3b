"""The ``http`` source chained to real upstream servers: cuts, restarts, lagged, refusals."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.http_helpers import ROOT, ndjson_file, wait_until

TOKEN = "up-t0ken-secret"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Upstream:
    """``pipeline run --serve`` on a fixed port (so it can be restarted on the same one)."""

    def __init__(self, cfg: Path, port: int) -> None:
        self.cfg, self.port = cfg, port
        self.proc: subprocess.Popen[bytes] | None = None
        self.log: list[bytes] = []

    def start(self) -> Upstream:
        self.log = []
        self.proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "pipeline", "run", "--serve", "-c", str(self.cfg)),
                *("--port", str(self.port), "--log-format", "json"),
            ],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        listening = threading.Event()

        def read() -> None:
            assert self.proc is not None and self.proc.stderr is not None
            for line in self.proc.stderr:
                self.log.append(line)
                if b'"listening"' in line:
                    listening.set()

        self.reader = threading.Thread(target=read, daemon=True)
        self.reader.start()
        assert listening.wait(60), b"".join(self.log).decode()
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        self._reap()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self._reap()

    def _reap(self) -> None:
        if self.proc is not None:
            self.proc.wait(10)
            self.reader.join(10)
            if self.proc.stderr is not None:
                self.proc.stderr.close()


class Proxy:
    """A TCP relay to ``port`` whose open connections the test can cut."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.socks: list[socket.socket] = []
        self.connections = 0
        self.lock = threading.Lock()
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            with self.lock:
                self.socks += [client, upstream]
                self.connections += 1
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self.pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def pipe(a: socket.socket, b: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := a.recv(65536):
                b.sendall(data)
        with contextlib.suppress(OSError):
            b.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        with self.lock:
            for s in self.socks:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
            self.socks = []

    def close(self) -> None:
        self.cut()
        self.server.close()


def upstream_config(tmp: Path, count: int | str, interval: float, retain: int = 100000) -> Path:
    cfg = tmp / "up.yaml"
    cfg.write_text(
        f"""
server: {{token: {TOKEN}, heartbeat: 0.5}}
pipelines:
  numbers:
    source: {{use: counter, with: {{count: {count}, interval: {interval}}}}}
    retain: {retain}
"""
    )
    return cfg


def downstream(tmp: Path, url: str, **with_: Any) -> tuple[subprocess.Popen[bytes], Path]:
    """``pipeline run`` of an http source into a file sink; returns the process and file."""
    out = tmp / "down.ndjson"
    params = {"url": url, "token": TOKEN, "backoff": 0.05, "max_backoff": 0.5, **with_}
    cfg = tmp / "down.yaml"
    cfg.write_text(
        "pipelines:\n  down:\n    source:\n      use: http\n"
        f"      with: {orjson.dumps(params).decode()}\n"
        f"    sinks: [{{use: file, with: {{path: {out}, fsync: false}}}}]\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "run", "-c", str(cfg), "--log-format", "json"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    return proc, out


def envelopes(out: Path) -> list[dict[str, Any]]:
    return ndjson_file(out)


def data(out: Path) -> list[Any]:
    return [e["data"] for e in envelopes(out) if e["status"] == "processing"]


@contextlib.contextmanager
def finishing(proc: subprocess.Popen[bytes]) -> Iterator[None]:
    try:
        yield
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        if proc.stderr is not None:
            proc.stderr.close()


@pytest.mark.parametrize("fmt", ["ndjson", "sse"])
def test_cut_connections_resume_with_no_gap_and_no_duplicate(tmp_path: Path, fmt: str) -> None:
    """The link is cut three times mid-stream: the downstream gets 0, 1, 2, ... exactly once."""
    up = Upstream(upstream_config(tmp_path, "null", 0.005), free_port()).start()
    proxy = Proxy(up.port)
    url = f"http://127.0.0.1:{proxy.port}/pipelines/numbers"
    proc, out = downstream(tmp_path, url, format=fmt, since=None)  # live: no replay burst
    try:
        with finishing(proc):
            start = len(wait_until(lambda: data(out), timeout=60))
            for cut_at in (start + 50, start + 150, start + 250):
                wait_until(lambda n=cut_at: len(data(out)) >= n, timeout=60)  # type: ignore[misc]
                proxy.cut()
            wait_until(lambda: len(data(out)) >= start + 350, timeout=60)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(60) == 0
            err = proc.stderr.read() if proc.stderr else b""
    finally:
        proxy.close()
        up.stop()
    got = [d["n"] for d in data(out)]
    assert got == list(range(got[0], got[0] + len(got)))
    assert proxy.connections >= 4, "every cut made it reconnect"
    assert err.count(b'"http_source_retrying"') >= 3
    assert TOKEN.encode() not in err


def test_upstream_killed_and_restarted_mid_stream(tmp_path: Path) -> None:
    """SIGKILL of the upstream: its run is a gapless prefix; the next run comes whole."""
    count = 300
    # The first run cannot end before the kill, however slow the machine; the second is short.
    up = Upstream(upstream_config(tmp_path, 1_000_000, 0.01), free_port()).start()
    url = f"http://127.0.0.1:{up.port}/pipelines/numbers"
    proc, out = downstream(tmp_path, url, envelopes=True, until_complete=True)
    with finishing(proc):
        try:
            wait_until(lambda: len(envelopes(out)) >= 60, timeout=60)
            up.kill()
            upstream_config(tmp_path, count, 0.01)
            up.start()
            assert proc.wait(90) == 0
        finally:
            up.stop()
    upstream = [e["data"] for e in envelopes(out) if e["status"] == "processing"]
    runs = list(dict.fromkeys(e["run"] for e in upstream))
    assert len(runs) == 2
    first = [e for e in upstream if e["run"] == runs[0]]
    second = [e for e in upstream if e["run"] == runs[1]]
    assert [e["seq"] for e in first] == list(range(1, len(first) + 1))  # starting: seq 1
    assert [e["status"] for e in first[:1]] == ["starting"]
    assert [e["data"]["n"] for e in first[1:]] == list(range(len(first) - 1))
    assert [e["seq"] for e in second] == list(range(1, count + 3))
    assert [e["data"]["n"] for e in second if e["status"] == "processing"] == list(range(count))
    assert second[-1]["status"] == "complete"


def test_upstream_lagged_becomes_a_chunk_error(tmp_path: Path) -> None:
    """Asking for envelopes the upstream no longer keeps: one chunk_error, then the rest."""
    up = Upstream(upstream_config(tmp_path, 50, 0.0, retain=10), free_port()).start()
    try:
        state_url = f"http://127.0.0.1:{up.port}/pipelines/numbers"
        auth = {"Authorization": f"Bearer {TOKEN}"}
        run = wait_until(
            lambda: (
                (s := httpx.get(state_url, headers=auth).json())["state"] == "completed"
                and s["run"]
            )
        )
        proc, out = downstream(tmp_path, state_url, since=f"{run}:1", until_complete=True)
        with finishing(proc):
            assert proc.wait(60) == 0
    finally:
        up.stop()
    got = envelopes(out)
    errors = [e for e in got if e["status"] == "chunk_error"]
    assert [(e["stage"], e["error"]["type"]) for e in errors] == [("source:http", "UpstreamLagged")]
    assert errors[0]["chunk"]["missed"] == 41  # seqs 2..42 are gone; 43..52 kept (retain 10)
    assert data(out) == [{"n": n} for n in range(41, 50)]


def test_refused_stream_ends_the_run_without_printing_the_token(tmp_path: Path) -> None:
    """A wrong token is a 401: the run ends with error naming the URL, never the token."""
    up = Upstream(upstream_config(tmp_path, 5, 0.0), free_port()).start()
    try:
        url = f"http://127.0.0.1:{up.port}/pipelines/numbers"
        proc, out = downstream(tmp_path, url, token="wrong-secret-token")
        with finishing(proc):
            assert proc.wait(60) == 1
            err = proc.stderr.read() if proc.stderr else b""
    finally:
        up.stop()
    error = next(e for e in envelopes(out) if e["status"] == "error")
    assert error["error"] == {
        "type": "UpstreamRefused",
        "message": f"`{url}/stream` answered HTTP 401: missing or wrong bearer token",
    }
    assert b"wrong-secret-token" not in err + (tmp_path / "down.ndjson").read_bytes()


def test_nothing_listening_gives_up_after_max_retries(tmp_path: Path) -> None:
    """With max_retries, a dead upstream ends the run with a clear error."""
    url = f"http://user:pw-secret@127.0.0.1:{free_port()}/pipelines/numbers"
    proc, out = downstream(tmp_path, url, max_retries=2)
    with finishing(proc):
        assert proc.wait(60) == 1
    error = next(e for e in envelopes(out) if e["status"] == "error")
    assert error["error"]["type"] == "ConnectionError"
    assert error["error"]["message"].startswith(
        f"giving up on `http://user:***@127.0.0.1:{url.split(':')[3].split('/')[0]}"
        "/pipelines/numbers/stream` after 3 attempts: ConnectError"
    )
    assert "pw-secret" not in out.read_text()


def test_sse_parser_ids_multiline_data_and_comments() -> None:
    """SSE: comments skipped, data lines joined, id kept, a split line waits for its end."""
    from stages.connectors.http import _SSE

    sse = _SSE()
    got = list(sse.feed(b': keepalive\n\nid: r:1\ndata: {"a":\r\ndata: 1}\n\ndata: plain te'))
    got += list(sse.feed(b"xt\n\n"))
    assert got == [("r:1", {"a": 1}), (None, "plain text")]


def test_reader_passes_plain_values_and_only_reconnects_on_a_slow_client_notice() -> None:
    """Non-envelope values are chunks; a slow_client or evicted lagged is no gap; a replayed
    seq is dropped."""
    from stages.connectors.http import _Reader

    reader = _Reader("http://h:1/pipelines/p", "ndjson", "0", envelopes=False)
    assert reader.url == "http://h:1/pipelines/p/stream"
    assert list(reader.handle({"x": 1}, None)) == [{"x": 1}]
    notice = {"status": "lagged", "missed": 3, "reason": "slow_client", "resume": "r:2"}
    assert list(reader.handle(notice, None)) == []
    evicted = {"status": "lagged", "missed": 0, "reason": "evicted", "resume": "r:1"}
    assert list(reader.handle(evicted, None)) == []  # idle at a full upstream: no gap
    env = {"status": "processing", "run": "r", "seq": 2, "data": 7}
    assert list(reader.handle(env, None)) == [7]
    assert list(reader.handle(env, None)) == []  # the same seq again: not delivered twice
    assert list(reader.handle({"status": "heartbeat"}, None)) == []
    assert reader.token == "r:2"
    assert _Reader("http://u:pw@h:1/x/events?since=3", "sse", None, True).shown == (
        "http://u:***@h:1/x/events"
    )
