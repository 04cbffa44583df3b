"""At `max_clients`, the stream idle longest gives its slot to a new client (docs/http.md).

Before: idle tailers of an idle pipeline held every slot and each new stream got 503.
Now: a stream that has carried nothing but heartbeats for `evict_idle_after` seconds
is ended with `lagged(reason=evicted)` and a `resume` token; busy streams are never
evicted, and `pipeline tail` comes back from the token without a gap.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import orjson
import pytest
from websockets.exceptions import ConnectionClosedOK
from websockets.sync.client import connect as ws_connect

from tests.http_helpers import RawStream, ServerProcess, sse_events, wait_until

STAGES = """
import asyncio, os

async def quiet(gate: str):
    '''3 envelopes, then nothing until `gate` exists, then 3 more and the end.'''
    for n in range(3):
        yield {"n": n}
    for _ in range(6000):
        if os.path.exists(gate):
            break
        await asyncio.sleep(0.01)
    for n in range(3, 6):
        yield {"n": n}
"""


def project(tmp_path: Path, max_clients: int) -> Path:
    (tmp_path / "idlestages.py").write_text(STAGES)
    path = tmp_path / "pipelines.yaml"
    path.write_text(
        f"""
server: {{max_clients: {max_clients}, heartbeat: 0.2, evict_idle_after: 0.5}}
pipelines:
  quiet: {{source: {{use: idlestages:quiet, with: {{gate: "{tmp_path / "gate"}"}}}}}}
  live: {{source: {{use: counter, with: {{count: null, interval: 0.02}}}}, retain: 10}}
