"""uvicorn's httptools protocol with a bounded request head, and JSON refusals.

httptools has no limit on a request head, and it grows an unfinished header by
concatenation (quadratic): one connection sending a 128 MB header held the event loop
for 21 s. `LimitedHttpTools` counts the bytes read while a head is incomplete and the
headers parsed; past ``max_head_bytes`` or ``max_headers`` it answers ``431`` with a
JSON error and closes the connection. The count is one addition per read (``data_received``)
and one per header: the parser keeps its speed (numbers in docs/http.md).

A head is counted from the read in which it began, so with pipelined requests the tail
of the previous body may be counted too: the limit is a bound, off by at most one read.

Also here: an HTTP/1.0 client gets a close-delimited body (uvicorn would send it a
chunked one); `JSONWebSockets`, uvicorn's WebSocket protocol whose refusals are JSON;
at shutdown, a client that has not taken what it was sent is reset (`SHUTDOWN_GRACE`).
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import fcntl
import socket
import struct
import termios
import time
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any, cast

import httptools
import orjson
from uvicorn.protocols.http.httptools_impl import (
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

__all__ = [
    "CONNECTION",
    "HEADERS",
    "HEAD_BYTES",
    "Connection",
    "JSONWebSockets",
    "LimitedHttpTools",
    "limited",
    "refusal",
]

CONNECTION = "pipeline.connection"
"""The ASGI scope extension holding the request's `Connection`."""

HEAD_BYTES = 64 * 1024
"""Default ``server.max_head_bytes``: request line plus headers."""
HEADERS = 100
"""Default ``server.max_headers``."""
_RESET = struct.pack("ii", 1, 0)
SETTLE_POLL = 0.05
"""Seconds between two looks at a dropped client's unsent bytes."""
HEAD_TIMEOUT = 10.0
"""Default ``server.head_timeout``: seconds for a complete request head."""
LINGER = 1.0
"""Seconds a refused connection is read (and discarded) before it is closed."""
_TCP_INFO_SIZE = 160
_BYTES_ACKED = struct.Struct("Q")
_BYTES_ACKED_AT = 120  # struct tcp_info: tcpi_bytes_acked (Linux 4.1+)
SHUTDOWN_GRACE = 0.3
"""Seconds a client gets, once the server shuts down, to take what it was sent; a
connection still holding unsent bytes then is reset (the exit does not wait on it)."""


class _TooLarge(Exception):
    """Raised inside a parser callback: the head passed a limit."""


def refusal(status: int, kind: str, message: str) -> bytes:
    """A complete ``Connection: close`` response with the JSON error body."""
    body = orjson.dumps({"error": {"type": kind, "message": message}})
    head = STATUS_LINE[status] + (
        b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
        % len(body)
    )
    return head + body


