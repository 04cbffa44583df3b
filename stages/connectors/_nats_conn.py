"""NATS connections, one per server URL and event loop, shared by a process's stages.

A `nats` source and a `nats` sink of the same server (a worker reading and writing
JetStream) share one connection: one socket, one read loop, one flusher, so acks and
publishes leave in the same writes. The last user to release it closes it.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any

import nats
import structlog
from nats import errors as nerr

from stages.connectors._common import AuthenticationFailed, mask_url

__all__ = ["acquire", "release"]


@dataclass
class _Entry:
    connecting: asyncio.Future[Any]
    users: int = 0

    def connection(self) -> Any:
        """The connection, once made; None while connecting or when it failed."""
        done = self.connecting
        if not done.done() or done.cancelled() or done.exception() is not None:
            return None
        return done.result()


_OPEN: dict[tuple[str, asyncio.AbstractEventLoop], _Entry] = {}


async def acquire(url: str) -> Any:
    """The shared connection to ``url`` (made now, or by the stage that came first).

    Raises what connecting raises (`AuthenticationFailed`); waits, like connecting,
    while the server cannot be reached.
    """
    key = (url, asyncio.get_running_loop())
    entry = _OPEN.get(key)
    if entry is None or (entry.connecting.done() and _unusable(entry)):
        log = structlog.get_logger("pipeline").bind(stage="nats")
        entry = _OPEN[key] = _Entry(asyncio.ensure_future(_connect(url, log)))
    entry.users += 1
    try:
        return await asyncio.shield(entry.connecting)
    except BaseException:
        _drop(key, entry)
        raise


async def release(url: str, nc: Any) -> None:
    """Give the connection back; the last user closes it."""
    key = (url, asyncio.get_running_loop())
    entry = _OPEN.get(key)
    if entry is not None and entry.connection() is nc and not _drop(key, entry):
        return  # others still use it
    with contextlib.suppress(Exception):  # the last user, or a connection replaced
        await nc.close()


def _drop(key: tuple[str, asyncio.AbstractEventLoop], entry: _Entry) -> bool:
    """One user less; True when it was the last (the entry is forgotten)."""
    entry.users -= 1
    if entry.users > 0:
        return False
    if _OPEN.get(key) is entry:
        del _OPEN[key]
    if not entry.connecting.done():  # nobody waits for it any more
        entry.connecting.cancel()
    return True


def _unusable(entry: _Entry) -> bool:
    nc = entry.connection()
    return nc is None or bool(nc.is_closed)


async def _connect(url: str, log: Any) -> Any:
    """Connect, waiting while the server is unreachable (one log line per attempt).

    nats-py retries the first connection by itself (and reconnects forever after it);
    a refused password ends the wait with `AuthenticationFailed` instead of a retry.
    """
    refused = asyncio.Event()
    connected = [False]

    async def on_error(exc: Exception) -> None:
        text = str(exc) or type(exc).__name__
        if isinstance(exc, nerr.AuthorizationError) or "authorization" in text.lower():
            refused.set()
        elif connected[0]:
            log.warning("nats_error", error=text)
        else:
            log.warning("nats_unavailable", url=mask_url(url), error=text)

    client: list[Any] = []

    async def on_disconnected() -> None:
        if client and client[0].is_closed:  # our own close: nothing to warn about
            return
        log.warning("nats_disconnected", url=mask_url(url))

    async def on_reconnected() -> None:
        log.info("nats_reconnected", url=mask_url(url))

    connecting = asyncio.ensure_future(
        nats.connect(
            servers=[url],
            connect_timeout=2,
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            error_cb=on_error,
            disconnected_cb=on_disconnected,
            reconnected_cb=on_reconnected,
        )
    )
    denied = asyncio.ensure_future(refused.wait())
    try:
        await asyncio.wait({connecting, denied}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (connecting, denied):
            if not task.done():
                task.cancel()
        await asyncio.gather(denied, return_exceptions=True)
    if refused.is_set():
        await asyncio.gather(connecting, return_exceptions=True)
        msg = f"NATS at `{mask_url(url)}` refused the credentials"
        raise AuthenticationFailed(msg)
    connected[0] = True
    client.append(connecting.result())
    return client[0]
