"""What a stage is: markers, `StageMeta`, and a callable's signature as a params model.

Stages are plain functions. A marker only attaches a frozen `StageMeta` to the function
and returns the same function, so it stays directly callable in a test.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeVar, get_type_hints, overload

from pipeline.errors import StageParamsError
from pipeline.types import StageKind

if TYPE_CHECKING:  # pydantic is imported on first use: `import pipeline` stays cheap
    import pydantic

__all__ = [
    "ResolvedStage",
    "RetryPolicy",
    "StageMeta",
    "is_resource",
    "meta_of",
    "open_resource",
    "params_model",
    "resource",
    "resource_sink",
    "resource_source",
    "sink",
    "stream_transform",
    "validate_params",
]

F = TypeVar("F", bound=Callable[..., Any])

SinkReceives = Literal["envelopes", "data", "lines"]


@dataclass(frozen=True, slots=True)
class StageMeta:
    """What a marker says about a stage.

    Attributes:
        stream: a transform takes the whole async iterator of chunks; a sink takes the
            async iterator of what it receives and owns its resource for the whole run.
        receives: for sinks: ``envelopes`` (every envelope as a dict), ``data`` (the
            ``data`` of ``processing`` envelopes only) or ``lines`` (every envelope as
            its encoded NDJSON bytes).
        confirm: for stream sinks: each item comes as a `pipeline.Delivery` the sink
            accepts once written (or rejects), instead of counting as accepted when the
            sink asks for the next one; for sinks that batch or write asynchronously.
        batch: for stream sinks: the sink iterates over lists of items, each list
            everything that was ready when it asked (one envelope when the stream is
            quiet, up to the sink's buffer in a burst), so it can write a list in one
            call; a list counts as accepted when the sink asks for the next one (with
            ``confirm``, a list of deliveries, each accepted by the sink).
    """

    role: Literal["transform", "sink"]
    stream: bool = False
    receives: SinkReceives = "envelopes"
    confirm: bool = False
    batch: bool = False


_ATTR = "__pipeline_stage__"


def stream_transform(fn: F) -> F:
    """Mark ``fn`` as a whole-stream transform: it takes an async iterator of chunks.

    Example:
        >>> @stream_transform
        ... async def pairs(chunks):
        ...     batch = []
        ...     async for chunk in chunks:
        ...         batch.append(chunk)
        ...         if len(batch) == 2:
        ...             yield batch
        ...             batch = []
    """
    setattr(fn, _ATTR, StageMeta(role="transform", stream=True))
    return fn


@overload
def sink(
    fn: F,
    *,
    stream: bool = ...,
    receives: SinkReceives = ...,
    confirm: bool = ...,
    batch: bool = ...,
) -> F: ...


@overload
def sink(
    fn: None = None,
    *,
    stream: bool = ...,
    receives: SinkReceives = ...,
    confirm: bool = ...,
    batch: bool = ...,
) -> Callable[[F], F]: ...


def sink(
    fn: F | None = None,
    *,
    stream: bool = False,
    receives: SinkReceives = "envelopes",
    confirm: bool = False,
    batch: bool = False,
) -> F | Callable[[F], F]:
    """Mark ``fn`` as a sink, optionally with options.

    A plain sink is called once per item. With ``stream=True`` it is called once per run
    with an async iterator of items, and keeps its resource under ``async with`` for as
    long as it iterates, so it is opened before the first item and closed after the last
    one, also on error, cancellation and shutdown. With ``confirm=True`` (stream sinks
    only) each item comes wrapped in a `pipeline.Delivery` that the sink accepts once it
    is written, or rejects alone (a ``chunk_error`` for its chunk, the run goes on).
    Such a sink must answer within a bounded time when its input goes quiet (flush on
    an interval, not only on the next item): a run waits for those answers before its
    ``complete`` (at most ``pipeline.engine.run.SETTLE_TIMEOUT`` seconds). With
    ``batch=True`` (stream sinks only) the sink iterates over lists: each list holds
    what was ready when it asked, so it writes a burst in one call and a lone item at
    once; a list counts as accepted when the sink asks for the next one. Both together
    give lists of deliveries.

    Raises:
        TypeError: ``confirm=True`` or ``batch=True`` without ``stream=True``.

    Example:
        >>> @sink(receives="data")
        ... def show(data):
        ...     print(data)
    """
    if confirm and not stream:
        msg = "`confirm=True` needs `stream=True`: only a stream sink sees deliveries"
        raise TypeError(msg)
    if batch and not stream:
        msg = "`batch=True` needs `stream=True`: only a stream sink sees lists"
        raise TypeError(msg)
    meta = StageMeta(role="sink", stream=stream, receives=receives, confirm=confirm, batch=batch)

    def mark(f: F) -> F:
        setattr(f, _ATTR, meta)
        return f

    return mark(fn) if fn is not None else mark


def meta_of(fn: Callable[..., Any]) -> StageMeta | None:
    """Return the `StageMeta` a marker attached to ``fn``, if any."""
    meta = getattr(fn, _ATTR, None)
    return meta if isinstance(meta, StageMeta) else None


Calling = Literal["sync", "async", "gen", "asyncgen"]
"""How a stage is called: a plain function, a coroutine function, a generator function or
an async generator function (looking through ``functools.partial``, bound methods and a
callable object's ``__call__``)."""


def calling_of(fn: Callable[..., Any]) -> Calling:
    """Decide how ``fn`` is called; the one place this is decided (see `ResolvedStage`).

    Example:
        >>> class Enrich:
        ...     async def __call__(self, chunk):
        ...         return chunk
        >>> calling_of(Enrich()), calling_of(len), calling_of(functools.partial(Enrich()))
        ('async', 'sync', 'async')
    """
    target: Any = fn
    while isinstance(target, functools.partial):
        target = target.func
    if not (inspect.isroutine(target) or inspect.isclass(target)) and callable(target):
        target = type(target).__call__
    if inspect.isasyncgenfunction(target):
        return "asyncgen"
    if inspect.iscoroutinefunction(target):
        return "async"
    if inspect.isgeneratorfunction(target):
        return "gen"
    return "sync"


_RESOURCE = "__pipeline_resource__"


def resource(fn: F) -> F:
    """Mark ``fn`` as a stage that holds a resource (a client, a pool) for a whole run.

    ``fn`` takes the stage's parameters (from ``with:``) and either is an async
    generator function that sets up, ``yield``\\ s the stage once and tears down after
    the ``yield``, or returns an async context manager whose value is the stage (for
    example a function decorated with `contextlib.asynccontextmanager`). Set-up runs
    once per run, before the first chunk; tear-down runs once, on every ending:
    finished, error, cancelled, shutdown and reload.

    What it yields is the stage for its place in ``pipelines.yaml``: for a transform a
    function of one chunk (sync, async, or an async generator for a flat-map); for a
    sink a function of one envelope (``@sink(receives=...)`` on ``fn`` picks what it
    gets); for a source an async iterable, or a function returning one.

    Example:
        >>> import httpx
        >>> @resource
        ... async def lookup(*, base_url: str, timeout: float = 2.0):
        ...     async with httpx.AsyncClient(base_url=base_url, timeout=timeout) as client:
        ...
        ...         async def enrich(chunk: dict) -> dict:
        ...             reply = await client.get("/users", params={"id": chunk["user"]})
        ...             return {**chunk, "user": reply.raise_for_status().json()}
        ...
        ...         yield enrich
    """
    setattr(fn, _RESOURCE, True)
    return fn


def is_resource(fn: Callable[..., Any]) -> bool:
    """Whether ``fn`` was marked with `resource`."""
    return getattr(fn, _RESOURCE, False) is True


def open_resource(
    fn: Callable[..., Any], params: Mapping[str, Any]
) -> contextlib.AbstractAsyncContextManager[Any]:
    """The async context manager of a `resource` stage bound to ``params``.

    Raises:
        TypeError: ``fn`` returned something that is not an async context manager.
    """
    if inspect.isasyncgenfunction(fn):
        return contextlib.asynccontextmanager(fn)(**params)
    cm: contextlib.AbstractAsyncContextManager[Any] = fn(**params)
    if not (hasattr(cm, "__aenter__") and hasattr(cm, "__aexit__")):
        name = getattr(fn, "__qualname__", repr(fn))
        msg = (
            f"`{name}` is marked @resource but returned {type(cm).__name__}, "
            "not an async context manager (write it as an async generator that yields once)"
        )
        raise TypeError(msg)
    return cm


def resource_source(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A source (async generator function) over a `resource` that yields an iterable.

    Its signature is ``fn``'s; the resource stays open while the source is iterated,
    and is torn down when the engine closes the source, however the run ends.
    """

    @functools.wraps(fn)
    async def source(**params: Any) -> AsyncIterator[Any]:
        async with open_resource(fn, params) as value:
            items = value() if callable(value) else value
            if hasattr(items, "__aiter__"):
                async for item in items:
                    yield item
            elif hasattr(items, "__iter__"):
                for item in items:
                    yield item
            else:
                what = type(items).__name__
                msg = f"`{_qualname(fn)}` is a resource that yielded {what}, not an iterable"
                raise TypeError(msg)

    vars(source).pop(_RESOURCE, None)
    return source


def resource_sink(fn: Callable[..., Any], receives: SinkReceives) -> Callable[..., Any]:
    """A stream sink over a `resource` that yields a function of one item.

    The resource is set up before the first item and torn down after the last one, also
    on error, cancellation and shutdown (the stream sink's own lifetime).
    """

    @functools.wraps(fn)
    async def write_all(items: AsyncIterator[Any], **params: Any) -> None:
        async with open_resource(fn, params) as write:
            if not callable(write):
                what = type(write).__name__
                msg = f"`{_qualname(fn)}` is a resource that yielded {what}, not a function"
                raise TypeError(msg)
            async for item in items:
                result = write(item)
                if inspect.isawaitable(result):
                    await result

    vars(write_all).pop(_RESOURCE, None)
    setattr(write_all, _ATTR, StageMeta(role="sink", stream=True, receives=receives))
    return write_all


def _qualname(fn: Callable[..., Any]) -> str:
    return f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', repr(fn))}"


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Retry a failing per-chunk call ``attempts`` times in all, waiting ``backoff * 2**n``."""

    attempts: int = 1
    backoff: float = 0.0
    max_backoff: float = 30.0


@dataclass(frozen=True, slots=True)
class ResolvedStage:
    """A stage bound to its parameters and options, ready to run; nothing has run yet.

    ``id`` is stable for a config: the config's ``id:`` or ``<place>:<name>``, for example
    ``transforms[1]:enrich``. It is the ``stage`` of every ``chunk_error`` and ``error``.
    """

    id: str
    kind: StageKind
    fn: Callable[..., Any]
    params: Mapping[str, Any] = field(default_factory=dict)
    concurrency: int = 1
    ordered: bool = True
    timeout: float | None = None
    retry: RetryPolicy = RetryPolicy()
    blocking: bool = False
    meta: StageMeta | None = None
    calling: Calling = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "calling", calling_of(self.fn))


def _first_positional(sig: inspect.Signature) -> str | None:
    for p in sig.parameters.values():
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            return p.name
        if p.kind is p.VAR_POSITIONAL:
            return None
    return None


def params_model(fn: Callable[..., Any], *, skip_first: bool) -> type[pydantic.BaseModel]:
    """Build a pydantic model of ``fn``'s keyword parameters from its signature and hints.

    ``skip_first`` leaves out the first positional parameter (the chunk, the iterator of
    chunks, or the envelope). Unknown keys are rejected unless ``fn`` takes ``**kwargs``.
    """
    sig = inspect.signature(fn)
    try:
        hints = get_type_hints(fn, include_extras=True)
    except Exception:  # unresolvable annotations: validate by default value only
        hints = {}
    skip = _first_positional(sig) if skip_first else None
    fields: dict[str, Any] = {}
    extra: Literal["forbid", "allow"] = "forbid"
    for p in sig.parameters.values():
        if p.name == skip or p.kind is p.VAR_POSITIONAL:
            continue
        if p.kind is p.VAR_KEYWORD:
            extra = "allow"
            continue
        hint = hints.get(p.name, Any)
        default = ... if p.default is p.empty else p.default
        fields[p.name] = (hint, default)
    import pydantic

    config = pydantic.ConfigDict(extra=extra, arbitrary_types_allowed=True, strict=False)
    name = getattr(fn, "__name__", "stage")
    return pydantic.create_model(f"{name}_params", __config__=config, **fields)


def _message(err: Mapping[str, Any]) -> str:
    # pydantic's own text for these repeats nothing of the input; we never add `input`.
    kind = err["type"]
    if kind == "missing":
        return "required parameter is missing"
    if kind == "extra_forbidden":
        return "unknown parameter"
    if kind == "value_error":  # a stage's own check (a validator in its hints): its text
        return str(err["ctx"]["error"])
    return str(err["msg"])


def validate_params(
    fn: Callable[..., Any], with_: Mapping[str, Any], *, skip_first: bool
) -> dict[str, Any]:
    """Validate ``with_`` against ``fn``'s signature; return the keyword arguments to bind.

    Raises:
        StageParamsError: with ``(location, message)`` pairs; messages never echo input.
    """
    import pydantic

    model = params_model(fn, skip_first=skip_first)
    try:
        parsed = model.model_validate(dict(with_))
    except pydantic.ValidationError as exc:
        errors = [(tuple(e["loc"]), _message(e)) for e in exc.errors(include_input=False)]
        msg = "; ".join(f"{'.'.join(map(str, loc))}: {m}" for loc, m in errors)
        raise StageParamsError(msg, errors) from None
    values = {name: getattr(parsed, name) for name in type(parsed).model_fields}
    values.update(parsed.model_extra or {})
    return values
