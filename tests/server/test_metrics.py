"""``GET /metrics`` on a real server: the families of SPEC §9, their labels, the token."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.sync.client import connect as ws_connect

from tests.http_helpers import RawStream, ServerProcess, wait_until

METRICS_TOKEN = "m3trics-s3cret"
SERVER_TOKEN = "s3rver-t0ken"

STAGES = """
import time

def slow(envelope):
    time.sleep(0.01)

def evens(chunk):
    return chunk if chunk["n"] % 2 == 0 else None

def no_sevens(chunk):
    if chunk["n"] % 7 == 0:
        raise ValueError("seven")
    return chunk
"""

CONFIG = """
server:
  {server}
pipelines:
  done:
    source: {{use: counter, with: {{count: 100}}}}
    transforms:
      - use: mstages:evens
      - {{use: mstages:no_sevens, retry: {{attempts: 2}}}}
    sinks:
      - {{use: file, with: {{path: "{out}"}}}}
  live:
    source: {{use: counter, with: {{count: null, interval: 0.02}}}}
  backed_up:
    source: {{use: counter, with: {{count: null}}}}
    sinks:
      - {{use: mstages:slow, blocking: true}}
"""

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: str) -> Samples:
    """Every sample of a scrape, keyed by name and sorted labels."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(got: Samples, name: str, **labels: str) -> float:
    return got[(name, tuple(sorted(labels.items())))]


def start(tmp_path: Path, server: str = "") -> ServerProcess:
    (tmp_path / "mstages.py").write_text(STAGES)
    out = tmp_path / "out.ndjson"
    path = tmp_path / "pipelines.yaml"
    path.write_text(CONFIG.format(server=server, out=out))
    return ServerProcess(path)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    with start(tmp_path) as srv:
        yield srv


def scrape(srv: ServerProcess, headers: dict[str, str] | None = None) -> Samples:
    resp = httpx.get(srv.url("/metrics"), headers=headers)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/plain; version=0.0.4")
    return samples(resp.text)


def test_metrics_families_and_labels(server: ServerProcess) -> None:
    """After a finished run, every family of SPEC §9 is there with exact values."""
    wait_until(lambda: httpx.get(server.url("/pipelines/done")).json()["state"] == "completed")
    got = scrape(server)
    env = "pipeline_envelopes_total"
    assert value(got, env, pipeline="done", status="processing") == 42
    assert value(got, env, pipeline="done", status="chunk_error") == 8
    assert value(got, env, pipeline="done", status="complete") == 1
    chunks = "pipeline_stage_chunks_total"
    evens = {"pipeline": "done", "stage": "transforms[0]:evens"}
    sevens = {"pipeline": "done", "stage": "transforms[1]:no_sevens"}
    assert value(got, chunks, **evens, outcome="ok") == 50
    assert value(got, chunks, **evens, outcome="dropped") == 50
    assert value(got, chunks, **sevens, outcome="ok") == 42
    assert value(got, chunks, **sevens, outcome="error") == 8
    assert value(got, chunks, **sevens, outcome="retried") == 8
    assert value(got, chunks, pipeline="done", stage="source:counter", outcome="ok") == 100
    assert value(got, "pipeline_stage_seconds_count", **evens) >= 1
    assert value(got, "pipeline_stage_seconds_bucket", **evens, le="+Inf") >= 1
    assert value(got, "pipeline_latency_seconds_count", pipeline="done") >= 1
    assert value(got, "pipeline_runs_total", pipeline="done", reason="finished") == 1
    assert value(got, "pipeline_acks_pending", pipeline="done") == 0
    assert value(got, "pipeline_clients_dropped_total", pipeline="done") == 0
    for transport in ("ndjson", "sse", "ws"):
        assert value(got, "pipeline_clients", pipeline="done", transport=transport) == 0
    assert value(got, "pipeline_state", pipeline="done", state="completed") == 1
    assert value(got, "pipeline_state", pipeline="live", state="running") == 1
    assert not any(name == "pipeline_source_backlog" for name, _ in got)  # counter: no broker
    lag, most = (
        value(got, "pipeline_event_loop_lag_seconds"),
        value(got, "pipeline_event_loop_lag_max_seconds"),
    )
    assert 0 <= lag <= most


