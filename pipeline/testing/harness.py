"""Run a configured pipeline in-process on test input (for `pipeline test` and the plugin).

The real engine runs the real stages; only the ends are swapped. The source is replaced
by the given chunks (`source_from`), each one acknowledged like a broker message, so a
test sees which chunks were acknowledged. Sinks are replaced by in-memory sinks
(`CapturedSink`: same id, same ``receives``) unless a test keeps them. Faults make a
stage or a sink fail on purpose on its Nth chunk. Everything that came out is a
`RunResult`.

Example:
    >>> import asyncio
    >>> from pipeline.stage import ResolvedStage
    >>> src = source_from([1, 2, 3])
    >>> out = asyncio.run(run_stages("demo", ResolvedStage("source", "source", src)))
    >>> out.data, out.acked, out.reason
    ([1, 2, 3], [0, 1, 2], 'finished')
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import inspect
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

import orjson

from pipeline.config.loader import ResolvedPipeline
from pipeline.engine.run import Run
from pipeline.errors import PipelineError, StageParamsError
from pipeline.stage import ResolvedStage, SinkReceives, StageMeta, validate_params
from pipeline.testing.compare import (
    compact,
    diff,
    equal,
    error_matches,
    error_view,
    matches,
    show_envelopes,
)
from pipeline.types import BadChunk, Chunk, Envelope, Message

__all__ = [
    "CapturedSink",
    "CaseSetupError",
    "Fault",
    "ListSource",
    "PreparedCase",
    "RunResult",
    "captured_sink",
    "prepare_case",
    "run_pipeline_case",
    "run_stages",
    "source_from",
    "stage_places",
]


class CaseSetupError(PipelineError):
    """A test names a stage, a parameter or a fault the pipeline does not have.

    ``key`` says which part of the test is wrong: ``with``, ``faults`` or ``sinks``,
    followed by the key or index inside it.
    """

    def __init__(self, message: str, key: tuple[str | int, ...] = ()) -> None:
        self.key = key
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class Fault:
    """Make ``stage`` fail on purpose on its Nth chunks (1 = the first chunk it gets).

    ``stage`` is a stage id (``transforms[1]:convert``), its place (``transforms[1]``,
    ``source``, ``sinks[0]``, ``dead_letter``) or an explicit ``id:``. A transform raises
    on that chunk (every retry of it too), so the chunk becomes a ``chunk_error``; a sink
    raises on its Nth envelope, so the run ends with ``error``; a source raises instead of
    yielding its Nth chunk. The exception's type is named ``error``.
    """

    stage: str
    on_chunk: int | tuple[int, ...] = 1
    error: str = "InjectedFault"
    message: str = "injected fault"

    @property
    def chunks(self) -> tuple[int, ...]:
        """The chunk numbers that fail (from 1)."""
        return (self.on_chunk,) if isinstance(self.on_chunk, int) else tuple(self.on_chunk)

    def exception(self, n: int) -> Exception:
        """The exception raised on chunk ``n``."""
        kind: type[Exception] = type(self.error, (Exception,), {"__module__": "pipeline.testing"})
        return kind(f"{self.message} (chunk {n})")


class _Trigger:
    """Counts chunks and raises the fault's exception on the chosen ones (and retries)."""

    def __init__(self, fault: Fault | None) -> None:
        self.fault = fault
        self.count = 0
        self.poisoned: list[Any] = []

    def check(self, chunk: Any = None) -> None:
        if self.fault is None:
            return
        if any(chunk is p for p in self.poisoned):  # a retry of a failed chunk fails again
            raise self.fault.exception(self.count)
        self.count += 1
        if self.count in self.fault.chunks:
            if chunk is not None:
                self.poisoned.append(chunk)
            raise self.fault.exception(self.count)


