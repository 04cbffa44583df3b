"""Request heads are bounded: size and header count (431, JSON); unparsable heads get JSON."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from tests.http_helpers import ServerProcess

CONFIG = """
server:
  max_head_bytes: 16384
  max_headers: 20
  head_timeout: 1
pipelines:
  done:
    source: {use: counter, with: {count: 3}}
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    path: Path = tmp_path_factory.mktemp("protocol") / "pipelines.yaml"
    path.write_text(CONFIG)
    with ServerProcess(path) as srv:
        yield srv


def answer(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Read a whole ``Connection: close`` response: status, headers, body."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def test_huge_header_is_refused_while_healthz_answers(server: ServerProcess) -> None:
    """A 4 MB header gets 431 JSON after the limit, not after 4 MB; /healthz answers meanwhile."""
    big = socket.create_connection(("127.0.0.1", server.port), timeout=20)
    sent = [0]  # bytes sent; the refusal comes whatever is still on its way
    stop = threading.Event()

    def attack() -> None:
        big.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ")
        try:
            while sent[0] < 4 << 20 and not stop.is_set():
                big.sendall(b"a" * 65536)
                sent[0] += 65536
        except OSError:
            pass

    thread = threading.Thread(target=attack, daemon=True)
    thread.start()
    try:
        assert httpx.get(server.url("/healthz"), timeout=10).json() == {"status": "ok"}
        status, headers, body = answer(big)
    finally:
        stop.set()
        thread.join(10)
        big.close()
    assert status == 431
    assert headers["content-type"] == "application/json"
    assert orjson.loads(body) == {
        "error": {"type": "head_too_large", "message": "request head over 16384 bytes"}
    }
    assert "Request head refused: request head over 16384 bytes." in server.log_text


def test_too_many_headers_get_431(server: ServerProcess) -> None:
    """More than `max_headers` headers (each small) get 431 JSON."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        many = b"".join(b"X-%d: 1\r\n" % i for i in range(21))
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n")
        status, _, body = answer(sock)
    assert status == 431
    assert orjson.loads(body)["error"]["message"] == "more than 20 request headers"


def test_heads_within_the_limits_are_served(server: ServerProcess) -> None:
    """A head just under both limits is served; so are kept-alive requests after it."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        pad = b"X-Pad: " + b"p" * 12000 + b"\r\n"
        many = b"".join(b"X-%d: 1\r\n" % i for i in range(18))
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + pad + many + b"\r\n")
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.count(b"HTTP/1.1 200 OK") == 2


def test_unparsable_request_gets_json_400(server: ServerProcess) -> None:
    """A request line httptools cannot parse gets a JSON 400, not uvicorn's plain text."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        status, headers, body = answer(sock)
    assert status == 400
    assert headers["content-type"] == "application/json"
    assert orjson.loads(body) == {
        "error": {"type": "bad_request", "message": "invalid HTTP request"}
    }


def test_a_silent_connection_is_closed_after_the_head_timeout(server: ServerProcess) -> None:
    """A connection that sends nothing is closed by the server (`head_timeout`)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as sock:
        assert sock.recv(100) == b""


def test_a_trickled_head_gets_408(server: ServerProcess) -> None:
    """A head that does not complete within `head_timeout` gets 408 JSON (slowloris)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: a")
        status, _, body = answer(sock)
    assert status == 408
    assert orjson.loads(body) == {
        "error": {"type": "head_timeout", "message": "no complete request head within 1 s"}
    }


def ask(server: ServerProcess, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send one raw request and read the whole answer (the server closes)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as sock:
        sock.sendall(request)
        return answer(sock)


def test_an_encoded_slash_is_not_a_path_separator(server: ServerProcess) -> None:
    """`/pipelines/done%2Fstream` is a 404 (JSON), not the stream of `done`."""
    status, headers, body = ask(
        server, b"GET /pipelines/done%2Fstream HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    assert (status, headers["content-type"]) == (404, "application/json")
    assert orjson.loads(body)["error"]["type"] == "not_found"


def test_an_http10_client_gets_a_close_delimited_body(server: ServerProcess) -> None:
    """HTTP/1.0 has no chunked encoding: the stream comes as plain NDJSON lines ended by
    the close; a JSON answer keeps its Content-Length."""
    status, headers, body = ask(server, b"GET /pipelines/done/stream?since=0 HTTP/1.0\r\n\r\n")
    assert status == 200
    assert "transfer-encoding" not in headers
    assert headers["connection"] == "close"
    envs = [orjson.loads(line) for line in body.splitlines()]
    assert [e["status"] for e in envs] == ["starting", *["processing"] * 3, "complete"]
    status, headers, body = ask(server, b"GET /healthz HTTP/1.0\r\n\r\n")
    assert (status, headers["content-length"], orjson.loads(body)) == (
        200,
        str(len(body)),
        {"status": "ok"},
    )


UPGRADE = (
    b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
    b"Sec-WebSocket-Key: %s\r\n\r\n"
)


@pytest.mark.parametrize(
    ("path", "key", "status", "kind"),
    [
        (b"/pipelines/done/stream", b"dGhlIHNhbXBsZSBub25jZQ==", 404, "not_found"),
        (b"/nowhere", b"dGhlIHNhbXBsZSBub25jZQ==", 404, "not_found"),
        (b"/pipelines/done/ws", b"bad", 400, "bad_websocket_handshake"),
    ],
)
def test_websocket_refusals_are_json(
    server: ServerProcess, path: bytes, key: bytes, status: int, kind: str
) -> None:
    """An upgrade where there is no WebSocket (was: a bare 403) and a bad handshake (was:
    the library's plain text) get our JSON error."""
    got, headers, body = ask(server, b"GET %s HTTP/1.1\r\nHost: x\r\n" % path + UPGRADE % key)
    assert (got, headers["content-type"]) == (status, "application/json")
    assert orjson.loads(body)["error"]["type"] == kind
