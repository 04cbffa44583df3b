"""NATS: a JetStream pull-consumer source (at least once) or a core-subject source, and a sink.

With ``stream`` the source is a member of a durable pull consumer: it fetches in
batches, acknowledges each message once every sink wrote what was made of it (many acks per
write, no timer), sends in-progress acks for messages still being
worked on so ``ack_wait`` never redelivers work in flight, and on shutdown finishes what
it fetched and NAKs what it will not process (redelivered at once to another worker).
Without ``stream`` it subscribes to a core subject: at most once, nothing is acked.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import structlog
from pydantic import PositiveFloat, PositiveInt

from pipeline import BadChunk, Delivery, Message, sink
from stages.connectors._common import (
    AuthenticationFailed,
    Backoff,
    Format,
    Receives,
    decode,
    missing_extra,
    take_ahead,
    write_batches,
)

try:
    import nats  # noqa: F401 - the extra's check (connections are made in _nats_conn)
except ImportError:  # pragma: no cover - exercised by the missing-extra test in a subprocess
    raise ImportError(missing_extra("nats", "nats")) from None

from stages.connectors import _nats_conn as shared
from stages.connectors._nats_member import Member

__all__ = ["AuthenticationFailed", "read", "write"]

PUBLISH_TIMEOUT = 10.0
"""How long the sink waits for JetStream to acknowledge a batch before publishing again."""


async def read(
    *,
    subject: str,
    url: str = "nats://127.0.0.1:4222",
    stream: str | None = None,
    durable: str = "pipeline",
    ack_wait: PositiveFloat = 30.0,
    batch: PositiveInt = 100,
    max_in_flight: PositiveInt = 1000,
    max_deliveries: PositiveInt | None = 5,
    format: Format = "json",
) -> AsyncIterator[Message | BadChunk]:
    """Read NATS messages: a JetStream durable pull consumer (at least once) or a subject.

    With ``stream``, every worker with the same ``durable`` shares the stream's messages
    on ``subject``; a message is acknowledged only after every sink wrote what was made
    of it (or the dead-letter sink its ``chunk_error``), and redelivered after
    ``ack_wait`` seconds when the worker holding it died. While a chunk is still being
    worked on, in-progress acks keep it from being redelivered. A missing stream is
    created for ``subject``, a missing consumer with ``ack_wait``. A message delivered
    more than ``max_deliveries`` times becomes a ``chunk_error``
    (``MaxDeliveriesExceeded``) and is then acked. Without ``stream`` the source
    subscribes to the core ``subject`` (``durable`` is the queue group that workers
    share): at most once, a message in flight when a worker dies is lost.

    Args:
        subject: The subject (wildcards allowed).
        url: The server URL (``nats://[user:password@]host:port``); the password is
            never printed.
        stream: The JetStream stream; leave it out for a core subject (at most once).
        durable: The durable consumer (JetStream) or queue group (core) workers share.
        ack_wait: Seconds before an un-acknowledged message is redelivered.
        batch: Messages fetched per request.
        max_in_flight: Messages fetched and not yet acknowledged before the source waits.
        max_deliveries: Deliveries of one message before it becomes a ``chunk_error``.
        format: ``json`` (one JSON value), ``text`` or ``raw`` (bytes).

    Example:
        source:
          use: nats
          with: {url: "nats://127.0.0.1:4222", subject: orders.new, stream: ORDERS}
    """
    log = structlog.get_logger("pipeline").bind(stage="nats", subject=subject, stream=stream)
    nc = await shared.acquire(url)
    try:
        if stream is None:
            sub = await nc.subscribe(subject, queue=durable)
            async for msg in sub.messages:
                yield decode(msg.data, format)
            return
        member = Member(nc, log, subject, stream, durable, ack_wait, batch, max_in_flight)
        psub = await member.subscribe()
        acker = asyncio.get_running_loop().create_task(member.ack_loop())
        ready = member.ready
        ahead: asyncio.Future[Any] | None = None
        try:
            while True:
                if ahead is None and not member.stopping:  # fetch the next batch meanwhile
                    ahead = asyncio.ensure_future(member.next(psub, max_deliveries, format))
                if not ready:
                    if ahead is None:  # stopping, and told again at no yield: nothing to add
                        return
                    ready.extend(await take_ahead(ahead, member))
                    ahead = None
                yield ready.popleft()[1]
        except asyncio.CancelledError:  # asked to stop: finish what was fetched, fetch no more
            if ahead is not None:
                ready.extend(await take_ahead(ahead, member, stopping=True))
                ahead = None
            while ready:
                yield ready.popleft()[1]
        finally:
            if ahead is not None:
                ahead.cancel()
                await asyncio.gather(ahead, return_exceptions=True)
            await member.close(psub, acker)
    finally:
        await shared.release(url, nc)


@sink(stream=True, confirm=True, batch=True)
async def write(
    deliveries: AsyncIterator[list[Delivery]],
    *,
    subject: str,
    url: str = "nats://127.0.0.1:4222",
    jetstream: bool = False,
    receives: Receives = "envelopes",
) -> None:
    """Publish envelopes to a NATS subject; with ``jetstream: true`` wait for the stream's ack.

    Each message is the encoded envelope (with ``receives: data``, only the ``data`` of
    ``processing`` envelopes), so a `nats` source reads back exactly what was written.
    What arrives while one batch is being confirmed goes in the next. An envelope counts
    as accepted once the server has it: after a flush (core), or once JetStream
    acknowledged it (``jetstream: true``; a message not acknowledged in time is published
    again, so a reader may see a duplicate, never a gap).

    Args:
        deliveries: The envelopes, in lists of what is ready (given by the engine).
        subject: The subject to publish to.
        url: The server URL; its password is never printed.
        jetstream: Wait for JetStream's acknowledgement of every message.
        receives: ``envelopes`` (every envelope) or ``data`` (``processing`` data only).

    Example:
        sinks:
          - use: nats
            with: {url: "nats://127.0.0.1:4222", subject: results, jetstream: true}
    """
    log = structlog.get_logger("pipeline").bind(stage="nats", subject=subject)
    nc = await shared.acquire(url)
    acked = None
    try:
        acked = await _Acked(nc, subject, log).start() if jetstream else None
    except BaseException:
        await shared.release(url, nc)
        raise

    async def publish(payloads: list[bytes]) -> None:
        if acked is not None:
            await acked.publish(payloads)
            return
        for payload in payloads:
            await nc.publish(subject, payload)
        await nc.flush(timeout=PUBLISH_TIMEOUT)

    try:
        await write_batches(deliveries, publish, receives=receives)
    finally:
        if acked is not None:
            await acked.stop()
        with contextlib.suppress(Exception):
            await nc.flush()
        await shared.release(url, nc)


class _Acked:
    """Publishes to a JetStream subject; waits for the stream to acknowledge each message.

    Every reply comes to one subscription of this sink (``INBOX.*``) and is checked in
    place: nats-py's ``publish_async`` makes a future per message and parses each reply
    into a ``PubAck``. A message not acknowledged (an error reply, or none within
    ``PUBLISH_TIMEOUT``) is published again, with backoff.
    """

    def __init__(self, nc: Any, subject: str, log: Any) -> None:
        self.nc, self.subject, self.log = nc, subject, log
        self.prefix = nc.new_inbox() + "."
        self.sent = 0  # replies are numbered: a late reply to an earlier attempt is ignored
        self.waiting: dict[str, int] = {}  # reply subject -> index in the batch
        self.failed: list[int] = []
        self.done = asyncio.Event()
        self.sub: Any = None

    async def start(self) -> _Acked:
        self.sub = await self.nc.subscribe(self.prefix + "*", cb=self._reply)
        return self

    async def stop(self) -> None:
        """Unsubscribe (the connection may be shared: it outlives this sink)."""
        with contextlib.suppress(Exception):
            await self.sub.unsubscribe()

    async def _reply(self, msg: Any) -> None:
        index = self.waiting.pop(msg.subject, None)
        if index is None:
            return
        if b'"seq"' not in msg.data:  # an error (or a no-responders status): not stored
            self.failed.append(index)
        if not self.waiting:
            self.done.set()

    async def publish(self, payloads: list[bytes]) -> None:
        """Publish until JetStream acknowledged every payload (bounded wait per attempt)."""
        backoff = Backoff()
        publish, subject = self.nc.publish, self.subject
        while payloads:
            first, prefix = self.sent, self.prefix
            self.sent += len(payloads)
            replies = [f"{prefix}{first + i}" for i in range(len(payloads))]
            self.waiting = dict(zip(replies, range(len(payloads)), strict=True))
            self.failed = []
            self.done.clear()
            for payload, reply in zip(payloads, replies, strict=True):
                await publish(subject, payload, reply=reply)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(PUBLISH_TIMEOUT):
                    await self.done.wait()
            failed = sorted([*self.failed, *self.waiting.values()])
            self.waiting = {}
            if failed:
                self.log.warning("nats_publish_retry", count=len(failed))
                await backoff.wait()
            payloads = [payloads[i] for i in failed]
