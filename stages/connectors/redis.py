"""Redis Streams: a consumer-group source with at-least-once delivery, and an XADD sink.

The source is one consumer of a consumer group. It reads new entries (``XREADGROUP``),
first re-reads the entries its name still holds (after a restart with a fixed
``consumer``, or a lost connection), claims the entries other consumers left idle for
``claim_idle`` seconds (``XAUTOCLAIM``), and keeps its own slow entries from being
claimed while it works on them (``XCLAIM ... JUSTID`` resets their idle time). An entry
is acknowledged (``XACK``) once every sink wrote what was made of it; acks are sent as
soon as they are due, many ids per ``XACK`` (one round trip per batch). On shutdown it
stops reading, waits for what it holds to be acked, hands entries it will never process
to a live consumer of the group, and removes its own consumer name when nothing is left
under it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, Literal

import structlog
from pydantic import NonNegativeInt, PositiveFloat, PositiveInt

from pipeline import BadChunk, Delivery, Message, sink
from stages.connectors._common import (
    AuthenticationFailed,
    Backoff,
    Receives,
    mask_url,
    missing_extra,
    take_ahead,
    unique_consumer,
    write_batches,
)

try:
    from redis import exceptions as rex
except ImportError:  # pragma: no cover - exercised by the missing-extra test in a subprocess
    raise ImportError(missing_extra("redis_stream", "redis")) from None

from stages.connectors._redis_group import NETWORK, Consumer, GroupParams, auth_error, open_client

__all__ = ["AuthenticationFailed", "read", "write"]


async def read(
    *,
    stream: str,
    url: str = "redis://127.0.0.1:6379",
    group: str = "pipeline",
    consumer: str | None = None,
    start: Literal["$", "0"] = "0",
    claim_idle: PositiveFloat = 30.0,
    batch: PositiveInt = 500,
    max_in_flight: PositiveInt = 1000,
    max_deliveries: PositiveInt | None = 5,
    format: Literal["json", "text", "raw", "fields"] = "json",
    field: str = "data",
) -> AsyncIterator[Message | BadChunk]:
    """Read a Redis stream as one consumer of a consumer group, at least once.

    Each entry carries its payload in ``field`` (``format: fields`` makes the whole entry
    the chunk). An entry is acknowledged (``XACK``) only after every sink wrote what was
    made of it (or the dead-letter sink its ``chunk_error``); a dropped chunk is acked at
    once. Run any number of workers with the same ``group``: each entry goes to one of
    them, and the entries a killed worker held are claimed by the others after
    ``claim_idle`` seconds. The next batch is read while one is worked on (within
    ``max_in_flight``). A missing stream or group is created (``start``: ``0`` reads
    what the stream already holds, ``$`` only what comes next). An undecodable payload
    becomes a ``chunk_error`` and is acked once dead-lettered; so is an entry delivered
    more than ``max_deliveries`` times (``MaxDeliveriesExceeded``). The source waits, with
    backoff, while Redis cannot be reached.

    Args:
        stream: The stream key.
        url: The Redis URL (``redis://[:password@]host:port/db``); its password is
            never printed.
        group: The consumer group; workers sharing it share the stream.
        consumer: This worker's name in the group (default: unique per process).
        start: Where a group created here starts: ``0`` (the whole stream) or ``$``.
        claim_idle: Seconds an entry may stay un-acked before another worker claims it.
        batch: Entries read per call.
        max_in_flight: Entries read and not yet acknowledged before the source waits.
        max_deliveries: Deliveries of one entry before it becomes a ``chunk_error``.
        format: ``json`` (one JSON value), ``text``, ``raw`` (bytes) or ``fields``.
        field: The entry field holding the payload.

    Example:
        source:
          use: redis_stream
          with: {url: "redis://127.0.0.1:6379", stream: orders, group: billing}
    """
    params = GroupParams(
        url=url,
        stream=stream,
        group=group,
        consumer=consumer or unique_consumer(),
        named=consumer is not None,
        start=start,
        claim_idle=claim_idle,
        batch=batch,
        max_in_flight=max_in_flight,
        max_deliveries=max_deliveries,
        format=format,
        field=field.encode(),
    )
    member = Consumer(params)
    ready = member.ready
    ahead: asyncio.Future[list[tuple[bytes, Message | BadChunk]]] | None = None
    try:
        await member.connect()
        while True:
            if ahead is None and not member.stopping:  # read the next batch meanwhile
                ahead = asyncio.ensure_future(member.next_batch())
            if not ready:
                if ahead is None:  # stopping, and told again at no yield: nothing to add
                    return
                ready.extend(await take_ahead(ahead, member))
                ahead = None
            yield ready.popleft()[1]
    except asyncio.CancelledError:  # asked to stop: finish what was already read, read no more
        if ahead is not None:
            ready.extend(await take_ahead(ahead, member, stopping=True))
            ahead = None
        while ready:
            yield ready.popleft()[1]
    finally:
        if ahead is not None:
            ahead.cancel()
            await asyncio.gather(ahead, return_exceptions=True)
        await member.close()


@sink(stream=True, confirm=True, batch=True)
async def write(
    deliveries: AsyncIterator[list[Delivery]],
    *,
    stream: str,
    url: str = "redis://127.0.0.1:6379",
    maxlen: NonNegativeInt | None = None,
    receives: Receives = "envelopes",
    field: str = "data",
) -> None:
    """Append envelopes to a Redis stream (``XADD``), many per round trip.

    Each entry carries the encoded envelope in ``field`` (with ``receives: data``, only the
    ``data`` of ``processing`` envelopes), so a `redis_stream` source with the same
    ``field`` reads back exactly what was written. What arrives while one round trip is
    under way goes in the next one, appended in order by one script call (a server-side
    loop of ``XADD``; a pipeline of ``XADD`` where the server refuses scripts). An
    envelope counts as accepted once Redis answered, so a source upstream acknowledges
    its message only then. While Redis cannot be reached the sink retries with backoff
    (the pipeline waits; nothing is dropped; an entry whose answer was lost may be
    written twice).

    Args:
        deliveries: The envelopes, in lists of what is ready (given by the engine).
        stream: The stream key.
        url: The Redis URL; its password is never printed.
        maxlen: Trim the stream to about this many entries (``MAXLEN ~``).
        receives: ``envelopes`` (every envelope) or ``data`` (``processing`` data only).
        field: The entry field to write the payload into.

    Example:
        sinks:
          - use: redis_stream
            with: {url: "redis://127.0.0.1:6379", stream: results, maxlen: 100000}
    """
    client = open_client(url)
    log = structlog.get_logger("pipeline").bind(stage="redis_stream", stream=stream)
    append = _Appender(client, url, stream, field.encode(), maxlen, log)

    async def xadd(payloads: list[bytes]) -> None:
        backoff = Backoff()
        while not await append(payloads):
            await backoff.wait()

    try:
        await write_batches(deliveries, xadd, receives=receives)
    finally:
        await client.aclose()


_APPEND = """
local key, field, maxlen = KEYS[1], ARGV[1], ARGV[2]
if maxlen == '' then
  for i = 3, #ARGV do redis.call('XADD', key, '*', field, ARGV[i]) end
else
  for i = 3, #ARGV do redis.call('XADD', key, 'MAXLEN', '~', maxlen, '*', field, ARGV[i]) end
end
return #ARGV - 2
"""
"""``XADD`` of every payload (``ARGV[3..]``) to the stream ``KEYS[1]``, in order, under the
field ``ARGV[1]``, trimmed to ``MAXLEN ~ ARGV[2]`` unless it is empty."""


class _Appender:
    """Appends a batch of payloads to a stream in one round trip and one reply.

    A batch is one ``EVALSHA`` of `_APPEND` (a server-side loop of ``XADD``): a client
    packs one command and parses one reply instead of one per entry (a pipeline of 500
    ``XADD`` costs redis-py about 8 us of CPU per entry, the script about 0.5). Where
    scripts are refused (an ACL without ``EVALSHA``, a renamed command), it falls back to
    a pipeline of ``XADD``, logged once.
    """

    def __init__(
        self, client: Any, url: str, stream: str, key: bytes, maxlen: int | None, log: Any
    ) -> None:
        self.client, self.url, self.stream, self.key, self.maxlen = client, url, stream, key, maxlen
        self.log = log
        self.script = client.register_script(_APPEND)
        self.head = [key, b"" if maxlen is None else str(maxlen).encode()]
        self.scripted = True

    async def __call__(self, payloads: list[bytes]) -> bool:
        """Append ``payloads``; False (logged) when Redis is unreachable."""
        try:
            if self.scripted:
                try:
                    await self.script(keys=[self.stream], args=[*self.head, *payloads])
                    return True
                except rex.ResponseError as exc:
                    if not _refused(exc):
                        raise
                    self.scripted = False
                    self.log.warning("redis_script_refused", error=str(exc), using="XADD pipeline")
            pipe = self.client.pipeline(transaction=False)
            for payload in payloads:
                pipe.xadd(self.stream, {self.key: payload}, maxlen=self.maxlen, approximate=True)
            await pipe.execute()
        except rex.AuthenticationError as exc:
            raise auth_error(self.url, exc) from None
        except NETWORK as exc:
            self.log.warning("redis_unavailable", url=mask_url(self.url), error=str(exc))
            return False
        return True


def _refused(exc: rex.ResponseError) -> bool:
    """Whether Redis refused to run a script at all (not an error inside one)."""
    text = str(exc).lower()
    return isinstance(exc, rex.NoPermissionError) or "unknown command" in text