class ListSource:
    """A source yielding ``chunks`` in order, each one acknowledged like a broker message.

    ``acked`` lists the indexes of the chunks acknowledged so far (sorted); a chunk is
    acknowledged once every sink accepted what came from it, or once it was dropped.
    Items that already are `Message` or `BadChunk` are passed on with their own ack
    wrapped. Call the instance (as the engine does) to get the chunks.
    """

    __name__ = "source_from"

    def __init__(self, chunks: Iterable[Chunk], *, fault: Fault | None = None) -> None:
        self.chunks = list(chunks)
        self._acked: set[int] = set()
        self._trigger = _Trigger(fault)

    @property
    def acked(self) -> list[int]:
        """Indexes of the acknowledged chunks, sorted."""
        return sorted(self._acked)

    def _ack(self, i: int, inner: Callable[[], Any] | None = None) -> Any:
        self._acked.add(i)
        return inner() if inner is not None else None

    async def __call__(self) -> AsyncIterator[Chunk]:
        """Yield every chunk (wrapped with its acknowledgement)."""
        for i, chunk in enumerate(self.chunks):
            self._trigger.check()
            if isinstance(chunk, BadChunk):
                yield BadChunk(chunk.raw, chunk.error, functools.partial(self._ack, i, chunk.ack))
            elif isinstance(chunk, Message):
                yield Message(chunk.data, functools.partial(self._ack, i, chunk.ack))
            else:
                yield Message(chunk, functools.partial(self._ack, i))


def source_from(chunks: Iterable[Chunk], *, fault: Fault | None = None) -> ListSource:
    """A source that yields ``chunks`` and records which of them were acknowledged.

    Example:
        >>> src = source_from([{"id": 1}, {"id": 2}])
        >>> len(src.chunks), src.acked
        (2, [])
    """
    return ListSource(chunks, fault=fault)


class CapturedSink:
    """An in-memory sink: keeps what it receives, in order; can fail on its Nth item.

    ``receives`` is what the engine hands it, as for any sink: ``envelopes`` (every
    envelope), ``data`` (the ``data`` of ``processing`` envelopes) or ``lines`` (encoded
    envelopes). ``envelopes`` and ``data`` read the items back whatever it receives.
    """

    __name__ = "captured_sink"

    def __init__(self, receives: SinkReceives = "envelopes", *, fault: Fault | None = None) -> None:
        self.receives: SinkReceives = receives
        self.items: list[Any] = []
        self._trigger = _Trigger(fault)
        self.__pipeline_stage__ = StageMeta("sink", receives=receives)  # what @sink would say

    def __call__(self, item: Any) -> None:
        """Accept one item (the engine calls this once per envelope the sink wants)."""
        self._trigger.check()
        self.items.append(item)

    @property
    def envelopes(self) -> list[Envelope]:
        """The envelopes received (empty for a data-only sink)."""
        if self.receives == "lines":
            return [orjson.loads(line) for line in self.items]
        return [] if self.receives == "data" else list(self.items)

    @property
    def data(self) -> list[Chunk]:
        """The ``data`` of every ``processing`` envelope received."""
        if self.receives == "data":
            return list(self.items)
        return [e["data"] for e in self.envelopes if e["status"] == "processing"]

    def stage(self, id: str = "captured") -> ResolvedStage:
        """This sink as a stage the engine can run."""
        return ResolvedStage(id=id, kind="sink", fn=self, meta=self.__pipeline_stage__)


def captured_sink(
    receives: SinkReceives = "envelopes", *, fault: Fault | None = None
) -> CapturedSink:
    """An in-memory sink for a test; read it back with ``.envelopes`` or ``.data``.

    Example:
        >>> sink = captured_sink(receives="data")
        >>> sink({"id": 1}); sink.data
        [{'id': 1}]
    """
    return CapturedSink(receives, fault=fault)


