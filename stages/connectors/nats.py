"""NATS: a JetStream pull-consumer source (at least once) or a core-subject source, and a sink.

With ``stream`` the source is a member of a durable pull consumer: it fetches in
batches, acknowledges each message once every sink wrote what was made of it (acks are
pipelined and flushed once per batch), sends in-progress acks for messages still being
worked on so ``ack_wait`` never redelivers work in flight, and on shutdown finishes what
it fetched and NAKs what it will not process (redelivered at once to another worker).
Without ``stream`` it subscribes to a core subject: at most once, nothing is acked.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import structlog
from pydantic import PositiveFloat, PositiveInt

from pipeline import BadChunk, Delivery, Message, report_backlog, sink
from stages.connectors._common import (
    BACKLOG_EVERY,
    AuthenticationFailed,
    Backoff,
    Format,
    MaxDeliveriesExceeded,
    Receives,
    decode,
    mask_url,
    missing_extra,
    raise_if_cancelled,
    write_batches,
)

try:
    import nats
    from nats import errors as nerr
    from nats.js import api as jsapi, errors as jserr
except ImportError:  # pragma: no cover - exercised by the missing-extra test in a subprocess
    raise ImportError(missing_extra("nats", "nats")) from None

__all__ = ["AuthenticationFailed", "read", "write"]

FETCH_WAIT = 1.0
"""How long one fetch waits for messages (a stopping source waits no longer)."""
DRAIN_SECONDS = 10.0
"""On shutdown, how long the source waits for the messages it holds to be acknowledged."""
PUBLISH_TIMEOUT = 10.0
"""How long the sink waits for JetStream to acknowledge a batch before publishing again."""


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

    async def on_disconnected() -> None:
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
    return connecting.result()


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
    nc = await _connect(url, log)
    try:
        if stream is None:
            sub = await nc.subscribe(subject, queue=durable)
            async for msg in sub.messages:
                yield decode(msg.data, format)
            return
        member = _Member(nc, log, subject, stream, durable, ack_wait, batch, max_in_flight)
        psub = await member.subscribe()
        acker = asyncio.get_running_loop().create_task(member.ack_loop())
        ready = member.ready
        try:
            while True:
                if not ready:
                    ready.extend(await member.next(psub, max_deliveries, format))
                yield ready.popleft()[1]
        except asyncio.CancelledError:  # asked to stop: finish what was fetched, fetch no more
            while ready:
                yield ready.popleft()[1]
        finally:
            await member.close(psub, acker)
    finally:
        with contextlib.suppress(Exception):
            await nc.close()


class _Member:
    """One worker of a durable pull consumer: fetches, acks, keeps work in progress."""

    def __init__(
        self,
        nc: Any,
        log: Any,
        subject: str,
        stream: str,
        durable: str,
        ack_wait: float,
        batch: int,
        max_in_flight: int,
    ) -> None:
        self.nc, self.js, self.log = nc, nc.jetstream(), log
        self.subject, self.stream, self.durable = subject, stream, durable
        self.ack_wait, self.batch, self.max_in_flight = ack_wait, batch, max_in_flight
        self.held: dict[int, tuple[Any, float]] = {}  # stream seq -> (msg, fetched or touched)
        self.acked: list[int] = []
        self.wake = asyncio.Event()
        self.room = asyncio.Event()
        self.ready: deque[tuple[int, Message | BadChunk]] = deque()

    async def subscribe(self) -> Any:
        """Create the stream and the durable consumer if missing; pull-subscribe."""
        try:
            await self.js.stream_info(self.stream)
        except jserr.NotFoundError:
            await self.js.add_stream(name=self.stream, subjects=[self.subject])
            self.log.info("nats_stream_created")
        config = jsapi.ConsumerConfig(
            ack_policy=jsapi.AckPolicy.EXPLICIT,
            ack_wait=self.ack_wait,
            max_deliver=-1,  # we count deliveries ourselves, so the last one is dead-lettered
            deliver_policy=jsapi.DeliverPolicy.ALL,
        )
        return await self.js.pull_subscribe(
            self.subject, durable=self.durable, stream=self.stream, config=config
        )

    async def next(
        self, psub: Any, max_deliveries: int | None, fmt: Format
    ) -> list[tuple[int, Message | BadChunk]]:
        """Wait for room, then fetch the next messages (never empty)."""
        while True:
            raise_if_cancelled()  # a stop the client swallowed
            room = self.max_in_flight - len(self.held)
            if room <= 0:
                self.room.clear()
                await self.room.wait()
                continue
            fetch = asyncio.ensure_future(psub.fetch(min(self.batch, room), FETCH_WAIT))
            try:
                msgs = await asyncio.shield(fetch)
            except asyncio.CancelledError:
                # Asked to stop while fetching: what the fetch still brings is ours (not
                # acked, it would wait ack_wait): take it, so it is finished and acked.
                msgs = await _landed(fetch)
                if not msgs:
                    raise
            except (nerr.TimeoutError, TimeoutError):
                continue
            except (nerr.Error, jserr.Error, OSError) as exc:
                self.log.warning("nats_fetch_failed", error=str(exc) or type(exc).__name__)
                await asyncio.sleep(0.5)
                continue
            fresh = self._items(msgs, max_deliveries, fmt)
            if fresh:
                return fresh

    def _items(
        self, msgs: list[Any], max_deliveries: int | None, fmt: Format
    ) -> list[tuple[int, Message | BadChunk]]:
        """The chunks of fetched messages; one redelivered while we still hold it is none."""
        held, now, ack = self.held, time.monotonic(), self._ack
        out: list[tuple[int, Message | BadChunk]] = []
        for msg in msgs:
            seq, seen = _position(msg.reply)
            fresh = seq not in held
            held[seq] = (msg, now)  # a redelivery of what we hold: ack its newest reply
            if not fresh:
                continue
            done = functools.partial(ack, seq)
            if max_deliveries is not None and seen > max_deliveries:
                text = f"message {seq} was delivered {seen} times (max {max_deliveries})"
                chunk = msg.data.decode("utf-8", "replace")
                out.append((seq, BadChunk(chunk, MaxDeliveriesExceeded(text), done)))
            else:
                out.append((seq, decode(msg.data, fmt, done)))
        return out

    def _ack(self, seq: int) -> None:
        self.acked.append(seq)
        self.wake.set()

    async def ack_loop(self) -> None:
        """Send due acks (many per write); now and then send in-progress acks for slow
        messages and report the consumer's backlog."""
        touch = max(self.ack_wait / 3, 0.1)
        every = min(touch, BACKLOG_EVERY)
        next_tick = time.monotonic() + every
        while True:
            raise_if_cancelled()  # close() cancels us: a swallowed cancel must end us too
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(next_tick - time.monotonic(), 0)):
                    await self.wake.wait()
            self.wake.clear()
            try:
                await self._send_acks()
                if time.monotonic() >= next_tick:
                    next_tick = time.monotonic() + every
                    await self._touch_slow(touch)
                    await self._report_backlog()
            except Exception as exc:  # the acker must outlive any one failure
                self.log.warning("nats_ack_failed", error=str(exc) or type(exc).__name__)
                await asyncio.sleep(0.5)

    async def _report_backlog(self) -> None:
        """Report the messages not yet delivered to the consumer (its ``num_pending``)."""
        try:
            info = await self.js.consumer_info(self.stream, self.durable, timeout=1.0)
        except (nerr.Error, TimeoutError, OSError):  # unknown for now: told next time
            return
        report_backlog(info.num_pending)

    async def _send_acks(self) -> None:
        """Publish the due acks; the client's flusher sends them together, one write."""
        while self.acked:
            seqs, self.acked = self.acked, []
            held = self.held
            try:
                for seq in seqs:
                    msg = held.get(seq)
                    if msg is None:  # acked already (a redelivery of it was dropped)
                        continue
                    with contextlib.suppress(nerr.MsgAlreadyAckdError):  # sent before a failure
                        await msg[0].ack()
                    del held[seq]
            except BaseException:
                self.acked[:0] = [seq for seq in seqs if seq in held]  # sent again later
                raise
            self.room.set()

    async def _touch_slow(self, every: float) -> None:
        """Tell the server that messages still being worked on are in progress."""
        limit = time.monotonic() - every
        for seq, (msg, since) in list(self.held.items()):
            if since <= limit:
                await msg.in_progress()
                self.held[seq] = (msg, time.monotonic())

    async def close(self, psub: Any, acker: asyncio.Task[None]) -> None:
        """Wait for held messages to be acked; NAK the rest; unsubscribe."""
        while self.ready:  # fetched, never handed to the pipeline
            seq = self.ready.popleft()[0]
            with contextlib.suppress(Exception):
                await self.held.pop(seq)[0].nak()
        try:
            async with asyncio.timeout(DRAIN_SECONDS):
                while self.held:
                    self.room.clear()
                    await self.room.wait()
        except TimeoutError:
            self.log.warning("nats_drain_timeout", held=len(self.held))
        acker.cancel()
        await asyncio.gather(acker, return_exceptions=True)
        with contextlib.suppress(Exception):
            late = _queued(psub)  # delivered after the last fetch returned
            for msg in [m for m, _ in self.held.values()] + late:  # redeliver elsewhere now
                await msg.nak()
            await self.nc.flush()
            await psub.unsubscribe()