"""
    )
    return path


def _new_stream(srv: ServerProcess, path: str) -> int:
    return httpx.get(srv.url(path), params={"since": "0"}, timeout=10).status_code


def test_a_full_server_evicts_the_longest_idle_stream(tmp_path: Path) -> None:
    """Two idle streams fill the server; a third client gets its stream (was 503), the
    older idle one ends with `lagged(reason=evicted)` carrying its resume token (for SSE
    also the event id, so EventSource resumes from it), the younger one stays."""
    with ServerProcess(project(tmp_path, 2)) as srv:
        old = RawStream(srv.port, "/pipelines/quiet/events?since=0")
        young = RawStream(srv.port, "/pipelines/quiet/stream?since=0")
        with old, young:
            assert old.read_head() == 200
            first = sse_events(old, limit=5)  # retry, starting, 3 processing
            run = orjson.loads(first[-1]["data"])["run"]
            assert young.read_head() == 200
            assert [e["seq"] for e in young.envelopes(limit=4)] == [1, 2, 3, 4]
            with RawStream(srv.port, "/pipelines/quiet/stream?since=0") as new:
                # at most ~0.5 s of 503 until the old stream counts as idle
                assert wait_until(lambda: _opened(new, srv), 30) == 200
                assert [e["seq"] for e in new.envelopes(limit=4)] == [1, 2, 3, 4]
            rest = [e for e in sse_events(old) if "data" in e]
            notice = orjson.loads(rest[-1]["data"])
            assert notice["status"] == "lagged"
            assert notice["reason"] == "evicted"
            assert notice["missed"] == 0
            assert notice["resume"] == f"{run}:4"
            assert rest[-1]["id"] == f"{run}:4"
            assert old.clean_end
            assert (
                '"event":"client_evicted"' in srv.log_text and '"pipeline":"quiet"' in srv.log_text
            )
            assert httpx.get(srv.url("/pipelines/quiet"), timeout=10).json()["clients"] == 1
            metrics = httpx.get(srv.url("/metrics"), timeout=10).text
            assert 'pipeline_clients_evicted_total{pipeline="quiet"} 1.0' in metrics
            assert 'pipeline_clients_evicted_total{pipeline="live"} 0.0' in metrics


def _opened(stream: RawStream, srv: ServerProcess) -> int:
    """Retry a refused stream request on a fresh socket until it is served (or not 503)."""
    code = stream.read_head()
    if code != 503:
        return code
    stream.close()
    fresh = RawStream(srv.port, "/pipelines/quiet/stream?since=0")
    stream.sock, stream.buf, stream.status, stream.headers = fresh.sock, b"", 0, {}
    return 0


def test_busy_streams_are_not_evicted(tmp_path: Path) -> None:
    """Streams that carry data keep their slots: one more client still gets 503."""
    with ServerProcess(project(tmp_path, 2)) as srv:
        a = RawStream(srv.port, "/pipelines/live/stream")
        b = RawStream(srv.port, "/pipelines/live/stream")
        with a, b:
            assert a.read_head() == 200 and b.read_head() == 200
            a.envelopes(limit=30)
            b.envelopes(limit=30)  # both have been served for longer than 0.5 s
            for _ in range(3):
                assert _new_stream(srv, "/pipelines/live/stream") == 503
                a.envelopes(limit=5)
                b.envelopes(limit=5)
        assert '"client_evicted"' not in srv.log_text


def test_pipeline_tail_comes_back_after_eviction_without_a_gap(tmp_path: Path) -> None:
    """`pipeline tail` on the only slot is evicted by another client, reconnects from the
    notice's resume token once there is room, and gets the rest of the run: seqs 1..8
    with no gap, exit 0."""
    gate = tmp_path / "gate"
    with ServerProcess(project(tmp_path, 1)) as srv:
        cmd = [sys.executable, "-m", "pipeline", "tail", srv.url("/pipelines/quiet")]
        tail = subprocess.Popen(
            [*cmd, "--raw", "--since", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        try:
            assert tail.stdout is not None
            lines = [tail.stdout.readline() for _ in range(4)]  # starting + 3 processing
            with RawStream(srv.port, "/pipelines/quiet/stream") as other:
                assert wait_until(lambda: _opened(other, srv), 30) == 200
                wait_until(lambda: '"client_evicted"' in srv.log_text, 30)
            gate.touch()
            out, err = tail.communicate(timeout=60)
        finally:
            if tail.poll() is None:
                tail.kill()
                tail.communicate(timeout=10)
    envs = [orjson.loads(line) for line in b"".join(lines).splitlines() + out.splitlines()]
    data = [e for e in envs if e["status"] not in ("heartbeat", "lagged")]
    assert [e["seq"] for e in data] == list(range(1, 9))
    assert data[-1]["status"] == "complete"
    assert [e["reason"] for e in envs if e["status"] == "lagged"] == ["evicted"]
    assert tail.returncode == 0, err.decode()


def test_pipeline_tail_resumes_from_the_notice_when_it_had_seen_nothing(tmp_path: Path) -> None:
    """`pipeline tail` with no `--since` (live only) has seen nothing when it is evicted;
    the run goes on while it waits for a slot. It resumes from the notice's token: the
    envelopes it missed come once, with no replay of what came before it connected."""
    gate = tmp_path / "gate"
    with ServerProcess(project(tmp_path, 1)) as srv:
        wait_until(
            lambda: httpx.get(srv.url("/pipelines/quiet"), timeout=10).json()["last_seq"] == 4
        )
        cmd = [sys.executable, "-m", "pipeline", "tail", srv.url("/pipelines/quiet"), "--raw"]
        tail = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            wait_until(
                lambda: httpx.get(srv.url("/pipelines/quiet"), timeout=10).json()["clients"] == 1,
                30,
            )
            with RawStream(srv.port, "/pipelines/quiet/stream") as other:
                assert wait_until(lambda: _opened(other, srv), 30) == 200
                wait_until(lambda: '"client_evicted"' in srv.log_text, 30)
                gate.touch()  # the rest of the run happens while tail waits (503)
                assert [e["seq"] for e in other.envelopes()][-1] == 8
            out, err = tail.communicate(timeout=60)
        finally:
            if tail.poll() is None:
                tail.kill()
                tail.communicate(timeout=10)
    envs = [orjson.loads(line) for line in out.splitlines()]
    assert [e["reason"] for e in envs if e["status"] == "lagged"] == ["evicted"]
    data = [e for e in envs if e["status"] not in ("heartbeat", "lagged")]
    assert [e["seq"] for e in data] == [5, 6, 7, 8]
    assert tail.returncode == 0, err.decode()


def test_an_evicted_websocket_gets_the_notice_then_a_normal_close(tmp_path: Path) -> None:
    """Over WebSocket the notice is the last text frame, then the socket closes with 1000."""
    with ServerProcess(project(tmp_path, 1)) as srv:
        url = f"ws://127.0.0.1:{srv.port}/pipelines/quiet/ws?since=0"
        with ws_connect(url, open_timeout=10) as ws:
            frames = [orjson.loads(ws.recv(timeout=10)) for _ in range(4)]
            with RawStream(srv.port, "/pipelines/quiet/stream") as other:
                assert wait_until(lambda: _opened(other, srv), 30) == 200
                rest = []
                with pytest.raises(ConnectionClosedOK) as closed:
                    for _ in range(100):
                        rest.append(orjson.loads(ws.recv(timeout=10)))
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1000
    notice = [e for e in rest if e["status"] != "heartbeat"]
    assert [(e["status"], e["reason"]) for e in notice] == [("lagged", "evicted")]
    assert notice[0]["resume"] == f"{frames[-1]['run']}:4"