@dataclass
class RunResult:
    """Everything a run emitted, with shortcuts for what tests check.

    ``acked`` holds the indexes (into the input chunks) of the chunks acknowledged;
    ``sinks`` the in-memory sinks by stage id; ``timed_out`` whether the test's time
    bound cancelled the run.
    """

    pipeline: str
    envelopes: list[Envelope]
    inputs: list[Chunk] | None = None
    acked: list[int] = field(default_factory=list)
    sinks: dict[str, CapturedSink] = field(default_factory=dict)
    timed_out: bool = False

    @property
    def data(self) -> list[Chunk]:
        """The ``data`` of every ``processing`` envelope, in order."""
        return [e["data"] for e in self.envelopes if e["status"] == "processing"]

    @property
    def errors(self) -> list[Envelope]:
        """Every ``chunk_error`` envelope, in order."""
        return [e for e in self.envelopes if e["status"] == "chunk_error"]

    @property
    def error(self) -> Envelope | None:
        """The ``error`` envelope that ended the run, if any."""
        return next((e for e in self.envelopes if e["status"] == "error"), None)

    @property
    def complete(self) -> Envelope | None:
        """The ``complete`` envelope (``None`` only when the run never ended)."""
        return next((e for e in reversed(self.envelopes) if e["status"] == "complete"), None)

    @property
    def stats(self) -> dict[str, Any]:
        """The ``stats`` of the ``complete`` envelope."""
        done = self.complete
        return dict(done["stats"]) if done else {}

    @property
    def reason(self) -> str | None:
        """The ``reason`` of the ``complete`` envelope."""
        done = self.complete
        return done["reason"] if done else None

    @property
    def statuses(self) -> list[str]:
        """The status of every envelope, in order."""
        return [e["status"] for e in self.envelopes]

    @property
    def unacked(self) -> list[int]:
        """Indexes of the input chunks never acknowledged."""
        done = set(self.acked)
        return [i for i in range(len(self.inputs or ())) if i not in done]

    # -- assertions: each failure message shows the envelopes of the run --------------

    def fail(self, message: str, lines: Sequence[str] = ()) -> None:
        """Raise `AssertionError` with ``message``, a diff, and the run's envelopes."""
        __tracebackhide__ = True
        body = "\n".join([message, *lines, show_envelopes(self.envelopes)])
        raise AssertionError(body)

    def assert_finished(self) -> RunResult:
        """The run ended with ``complete(finished)`` and no ``error`` envelope."""
        __tracebackhide__ = True
        if self.timed_out:
            self.fail(f"`{self.pipeline}` did not finish within its timeout")
        if self.reason != "finished":
            self.fail(f"`{self.pipeline}` ended with reason `{self.reason}`, not `finished`")
        return self

    def assert_reason(self, reason: str) -> RunResult:
        """The ``complete`` envelope has ``reason``."""
        __tracebackhide__ = True
        if self.reason != reason:
            self.fail(f"`{self.pipeline}` ended with reason `{self.reason}`, not `{reason}`")
        return self

    def assert_data(self, expected: Sequence[Chunk]) -> RunResult:
        """The ``processing`` data is exactly ``expected``, in order."""
        __tracebackhide__ = True
        if not equal(list(expected), self.data):
            self.fail(
                "the processing data differ (- expected, + got):", diff(list(expected), self.data)
            )
        return self

    def assert_contains(self, *chunks: Chunk) -> RunResult:
        """Each chunk matches a ``processing`` data, in this order (mappings by their keys)."""
        __tracebackhide__ = True
        got, start = self.data, 0
        for n, wanted in enumerate(chunks):
            hit = next((i for i in range(start, len(got)) if matches(wanted, got[i])), None)
            if hit is None:
                self.fail(f"no processing data matches chunks[{n}] {compact(wanted)}")
            start = (hit or 0) + 1
        return self

    def assert_chunk_errors(self, *expected: Mapping[str, Any]) -> RunResult:
        """The ``chunk_error`` envelopes, in order, match ``{stage, type, message, chunk}``.

        ``stage`` is the id or the place (``transforms[0]``); ``message`` a regular
        expression searched for; ``chunk`` matched like `assert_contains`.
        """
        __tracebackhide__ = True
        got = [error_view(e) for e in self.errors]
        if len(expected) != len(got) or not all(
            error_matches(spec, e) for spec, e in zip(expected, self.errors, strict=False)
        ):
            wanted = [dict(spec) for spec in expected]
            self.fail("the chunk_errors differ (- expected, + got):", diff(wanted, got))
        return self

    def assert_error(self, **expected: Any) -> RunResult:
        """The run ended with an ``error`` envelope matching ``stage``, ``type``, ``message``."""
        __tracebackhide__ = True
        env = self.error
        if env is None or not error_matches(expected, env):
            got = [error_view(env)] if env is not None else []
            self.fail("the run's error differs (- expected, + got):", diff([expected], got))
        return self

    def assert_stats(self, **expected: Any) -> RunResult:
        """The ``complete`` stats hold these values (a subset)."""
        __tracebackhide__ = True
        got = {k: self.stats.get(k) for k in expected}
        if not equal(expected, got):
            self.fail("the stats differ (- expected, + got):", diff([expected], [got]))
        return self

    def assert_acked(self, expected: Sequence[int] | str = "all") -> RunResult:
        """These input indexes (from 0) were acknowledged: a list, ``all`` or ``none``."""
        __tracebackhide__ = True
        total = len(self.inputs or ())
        wanted = (
            list(range(total))
            if expected == "all"
            else []
            if expected == "none"
            else list(expected)
        )
        if wanted != self.acked:
            self.fail(f"acked: expected {wanted}, got {self.acked} (of {total} input chunks)")
        return self


