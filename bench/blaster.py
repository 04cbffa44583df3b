"""A server that replays a pre-encoded chunked NDJSON response: the client's ceiling.

No framework, no event loop: a thread per connection writes ~1 MiB blocks of an already
framed HTTP/1.1 chunked body with ``sendall``. ``GET /blast?n=N&per=P`` sends N
envelopes, P per HTTP chunk (1 or 256 in the suite)::

    python -m bench.blaster --port 8001
"""

from __future__ import annotations

import argparse
import socketserver
from urllib.parse import parse_qs, urlsplit

from bench.common import HOST, Clock, encoded

HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\n"
    b"transfer-encoding: chunked\r\nconnection: close\r\n\r\n"
)
BLOCK_TARGET = 1 << 20
LINES = 256


def _framed(lines: list[bytes], per: int) -> bytes:
    """Frame ``lines`` as chunks of ``per`` lines each."""
    out = bytearray()
    for i in range(0, len(lines), per):
        body = b"".join(lines[i : i + per])
        out += b"%x\r\n" % len(body) + body + b"\r\n"
    return bytes(out)


class _Body:
    """Pre-encoded lines and framed blocks, built once per ``per``."""

    def __init__(self) -> None:
        clock = Clock()
        self.lines = [encoded(i + 1, clock) for i in range(LINES)]
        self._blocks: dict[int, tuple[bytes, int]] = {}

    def block(self, per: int) -> tuple[bytes, int]:
        """Return (a ~1 MiB framed block, envelopes in it) for ``per`` lines per chunk."""
        if per not in self._blocks:
            unit = _framed(self.lines, per)
            reps = max(1, BLOCK_TARGET // len(unit))
            self._blocks[per] = (unit * reps, LINES * reps)
        return self._blocks[per]


BODY = _Body()


class Handler(socketserver.BaseRequestHandler):
    """Answer one request with the replayed stream, then close."""

    def handle(self) -> None:
        sock = self.request
        data = b""
        while b"\r\n\r\n" not in data and len(data) < 65536:
            got = sock.recv(65536)
            if not got:
                return
            data += got
        target = data.split(b" ", 2)[1].decode()
        query = parse_qs(urlsplit(target).query)
        n = int(query.get("n", ["1000"])[0])
        per = max(1, min(LINES, int(query.get("per", ["1"])[0])))
        block, in_block = BODY.block(per)
        try:
            sock.sendall(HEAD)
            left = n
            while left >= in_block:
                sock.sendall(block)
                left -= in_block
            if left:
                sock.sendall(_framed((BODY.lines * (left // LINES + 1))[:left], per))
            sock.sendall(b"0\r\n\r\n")
        except OSError:
            return


class Server(socketserver.ThreadingTCPServer):
    """Threaded, address reuse, a deep accept backlog for fan-out clients."""

    allow_reuse_address = True
    daemon_threads = True
    request_queue_size = 2048


def main(argv: list[str] | None = None) -> int:
    """CLI: serve until killed."""
    ap = argparse.ArgumentParser(prog="python -m bench.blaster")
    ap.add_argument("--port", type=int, required=True)
    args = ap.parse_args(argv)
    with Server((HOST, args.port), Handler) as srv:
        srv.serve_forever(poll_interval=0.5)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
