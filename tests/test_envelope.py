"""The envelope encoder: fallback types, timestamps, one line per envelope."""

from __future__ import annotations

import dataclasses
import re
from datetime import UTC, datetime
from decimal import Decimal

import orjson
import pydantic
import pytest

from pipeline import envelope
from pipeline.envelope import UnencodableError, encode, encode_sse, jsonable

TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


def test_encode_is_one_compact_line() -> None:
    """An envelope encodes as compact JSON ending in exactly one newline."""
    line = encode({"status": "processing", "data": {"text": "a\nb"}})
    assert line == b'{"status":"processing","data":{"text":"a\\nb"}}\n'
    assert line.count(b"\n") == 1


@dataclasses.dataclass
class Point:
    x: int
    y: int


class Model(pydantic.BaseModel):
    name: str
    when: datetime


def test_fallback_types() -> None:
    """Sets, Decimal, bytes, int keys, dataclasses and pydantic models have a JSON form."""
    value = {
        "set": {3, 1, 2},
        "mixed": {1, "a"},
        "dec": Decimal("1.10"),
        "text": b"caf\xc3\xa9",
        "blob": b"\xff\x00",
        "keys": {1: "one", 2.5: "x"},
        "point": Point(1, 2),
        "model": Model(name="m", when=datetime(2026, 1, 1, tzinfo=UTC)),
    }
    decoded = orjson.loads(encode(value))
    assert decoded["set"] == [1, 2, 3]
    assert sorted(map(str, decoded["mixed"])) == ["1", "a"]
    assert decoded["dec"] == "1.10"
    assert decoded["text"] == "café"
    assert decoded["blob"] == "base64:/wA="
    assert decoded["keys"] == {"1": "one", "2.5": "x"}
    assert decoded["point"] == {"x": 1, "y": 2}
    assert decoded["model"] == {"name": "m", "when": "2026-01-01T00:00:00Z"}


def test_unencodable_raises_typed_error() -> None:
    """A value with no JSON form raises UnencodableError, a TypeError."""
    with pytest.raises(UnencodableError, match="not JSON serializable"):
        encode({"data": object()})
    assert not jsonable(object())
    assert jsonable({"a": {1, 2}})


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({1: "int", "1": "str"}, "keys 1 and '1' would both be '1' in JSON"),
        ({"deep": [{"x": {True: 1, "true": 2}}]}, "keys True and 'true' would both be 'true'"),
    ],
)
def test_colliding_keys_raise_instead_of_a_duplicate_key(value: object, message: str) -> None:
    """Keys that become the same JSON text are an UnencodableError naming both."""
    with pytest.raises(UnencodableError, match=re.escape(message)):
        encode({"status": "processing", "data": value})
    assert orjson.loads(encode({"data": {1: "a", "2": "b"}})) == {"data": {"1": "a", "2": "b"}}


def test_timestamp_always_has_microseconds() -> None:
    """A timestamp keeps `.000000` at a whole second (orjson would drop it)."""
    ticks = iter(
        [
            1_767_225_600_000_000_000,
            1_767_225_600_000_123_456,
            1_767_225_600_000_999_999,
            1_767_225_600_001_000_000,
            1_767_225_600_999_999_000,
            1_767_225_601_500_000_000,
            1_767_225_600_000_000_001,  # the clock went back
        ]
    )
    clock = envelope.make_clock(lambda: next(ticks))
    assert clock() == "2026-01-01T00:00:00.000000Z"
    assert clock() == "2026-01-01T00:00:00.000123Z"
    assert clock() == "2026-01-01T00:00:00.000999Z"
    assert clock() == "2026-01-01T00:00:00.001000Z"
    assert clock() == "2026-01-01T00:00:00.999999Z"
    assert clock() == "2026-01-01T00:00:01.500000Z"
    assert clock() == "2026-01-01T00:00:00.000000Z"


def test_now_matches_rfc3339() -> None:
    """`now()` is RFC 3339 UTC with microseconds and Z."""
    assert TS.match(envelope.now())


def test_sse_frame() -> None:
    """An SSE frame carries id RUN:SEQ and the line as data, with no `event:` line."""
    frame = encode_sse(b'{"a":1}\n', "r1", 7)
    assert frame == b'id: r1:7\ndata: {"a":1}\n\n'


def test_only_envelope_module_encodes() -> None:
    """Modules on the envelope path never call orjson.dumps: envelope.py encodes."""
    from pathlib import Path

    root = Path(envelope.__file__).parent
    path = ["engine", "chain", "fanout", "hub", "subscription", "supervisor", "server", "serve"]
    offenders = [
        name
        for name in path
        if (root / f"{name}.py").exists() and "orjson.dumps" in (root / f"{name}.py").read_text()
    ]
    assert offenders == []