def stage_places(rp: ResolvedPipeline) -> list[tuple[str, ResolvedStage]]:
    """Every stage of ``rp`` with its place (``source``, ``transforms[1]``, ...), in order."""
    stages = [rp.source, *rp.transforms, *rp.sinks]
    places = ["source"] + [f"transforms[{i}]" for i in range(len(rp.transforms))]
    places += [f"sinks[{i}]" for i in range(len(rp.sinks))]
    if rp.dead_letter is not None:
        stages.append(rp.dead_letter)
        places.append("dead_letter")
    return list(zip(places, stages, strict=True))


def _find(rp: ResolvedPipeline, key: str) -> tuple[int, str, ResolvedStage] | None:
    for i, (place, stage) in enumerate(stage_places(rp)):
        if key in (place, stage.id):
            return i, place, stage
    return None


def _names(rp: ResolvedPipeline) -> str:
    return ", ".join(f"`{p}` (`{s.id}`)" for p, s in stage_places(rp))


@dataclass
class PreparedCase:
    """A pipeline with its ends swapped and its faults in place, ready to run once."""

    rp: ResolvedPipeline
    stages: list[ResolvedStage]
    captured: dict[str, CapturedSink]

    async def run(self, timeout: float = 30.0) -> RunResult:
        """Run once, bounded by ``timeout`` seconds; return what came out."""
        rp, stages = self.rp, self.stages
        n_t, n_s = len(rp.transforms), len(rp.sinks)
        result = await run_stages(
            rp.name,
            stages[0],
            stages[1 : 1 + n_t],
            stages[1 + n_t : 1 + n_t + n_s],
            stages[-1] if rp.dead_letter is not None else None,
            max_chunk_errors=rp.config.max_chunk_errors,
            timeout=timeout,
        )
        result.sinks = self.captured
        return result


def prepare_case(
    rp: ResolvedPipeline,
    chunks: Sequence[Chunk] | None = None,
    *,
    with_: Mapping[str, Mapping[str, Any]] | None = None,
    keep_sinks: bool | Iterable[str] = False,
    faults: Sequence[Fault] = (),
) -> PreparedCase:
    """Swap the ends of ``rp`` and put its faults in place (see `run_pipeline_case`).

    Raises:
        CaseSetupError: a key names no stage, or parameters do not fit the stage.
    """
    places = stage_places(rp)
    stages = [s for _, s in places]
    for key, params in (with_ or {}).items():
        found = _find(rp, key)
        if found is None:
            msg = f"no stage `{key}` in pipeline `{rp.name}`; its stages: {_names(rp)}"
            raise CaseSetupError(msg, ("with", key))
        i, _, stage = found
        if i == 0 and chunks is not None:
            msg = f"`{key}`: the source is replaced by the test's input; drop its `with:`"
            raise CaseSetupError(msg, ("with", key))
        stages[i] = _override(rp, i, stage, params, key)
    by_index = _faults_by_index(rp, faults)
    kept = _kept(rp, keep_sinks)
    if chunks is not None:
        source = ListSource(chunks, fault=by_index.pop(0, None))
        stages[0] = dataclasses.replace(stages[0], fn=source, params={}, blocking=False)
    captured: dict[str, CapturedSink] = {}
    for i, (place, _) in enumerate(places):
        stage = stages[i]
        if place == "source":
            if i in by_index:
                stages[i] = _faulty_source(stage, by_index.pop(i))
        elif place.startswith("sinks") and stage.id in kept:
            if i in by_index:
                stages[i] = _faulty_sink(stage, by_index.pop(i))
        elif place.startswith(("sinks", "dead_letter")):
            receives = stage.meta.receives if stage.meta else "envelopes"
            sink = CapturedSink(receives, fault=by_index.pop(i, None))
            captured[stage.id] = sink
            stages[i] = sink.stage(stage.id)
        elif i in by_index:
            stages[i] = _faulty_transform(stage, by_index.pop(i))
    return PreparedCase(rp, stages, captured)


