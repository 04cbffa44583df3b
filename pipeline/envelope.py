"""Build status envelopes and encode them: the only place envelopes are made or encoded.

Numbered envelopes (`numbered`, `processing`; SPEC §4) carry ``status``, ``pipeline``,
``run``, ``seq`` and ``timestamp``; transport notices (`heartbeat`, `lagged`) have no
``seq`` and go only to HTTP clients.

Encoding uses orjson. Values orjson cannot encode natively go through one documented
fallback (`default`):

=====================  ==============================================================
value                  encoded as
=====================  ==============================================================
set, frozenset         a JSON array (sorted when the items are sortable)
decimal.Decimal        a JSON string with the exact decimal text (``"1.10"``)
bytes, bytearray       a string: UTF-8 text when it decodes, else ``"base64:..."``
pydantic model         its ``model_dump(mode="json")``
object with __json__   whatever ``obj.__json__()`` returns
non-string dict keys   ``str`` of the key (ints, floats, bools, None, enums, dates);
                       two keys of one dict with the same JSON text (``1`` and
                       ``"1"``) raise `UnencodableError` naming them: no line ever
                       has a duplicate key
dataclass, datetime,   natively by orjson (datetimes in data drop a zero microsecond
UUID, enum, numpy      part; the envelope ``timestamp`` never does)
NaN / Infinity         ``null`` (orjson's behaviour; JSON has no such numbers)
=====================  ==============================================================

Anything else raises `UnencodableError`; the engine turns that into a ``chunk_error``.
"""

from __future__ import annotations

import base64
import functools
import time
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal

import orjson

from pipeline.types import Envelope

__all__ = [
    "UnencodableError",
    "encode",
    "encode_plain",
    "encode_sse",
    "encode_without",
    "heartbeat",
    "jsonable",
    "lagged",
    "make_clock",
    "now",
    "numbered",
    "processing",
    "processing_batch",
    "processing_maker",
]

_STR_KEYS = orjson.OPT_APPEND_NEWLINE | orjson.OPT_SERIALIZE_NUMPY
_OPTIONS = _STR_KEYS | orjson.OPT_NON_STR_KEYS


class UnencodableError(TypeError):
    """A value has no JSON form, not even through the fallback."""


def _default(obj: Any) -> Any:
    if isinstance(obj, set | frozenset):
        try:
            return sorted(obj)
        except TypeError:
            return list(obj)
    if isinstance(obj, Decimal):
        return str(obj)
    if isinstance(obj, bytes | bytearray | memoryview):
        raw = bytes(obj)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return "base64:" + base64.b64encode(raw).decode("ascii")
    dump = getattr(obj, "model_dump", None)
    if callable(dump):
        return dump(mode="json")
    to_json = getattr(obj, "__json__", None)
    if callable(to_json):
        return to_json()
    msg = f"`{type(obj).__qualname__}` is not JSON serializable"
    raise UnencodableError(msg)


def encode(envelope: Envelope) -> bytes:
    """Encode one envelope as one NDJSON line (UTF-8, ending in ``\\n``).

    Raises:
        UnencodableError: a value has no JSON form, even through the fallback.

    Example:
        >>> encode({"status": "starting", "seq": 1})
        b'{"status":"starting","seq":1}\\n'
    """
    try:
        return orjson.dumps(envelope, default=_default, option=_STR_KEYS)
    except orjson.JSONEncodeError:
        pass  # a non-string key, or no JSON form: try again with non-string keys
    try:
        line = orjson.dumps(envelope, default=_default, option=_OPTIONS)
    except orjson.JSONEncodeError as exc:
        raise UnencodableError(str(exc)) from exc
    clash = _key_clash(envelope)
    if clash is not None:
        raise UnencodableError(clash)
    return line


def _key_text(key: Any) -> str:
    """A dict key as JSON writes it (orjson's ``OPT_NON_STR_KEYS``)."""
    if isinstance(key, str):
        return key
    decoded: dict[str, int] = orjson.loads(orjson.dumps({key: 0}, option=orjson.OPT_NON_STR_KEYS))
    return next(iter(decoded))


def _key_clash(value: Any) -> str | None:
    """Describe the first dict in ``value`` with two keys of the same JSON text, or None.

    Called once ``value`` encoded (so it holds no cycle), walking what orjson walked.
    """
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if not all(type(k) is str for k in item):
                seen: dict[str, Any] = {}
                for key in item:
                    text = _key_text(key)
                    if text in seen:
                        return f"keys {seen[text]!r} and {key!r} would both be {text!r} in JSON"
                    seen[text] = key
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return None


