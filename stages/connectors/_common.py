"""What every connector shares: decoding payloads, encoding what sinks write, masking URLs.

Private to `stages.connectors`: the names here are not part of the stage library.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import os
import random
import re
import socket
import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Sized
from typing import Any, Literal, Protocol, TypeVar
from urllib.parse import urlsplit

import orjson

from pipeline import BadChunk, Delivery, Message
from pipeline.envelope import encode

__all__ = [
    "PUBLISH_WINDOW",
    "Backoff",
    "Format",
    "InFlight",
    "MaxDeliveriesExceeded",
    "MissingField",
    "Receives",
    "batched",
    "decode",
    "drain",
    "mask_url",
    "missing_extra",
    "payload_of",
    "publish_all",
    "raise_if_cancelled",
    "take_ahead",
    "unique_consumer",
    "until_empty",
    "url_check",
    "wake_or_tick",
    "write_batches",
]

T = TypeVar("T")

BACKLOG_EVERY = 1.0
"""How often (seconds) a broker source asks its broker for its backlog (`report_backlog`)."""

Format = Literal["json", "text", "raw"]
Receives = Literal["envelopes", "data"]

PUBLISH_WINDOW = 256
"""Publishes awaiting the broker's acknowledgement, at most, in a `publish_all` sink."""

_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^:@/]*):[^@/]*@")


def mask_url(url: str) -> str:
    """Return ``url`` with the password of its user info replaced by ``***``.

    Example:
        >>> mask_url("postgresql://app:s3cret@db:5432/prod")
        'postgresql://app:***@db:5432/prod'
    """
    return _USERINFO.sub(r"\g<scheme>\g<user>:***@", url)


def url_check(shape: str, *schemes: str) -> Callable[[str], str]:
    """A validator (for ``Annotated[str, AfterValidator(...)]``) of a URL's scheme and host.

    ``pipeline validate`` reports a URL that fails it without showing the URL.

    Example:
        >>> url_check("mqtt://host[:port]", "mqtt")("http://x")
        Traceback (most recent call last):
        ValueError: must look like mqtt://host[:port]
    """

    def check(url: str) -> str:
        parts = urlsplit(url)
        if parts.scheme not in schemes or not parts.hostname:
            msg = f"must look like {shape}"
            raise ValueError(msg)
        return url

    return check


def missing_extra(connector: str, extra: str) -> str:
    """The one-line message of a connector whose client library is not installed."""
    return f"the `{connector}` connector needs its client: pip install 'ndjson-pipeline[{extra}]'"


def decode(payload: bytes, fmt: Format, ack: Any = None) -> Message | BadChunk:
    """Turn one message payload into a chunk (`Message`) or a `BadChunk` when undecodable.

    ``json``: one JSON value; ``text``: UTF-8 text; ``raw``: the bytes as they came.
    """
    try:
        if fmt == "json":
            return Message(orjson.loads(payload), ack=ack)
        if fmt == "text":
            return Message(payload.decode("utf-8"), ack=ack)
    except (orjson.JSONDecodeError, UnicodeDecodeError) as exc:
        what = "JSON" if fmt == "json" else "UTF-8 text"
        err = ValueError(f"payload is not {what}: {exc}")
        return BadChunk(payload.decode("utf-8", "replace"), err, ack=ack)
    return Message(payload, ack=ack)


def payload_of(envelope: dict[str, Any], receives: Receives) -> bytes | None:
    """The bytes a connector sink writes for ``envelope``; None when it writes nothing.

    ``envelopes``: the encoded envelope (without the newline); ``data``: only the
    ``data`` of ``processing`` envelopes, encoded as JSON (``bytes`` as they are), so a
    ``format: json`` source reads back exactly that ``data``.
    """
    if receives == "envelopes":
        return encode(envelope)[:-1]
    if envelope["status"] != "processing":
        return None
    data = envelope["data"]
    if isinstance(data, bytes):
        return data
    return encode(data)[:-1]


