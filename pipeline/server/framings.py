"""The other framings of a stream: SSE (``text/event-stream``) and WebSocket messages.

Both are `pipeline.server.streams.Stream` with their own pump: the subscription's
batches as lists of `pipeline.hub.hub.Item`, one frame per envelope.
"""

from __future__ import annotations

from starlette.types import Receive, Scope, Send

from pipeline.envelope import encode_sse
from pipeline.hub.hub import Item, Subscription
from pipeline.server.streams import SSE_RETRY_MS, Stream

__all__ = ["SSEStream", "WebSocketStream"]


class SSEStream(Stream):
    """``text/event-stream``: ``id: RUN:SEQ`` and ``data: <envelope>`` (default events)."""

    media_type = "text/event-stream"

    async def _pump(self, sub: Subscription, send: Send) -> None:
        await self._write(send, b"retry: %d\n\n" % SSE_RETRY_MS)
        async for items in sub.items():
            if items:
                self.opts.active_at = self._loop.time()
            await self._write(send, _frames(items) if items else b": keepalive\n\n")
        if sub.dropped or self.evicted:
            line, resume = self._lagged_line(sub)
            run, _, seq = (resume or "").rpartition(":")
            at = int(seq) if self.evicted and resume else None  # EventSource resumes from it
            await self._write(send, encode_sse(line, run, at))
            if sub.dropped and not await self._settled():
                return
        await self._end(send)


def _frames(items: list[Item]) -> bytes:
    return b"".join(encode_sse(i.line, i.run, i.seq) for i in items)


class WebSocketStream(Stream):
    """WebSocket: one text frame per envelope; the socket closes (1000) after the last."""

    websocket = True

    async def _start(self, scope: Scope, receive: Receive, send: Send) -> bool:
        message = await receive()
        if message["type"] != "websocket.connect":
            return False
        await send({"type": "websocket.accept"})
        return True

    async def _text(self, send: Send, line: bytes) -> None:
        await self._send(send, {"type": "websocket.send", "text": line[:-1].decode()})

    async def _pump(self, sub: Subscription, send: Send) -> None:
        async for items in sub.items():
            if not items:
                await self._text(send, self._heartbeat())
            else:
                self.opts.active_at = self._loop.time()
            for item in items:
                await self._text(send, item.line)
        if sub.dropped or self.evicted:
            await self._text(send, self._lagged_line(sub)[0])
        await self._send(send, {"type": "websocket.close", "code": 1000})
