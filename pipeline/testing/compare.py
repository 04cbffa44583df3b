"""Comparing what came out of a run with what a test expects, and showing the difference.

JSON semantics throughout: ``1 == 1.0`` but ``true != 1``; a mapping *matches* a chunk
holding at least its keys. Diffs list one item a line (long ones indented), ``-`` for
what was expected and ``+`` for what came.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from typing import Any

import orjson

__all__ = [
    "MISSING",
    "compact",
    "diff",
    "equal",
    "error_matches",
    "error_view",
    "matches",
    "resolve_path",
    "show_envelopes",
]

MISSING: Any = object()


def compact(value: Any) -> str:
    """One line of JSON (keys sorted) for a value shown in a diff."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS, default=repr).decode()


def _shown(items: list[Any]) -> list[str]:
    """Items as lines: one line each, or indented when that line would be long."""
    out = []
    for v in items:
        line = compact(v)
        if isinstance(v, dict | list) and len(line) > 72:
            text = orjson.dumps(v, option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2, default=repr)
            out += text.decode().splitlines()
        else:
            out.append(line)
    return out


def diff(expected: list[Any], got: list[Any]) -> list[str]:
    """A unified diff of two lists, ``-`` expected and ``+`` got (mappings indented)."""
    lines = difflib.unified_diff(
        _shown(expected),
        _shown(got),
        "expected",
        "got",
        lineterm="",
        n=3,
    )
    return list(lines)


def equal(a: Any, b: Any) -> bool:
    """Equality as JSON sees it: ``1 == 1.0`` but ``true != 1``."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(equal(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(equal(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def matches(expected: Any, got: Any) -> bool:
    """``expected`` is in ``got``: a mapping by its keys (recursively), else by equality."""
    if isinstance(expected, dict):
        return isinstance(got, dict) and all(
            k in got and matches(v, got[k]) for k, v in expected.items()
        )
    return equal(expected, got)


_PART = re.compile(r"\[(-?\d+)\]|([^.\[\]]+)")


def resolve_path(value: Any, path: str) -> Any:
    """The value at ``path`` (``data.items[0].id``) inside ``value``, or `MISSING`."""
    for index, key in _PART.findall(path):
        if key:
            if not isinstance(value, dict) or key not in value:
                return MISSING
            value = value[key]
        else:
            i = int(index)
            if not isinstance(value, list) or not -len(value) <= i < len(value):
                return MISSING
            value = value[i]
    return value


def show_envelopes(envelopes: list[dict[str, Any]], limit: int = 40) -> str:
    """The envelopes of a run, one a line, for an assertion message (at most ``limit``)."""
    lines = [f"  {orjson.dumps(e, default=repr).decode()}" for e in envelopes[:limit]]
    if len(envelopes) > limit:
        lines.append(f"  ... and {len(envelopes) - limit} more")
    return "envelopes:\n" + "\n".join(lines)


def error_view(env: dict[str, Any]) -> dict[str, Any]:
    """A ``chunk_error`` or ``error`` envelope as ``{stage, type, message[, chunk]}``."""
    view = {"stage": env.get("stage"), **env["error"]}
    if "chunk" in env:
        view["chunk"] = env["chunk"]
    return view


def error_matches(spec: Mapping[str, Any], env: dict[str, Any]) -> bool:
    """Whether an error envelope matches ``spec`` (``stage``: id or place; ``message``: regex)."""
    stage = str(env.get("stage", ""))
    if "stage" in spec and spec["stage"] not in (stage, stage.partition(":")[0]):
        return False
    if "type" in spec and spec["type"] != env["error"]["type"]:
        return False
    if "message" in spec and not re.search(spec["message"], env["error"]["message"]):
        return False
    return "chunk" not in spec or ("chunk" in env and matches(spec["chunk"], env["chunk"]))