async def batched(items: AsyncIterable[T], size: int, interval: float) -> AsyncIterator[list[T]]:
    """Group ``items`` into lists of at most ``size``, each out within ``interval`` seconds.

    A list is yielded when it is full, when ``interval`` passed since its first item
    came, or when the input ends. The pending read is never cancelled by the timer (that
    would close the engine's iterator); it is kept for the next round.
    """
    it = aiter(items)
    loop = asyncio.get_running_loop()
    held: list[T] = []
    deadline = 0.0
    step: asyncio.Future[T] | None = None
    try:
        while True:
            if step is None:
                step = asyncio.ensure_future(anext(it))
            timeout = max(deadline - loop.time(), 0.0) if held else None
            done, _ = await asyncio.wait({step}, timeout=timeout)
            if not done:
                out, held = held, []
                yield out
                continue
            try:
                item = step.result()
            except StopAsyncIteration:
                step = None
                break
            step = None
            if not held:
                deadline = loop.time() + interval
            held.append(item)
            if len(held) >= size:
                out, held = held, []
                yield out
        if held:
            yield held
    finally:
        if step is not None:
            step.cancel()
            await asyncio.gather(step, return_exceptions=True)


async def _payloads(
    deliveries: AsyncIterator[Delivery], receives: Receives
) -> AsyncIterator[tuple[Delivery, bytes]]:
    """Each delivery with the bytes to write; one with nothing to write is accepted here."""
    async for d in deliveries:
        body = payload_of(d.item, receives)
        if body is None:
            d.accept()
        else:
            yield d, body


async def publish_all(
    deliveries: AsyncIterator[Delivery],
    publish: Callable[[bytes], Awaitable[Any]],
    *,
    receives: Receives,
    window: int = PUBLISH_WINDOW,
    rejectable: tuple[type[BaseException], ...] = (),
) -> None:
    """Publish each delivery's payload, pipelined; accept each once its publish returned.

    At most ``window`` publishes await the broker at once. A publish that raises one of
    ``rejectable`` rejects that delivery alone (a ``chunk_error``); any other error
    fails the sink once the publishes in flight have ended.
    """
    pending: set[asyncio.Future[Any]] = set()
    failed: list[BaseException] = []

    def settle(d: Delivery, task: asyncio.Future[Any]) -> None:
        pending.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None:
            d.accept()
        elif isinstance(exc, rejectable):
            d.reject(exc)
        else:
            failed.append(exc)

    try:
        async for d, body in _payloads(deliveries, receives):
            task: asyncio.Future[Any] = asyncio.ensure_future(publish(body))
            pending.add(task)
            task.add_done_callback(functools.partial(settle, d))
            if len(pending) >= window:
                await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            if failed:
                raise failed[0]
        if pending:
            await asyncio.wait(pending)
        if failed:
            raise failed[0]
    finally:
        for task in pending:
            task.cancel()