class Connection:
    """What a stream may do with its TCP connection (``scope["extensions"][CONNECTION]``).

    A client the server gave up on (cut, or dropped for lagging) must not keep its
    socket and kernel buffers until the peer goes: `abort` resets it at once, and
    `when_closed` lets the stream keep its ``max_clients`` slot until it is really gone.
    """

    __slots__ = ("_callbacks", "_protocol", "closed")

    def __init__(self, protocol: LimitedHttpTools) -> None:
        self._protocol = protocol
        self._callbacks: list[Callable[[], object]] = []
        self.closed = False

    def abort(self) -> None:
        """Reset the connection now, dropping whatever is still buffered for the client.

        ``SO_LINGER`` 0 makes the close a reset: without it the kernel keeps the unsent
        bytes (megabytes for a frozen peer) and the socket until the peer reads them.
        """
        if self.closed:
            return
        transport = self._protocol.transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
        transport.abort()

    def body_send(self, scope: Any) -> Callable[[Any], Awaitable[None]] | None:
        """uvicorn's own ``send`` of the response to ``scope`` (None if that is not the
        request under way, e.g. a pipelined request came in after it).

        A stream whose ``http.response.start`` went through the app's ``send`` (and so
        through every middleware, which look only at the start) writes its body with
        this one: two exception-handling wrappers fewer per write.
        """
        cycle = getattr(self._protocol, "cycle", None)
        if cycle is None or getattr(cycle, "scope", None) is not scope:
            return None
        return cast(Callable[[Any], Awaitable[None]], cycle.send)

    def body_writer(self, scope: Any) -> Callable[[bytes | memoryview], bool] | None:
        """Write one chunk of the body of ``scope``'s (chunked) response now, as
        uvicorn's ``send`` would, if that needs no wait: the transport holds nothing
        unsent and is not paused. Returns whether it wrote (None: not that request).
        """
        cycle = getattr(self._protocol, "cycle", None)
        if not isinstance(cycle, RequestResponseCycle) or cycle.scope is not scope:
            return None
        transport = cycle.transport

        def write(body: bytes | memoryview) -> bool:
            if (
                cycle.disconnected
                or cycle.response_complete
                or not cycle.chunked_encoding
                or cycle.flow.write_paused
                or transport.get_write_buffer_size()
                or transport.is_closing()
            ):
                return False
            transport.write(b"".join((b"%x\r\n" % len(body), body, b"\r\n")))  # one copy
            return True

        return write

    def unsent(self) -> int:
        """Bytes written for the client and not yet acknowledged by it (ours + the kernel's)."""
        if self.closed:
            return 0
        transport = self._protocol.transport
        queued = transport.get_write_buffer_size()
        sock = transport.get_extra_info("socket")
        if sock is None:
            return queued
        buf = array.array("i", [0])
        try:
            fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, buf)
        except OSError:
            return queued
        return queued + buf[0]

    def acked(self) -> int | None:
        """Bytes of ours the client has acknowledged so far (``TCP_INFO``), or None
        where the kernel does not say."""
        if self.closed:
            return None
        sock = self._protocol.transport.get_extra_info("socket")
        try:
            info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_SIZE)
        except (AttributeError, OSError):
            return None
        if len(info) < _BYTES_ACKED.size + _BYTES_ACKED_AT:
            return None
        acked: int = _BYTES_ACKED.unpack_from(info, _BYTES_ACKED_AT)[0]
        return acked

    async def settled(self, grace: float) -> bool:
        """Wait up to ``grace`` s for the client to take everything; return whether it did."""
        deadline = time.monotonic() + grace
        while self.unsent():
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(SETTLE_POLL)
        return True

    def when_closed(self, callback: Callable[[], object]) -> None:
        """Call ``callback`` once the connection is closed (at once if it already is)."""
        if self.closed:
            callback()
        else:
            self._callbacks.append(callback)

    def _lost(self) -> None:
        self.closed = True
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()


class LimitedHttpTools(HttpToolsProtocol):
    """`HttpToolsProtocol` refusing heads over ``max_head_bytes`` or ``max_headers``."""

    max_head_bytes = HEAD_BYTES
    max_headers = HEADERS
    head_timeout = HEAD_TIMEOUT

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True
        self._head_bytes = 0
        self._header_count = 0
        self._refused = ""
        self.connection = Connection(self)
        self._head_timer: asyncio.TimerHandle | None = None
        self._got_bytes = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """A new connection: its first request head must come within ``head_timeout``."""
        super().connection_made(transport)
        self._arm_head_timer()

    def _arm_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.head_timeout, self._head_too_slow)

    def _head_too_slow(self) -> None:
        """No complete head in time: 408 (JSON) if something came, else just close."""
        self._head_timer = None
        if self.transport.is_closing() or self._refused:
            return
        if not self._got_bytes:
            self.transport.close()
            return
        self._refused = f"no complete request head within {self.head_timeout:g} s"
        self.logger.warning("Request head timed out.")
        self.transport.write(refusal(408, "head_timeout", self._refused))
        self._linger()

    def connection_lost(self, exc: Exception | None) -> None:
        """The connection is gone: tell the streams waiting for it."""
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().connection_lost(exc)
        self.connection._lost()

    def shutdown(self) -> None:
        """The server shuts down: uvicorn closes idle connections; a client that has not
        taken what it was sent within `SHUTDOWN_GRACE` is reset, so its stream ends at
        once instead of being cancelled at the end of uvicorn's grace."""
        super().shutdown()
        self.loop.call_later(SHUTDOWN_GRACE, self._reset_if_stuck)

    def _reset_if_stuck(self) -> None:
        if self.connection.unsent():
            self.connection.abort()

    def on_message_begin(self) -> None:
        """A new request: its head starts now."""
        super().on_message_begin()
        self.scope["extensions"] = cast(Any, {CONNECTION: self.connection})
        self._in_head = True
        self._got_bytes = True
        self._arm_head_timer()
        self._head_bytes = self._header_count = 0

    def on_header(self, name: bytes, value: bytes) -> None:
        """Count the header; refuse past ``max_headers``."""
        self._header_count += 1
        if self._header_count > self.max_headers:
            self._refused = f"more than {self.max_headers} request headers"
            raise _TooLarge
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        """The head is complete: stop counting its bytes and timing it. An HTTP/1.0
        request gets a close-delimited body (1.0 has no chunked encoding)."""
        self._in_head = False
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().on_headers_complete()
        if self.scope.get("http_version") == "1.0" and self.cycle is not None:
            self.cycle.__class__ = _CloseDelimited

    def data_received(self, data: bytes) -> None:
        """Feed the parser; refuse a head that grew past the limit (431, JSON)."""
        if self.parser is None or self._refused:
            return
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        except httptools.HttpParserError:
            if self._refused:
                self._refuse()
            else:
                self.logger.warning("Invalid HTTP request received.")
                self.send_400_response("invalid HTTP request")
            return
        if self._in_head:
            self._head_bytes += len(data)
            if self._head_bytes > self.max_head_bytes:
                self._refused = f"request head over {self.max_head_bytes} bytes"
                self._refuse()

    def _refuse(self) -> None:
        self.logger.warning("Request head refused: %s.", self._refused)
        self.transport.write(refusal(431, "head_too_large", self._refused))
        self._linger()

    def _linger(self) -> None:
        """Close after the answer, reading (and dropping) for `LINGER` s meanwhile.

        Closing a socket with unread input sends a reset, which can destroy the answer
        before the client reads it; so the rest of the request is read and discarded.
        """
        self._refused = self._refused or "refused"
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(LINGER, self.transport.close)

    def send_400_response(self, msg: str) -> None:
        """uvicorn's 400 for an unparsable request, as our JSON error."""
        self.transport.write(refusal(400, "bad_request", msg))
        self._linger()


