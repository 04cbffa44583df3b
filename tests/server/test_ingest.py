"""``POST /pipelines/{name}/ingest`` on a real server (subprocess, real port, real HTTP)."""

from __future__ import annotations

import re
import shutil
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

from tests.http_helpers import ROOT, ServerProcess, ndjson_file, wait_until

TOKEN = "ingest-t0ken"
AUTH = {"Authorization": f"Bearer {TOKEN}"}

STAGES = """
import asyncio, os
from pipeline import sink

def tag(chunk):
    if isinstance(chunk, dict) and chunk.get("boom"):
        raise ValueError("boom")
    return {"got": chunk}

def skip_odd(chunk):
    return None if isinstance(chunk, int) and chunk % 2 else chunk

@sink(receives="data")
async def gated(data, gate: str):
    '''Accepts a chunk only once the file `gate` exists.'''
    for _ in range(3000):
        if os.path.exists(gate):
            return
        await asyncio.sleep(0.01)
    raise RuntimeError("gate never opened")

@sink(receives="data")
def fragile(data):
    if isinstance(data, dict) and data.get("die"):
        raise RuntimeError("sink died")
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, Path]]:
    """One server with every ingest pipeline these tests use."""
    tmp = tmp_path_factory.mktemp("ingest")
    (tmp / "ingest_stages.py").write_text(STAGES)
    (tmp / "pipelines.yaml").write_text(
        f"""
server:
  token: {TOKEN}
pipelines:
  feed:
    source: {{use: ingest, with: {{max_pending: 100, max_body: 4000}}}}
    transforms: [{{use: "ingest_stages:skip_odd"}}, {{use: "ingest_stages:tag"}}]
    sinks: [{{use: file, with: {{path: {tmp}/feed.ndjson}}}}]
  gated:
    source: {{use: ingest, with: {{max_pending: 4}}}}
    sinks: [{{use: "ingest_stages:gated", with: {{gate: {tmp}/gate}}}}]
  fragile:
    source: {{use: ingest}}
    sinks: [{{use: "ingest_stages:fragile"}}]
  counting:
    source: {{use: counter, with: {{count: 1}}}}
"""
    )
    with ServerProcess(tmp / "pipelines.yaml") as srv:
        yield srv, tmp


def post(srv: ServerProcess, name: str, body: bytes, **headers: str) -> httpx.Response:
    return httpx.post(
        srv.url(f"/pipelines/{name}/ingest"), content=body, headers={**AUTH, **headers}, timeout=30
    )


def envelopes(path: Path) -> list[dict[str, Any]]:
    return ndjson_file(path)


def test_ndjson_body_answers_once_every_chunk_reached_the_sink(server: Any) -> None:
    """Lines become chunks; the answer's counts and seqs match what the file sink holds."""
    srv, tmp = server
    body = b'{"id": 1}\n{"id": 2}\r\nnot json\n\n{"boom": true}\n{"id": 3}'
    r = post(srv, "feed", body)
    assert r.status_code == 200
    answer = r.json()
    written = envelopes(tmp / "feed.ndjson")  # read as soon as the answer came
    mine = [e for e in written if answer["first_seq"] <= e.get("seq", 0) <= answer["last_seq"]]
    assert [(e["status"], e.get("data"), e.get("stage")) for e in mine] == [
        ("processing", {"got": {"id": 1}}, None),
        ("processing", {"got": {"id": 2}}, None),
        ("chunk_error", None, "source:ingest"),
        ("chunk_error", None, "transforms[1]:tag"),
        ("processing", {"got": {"id": 3}}, None),
    ]
    assert answer == {
        "accepted": 5,
        "chunk_errors": 2,
        "run": written[0]["run"],
        "first_seq": mine[0]["seq"],
        "last_seq": mine[-1]["seq"],
    }
    assert mine[2]["chunk"] == "not json"


def test_json_array_body_is_taken_as_its_elements(server: Any) -> None:
    """A body that is one JSON array: each element is a chunk."""
    srv, tmp = server
    r = post(srv, "feed", b' [{"a": 1}, 2, "three"]', **{"content-type": "application/json"})
    assert r.status_code == 200
    answer = r.json()
    assert (answer["accepted"], answer["chunk_errors"]) == (3, 0)
    mine = [e for e in envelopes(tmp / "feed.ndjson") if e.get("seq", 0) >= answer["first_seq"]]
    assert [e["data"] for e in mine] == [{"got": {"a": 1}}, {"got": 2}, {"got": "three"}]


