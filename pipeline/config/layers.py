"""Several config files and ``--set`` overrides merged into one document, lines kept.

Precedence, lowest first: the first ``-c`` file, each later ``-c`` file, then each
``--set`` in order. A later mapping key replaces or extends an earlier one (mappings merge
key by key, recursively); any other value, lists included, is replaced whole. Every value
keeps the file and line it came from, so a problem is reported where the value was
written; a ``--set`` value is reported as ``--set:N`` (the N-th ``--set``).

A ``--set`` is ``PATH=VALUE``: ``PATH`` is dotted keys with ``[i]`` (or ``.i``) for list
items, for example ``pipelines.sensors.transforms[0].with.unit``; ``VALUE`` is read as
YAML (``10`` is a number, ``true`` a boolean, ``[a, b]`` a list, ``'10'`` a string).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from pipeline.config.parse import Loc, Parsed, format_loc

__all__ = ["SET_FILE", "Layered", "merge"]

SET_FILE = "--set"
"""The "file" of a ``--set`` value in problems (``--set:2`` is the second ``--set``)."""

_PART = re.compile(r"\[(\d+)\]|\.?([^.\[\]]+)")


@dataclass
class Layered:
    """The merged document: data, and the file and line of every value.

    ``problems`` are ``(file, loc, line, message)`` (parse problems of each file and bad
    ``--set`` arguments); ``poisoned`` as in `Parsed`.
    """

    data: Any
    lines: dict[Loc, int] = field(default_factory=dict)
    files: dict[Loc, str] = field(default_factory=dict)
    problems: list[tuple[str, Loc, int, str]] = field(default_factory=list)
    poisoned: set[Loc] = field(default_factory=set)


def merge(parsed: list[tuple[str, Parsed]], sets: list[str]) -> Layered:
    """Merge parsed files (in order) and ``--set`` arguments into one `Layered`."""
    out = Layered(None)
    for file, doc in parsed:
        out.problems += [(file, loc, line, msg) for loc, line, msg in doc.problems]
        out.poisoned |= doc.poisoned
        if doc.data is None:
            continue
        if out.data is None:
            out.data = {}
        _overlay(out, (), doc.data, file, doc.lines)
    if out.data is None:
        return out
    for n, arg in enumerate(sets, start=1):
        _apply_set(out, arg, n)
    return out


def _forget(out: Layered, loc: Loc) -> None:
    """Drop the lines of everything under ``loc`` (its value is being replaced)."""
    size = len(loc)
    for table in (out.lines, out.files):
        for key in [k for k in table if len(k) > size and k[:size] == loc]:
            del table[key]


def _overlay(out: Layered, loc: Loc, value: Any, file: str, lines: dict[Loc, int]) -> None:
    """Lay ``value`` (at ``loc``) over what ``out`` holds there."""
    target = _get(out.data, loc)
    if isinstance(value, dict) and isinstance(target, dict):
        if loc in lines:
            out.lines.setdefault(loc, lines[loc])
            out.files.setdefault(loc, file)
        for key, sub in value.items():
            _overlay(out, (*loc, key), sub, file, lines)
        return
    _forget(out, loc)
    _put(out.data, loc, value)
    for key, line in lines.items():
        if key[: len(loc)] == loc:
            out.lines[key] = line
            out.files[key] = file


def _get(data: Any, loc: Loc) -> Any:
    for part in loc:
        found = (isinstance(data, dict) and part in data) or (
            isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data)
        )
        if not found:
            return None
        data = data[part]
    return data


def _put(data: Any, loc: Loc, value: Any) -> None:
    parent = _get(data, loc[:-1])
    parent[loc[-1]] = value


def _apply_set(out: Layered, arg: str, n: int) -> None:
    path, eq, text = arg.partition("=")
    if not eq or not path.strip():
        msg = f"`--set {arg}`: expected PATH=VALUE, for example pipelines.NAME.retain=100"
        out.problems.append((SET_FILE, (), n, msg))
        return
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        out.problems.append((SET_FILE, (), n, f"`--set {path}`: the value is not valid YAML"))
        return
    loc = _resolve_path(out.data, path.strip())
    if isinstance(loc, str):
        out.problems.append((SET_FILE, (), n, f"`--set {path}`: {loc}"))
        return
    parent = _get(out.data, loc[:-1])
    if isinstance(parent, dict | list):
        _forget(out, loc)
        parent[loc[-1]] = value  # type: ignore[index]
        _mark(out, loc, value, n)
        return
    where = format_loc(loc[:-1]) or "the top level"
    out.problems.append((SET_FILE, (), n, f"`--set {path}`: `{where}` is not a mapping"))


def _mark(out: Layered, loc: Loc, value: Any, n: int) -> None:
    out.lines[loc], out.files[loc] = n, SET_FILE
    if isinstance(value, dict):
        for key, sub in value.items():
            _mark(out, (*loc, key), sub, n)
    elif isinstance(value, list):
        for i, sub in enumerate(value):
            _mark(out, (*loc, i), sub, n)


def _resolve_path(data: Any, path: str) -> Loc | str:
    """Turn ``a.b[0].c`` into a location, creating missing mappings on the way.

    A mapping key may itself contain dots (a pipeline named ``a.b``): the longest run of
    parts that is an existing key wins. Returns a message when the path cannot be used.
    """
    parts: list[str | int] = []
    for match in _PART.finditer(path):
        index, key = match.groups()
        parts.append(int(index) if index is not None else key)
    if "".join(m.group(0) for m in _PART.finditer(path)) != path or not parts:
        return "expected dotted keys, with [i] for list items"
    loc: list[str | int] = []
    node, i = data, 0
    while i < len(parts):
        part = parts[i]
        if isinstance(node, list):
            index = part if isinstance(part, int) else int(part) if part.isdigit() else None
            if index is None:
                return f"`{format_loc(tuple(loc))}` is a list; expected an index"
            if not 0 <= index < len(node):
                return f"`{format_loc(tuple(loc))}` has {len(node)} items"
            loc.append(index)
            node = node[index]
            i += 1
            continue
        if not isinstance(node, dict):
            return f"`{format_loc(tuple(loc))}` is not a mapping"
        key, used = str(part), 1
        for j in range(len(parts), i + 1, -1):
            joined = ".".join(str(p) for p in parts[i:j])
            if joined in node:
                key, used = joined, j - i
                break
        if key not in node and i + used < len(parts):
            node[key] = {}
        loc.append(key)
        node = node.get(key)
        i += used
    return tuple(loc)
