"""One worker of a JetStream durable pull consumer: fetches, acks, keeps work in progress.

The machinery behind the `nats` source (`stages.connectors.nats`) with ``stream``: it
fetches in batches while fewer than ``max_in_flight`` messages are un-acked, sends the
acks the engine released (many per write), sends in-progress acks for messages still
being worked on, reports the consumer's backlog, and on shutdown NAKs what it will not
process.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections import deque
from typing import Any

from nats import errors as nerr
from nats.js import api as jsapi, errors as jserr

from pipeline import BadChunk, Message, report_backlog
from stages.connectors._common import (
    BACKLOG_EVERY,
    Format,
    MaxDeliveriesExceeded,
    decode,
    raise_if_cancelled,
    until_empty,
    wake_or_tick,
)

__all__ = ["FETCH_WAIT", "Member"]

FETCH_WAIT = 0.25
"""How long one fetch waits for messages (a stopping source waits no longer). Short: a
message that reaches nats-py's fetch in its second, lingering pull request can wait for
the rest of the batch until this ends (an idle stream's ack latency had a ~1 s tail)."""
DRAIN_SECONDS = 10.0
"""On shutdown, how long the source waits for the messages it holds to be acknowledged."""


class Member:
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
        self.stopping = False  # fetch no more: a fetch waiting for room gives up

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
        """Wait for room, then fetch the next messages (empty only once `stopping`: the
        fetch under way ends, no other starts)."""
        while not self.stopping:
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
        return []

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
            await wake_or_tick(self.wake, next_tick)
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
        if not await until_empty(self.held, self.room, DRAIN_SECONDS):
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
