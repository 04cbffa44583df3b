"""RabbitMQ connector (AMQP 0-9-1, aio-pika): a queue consumer with manual acks, a publisher.

Install with ``pip install 'ndjson-pipeline[amqp]'``. The password of a ``url`` is never
printed: logs and errors show the URL with ``***`` in its place.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Annotated, Any

from pydantic import AfterValidator, PositiveInt

from pipeline import BadChunk, Delivery, Message, sink
from stages.connectors._common import (
    Format,
    InFlight,
    MaxDeliveriesExceeded,
    Receives,
    decode,
    mask_url,
    missing_extra,
    publish_all,
    url_check,
)

try:
    import aio_pika
    import aio_pika.abc
    import aio_pika.exceptions
    import aiormq.exceptions
except ImportError:  # pragma: no cover - exercised by the missing-extra test in a subprocess
    raise ImportError(missing_extra("amqp", "amqp")) from None

__all__ = ["MaxDeliveriesExceeded", "read", "write"]

URL = "amqp://guest:guest@127.0.0.1:5672/"
AmqpUrl = Annotated[
    str, AfterValidator(url_check("amqp[s]://user:password@host[:port][/vhost]", "amqp", "amqps"))
]
"""An AMQP URL; its password is never printed."""


async def _connect(url: str) -> aio_pika.abc.AbstractConnection:
    try:
        return await aio_pika.connect(url, timeout=10)
    except (TimeoutError, OSError, aiormq.exceptions.AMQPError) as exc:
        text = mask_url(str(exc)) if url not in str(exc) else "(details hidden)"
        msg = f"cannot connect to RabbitMQ at `{mask_url(url)}`: {type(exc).__name__}: {text}"
        raise ConnectionError(msg) from None


class _Acks:
    """Acknowledges a channel's messages in order, many per ``basic.ack`` (``multiple``).

    A message's ack marks it accepted; once every message delivered before it is
    accepted too, one ``basic.ack`` with ``multiple`` on the highest such delivery tag
    acknowledges them all. Acks that come due while one is being sent go out together
    in the next. An ack function returns an awaitable that ends once its tag was sent.
    """

    def __init__(self) -> None:
        self.order: deque[list[Any]] = deque()  # [tag, message, settled, rejected], in order
        self.due: tuple[int, aio_pika.abc.AbstractIncomingMessage] | None = None  # highest
        self.sent = 0  # every tag up to this one is acknowledged
        self.failed: BaseException | None = None
        self.changed = asyncio.Condition()
        self.sender: asyncio.Task[None] | None = None

    def track(
        self, message: aio_pika.abc.AbstractIncomingMessage, *, reject: bool = False
    ) -> Callable[[], Awaitable[None]]:
        """Hold ``message``; return its ack function.

        With ``reject``, the function rejects the message instead (``basic.nack`` without
        requeue, so the broker dead-letters it); later acks with ``multiple`` skip it.
        """
        tag = message.delivery_tag or 0  # a consumer with manual acks: always a tag
        entry = [tag, message, False, reject]

        def settle() -> None:
            entry[2] = True
            while self.order and self.order[0][2]:
                done = self.order.popleft()
                if not done[3]:  # a rejected tag is settled already: never acked
                    self.due = (done[0], done[1])
            if self.sender is None or self.sender.done():
                self.sender = asyncio.get_running_loop().create_task(self._send())

        async def rejected() -> None:
            try:
                await message.nack(requeue=False)
            except Exception as exc:  # the channel is gone: the broker requeues the rest
                self.failed = exc
                async with self.changed:
                    self.changed.notify_all()
                raise
            settle()

        def ack() -> Awaitable[None]:
            if reject:  # under way at once: the acks of later messages wait for it
                return asyncio.get_running_loop().create_task(rejected())
            settle()
            return self._sent(tag)

        self.order.append(entry)
        return ack

    async def _send(self) -> None:
        while self.due is not None and self.due[0] > self.sent and not self.failed:
            tag, message = self.due
            try:
                await message.ack(multiple=True)
            except Exception as exc:  # the channel is gone: the broker requeues the rest
                self.failed = exc
            else:
                self.sent = tag
            async with self.changed:
                self.changed.notify_all()

    async def _sent(self, tag: int) -> None:
        async with self.changed:
            await self.changed.wait_for(lambda: self.sent >= tag or self.failed is not None)
        if self.sent < tag and self.failed is not None:
            raise self.failed


def _deliveries(message: aio_pika.abc.AbstractIncomingMessage) -> int:
    """How many times the broker delivered this message before (a quorum queue counts)."""
    count = (message.headers or {}).get("x-delivery-count", 0)
    return count if isinstance(count, int) else 0


async def read(
    *,
    url: AmqpUrl = URL,
    queue: str,
    prefetch: PositiveInt = 100,
    format: Format = "json",
    max_deliveries: PositiveInt | None = None,
    dead_letter_exchange: str | None = None,
    declare: bool = True,
) -> AsyncIterator[Message | BadChunk]:
    """Consume a RabbitMQ queue; each message is acknowledged after every sink accepted it.

    Manual acks: a message is acked once every sink accepted every envelope made from
    it (or the dead-letter sink its ``chunk_error``), and every message delivered before
    it was acked too: one ``basic.ack`` with ``multiple`` then covers all of them, so a
    busy worker sends few acks (one for all that came due while the previous was being
    sent), and a slow message holds back the acks of those after it. ``prefetch``
    is the in-flight cap: the broker sends no more un-acked messages than that, so it
    also bounds the duplicates after a crash. Any number of workers reading the same
    ``queue`` are competing consumers: each message goes to one of them, and the
    un-acked messages of a worker that dies go to the others. With ``max_deliveries``
    the queue is a quorum queue (only those count deliveries, header
    ``x-delivery-count``): a message delivered more often than that becomes a
    ``chunk_error`` with ``error.type: MaxDeliveriesExceeded`` and is then acked, so a
    message that kills its worker cannot loop forever; with ``dead_letter_exchange``
    it is rejected instead (``basic.nack``, no requeue) once the pipeline's dead-letter
    sink has its ``chunk_error``, and RabbitMQ moves the original message to that
    exchange. On shutdown the source stops
    consuming (prefetched messages not yet read go back to the queue) and waits, at most
    10 s, for the acks of what it delivered.

    Args:
        url: ``amqp://user:password@host:5672/vhost`` (the password is never printed).
        queue: The queue to consume.
        prefetch: Un-acknowledged messages this worker holds, at most.
        format: ``json`` (one JSON value per message; undecodable -> ``chunk_error``),
            ``text`` (UTF-8) or ``raw`` (bytes).
        max_deliveries: Deliveries of one message, at most (needs a quorum queue).
        dead_letter_exchange: RabbitMQ's dead-letter exchange of the queue (declared
            with the queue as ``x-dead-letter-exchange``): a message over
            ``max_deliveries`` is rejected there instead of acked.
        declare: Declare the queue (durable) if it does not exist; ``false`` uses it
            as it is.

    Example:
        source:
          use: amqp
          with: {url: "amqp://guest:guest@127.0.0.1:5672/", queue: orders, prefetch: 50}
    """
    inflight, acks = InFlight(), _Acks()
    async with AsyncExitStack() as stack:
        conn = await _connect(url)
        stack.push_async_callback(conn.close)
        channel = await conn.channel()
        await channel.set_qos(prefetch_count=prefetch)
        args: dict[str, Any] = {"x-queue-type": "quorum"} if max_deliveries is not None else {}
        if dead_letter_exchange is not None:
            args["x-dead-letter-exchange"] = dead_letter_exchange
        if declare:
            q = await channel.declare_queue(queue, durable=True, arguments=args or None)
        else:
            q = await channel.get_queue(queue, ensure=True)
        # runs before the connection closes: the acks of what was handed on go out first
        stack.push_async_callback(inflight.drain)
        async with q.iterator() as messages:
            async for message in messages:
                seen = _deliveries(message)
                poison = max_deliveries is not None and seen >= max_deliveries
                reject = poison and dead_letter_exchange is not None
                ack = inflight.track(acks.track(message, reject=reject))
                if poison:
                    err = MaxDeliveriesExceeded(
                        f"delivered {seen + 1} times (max_deliveries: {max_deliveries})"
                    )
                    yield BadChunk(message.body.decode("utf-8", "replace"), err, ack=ack)
                else:
                    yield decode(message.body, format, ack=ack)


@sink(stream=True, confirm=True)
async def write(
    deliveries: AsyncIterator[Delivery],
    *,
    url: AmqpUrl = URL,
    exchange: str = "",
    routing_key: str,
    receives: Receives = "envelopes",
    persistent: bool = True,
) -> None:
    """Publish each envelope (or only its ``data``) to a RabbitMQ exchange, with confirms.

    The channel uses publisher confirms: an envelope is accepted when the broker
    confirmed its message, so with a broker source upstream nothing is acknowledged
    before RabbitMQ has it. Publishes are pipelined (up to 256 awaiting their confirm).
    A message the broker returns (no queue bound for ``routing_key``) becomes that
    chunk's ``chunk_error``. The message body is the encoded envelope, or with
    ``receives: data`` only the ``data`` of ``processing`` envelopes (JSON), so an
    ``amqp`` source reads back exactly what this sink wrote.

    Args:
        deliveries: The envelopes (given by the engine).
        url: ``amqp://user:password@host:5672/vhost`` (the password is never printed).
        exchange: The exchange; ``""`` is the default exchange (``routing_key`` names
            a queue).
        routing_key: The routing key of every message.
        receives: ``envelopes`` (every envelope) or ``data`` (the data of each
            ``processing`` envelope).
        persistent: Mark messages persistent (they survive a broker restart).

    Example:
        sinks:
          - use: amqp
            with: {exchange: "", routing_key: results, receives: data}
    """
    mode = aio_pika.DeliveryMode.PERSISTENT if persistent else aio_pika.DeliveryMode.NOT_PERSISTENT
    conn = await _connect(url)
    try:
        channel = await conn.channel(publisher_confirms=True, on_return_raises=True)
        target = channel.default_exchange if not exchange else await channel.get_exchange(exchange)

        def publish(body: bytes) -> Awaitable[Any]:
            message = aio_pika.Message(body, delivery_mode=mode)
            return target.publish(message, routing_key, mandatory=True)

        await publish_all(
            deliveries,
            publish,
            receives=receives,
            rejectable=(aio_pika.exceptions.DeliveryError,),
        )
    finally:
        await asyncio.shield(conn.close())