async def run_pipeline_case(
    rp: ResolvedPipeline,
    chunks: Sequence[Chunk] | None = None,
    *,
    with_: Mapping[str, Mapping[str, Any]] | None = None,
    keep_sinks: bool | Iterable[str] = False,
    faults: Sequence[Fault] = (),
    timeout: float = 30.0,
) -> RunResult:
    """Run the resolved pipeline ``rp`` once on test input and return what came out.

    Args:
        rp: the pipeline, as `pipeline.config.loader` resolved it.
        chunks: the input, replacing the source; ``None`` runs the pipeline's own source.
        with_: per stage (id or place), parameters over the config's ``with:``.
        keep_sinks: ``True`` keeps every declared sink, a list keeps those named; the
            others (and the dead-letter sink) are replaced by in-memory `CapturedSink` sinks.
        faults: stages made to fail on purpose.
        timeout: seconds before the run is cancelled (``timed_out`` is then true).

    Raises:
        CaseSetupError: a key names no stage, or parameters do not fit the stage.
    """
    prepared = prepare_case(rp, chunks, with_=with_, keep_sinks=keep_sinks, faults=faults)
    return await prepared.run(timeout)


def _faults_by_index(rp: ResolvedPipeline, faults: Sequence[Fault]) -> dict[int, Fault]:
    by_index: dict[int, Fault] = {}
    for n, fault in enumerate(faults):
        found = _find(rp, fault.stage)
        if found is None:
            msg = f"no stage `{fault.stage}` in pipeline `{rp.name}`; its stages: {_names(rp)}"
            raise CaseSetupError(msg, ("faults", n, "stage"))
        if found[0] in by_index:
            msg = f"a second fault for `{fault.stage}`"
            raise CaseSetupError(msg, ("faults", n, "stage"))
        by_index[found[0]] = fault
    return by_index


async def run_stages(
    name: str,
    source: ResolvedStage,
    transforms: Sequence[ResolvedStage] = (),
    sinks: Sequence[ResolvedStage] = (),
    dead_letter: ResolvedStage | None = None,
    *,
    max_chunk_errors: int | None = None,
    timeout: float = 30.0,
) -> RunResult:
    """Run resolved stages once and collect every envelope; bounded by ``timeout`` seconds."""
    envelopes: list[Envelope] = []
    run = Run(
        name,
        source,
        transforms,
        sinks,
        dead_letter,
        max_chunk_errors=max_chunk_errors,
        publish=lambda env, line: envelopes.append(env),
    )
    timed_out = False
    try:
        async with asyncio.timeout(timeout):
            await run.execute()
    except TimeoutError:
        timed_out = True
    fn = source.fn
    inputs = fn.chunks if isinstance(fn, ListSource) else None
    acked = fn.acked if isinstance(fn, ListSource) else []
    return RunResult(name, envelopes, inputs, acked, timed_out=timed_out)


def _override(
    rp: ResolvedPipeline, i: int, stage: ResolvedStage, params: Mapping[str, Any], key: str
) -> ResolvedStage:
    if not isinstance(params, Mapping):
        msg = f"`{key}`: expected a mapping of parameters"
        raise CaseSetupError(msg, ("with", key))
    configured = rp.config.stages()[i][1].with_
    try:
        bound = validate_params(stage.fn, {**configured, **params}, skip_first=i != 0)
    except StageParamsError as exc:
        loc, message = exc.errors[0]
        raise CaseSetupError(message, ("with", key, *loc)) from None
    return dataclasses.replace(stage, params=bound)


