"""The chain of one run: the source, then one async-generator layer per transform.

Items between layers are plain chunks, `Carry` (a chunk with acks) or `Failure` (a
chunk that failed; it skips the remaining transforms). A layer per stage costs about as
much as a bare loop's step (one async-generator hop); a stage with ``concurrency > 1``
runs its chunks as bounded tasks.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable
from contextlib import aclosing
from typing import Any

from pipeline.acks import Ack, AckRunner, Carry, release_all, retain_all
from pipeline.isolate import Failure, failure, flat_caller, map_caller
from pipeline.stage import ResolvedStage
from pipeline.types import BadChunk, Message

__all__ = [
    "FAIRNESS_EVERY",
    "FAIRNESS_SECONDS",
    "SourceReader",
    "StageCrash",
    "all_fast",
    "build_chain",
]

FAIRNESS_EVERY = 256
"""The source yields to the event loop at least once every this many chunks..."""
FAIRNESS_SECONDS = 0.001
"""...or sooner, once this long has passed since it last yielded (checked every 16)."""
_CHECK_EVERY = 16

_SPECIAL = (Carry, Failure)
Emit = Callable[[Any], Awaitable[None] | None]
_END: Any = object()


class StageCrash(Exception):
    """A whole-stream transform raised: the run fails as a whole."""

    def __init__(self, stage: str, exc: BaseException) -> None:
        self.stage = stage
        self.exc = exc
        super().__init__(f"{type(exc).__name__}: {exc}")


def _open(stage: ResolvedStage, params: dict[str, Any]) -> AsyncIterator[Any]:
    made = stage.fn(**params)
    if isinstance(made, AsyncIterator):
        return made
    if isinstance(made, AsyncIterable):
        return aiter(made)
    if inspect.isawaitable(made):
        return _awaited(made)
    return _from_sync(iter(made), blocking=stage.blocking)


async def _awaited(made: Any) -> AsyncIterator[Any]:
    result = await made
    if isinstance(result, AsyncIterable):
        async for item in result:
            yield item
    else:
        for item in result:
            yield item


async def _from_sync(it: Iterable[Any], *, blocking: bool) -> AsyncIterator[Any]:
    done = object()
    iterator = iter(it)
    if blocking:
        while (item := await asyncio.to_thread(next, iterator, done)) is not done:
            yield item
    else:
        for item in iterator:
            yield item


class SourceReader:
    """Reads the source as an async generator of chain items; can be stopped gracefully.

    `stop` ends the source at the next chunk boundary, interrupting a source that is
    waiting (sleeping, polling a broker) by cancelling only that wait. A source that
    raises ends the stream too; the exception is kept in `error` for the engine.
    """

    def __init__(
        self, stage: ResolvedStage, runner: AckRunner, params: dict[str, Any] | None = None
    ) -> None:
        self.stage = stage
        self.params = dict(stage.params) if params is None else params
        self.runner = runner
        self.error: BaseException | None = None
        self.stopping = False
        self._waiting: asyncio.Task[Any] | None = None

    def stop(self) -> None:
        """Stop reading: end the stream after the chunk being read, if any."""
        if self.stopping:
            return
        self.stopping = True
        if self._waiting is not None:
            self._waiting.cancel()

    def _item(self, raw: Message | BadChunk) -> Any:
        if type(raw) is Message:
            if raw.ack is None:
                return raw.data
            return Carry(raw.data, (Ack(raw.ack, self.runner),))
        assert type(raw) is BadChunk
        acks = () if raw.ack is None else (Ack(raw.ack, self.runner),)
        fail = failure(self.stage.id, raw.error, raw.raw)
        return Carry(fail, acks) if acks else fail

    async def items(
        self, maps: Iterable[ResolvedStage] = (), emit: Emit | None = None
    ) -> AsyncIterator[Any]:
        """Yield the source's chunks as chain items until it ends, fails or is stopped.

        ``maps`` are plain sync maps applied right here, saving one async hop per chunk.
        With ``emit``, items are handed to it instead of being yielded (it returns None
        or an awaitable to wait for): a chain of plain sync maps then costs no async hop
        at all beyond the source's own.
        """
        steps = _steps(maps)
        try:
            source = _open(self.stage, self.params)
        except Exception as exc:
            self.error = exc
            return
        task = asyncio.current_task()
        step = source.__anext__
        wrapped = (Message, BadChunk)
        clock = asyncio.get_running_loop().time
        budget, since_yield, last_yield = _CHECK_EVERY, 0, clock()
        async with aclosing(source):  # type: ignore[type-var]
            while not self.stopping:
                self._waiting = task
                try:
                    raw = await step()
                except StopAsyncIteration:
                    return
                except asyncio.CancelledError:
                    if self.stopping and task is not None and task.uncancel() == 0:
                        return
                    raise
                except Exception as exc:
                    self.error = exc
                    return
                finally:
                    self._waiting = None
                item = self._item(raw) if type(raw) in wrapped else raw
                if steps:
                    item = _apply_steps(item, steps)
                if item is not None:
                    if emit is None:
                        yield item
                    elif (pending := emit(item)) is not None:
                        await pending
                budget -= 1
                if not budget:
                    budget = _CHECK_EVERY
                    since_yield += _CHECK_EVERY
                    now = clock()
                    if since_yield >= FAIRNESS_EVERY or now - last_yield >= FAIRNESS_SECONDS:
                        await asyncio.sleep(0)
                        since_yield, last_yield = 0, clock()


def _unwrap(item: Any) -> tuple[Any, tuple[Ack, ...]]:
    if type(item) is Carry:
        return item.chunk, item.acks
    return item, ()


Step = tuple[Callable[[Any], Any], str]


def _steps(stages: Iterable[ResolvedStage]) -> list[Step]:
    return [(functools.partial(s.fn, **s.params) if s.params else s.fn, s.id) for s in stages]


def _apply_steps(item: Any, steps: list[Step]) -> Any:
    """Run consecutive plain sync maps on one item; None when a map dropped it."""
    if type(item) in _SPECIAL:
        for fn, sid in steps:
            item = _special_map(item, fn, sid)
            if item is None:
                return None
        return item
    for fn, sid in steps:
        try:
            result = fn(item)
        except Exception as exc:
            return failure(sid, exc, item)
        if result is None:
            return None
        item = result
    return item


async def _maps_fast(
    upstream: AsyncIterator[Any], stages: list[ResolvedStage]
) -> AsyncIterator[Any]:
    """Consecutive sync maps without timeout, retry or thread: direct calls, one hop."""
    steps = _steps(stages)
    async with aclosing(upstream):  # type: ignore[type-var]
        async for item in upstream:
            item = _apply_steps(item, steps)
            if item is not None:
                yield item


def _special_map(item: Any, fn: Callable[[Any], Any], sid: str) -> Any:
    """Apply one sync map to a `Carry` or pass a `Failure` through; None when dropped."""
    if type(item) is Failure or type(item.chunk) is Failure:
        return item
    try:
        result = fn(item.chunk)
    except Exception as exc:
        return Carry(failure(sid, exc, item.chunk), item.acks)
    if result is None:
        release_all(item.acks)
        return None
    return Carry(result, item.acks)


async def _map_general(upstream: AsyncIterator[Any], stage: ResolvedStage) -> AsyncIterator[Any]:
    """An async, blocking, timed or retried map, one chunk at a time."""
    call = map_caller(stage)
    async with aclosing(upstream):  # type: ignore[type-var]
        async for item in upstream:
            out = await _apply_map(call, item)
            if out is not None:
                yield out


async def _apply_map(call: Callable[[Any], Any], item: Any) -> Any:
    chunk, acks = _unwrap(item)
    if type(chunk) is Failure:
        return item
    result = await call(chunk)
    if result is None:
        release_all(acks)
        return None
    return Carry(result, acks) if acks else result


async def _flat(upstream: AsyncIterator[Any], stage: ResolvedStage) -> AsyncIterator[Any]:
    """A flat-map, one chunk at a time: outputs stream as the stage yields them."""
    call = flat_caller(stage)
    async with aclosing(upstream):  # type: ignore[type-var]
        async for item in upstream:
            chunk, acks = _unwrap(item)
            if type(chunk) is Failure:
                yield item
                continue
            outputs = [out async for out in call(chunk)] if acks else None
            if outputs is None:
                async with aclosing(call(chunk)) as outs:  # type: ignore[type-var]
                    async for out in outs:
                        yield out
                continue
            for out in _spread(outputs, acks):
                yield out


def _spread(outputs: list[Any], acks: tuple[Ack, ...]) -> list[Any]:
    if not outputs:
        release_all(acks)
        return []
    retain_all(acks, len(outputs) - 1)
    return [Carry(out, acks) for out in outputs]


def _one_call(stage: ResolvedStage) -> Callable[[Any], Any]:
    """``one(item) -> list of output items`` for one chunk of a concurrent stage."""
    if stage.kind == "flat_map":
        call = flat_caller(stage)

        async def one_flat(item: Any) -> list[Any]:
            chunk, acks = _unwrap(item)
            if type(chunk) is Failure:
                return [item]
            outputs = [out async for out in call(chunk)]
            return _spread(outputs, acks) if acks else outputs

        return one_flat
    mapped = map_caller(stage)

    async def one_map(item: Any) -> list[Any]:
        out = await _apply_map(mapped, item)
        return [] if out is None else [out]

    return one_map


async def _concurrent(upstream: AsyncIterator[Any], stage: ResolvedStage) -> AsyncIterator[Any]:
    """Up to ``concurrency`` chunks in flight, in input order or as they finish.

    A feeder task reads upstream and starts one task per chunk once a slot is free; a
    slot frees when its result is taken, so ``concurrency`` bounds the chunks held here.
    (aiostream's ``map`` was measured at 0.72x (ordered) and 0.55x (unordered) of the
    ideal rate for 64 chunks awaiting 10 ms each; this reaches the plain-asyncio rate.)
    """
    one = _one_call(stage)
    loop = asyncio.get_running_loop()
    slots = asyncio.Semaphore(stage.concurrency)
    ready: asyncio.Queue[Any] = asyncio.Queue(stage.concurrency + 1)
    running: set[asyncio.Task[list[Any]]] = set()
    started = [0]

    async def feed() -> None:
        try:
            async with aclosing(upstream):  # type: ignore[type-var]
                async for item in upstream:
                    await slots.acquire()
                    task = loop.create_task(one(item))
                    running.add(task)
                    task.add_done_callback(running.discard)
                    started[0] += 1
                    if stage.ordered:
                        ready.put_nowait(task)
                    else:
                        task.add_done_callback(ready.put_nowait)
        finally:
            ready.put_nowait(_END)

    feeder = loop.create_task(feed())
    taken, ended = 0, False
    try:
        while not ended or taken < started[0]:
            got = await ready.get()
            if got is _END:
                ended = True
                continue
            outputs = await got
            taken += 1
            slots.release()
            for out in outputs:
                yield out
        await feeder  # re-raises what upstream raised
    finally:
        feeder.cancel()
        for task in running:
            task.cancel()
        await asyncio.gather(feeder, *running, return_exceptions=True)


async def _stream(upstream: AsyncIterator[Any], stage: ResolvedStage) -> AsyncIterator[Any]:
    """A whole-stream transform: failures bypass it; consumed acks ride on the next output."""
    bypass: deque[Any] = deque()
    held: list[Ack] = []

    async def feed() -> AsyncIterator[Any]:
        async with aclosing(upstream):  # type: ignore[type-var]
            async for item in upstream:
                chunk, acks = _unwrap(item)
                if type(chunk) is Failure:
                    bypass.append(item)
                    continue
                held.extend(acks)
                yield chunk

    produced = stage.fn(feed(), **stage.params)
    try:
        async with aclosing(produced):
            async for out in produced:
                while bypass:
                    yield bypass.popleft()
                if held:
                    acks = tuple(held)
                    held.clear()
                    yield Carry(out, acks)
                else:
                    yield out
    except StageCrash:
        raise
    except Exception as exc:
        raise StageCrash(stage.id, exc) from exc
    while bypass:
        yield bypass.popleft()
    release_all(held)


def _is_fast(stage: ResolvedStage) -> bool:
    return (
        stage.kind == "map"
        and stage.concurrency == 1
        and stage.timeout is None
        and stage.retry.attempts <= 1
        and not stage.blocking
        and not inspect.iscoroutinefunction(stage.fn)
    )


def _layer(stage: ResolvedStage) -> Callable[[AsyncIterator[Any], ResolvedStage], Any]:
    if stage.kind == "stream":
        return _stream
    if stage.concurrency > 1:
        return _concurrent
    if stage.kind == "flat_map":
        return _flat
    return _map_general


def all_fast(transforms: Iterable[ResolvedStage]) -> bool:
    """Whether every transform is a plain sync map (the source reader can run them all)."""
    return all(_is_fast(s) for s in transforms)


def build_chain(reader: SourceReader, transforms: Iterable[ResolvedStage]) -> Any:
    """Return the async iterator of chain items after every transform.

    Runs of consecutive plain sync maps share one layer (direct calls, one async hop);
    a run at the very start is applied by the source reader itself.
    """
    stages = list(transforms)
    lead = 0
    while lead < len(stages) and _is_fast(stages[lead]):
        lead += 1
    items: Any = reader.items(stages[:lead])
    fast: list[ResolvedStage] = []
    for stage in stages[lead:]:
        if _is_fast(stage):
            fast.append(stage)
            continue
        if fast:
            items, fast = _maps_fast(items, fast), []
        items = _layer(stage)(items, stage)
    if fast:
        items = _maps_fast(items, fast)
    return items