def test_dropped_chunks_are_acknowledged_and_an_empty_body_answers_at_once(server: Any) -> None:
    """A chunk a transform drops counts as delivered; an empty body accepts nothing."""
    srv, _ = server
    r = post(srv, "feed", b"1\n3\n")  # skip_odd drops both
    assert r.status_code == 200
    assert r.json() | {"run": None} == {
        "accepted": 2,
        "chunk_errors": 0,
        "run": None,
        "first_seq": None,
        "last_seq": None,
    }
    empty = post(srv, "feed", b"\n \n")
    assert empty.status_code == 200
    assert empty.json() | {"run": None} == {
        "accepted": 0,
        "chunk_errors": 0,
        "run": None,
        "first_seq": None,
        "last_seq": None,
    }


def test_curl_data_binary_file(server: Any) -> None:
    """The documented one-liner: ``curl --data-binary @file.ndjson``."""
    srv, tmp = server
    curl = shutil.which("curl")
    assert curl is not None, "curl is part of the test machine"
    data = tmp / "batch.ndjson"
    data.write_text("".join(f'{{"line": {i}}}\n' for i in range(20)))
    out = subprocess.run(
        [
            *(curl, "-sS", "--fail-with-body", "-H", f"Authorization: Bearer {TOKEN}"),
            *("--data-binary", f"@{data}", srv.url("/pipelines/feed/ingest")),
        ],
        capture_output=True,
        timeout=30,
        check=True,
    )
    answer = orjson.loads(out.stdout)
    assert (answer["accepted"], answer["chunk_errors"]) == (20, 0)
    assert answer["last_seq"] - answer["first_seq"] == 19


def test_too_large_bodies_get_413(server: Any) -> None:
    """Over max_body by Content-Length, by streaming (chunked), and over max_pending lines."""
    srv, _ = server
    big = b'{"x": "' + b"y" * 5000 + b'"}\n'
    r = post(srv, "feed", big)
    assert r.status_code == 413
    assert r.json()["error"] == {
        "type": "body_too_large",
        "message": f"the body is {len(big)} bytes, more than max_body=4000",
    }

    def chunks() -> Iterator[bytes]:
        for _ in range(10):
            yield b'{"x": "' + b"y" * 500 + b'"}\n'

    r = httpx.post(srv.url("/pipelines/feed/ingest"), content=chunks(), headers=AUTH, timeout=30)
    assert r.status_code == 413
    # streamed: the whole lines read before the limit were taken, and the answer says how
    # many (none when the server got the chunks in one piece)
    assert re.fullmatch(
        r"the body passes max_body=4000 bytes( \([1-7] records before it were taken\))?",
        r.json()["error"]["message"],
    )


def test_a_body_of_more_records_than_max_pending_flows_through(server: Any) -> None:
    """250 lines through max_pending=100: taken as room frees, every one delivered once."""
    srv, tmp = server
    before = len(envelopes(tmp / "feed.ndjson"))
    r = post(srv, "feed", b"".join(b"%d\n" % (2 * i) for i in range(250)))
    assert r.status_code == 200
    assert r.json()["accepted"] == 250
    written = envelopes(tmp / "feed.ndjson")[before:]
    assert [e["data"]["got"] for e in written] == [2 * i for i in range(250)]