def _kept(rp: ResolvedPipeline, keep: bool | Iterable[str]) -> set[str]:
    if keep is True:
        return {s.id for s in rp.sinks}
    if keep is False:
        return set()
    ids = set()
    for n, key in enumerate(keep):
        found = _find(rp, key)
        if found is None or not found[1].startswith("sinks"):
            msg = f"no sink `{key}` in pipeline `{rp.name}`; its stages: {_names(rp)}"
            raise CaseSetupError(msg, ("keep_sinks", n))
        ids.add(found[2].id)
    return ids


def _faulty_transform(stage: ResolvedStage, fault: Fault) -> ResolvedStage:
    trigger, fn = _Trigger(fault), stage.fn
    if stage.kind == "stream":

        def stream(chunks: AsyncIterator[Chunk], /, **params: Any) -> Any:
            return fn(_counted(chunks, trigger), **params)

        return dataclasses.replace(stage, fn=_same_meta(stream, fn))
    if inspect.isasyncgenfunction(fn):

        async def agen(chunk: Chunk, /, **params: Any) -> Any:
            trigger.check(chunk)
            async for item in fn(chunk, **params):
                yield item

        return dataclasses.replace(stage, fn=agen)
    if inspect.isgeneratorfunction(fn):

        def gen(chunk: Chunk, /, **params: Any) -> Any:
            trigger.check(chunk)
            yield from fn(chunk, **params)

        return dataclasses.replace(stage, fn=gen)
    if inspect.iscoroutinefunction(fn):

        async def coro(chunk: Chunk, /, **params: Any) -> Any:
            trigger.check(chunk)
            return await fn(chunk, **params)

        return dataclasses.replace(stage, fn=coro)

    def plain(chunk: Chunk, /, **params: Any) -> Any:
        trigger.check(chunk)
        return fn(chunk, **params)

    return dataclasses.replace(stage, fn=plain)


def _faulty_sink(stage: ResolvedStage, fault: Fault) -> ResolvedStage:
    trigger, fn = _Trigger(fault), stage.fn
    if stage.meta is not None and stage.meta.stream:
        each = stage.meta.batch  # a batch sink: the fault counts the items of each list

        async def stream(items: AsyncIterator[Any], /, **params: Any) -> None:
            await fn(_counted(items, trigger, each=each), **params)

        return dataclasses.replace(stage, fn=_same_meta(stream, fn))

    async def plain(item: Any, /, **params: Any) -> None:
        trigger.check()
        result = fn(item, **params)
        if inspect.isawaitable(result):
            await result

    return dataclasses.replace(stage, fn=_same_meta(plain, fn), blocking=False)


def _faulty_source(stage: ResolvedStage, fault: Fault) -> ResolvedStage:
    trigger, fn = _Trigger(fault), stage.fn

    async def source(**params: Any) -> AsyncIterator[Chunk]:
        made = fn(**params)
        if inspect.isawaitable(made):
            made = await made
        if hasattr(made, "__aiter__"):
            async with aclosing(_counted(made, trigger)) as counted:
                async for item in counted:
                    yield item
        else:
            for item in made:
                trigger.check()
                yield item

    return dataclasses.replace(stage, fn=source, blocking=False)


async def _counted(
    items: Any, trigger: _Trigger, *, each: bool = False
) -> AsyncGenerator[Any, None]:
    try:
        async for item in items:
            if not each:
                trigger.check()
                yield item
                continue
            for n in range(len(item)):  # a batch: what comes before the fault is written
                try:
                    trigger.check()
                except Exception:
                    if n:
                        yield item[:n]
                    raise
            yield item
    finally:
        close = getattr(items, "aclose", None)
        if close is not None:
            await close()


def _same_meta(wrapper: Callable[..., Any], fn: Callable[..., Any]) -> Callable[..., Any]:
    meta = getattr(fn, "__pipeline_stage__", None)
    if meta is not None:
        wrapper.__pipeline_stage__ = meta  # type: ignore[attr-defined]
    return wrapper
