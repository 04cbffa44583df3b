"""One consumer of a Redis consumer group: reads, claims, acknowledges and hands back.

The machinery behind the `redis_stream` source (`stages.connectors.redis`): it reads new
entries (``XREADGROUP``), first re-reads the entries its name still holds, claims the
entries other consumers left idle for ``claim_idle`` seconds (``XAUTOCLAIM``), keeps its
own slow entries from being claimed (``XCLAIM ... JUSTID``), acknowledges many ids per
``XACK``, and on shutdown hands entries it will never process to a live consumer.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
import structlog
from redis import exceptions as rex

from pipeline import BadChunk, Message, report_backlog
from stages.connectors._common import (
    BACKLOG_EVERY,
    AuthenticationFailed,
    Backoff,
    Format,
    MaxDeliveriesExceeded,
    MissingField,
    decode,
    mask_url,
    raise_if_cancelled,
    until_empty,
    wake_or_tick,
)

__all__ = ["NETWORK", "Consumer", "GroupParams", "auth_error", "open_client"]

BLOCK_MS = 1000
"""How long one ``XREADGROUP`` waits for new entries (a stopping source waits no longer)."""
DRAIN_SECONDS = 10.0
"""On shutdown, how long the source waits for the entries it holds to be acknowledged."""
NETWORK = (rex.ConnectionError, rex.TimeoutError, OSError)


def open_client(url: str) -> Any:
    """A client for ``url`` (typed ``Any``: redis-py's reply types are unions of everything)."""
    return aioredis.Redis.from_url(url, socket_connect_timeout=5, socket_keepalive=True)


def auth_error(url: str, exc: BaseException) -> AuthenticationFailed:
    """The error of refused credentials, naming the server with its password masked."""
    return AuthenticationFailed(f"Redis at `{mask_url(url)}` refused the credentials: {exc}")


@dataclass(frozen=True, slots=True)
class GroupParams:
    """The parameters of one consumer (the `redis_stream` source's, resolved)."""

    url: str
    stream: str
    group: str
    consumer: str
    named: bool  # the user chose the consumer name (never delete it)
    start: str
    claim_idle: float
    batch: int
    max_in_flight: int
    max_deliveries: int | None
    format: str
    field: bytes


class Consumer:
    """One consumer of the group: reads, claims, acknowledges and hands back."""

    def __init__(self, p: GroupParams) -> None:
        self.p = p
        self.client = open_client(p.url)
        self.log = structlog.get_logger("pipeline").bind(
            stage="redis_stream", stream=p.stream, group=p.group, consumer=p.consumer
        )
        self.held: dict[bytes, float] = {}  # read, not yet acknowledged: id -> read time
        self.acked: list[bytes] = []  # acknowledged by the engine, XACK not yet sent
        self.wake = asyncio.Event()
        self.room = asyncio.Event()
        self.backoff = Backoff()
        self.own_pending = True  # re-read what Redis says we hold before new entries
        self.cursor = b"0-0"
        self.next_claim = 0.0
        self.acker: asyncio.Task[None] | None = None
        self.ready: deque[tuple[bytes, Message | BadChunk]] = deque()  # read, not yet yielded
        self.stopping = False  # read no more: a read waiting for room gives up

    # -- connecting --------------------------------------------------------------------

    async def connect(self) -> None:
        """Create the group if missing; wait, with backoff, while Redis is unreachable."""
        while not await self._attempt(self._create_group):
            pass
        self.acker = asyncio.get_running_loop().create_task(self._ack_loop())

    async def _create_group(self) -> None:
        try:
            p = self.p
            await self.client.xgroup_create(p.stream, p.group, p.start, mkstream=True)
            self.log.info("redis_group_created", start=p.start)
        except rex.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def _attempt(self, call: Any) -> bool:
        """Run ``call``; on a network error log one line, back off and return False."""
        try:
            await call()
        except rex.AuthenticationError as exc:
            raise auth_error(self.p.url, exc) from None
        except rex.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            self.log.warning("redis_group_missing")
            self.own_pending = True
            await self._attempt(self._create_group)
            return False
        except NETWORK as exc:
            self.own_pending = True  # a lost reply may have left entries under our name
            delay = self.backoff.next
            self.log.warning(
                "redis_unavailable", url=mask_url(self.p.url), error=str(exc), retry_in=delay
            )
            await self.backoff.wait()
            return False
        self.backoff.reset()
        return True

    # -- reading -----------------------------------------------------------------------

    async def next_batch(self) -> list[tuple[bytes, Message | BadChunk]]:
        """Wait for room, then return the next entries to process (empty only once
        `stopping`: the read under way ends, no other starts)."""
        out: list[tuple[bytes, Message | BadChunk]] = []

        async def read() -> None:
            out.extend(await self._read_once())

        while not out and not self.stopping:
            raise_if_cancelled()
            room = self.p.max_in_flight - len(self.held)
            if room <= 0:
                self.room.clear()
                await self.room.wait()
                continue
            await self._attempt(read)
        return out

    async def _read_once(self) -> list[tuple[bytes, Message | BadChunk]]:
        p = self.p
        count = min(p.batch, p.max_in_flight - len(self.held))
        if self.own_pending:
            return await self._read_own_pending(count)
        now = time.monotonic()
        if now >= self.next_claim:
            self.next_claim = now + max(p.claim_idle / 3, 0.2)
            claimed = await self._claim(count)
            if claimed:
                return claimed
        reply = await self.client.xreadgroup(
            p.group, p.consumer, {p.stream: ">"}, count=count, block=BLOCK_MS
        )
        return self._items(reply[0][1] if reply else [], {})

    async def _read_own_pending(self, count: int) -> list[tuple[bytes, Message | BadChunk]]:
        p = self.p
        found: list[tuple[bytes, Any]] = []
        last = b"0-0"
        while len(found) < count:
            reply = await self.client.xreadgroup(p.group, p.consumer, {p.stream: last}, count=count)
            entries = reply[0][1] if reply else []
            if not entries:
                self.own_pending = False
                break
            last = entries[-1][0]
            found += [e for e in entries if e[0] not in self.held]
        if found:
            self.log.info("redis_redelivered", count=len(found), why="own pending entries")
        return self._items(found, await self._deliveries(found))

    async def _claim(self, count: int) -> list[tuple[bytes, Message | BadChunk]]:
        p = self.p
        idle_ms = int(p.claim_idle * 1000)
        reply = await self.client.xautoclaim(
            p.stream, p.group, p.consumer, idle_ms, start_id=self.cursor, count=count
        )
        self.cursor = reply[0]
        deleted = reply[2] if len(reply) > 2 else []
        if deleted:  # trimmed away while pending: nothing to process, nothing to keep
            await self.client.xack(p.stream, p.group, *deleted)
        entries = [e for e in reply[1] if e[0] not in self.held and e[1] is not None]
        if entries:
            self.log.info("redis_claimed", count=len(entries), idle_s=p.claim_idle)
        return self._items(entries, await self._deliveries(entries))

    async def _keep_held(self) -> None:
        """Reset the idle time of our slow entries, so nobody claims work in progress."""
        p = self.p
        limit = time.monotonic() - p.claim_idle / 3
        slow = [i for i, t in self.held.items() if t <= limit]
        if slow:
            idle_ms = int(p.claim_idle / 3 * 1000)  # an entry claimed by another stays there
            await self.client.xclaim(p.stream, p.group, p.consumer, idle_ms, slow, justid=True)
            for i in slow:
                self.held[i] = time.monotonic()

    async def _deliveries(self, entries: list[tuple[bytes, Any]]) -> dict[bytes, int]:
        if not entries or self.p.max_deliveries is None:
            return {}
        p = self.p
        rows = await self.client.xpending_range(
            p.stream,
            p.group,
            min=entries[0][0],
            max=entries[-1][0],
            count=len(entries) + len(self.held) + 1,
            consumername=p.consumer,
        )
        return {r["message_id"]: r["times_delivered"] for r in rows}

    def _items(
        self, entries: list[tuple[bytes, Any]], deliveries: dict[bytes, int]
    ) -> list[tuple[bytes, Message | BadChunk]]:
        p, now = self.p, time.monotonic()
        out: list[tuple[bytes, Message | BadChunk]] = []
        ack = self._ack
        limit = p.max_deliveries
        for entry_id, fields in entries:
            if fields is None:  # deleted from the stream while pending
                self.acked.append(entry_id)
                self.held[entry_id] = now
                continue
            self.held[entry_id] = now
            done = functools.partial(ack, entry_id)
            seen = deliveries.get(entry_id, 1)
            if limit is not None and seen > limit:
                msg = f"entry `{entry_id.decode()}` was delivered {seen} times (max {limit})"
                out.append((entry_id, BadChunk(_fields(fields), MaxDeliveriesExceeded(msg), done)))
            else:
                out.append((entry_id, self._chunk(fields, done)))
        if self.acked:
            self.wake.set()
        return out

    def _chunk(self, fields: dict[bytes, bytes], done: Any) -> Message | BadChunk:
        if self.p.format == "fields":
            return Message(_fields(fields), done)
        payload = fields.get(self.p.field)
        if payload is None:
            name = self.p.field.decode()
            return BadChunk(_fields(fields), MissingField(f"no field `{name}` in the entry"), done)
        return decode(payload, _fmt(self.p.format), done)

    # -- acknowledging -----------------------------------------------------------------

    def _ack(self, entry_id: bytes) -> None:
        self.acked.append(entry_id)
        self.wake.set()

    async def _ack_loop(self) -> None:
        """Send due acks, many ids per XACK, at once; now and then keep slow entries from
        being claimed and report the group's backlog."""
        every = max(min(self.p.claim_idle / 3, BACKLOG_EVERY), 0.1)
        next_keep = time.monotonic() + every
        while True:
            await wake_or_tick(self.wake, next_keep)
            while self.acked:
                ids = self.acked
                self.acked = []

                async def send(ids: list[bytes] = ids) -> None:
                    await self.client.xack(self.p.stream, self.p.group, *ids)

                while not await self._attempt(send):
                    pass
                for i in ids:
                    self.held.pop(i, None)
                self.room.set()
            if time.monotonic() >= next_keep:
                next_keep = time.monotonic() + every
                await self._attempt(self._keep_held)
                await self._attempt(self._report_backlog)

    async def _report_backlog(self) -> None:
        """Report the entries not yet delivered to the group (``XINFO GROUPS`` lag)."""
        try:
            groups = await self.client.xinfo_groups(self.p.stream)
        except rex.ResponseError:  # the stream is gone (deleted): nothing to tell
            return
        for group in groups:
            if _text(group["name"]) == self.p.group:
                lag = group.get("lag")
                report_backlog(None if lag is None else int(lag))

    # -- stopping ----------------------------------------------------------------------

    async def close(self) -> None:
        """Wait for held entries to be acked, hand back the rest, close the client."""
        while self.ready:  # read but never handed to the pipeline: handed back below
            self.held.pop(self.ready.popleft()[0], None)
        try:
            if self.acker is not None:
                await self._drain()
                self.acker.cancel()
                await asyncio.gather(self.acker, return_exceptions=True)
                await asyncio.wait_for(self._hand_back(), DRAIN_SECONDS)
        except (*NETWORK, rex.ResponseError, TimeoutError) as exc:
            self.log.warning("redis_close_incomplete", error=str(exc) or type(exc).__name__)
        finally:
            await self.client.aclose()

    async def _drain(self) -> None:
        if not await until_empty(self.held, self.room, DRAIN_SECONDS):
            self.log.warning("redis_drain_timeout", held=len(self.held))

    async def _hand_back(self) -> None:
        """Give entries still pending under our name to a live consumer, or leave them
        claimable at once (a read cut short by the stop leaves such entries: Redis
        delivered them, the reply was never taken)."""
        p = self.p
        rows = await self.client.xpending_range(
            p.stream, p.group, "-", "+", p.max_in_flight + p.batch, consumername=p.consumer
        )
        ids = [r["message_id"] for r in rows]
        peer = await self._live_peer() if ids else None
        idle_ms = int(p.claim_idle * 1000)  # as if idle for claim_idle: the next claim takes them
        if ids and peer is not None:
            await self.client.xclaim(p.stream, p.group, peer, 0, ids, idle=idle_ms, justid=True)
            self.log.info("redis_handed_back", count=len(ids), to=peer)
        elif ids:
            await self.client.xclaim(
                p.stream, p.group, p.consumer, 0, ids, idle=idle_ms, justid=True
            )
            self.log.warning("redis_left_pending", count=len(ids), claimable="at once")
            return
        if not p.named:
            await self.client.xgroup_delconsumer(p.stream, p.group, p.consumer)

    async def _live_peer(self) -> str | None:
        consumers = await self.client.xinfo_consumers(self.p.stream, self.p.group)
        others = [c for c in consumers if _text(c["name"]) != self.p.consumer]
        if not others:
            return None
        return _text(min(others, key=lambda c: c["idle"])["name"])


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _fields(fields: dict[bytes, bytes]) -> dict[str, str]:
    return {k.decode("utf-8", "replace"): v.decode("utf-8", "replace") for k, v in fields.items()}


def _fmt(fmt: str) -> Format:
    return "json" if fmt == "json" else "text" if fmt == "text" else "raw"
