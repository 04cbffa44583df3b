"""MQTT connector (aiomqtt on paho-mqtt, MQTT 3.1.1): a QoS 1 subscriber and a publisher.

Install with ``pip install 'ndjson-pipeline[mqtt]'``. The password of a ``url`` is never
printed: logs and errors show the URL with ``***`` in its place.

Manual acknowledgement: aiomqtt has no option for it, but the paho-mqtt client under it
does (``manual_ack_set`` and ``ack(mid, qos)``, paho-mqtt >= 2.0). The source switches it
on through aiomqtt's underlying paho client (a private attribute of aiomqtt,
``Client._client``), so the PUBACK of each message is sent only after every sink
accepted it. This is checked by a test that kills a worker holding un-acked messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import uuid
from collections.abc import AsyncIterator, Awaitable
from typing import Annotated, Literal
from urllib.parse import unquote, urlsplit

from pydantic import AfterValidator

from pipeline import BadChunk, Delivery, Message, sink
from stages.connectors._common import (
    PUBLISH_WINDOW,
    Format,
    InFlight,
    Receives,
    decode,
    mask_url,
    missing_extra,
    publish_all,
    url_check,
)

try:
    import aiomqtt
except ImportError:  # pragma: no cover - exercised by the missing-extra test in a subprocess
    raise ImportError(missing_extra("mqtt", "mqtt")) from None

__all__ = ["read", "write"]

URL = "mqtt://127.0.0.1:1883"
MqttUrl = Annotated[
    str, AfterValidator(url_check("mqtt://[user:password@]host[:port]", "mqtt", "tcp"))
]
"""``mqtt://[user:password@]host[:port]``; its password is never printed."""


def _client(url: str, client_id: str | None, *, persistent: bool) -> aiomqtt.Client:
    parts = urlsplit(url)
    return aiomqtt.Client(
        parts.hostname or "",
        parts.port or 1883,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        identifier=client_id or f"pipeline-{uuid.uuid4().hex[:12]}",
        clean_session=not persistent,
        timeout=10,
    )


async def _enter(client: aiomqtt.Client, url: str) -> None:
    try:
        await client.__aenter__()
    except aiomqtt.MqttError as exc:
        msg = f"cannot connect to the MQTT broker at `{mask_url(url)}`: {exc}"
        raise ConnectionError(msg) from None


async def _leave(client: aiomqtt.Client) -> None:
    with contextlib.suppress(aiomqtt.MqttError):
        await client.__aexit__(None, None, None)


async def read(
    *,
    url: MqttUrl = URL,
    topic: str,
    client_id: str | None = None,
    qos: Literal[0, 1] = 1,
    format: Format = "json",
) -> AsyncIterator[Message | BadChunk]:
    """Subscribe to an MQTT topic (wildcards allowed); PUBACK each message after the sinks.

    With ``qos: 1`` (the default) each message is acknowledged to the broker (PUBACK)
    only once every sink accepted every envelope made from it; a message whose worker
    died un-acknowledged is sent again by the broker when a client with the same
    ``client_id`` comes back. With a ``client_id`` the session is persistent (clean
    session off): the subscription and what was published to it while the worker was
    away are kept by the broker and delivered when it reconnects. Without one, the
    client id is unique per run and the session ends with it. The broker bounds the
    un-acknowledged messages it sends (Mosquitto: ``max_inflight_messages``, 20 by
    default), which bounds the duplicates after a crash. MQTT counts no deliveries, so
    there is no ``max_deliveries``; a persistent session is one consumer (two workers
    with one ``client_id`` take the session from each other). On shutdown the source
    waits (at most 10 s, giving up after 2 s without progress) for the PUBACKs of what it
    handed on before it disconnects. Mosquitto keeps at most ``max_queued_messages``
    (1000 by default) QoS 1 messages per client, online or away, and drops the rest:
    raise it in ``mosquitto.conf`` for bursts larger than that.

    Args:
        url: ``mqtt://[user:password@]host[:port]`` (the password is never printed).
        topic: The topic filter; ``+`` and ``#`` wildcards allowed.
        client_id: A stable client id: makes the session persistent.
        qos: ``1``: at-least-once with PUBACK after the sinks; ``0``: at-most-once.
        format: ``json`` (one JSON value per message; undecodable -> ``chunk_error``),
            ``text`` (UTF-8) or ``raw`` (bytes).

    Example:
        source:
          use: mqtt
          with: {topic: "sensors/+/temperature", client_id: enricher-1}
    """
    client = _client(url, client_id, persistent=client_id is not None)
    paho = client._client  # aiomqtt does not expose manual acks
    paho.manual_ack_set(True)
    inflight = InFlight()
    await _enter(client, url)
    try:
        await client.subscribe(topic, qos=qos)
        async for message in client.messages:
            payload = message.payload
            body = payload if isinstance(payload, bytes) else str(payload).encode()
            ack = None
            if message.qos:
                ack = inflight.track(functools.partial(paho.ack, message.mid, message.qos))
            yield decode(body, format, ack=ack)
    finally:
        await asyncio.shield(_stop(client, inflight))


async def _stop(client: aiomqtt.Client, inflight: InFlight) -> None:
    """Let the PUBACKs of what was handed on go out, then disconnect."""
    try:
        await inflight.drain()
    finally:
        await _leave(client)


@sink(stream=True, confirm=True)
async def write(
    deliveries: AsyncIterator[Delivery],
    *,
    url: MqttUrl = URL,
    topic: str,
    qos: Literal[0, 1, 2] = 1,
    retain: bool = False,
    receives: Receives = "envelopes",
    client_id: str | None = None,
) -> None:
    """Publish each envelope (or only its ``data``) to an MQTT topic.

    With ``qos`` 1 or 2 an envelope is accepted once the broker acknowledged its
    message (PUBACK / PUBCOMP), so with a broker source upstream nothing is
    acknowledged before the MQTT broker has it. Publishes are pipelined (up to 256
    awaiting their acknowledgement). The payload is the encoded envelope, or with
    ``receives: data`` only the ``data`` of ``processing`` envelopes (JSON), so an
    ``mqtt`` source reads back exactly what this sink wrote.

    Args:
        deliveries: The envelopes (given by the engine).
        url: ``mqtt://[user:password@]host[:port]`` (the password is never printed).
        topic: The topic to publish to (no wildcards).
        qos: ``0``, ``1`` or ``2``.
        retain: Ask the broker to keep the last message for new subscribers.
        receives: ``envelopes`` (every envelope) or ``data`` (the data of each
            ``processing`` envelope).
        client_id: The client id (default: unique per run).

    Example:
        sinks:
          - use: mqtt
            with: {topic: alerts/high, qos: 1, receives: data}
    """
    client = _client(url, client_id, persistent=False)
    client.pending_calls_threshold = PUBLISH_WINDOW + 1  # our window bounds them; no warnings
    await _enter(client, url)
    try:

        def publish(body: bytes) -> Awaitable[None]:
            return client.publish(topic, body, qos=qos, retain=retain)

        await publish_all(deliveries, publish, receives=receives)
    finally:
        await asyncio.shield(_leave(client))