encode_plain: Callable[[Envelope], bytes] = functools.partial(
    orjson.dumps, option=orjson.OPT_APPEND_NEWLINE
)
"""The hot path's encoder: plain JSON types only, raising `TypeError` for anything else.

Its output is byte for byte what `encode` gives for the same envelope; on `TypeError`
call `encode`, which tries the fallback.
"""


def encode_without(envelope: Envelope, key: str) -> bytes:
    """Encode ``envelope``; if that fails, drop ``key`` (for example a ``chunk_error``'s
    undecodable ``chunk``) and encode the rest.

    Example:
        >>> encode_without({"status": "chunk_error", "chunk": object()}, "chunk")
        b'{"status":"chunk_error"}\\n'
    """
    try:
        return encode(envelope)
    except UnencodableError:
        del envelope[key]
        return encode(envelope)


def jsonable(value: Any) -> bool:
    """Return whether ``value`` can be encoded (through the fallback if needed)."""
    try:
        orjson.dumps(value, default=_default, option=_OPTIONS)
    except (orjson.JSONEncodeError, UnencodableError):
        return False
    return True


def encode_sse(line: bytes, run: str, seq: int | None) -> bytes:
    """Frame an encoded NDJSON line as one Server-Sent Event (``id`` and ``data``).

    There is no ``event:`` line: every envelope is a default ``message`` event, so a
    browser's ``onmessage`` gets them all, and a run's ``error`` envelope never fires
    EventSource's own ``error`` event (SPEC §6). The status stays in the JSON. A
    transport notice (``seq`` None) has no ``id``.

    Example:
        >>> encode_sse(b'{"seq":1}\\n', "r1", 1)
        b'id: r1:1\\ndata: {"seq":1}\\n\\n'
    """
    head = b"id: %s:%d\n" % (run.encode(), seq) if seq is not None else b""
    return head + b"data: " + line + b"\n"


_MILLIS = tuple(f"{ms:03d}" for ms in range(1000))
_TAILS = tuple(f"{us:03d}Z" for us in range(1000))
"""The last three digits of the microseconds and the ``Z``, formatted once."""


def make_clock(time_ns: Callable[[], int] = time.time_ns) -> Callable[[], str]:
    """Make a clock of RFC 3339 UTC timestamps with microseconds and ``Z``.

    The text up to the millisecond is cached while the millisecond lasts (and the text
    up to the second while the second lasts); a call only reads the clock and joins the
    cached text with one of 1,000 prepared endings: no number is formatted per call.
    """
    # first microsecond of the cached millisecond, its text; the cached second, its text
    state: list[Any] = [-(10**18), "", -1, ""]
    tails: tuple[str, ...] = _TAILS

    def now() -> str:
        us = time_ns() // 1000
        offset = us - state[0]
        if not 0 <= offset < 1000:
            ms = us // 1000
            second, millis = divmod(ms, 1000)
            if second != state[2]:
                state[2] = second
                state[3] = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S.")
            state[0] = ms * 1000
            state[1] = state[3] + _MILLIS[millis]
            offset = us - state[0]
        prefix: str = state[1]
        tail: str = tails[offset]
        return prefix + tail

    return now


now = make_clock()
"""Return the current time as ``YYYY-MM-DDTHH:MM:SS.ffffffZ``."""


def numbered(status: str, pipeline: str, run: str, seq: int, **fields: Any) -> Envelope:
    """A run's envelope: the five common fields, then ``fields`` (SPEC §4).

    Example:
        >>> env = numbered("complete", "p", "r1", 9, reason="finished")
        >>> [k for k in env]
        ['status', 'pipeline', 'run', 'seq', 'timestamp', 'reason']
    """
    env: Envelope = {
        "status": status,
        "pipeline": pipeline,
        "run": run,
        "seq": seq,
        "timestamp": now(),
    }
    if fields:
        env.update(fields)
    return env


def processing(pipeline: str, run: str, seq: int, data: Any) -> Envelope:
    """The ``processing`` envelope of one chunk (the hot path: positional, no ``**``)."""
    return {
        "status": "processing",
        "pipeline": pipeline,
        "run": run,
        "seq": seq,
        "timestamp": now(),
        "data": data,
    }