def _position(reply: str) -> tuple[int, int]:
    """The stream sequence and delivery count of a JetStream message, from its ack subject.

    What ``msg.metadata`` holds, without the timestamp nats-py converts for each message:
    ``$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>...`` (9 tokens), or with
    ``<domain>.<account>`` after ``ACK`` (11 or 12 tokens).
    """
    tokens = reply.split(".")
    if len(tokens) == 9:
        return int(tokens[5]), int(tokens[4])
    return int(tokens[7]), int(tokens[6])


async def _landed(fetch: asyncio.Future[Any]) -> list[Any]:
    """The messages of a fetch once it ended (within ``FETCH_WAIT``); none if it failed."""
    try:
        msgs: list[Any] = await fetch
    except Exception:  # a timeout or a lost connection: nothing landed
        return []
    return msgs


def _queued(psub: Any) -> list[Any]:
    """Messages the subscription received that no fetch took (nats-py's pending queue)."""
    queue = getattr(getattr(psub, "_sub", None), "_pending_queue", None)
    found = []
    while queue is not None and not queue.empty():
        found.append(queue.get_nowait())
    return [m for m in found if getattr(m, "reply", None)]


@sink(stream=True, confirm=True)
async def write(
    deliveries: AsyncIterator[Delivery],
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
        deliveries: The envelopes (given by the engine).
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
    nc = await _connect(url, log)
    js = nc.jetstream(publish_async_max_pending=10_000) if jetstream else None

    async def publish(payloads: list[bytes]) -> None:
        if js is not None:
            await _publish_acked(js, subject, payloads, log)
            return
        for payload in payloads:
            await nc.publish(subject, payload)
        await nc.flush(timeout=PUBLISH_TIMEOUT)

    try:
        await write_batches(deliveries, publish, receives=receives)
    finally:
        with contextlib.suppress(Exception):
            await nc.flush()
        with contextlib.suppress(Exception):
            await nc.close()


async def _publish_acked(js: Any, subject: str, payloads: list[bytes], log: Any) -> None:
    """Publish until JetStream acknowledged every payload (bounded wait per attempt)."""
    backoff = Backoff()
    while payloads:
        futures = [await js.publish_async(subject, p) for p in payloads]
        done, _ = await asyncio.wait(futures, timeout=PUBLISH_TIMEOUT)
        pairs = zip(payloads, futures, strict=True)
        failed = [p for p, f in pairs if f not in done or f.cancelled() or f.exception()]
        for f in futures:
            if f not in done:
                f.cancel()
        if failed:
            log.warning("nats_publish_retry", count=len(failed))
            await backoff.wait()
        payloads = failed