def test_lines_reach_the_sinks_while_the_body_is_still_coming(server: Any) -> None:
    """Two lines are delivered before the client sends the third; the answer counts all 3."""
    srv, tmp = server
    before = len(envelopes(tmp / "feed.ndjson"))
    head = (
        "POST /pipelines/feed/ingest HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        f"Authorization: Bearer {TOKEN}\r\nContent-Length: 36\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", srv.port), timeout=30) as sock:
        sock.sendall(head.encode() + b'{"part": 1}\n{"part": 2}\n')
        wait_until(lambda: len(envelopes(tmp / "feed.ndjson")) >= before + 2)
        sock.sendall(b'{"part": 3}\n')
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert orjson.loads(answer.split(b"\r\n\r\n", 1)[1])["accepted"] == 3
    written = envelopes(tmp / "feed.ndjson")[before:]
    assert [e["data"]["got"] for e in written] == [{"part": 1}, {"part": 2}, {"part": 3}]


def test_full_pipeline_refuses_a_body_whole_with_429(server: Any) -> None:
    """While 3 of max_pending=4 chunks wait, a 2-line body gets 429 + Retry-After."""
    srv, tmp = server
    answers: list[httpx.Response] = []
    first = threading.Thread(target=lambda: answers.append(post(srv, "gated", b"1\n2\n3\n")))
    first.start()
    try:
        wait_until(lambda: get_state(srv, "gated")["counts"].get("processing", 0) >= 1)
        r = post(srv, "gated", b"4\n5\n")
        assert r.status_code == 429
        assert r.headers["retry-after"] == "1"
        assert r.json()["error"]["type"] == "full"
        assert r.json()["error"]["message"] == (
            "pipeline `gated` is full: 3 chunks pending, 2 more would pass max_pending=4"
        )
    finally:
        (tmp / "gate").write_text("open")
        first.join(30)
    assert answers[0].status_code == 200
    assert answers[0].json()["accepted"] == 3
    assert post(srv, "gated", b"4\n5\n").json()["accepted"] == 2


def get_state(srv: ServerProcess, name: str) -> dict[str, Any]:
    result: dict[str, Any] = httpx.get(srv.url(f"/pipelines/{name}"), headers=AUTH).json()
    return result


def test_auth_unknown_pipeline_and_pipeline_without_ingest(server: Any) -> None:
    """401 without the token, 404 for an unknown name, 409 when the source is not ingest."""
    srv, _ = server
    r = httpx.post(srv.url("/pipelines/feed/ingest"), content=b"1\n")
    assert (r.status_code, r.json()["error"]["type"]) == (401, "unauthorized")
    r = post(srv, "nope", b"1\n")
    assert r.json() == {"error": {"type": "not_found", "message": "unknown pipeline `nope`"}}
    r = post(srv, "counting", b"1\n")
    assert r.status_code == 409
    assert r.json()["error"] == {
        "type": "no_ingest_source",
        "message": "pipeline `counting` has no ingest source",
    }


def test_run_that_ends_answers_503_then_409(server: Any) -> None:
    """A sink that fails for good ends the run: that body gets 503, the next one 409."""
    srv, _ = server
    r = post(srv, "fragile", b'{"die": true}\n')
    assert r.status_code == 503
    assert r.json()["error"]["type"] == "run_ended"
    assert r.json()["accepted"] == 0
    r = post(srv, "fragile", b"1\n")
    assert r.status_code == 409
    assert r.json()["error"] == {
        "type": "not_running",
        "message": "pipeline `fragile` is not running",
    }


def test_client_that_disconnects_mid_body_loses_only_what_it_did_not_send(server: Any) -> None:
    """Two whole lines and a cut third arrive, then the socket closes: the two are delivered."""
    srv, tmp = server
    before = len(envelopes(tmp / "feed.ndjson"))
    head = (
        "POST /pipelines/feed/ingest HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
        f"Authorization: Bearer {TOKEN}\r\nContent-Length: 1000\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as sock:
        sock.sendall(head.encode())
        assert sock.recv(100).startswith(b"HTTP/1.1 100 Continue")  # the app is reading
        sock.sendall(b'{"cut": 1}\n{"cut": 2}\n{"cut": ')
    wait_until(lambda: len(envelopes(tmp / "feed.ndjson")) >= before + 2)
    written = envelopes(tmp / "feed.ndjson")[before:]
    assert [e.get("data") for e in written] == [{"got": {"cut": 1}}, {"got": {"cut": 2}}]


def test_plain_run_says_ingest_needs_the_server(tmp_path: Path) -> None:
    """Without --serve nobody can post: the run fails with one clear error."""
    cfg = tmp_path / "pipelines.yaml"
    cfg.write_text("pipelines:\n  feed:\n    source: {use: ingest}\n")
    out = subprocess.run(
        [sys.executable, "-m", "pipeline", "run", "-c", str(cfg)],
        cwd=ROOT,
        capture_output=True,
        timeout=60,
    )
    assert out.returncode == 1
    error = [orjson.loads(x) for x in out.stdout.splitlines()][1]
    assert error["error"] == {
        "type": "RuntimeError",
        "message": (
            "the `ingest` source takes chunks over HTTP: run it with `pipeline run --serve`"
        ),
    }