def processing_maker(pipeline: str, run: str) -> Callable[[int, Any], tuple[Envelope, bytes]]:
    """Return ``make(seq, data) -> (envelope, line)``: `processing` and `encode_plain` in
    one call, for the engine's hot path (raises `TypeError` where `encode_plain` does).

    Example:
        >>> env, line = processing_maker("p", "r1")(7, {"n": 1})
        >>> (env["seq"], env["data"], line.endswith(b'"data":{"n":1}}\\n'))
        (7, {'n': 1}, True)
    """
    dumps, option, clock = orjson.dumps, orjson.OPT_APPEND_NEWLINE, now

    def make(seq: int, data: Any) -> tuple[Envelope, bytes]:
        env: Envelope = {
            "status": "processing",
            "pipeline": pipeline,
            "run": run,
            "seq": seq,
            "timestamp": clock(),
            "data": data,
        }
        return env, dumps(env, option=option)

    return make


BatchMaker = Callable[[int, list[Any], int, list[bytes], "list[Envelope] | None"], int]


def processing_batch(pipeline: str, run: str, stop: tuple[type, type]) -> BatchMaker:
    """Return ``make(seq, chunks, start, lines, envs) -> end``: the ``processing``
    envelopes of ``chunks[start:end]``, numbered from ``seq + 1``, their lines appended
    to ``lines`` (and the envelopes to ``envs`` unless it is None), in one loop.

    It stops before the first chunk of a type in ``stop`` (the engine's wrappers) or one
    that `encode_plain` cannot encode (give that one to `encode`). Each envelope is
    stamped when it is made, as `processing` does.

    Example:
        >>> lines: list[bytes] = []
        >>> processing_batch("p", "r1", (set, set))(4, [{"n": 1}, {2}], 0, lines, None)
        1
        >>> lines[0].startswith(b'{"status":"processing","pipeline":"p","run":"r1","seq":5,')
        True
    """
    dumps, option, time_ns, tails = orjson.dumps, orjson.OPT_APPEND_NEWLINE, time.time_ns, _TAILS
    first, second = stop
    reading = [0]
    stamp_at = make_clock(lambda: reading[0])  # the text of the clock reading given it
    base, prefix = -(10**18), ""  # first microsecond of the cached millisecond, its text

    def make(
        seq: int, chunks: list[Any], start: int, lines: list[bytes], envs: list[Envelope] | None
    ) -> int:
        nonlocal base, prefix
        add = lines.append
        i = start
        for data in chunks[start:] if start else chunks:
            kind = type(data)
            if kind is first or kind is second:
                return i
            seq += 1
            ns = time_ns()  # `now`, inlined: the cached millisecond and a prepared ending
            offset = ns // 1000 - base
            if 0 <= offset < 1000:
                stamp = prefix + tails[offset]
            else:
                reading[0] = ns
                stamp = stamp_at()
                base, prefix = ns // 1_000_000 * 1000, stamp[:-4]
            env: Envelope = {
                "status": "processing",
                "pipeline": pipeline,
                "run": run,
                "seq": seq,
                "timestamp": stamp,
                "data": data,
            }
            try:
                add(dumps(env, option=option))
            except TypeError:
                return i
            if envs is not None:
                envs.append(env)
            i += 1
        return i

    return make


def heartbeat(pipeline: str) -> Envelope:
    """The keepalive notice sent to an HTTP client after ``heartbeat`` seconds of silence."""
    return {"status": "heartbeat", "pipeline": pipeline, "timestamp": now()}


LaggedReason = Literal["not_retained", "slow_client", "run_changed", "evicted"]


def lagged(
    pipeline: str,
    run: str | None,
    missed: int,
    reason: LaggedReason,
    resume: str | None = None,
    previous_run: str | None = None,
) -> Envelope:
    """The notice that a client misses ``missed`` envelopes of ``run``.

    ``reason`` is ``not_retained`` (it asked for envelopes no longer kept),
    ``slow_client`` (it fell too far behind and is disconnected; ``resume`` is the
    ``RUN:SEQ`` to reconnect with) or ``run_changed`` (its resume token names
    ``previous_run``, which is no longer the current run: what that run emitted after
    the token is unknown here, ``missed`` counts the current run's envelopes no longer
    retained) or ``evicted`` (an idle stream closed to make room for a new client at
    ``max_clients``; ``missed`` is 0 and ``resume`` is where to reconnect from).

    Example:
        >>> env = lagged("p", "r1", 3, "slow_client", resume="r1:7")
        >>> list(env), env["missed"], env["resume"]
        (['status', 'pipeline', 'run', 'missed', 'reason', 'resume', 'timestamp'], 3, 'r1:7')
    """
    env: Envelope = {
        "status": "lagged",
        "pipeline": pipeline,
        "run": run,
        "missed": missed,
        "reason": reason,
    }
    if resume is not None:
        env["resume"] = resume
    if previous_run is not None:
        env["previous_run"] = previous_run
    env["timestamp"] = now()
    return env
