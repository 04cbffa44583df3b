"""What a stage is: markers, `StageMeta`, and a callable's signature as a params model.

Stages are plain functions. A marker only attaches a frozen `StageMeta` to the function
and returns the same function, so it stays directly callable in a test.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
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
    "meta_of",
    "params_model",
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
    """

    role: Literal["transform", "sink"]
    stream: bool = False
    receives: SinkReceives = "envelopes"
    confirm: bool = False


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
def sink(fn: F, *, stream: bool = ..., receives: SinkReceives = ..., confirm: bool = ...) -> F: ...


@overload
def sink(
    fn: None = None, *, stream: bool = ..., receives: SinkReceives = ..., confirm: bool = ...
) -> Callable[[F], F]: ...


def sink(
    fn: F | None = None,
    *,
    stream: bool = False,
    receives: SinkReceives = "envelopes",
    confirm: bool = False,
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
    ``complete`` (at most ``pipeline.engine.run.SETTLE_TIMEOUT`` seconds).

    Raises:
        TypeError: ``confirm=True`` without ``stream=True``.

    Example:
        >>> @sink(receives="data")
        ... def show(data):
        ...     print(data)
    """
    if confirm and not stream:
        msg = "`confirm=True` needs `stream=True`: only a stream sink sees deliveries"
        raise TypeError(msg)
    meta = StageMeta(role="sink", stream=stream, receives=receives, confirm=confirm)

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