async def drain(
    idle: asyncio.Event, pending: Callable[[], int], *, timeout: float = 10.0, stall: float = 2.0
) -> None:
    """Wait until ``idle`` is set (a stopping source's deliveries all acked), bounded.

    Waits at most ``timeout`` seconds, and gives up sooner when ``pending()`` did not
    go down for ``stall`` seconds (a failed sink never accepts what it held).
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while pending() and loop.time() < deadline:
        before = pending()
        try:
            async with asyncio.timeout(min(stall, deadline - loop.time())):
                await idle.wait()
        except TimeoutError:
            if pending() >= before:
                return


class InFlight:
    """Counts the messages a source handed on and not yet acked, to drain them on stop.

    Example:
        >>> inflight = InFlight()
        >>> ack = inflight.track(lambda: None)
        >>> inflight.count, ack(), inflight.count
        (1, None, 0)
    """

    def __init__(self) -> None:
        self.count = 0
        self.idle = asyncio.Event()
        self.idle.set()

    def track(self, ack: Callable[[], Any]) -> Callable[[], Awaitable[None] | None]:
        """Count one message; return its ack, which uncounts it once it ran."""
        self.count += 1
        self.idle.clear()

        def wrapped() -> Awaitable[None] | None:
            try:
                result = ack()
            except BaseException:
                self._done()
                raise
            if inspect.isawaitable(result):
                return self._await(result)
            self._done()
            return None

        return wrapped

    async def _await(self, result: Awaitable[Any]) -> None:
        try:
            await result
        finally:
            self._done()

    def _done(self) -> None:
        self.count -= 1
        if self.count == 0:
            self.idle.set()

    async def drain(self) -> None:
        """Wait (bounded, see `drain`) until every counted message was acked."""
        await drain(self.idle, lambda: self.count)


class AuthenticationFailed(Exception):
    """The server refused the credentials of the URL (the password is never shown)."""


class MaxDeliveriesExceeded(Exception):
    """A message was delivered more than ``max_deliveries`` times: dead-lettered, then acked."""


class MissingField(Exception):
    """A stream entry has no field holding the payload."""


def raise_if_cancelled() -> None:
    """Re-raise a cancellation a client library swallowed (nats-py and redis-py both can).

    A cancel that lands just as a reply arrives can be lost inside the client (Python
    3.11's ``wait_for`` returns the reply instead); the task is still marked as being
    cancelled, so a loop that checks here ends as it was asked to.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class _Reader(Protocol):
    stopping: bool
    room: asyncio.Event


async def take_ahead(
    ahead: asyncio.Future[list[T]], reader: _Reader, *, stopping: bool = False
) -> list[T]:
    """The batch of a broker source's read under way (``ahead``, a task).

    Told to stop (``stopping``, or a cancellation while waiting here), the ``reader``
    reads no more (a read waiting for room gives up) and the read under way lands: what
    it brings was delivered to this worker, so it is handed on and acked, not dropped.
    A cancellation caught here comes back: the engine tells the source again at its
    next ``yield``.
    """
    if not stopping:
        try:
            return await asyncio.shield(ahead)
        except asyncio.CancelledError:
            got = await take_ahead(ahead, reader, stopping=True)
            if not got:
                raise
            return got
    reader.stopping = True
    reader.room.set()
    try:
        return await ahead
    except Exception:  # a lost connection: nothing landed
        return []


async def wake_or_tick(wake: asyncio.Event, until: float) -> None:
    """An acker's wait: until ``wake`` is set or the monotonic clock reaches ``until``.

    A cancellation a client library swallowed in the acker's last round is raised first.
    """
    raise_if_cancelled()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(max(until - time.monotonic(), 0)):
            await wake.wait()
    wake.clear()


async def until_empty(held: Sized, room: asyncio.Event, timeout: float = 10.0) -> bool:
    """Wait until ``held`` is empty (``room`` is set at each ack); False after ``timeout``."""
    try:
        async with asyncio.timeout(timeout):
            while held:
                room.clear()
                await room.wait()
    except TimeoutError:
        return False
    return True


def unique_consumer() -> str:
    """A consumer name unique to this process: ``HOST-PID-RANDOM``."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class Backoff:
    """Exponential backoff with jitter between reconnection attempts (each wait bounded)."""

    def __init__(self, first: float = 0.1, cap: float = 5.0) -> None:
        self.first = first
        self.cap = cap
        self.next = first

    def reset(self) -> None:
        """The connection works again."""
        self.next = self.first

    async def wait(self) -> None:
        """Sleep before the next attempt."""
        delay = self.next * random.uniform(0.8, 1.2)
        self.next = min(self.cap, self.next * 2)
        await asyncio.sleep(delay)


async def write_batches(
    batches: AsyncIterator[list[Delivery]],
    write: Callable[[list[bytes]], Awaitable[None]],
    *,
    receives: Receives,
    window: int = 2000,
) -> None:
    """Write the deliveries' payloads in batches, accepting each once its batch is written.

    ``batches`` are the lists of a confirming batch sink (``@sink(stream=True,
    confirm=True, batch=True)``). A batch written is whatever arrived while the previous
    one was being written: no timer, so on an idle stream an envelope is written (and
    accepted) at once, and under load one round trip carries many. At most ``window``
    payloads wait. ``write`` retries by itself; an exception from it fails the sink
    (what it held is never accepted).
    """
    held: list[Delivery] = []
    bodies: list[bytes] = []
    wake, room = asyncio.Event(), asyncio.Event()
    reading = [True]

    async def writer() -> None:
        nonlocal held, bodies
        while reading[0] or held:
            await wake.wait()
            wake.clear()
            while held:
                batch, out = held, bodies
                held, bodies = [], []
                room.set()
                await write(out)
                for d in batch:
                    d.accept()

    task = asyncio.ensure_future(writer())
    envelopes = receives == "envelopes"
    try:
        async for deliveries in batches:
            for d in deliveries:  # `payload_of`, inlined: per delivery
                env = d.item
                if envelopes:
                    body = encode(env)[:-1]
                elif env["status"] != "processing":
                    d.accept()
                    continue
                else:
                    data = env["data"]
                    body = data if isinstance(data, bytes) else encode(data)[:-1]
                held.append(d)
                bodies.append(body)
            wake.set()
            if len(held) >= window:
                room.clear()
                freed = asyncio.ensure_future(room.wait())
                await asyncio.wait({freed, task}, return_when=asyncio.FIRST_COMPLETED)
                freed.cancel()
            if task.done():
                task.result()  # the writer failed: so does the sink
        reading[0] = False
        wake.set()
        await task
    finally:
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