def test_sink_queue_is_listed_per_sink(server: ServerProcess) -> None:
    """A slow sink's queue fills up and shows in `pipeline_sink_queue`, by sink id."""
    labels = {"pipeline": "backed_up", "sink": "sinks[0]:slow"}
    wait_until(lambda: value(scrape(server), "pipeline_sink_queue", **labels) >= 100, timeout=30)
    got = scrape(server)
    assert not [k for k in got if k[0] == "pipeline_sink_queue" and ("pipeline", "done") in k[1]]

    def listed() -> int:  # the queue drains while the source refills it: read on its own
        m = httpx.get(server.url("/pipelines/backed_up")).json()["metrics"]
        return int(m["sink_queue"]["sinks[0]:slow"])

    wait_until(lambda: listed() >= 100, timeout=30)


def test_clients_per_transport_and_counters_grow(server: ServerProcess) -> None:
    """Open streams are counted per transport; counters of a live run only grow."""
    base = {"pipeline": "live"}
    with (
        RawStream(server.port, "/pipelines/live/stream") as nd,
        RawStream(server.port, "/pipelines/live/events") as sse,
        ws_connect(f"ws://127.0.0.1:{server.port}/pipelines/live/ws") as ws,
    ):
        assert nd.envelopes(limit=1) and sse.read_head() == 200 and ws.recv(timeout=10)
        first = wait_until(
            lambda: (
                (g := scrape(server))
                and value(g, "pipeline_clients", **base, transport="ws") == 1
                and g
            )
        )
        assert value(first, "pipeline_clients", **base, transport="ndjson") == 1
        assert value(first, "pipeline_clients", **base, transport="sse") == 1
        before = value(first, "pipeline_envelopes_total", **base, status="processing")
        wait_until(
            lambda: (
                value(scrape(server), "pipeline_envelopes_total", **base, status="processing")
                > before
            )
        )
    wait_until(
        lambda: (
            sum(
                value(scrape(server), "pipeline_clients", **base, transport=t)
                for t in ("ndjson", "sse", "ws")
            )
            == 0
        )
    )


def test_pipelines_json_carries_the_same_counters(server: ServerProcess) -> None:
    """`/pipelines/{name}` has a `metrics` object: in, out, errors, stages with p99."""
    wait_until(lambda: httpx.get(server.url("/pipelines/done")).json()["state"] == "completed")
    m = httpx.get(server.url("/pipelines/done")).json()["metrics"]
    assert (m["in"], m["out"], m["chunk_errors"]) == (100, 42, 8)
    assert m["runs"] == {"finished": 1}
    assert m["acks_pending"] == 0 and m["backlog"] is None
    assert m["clients"] == {"ndjson": 0, "sse": 0, "ws": 0}
    by_id = {s["stage"]: s for s in m["stages"]}
    assert list(by_id) == ["source:counter", "transforms[0]:evens", "transforms[1]:no_sevens"]
    assert by_id["transforms[0]:evens"]["dropped"] == 50
    assert by_id["transforms[1]:no_sevens"]["p99_s"] > 0


def test_metrics_token(tmp_path: Path) -> None:
    """With `metrics_token`, /metrics needs it; no token ever appears in the text."""
    server = f"token: {SERVER_TOKEN}\n  metrics_token: {METRICS_TOKEN}"
    with start(tmp_path, server) as srv:
        assert httpx.get(srv.url("/metrics")).status_code == 401
        wrong = httpx.get(srv.url("/metrics"), headers={"Authorization": f"Bearer {SERVER_TOKEN}"})
        assert wrong.status_code == 401
        assert wrong.json()["error"]["type"] == "unauthorized"
        resp = httpx.get(srv.url("/metrics"), headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
        assert resp.status_code == 200
        assert "pipeline_runs_total" in resp.text or "pipeline_envelopes_total" in resp.text
        assert METRICS_TOKEN not in resp.text and SERVER_TOKEN not in resp.text
    assert METRICS_TOKEN not in srv.log_text and SERVER_TOKEN not in srv.log_text