_UNTIL_CLOSE = 1 << 62
"""``expected_content_length`` of a close-delimited body: larger than any body."""


class _CloseDelimited(RequestResponseCycle):
    """uvicorn's request cycle, with a close-delimited body when the response has no
    ``Content-Length``: the body is written as it comes and the connection is closed
    after it (uvicorn would answer an HTTP/1.0 client with a chunked body)."""

    async def send(self, message: Any) -> None:
        """Send one ASGI message; a response without a length is delimited by the close."""
        if message["type"] == "http.response.start":
            names = {name.lower() for name, _ in message.get("headers", [])}
            if b"content-length" not in names and b"transfer-encoding" not in names:
                self.chunked_encoding = False
                self.expected_content_length = _UNTIL_CLOSE
                self.keep_alive = False
        elif (
            message["type"] == "http.response.body"
            and not message.get("more_body", False)
            and self.expected_content_length >= _UNTIL_CLOSE >> 1
        ):
            self.expected_content_length = len(message.get("body", b""))  # the end: 0 left
        await super().send(message)


def _json_reject(reject: Callable[[int, str], Any]) -> Callable[[int, str], Any]:
    """Wrap the websockets library's ``reject``: its refusals carry our JSON error."""

    def json_reject(status: int, text: str) -> Any:
        message = text.strip().removeprefix("Failed to open a WebSocket connection: ")
        message = message.split("\n", 1)[0].rstrip(".") or HTTPStatus(status).phrase
        kind = "bad_websocket_handshake" if status == 400 else HTTPStatus(status).name.lower()
        response = reject(status, "")
        response.body = orjson.dumps({"error": {"type": kind, "message": message}})
        del response.headers["Content-Type"], response.headers["Content-Length"]
        response.headers["Content-Type"] = "application/json"
        response.headers["Content-Length"] = str(len(response.body))
        return response

    return json_reject


class JSONWebSockets(WebSocketsSansIOProtocol):
    """uvicorn's WebSocket protocol whose refusals (a bad handshake: 400, 426, ...; an
    upgrade closed before it was accepted: 403) have a JSON body, like every error."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Set the connection up; its handshake refusals are JSON."""
        super().connection_made(transport)
        self.conn.reject = _json_reject(self.conn.reject)  # type: ignore[method-assign,assignment]


def limited(
    max_head_bytes: int, max_headers: int, head_timeout: float = HEAD_TIMEOUT
) -> type[LimitedHttpTools]:
    """A `LimitedHttpTools` class with these limits (uvicorn instantiates it per connection)."""
    attrs = {
        "max_head_bytes": max_head_bytes,
        "max_headers": max_headers,
        "head_timeout": head_timeout,
    }
    return type("LimitedHttpTools", (LimitedHttpTools,), attrs)
