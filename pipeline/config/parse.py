"""Safe YAML reading that remembers the line of every value and rejects duplicate keys.

The file is composed to nodes with a `yaml.SafeLoader` subclass, then turned into plain
Python values by hand, so that every value's location (a tuple such as
``("pipelines", "sensors", "transforms", 1, "with", "unit")``) maps to its 1-based line.
Problems are collected, not raised: the caller reports them all at once.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

__all__ = ["Loc", "Parsed", "format_loc", "parse", "read"]

MAX_CONFIG_BYTES = 1 << 20
"""A config file larger than this (1 MiB) is refused before it is read."""

Loc = tuple[str | int, ...]
"""Where a value sits in the document: mapping keys and 0-based sequence indexes."""

_STD = "tag:yaml.org,2002:"
_SCALAR_TAGS = frozenset(
    _STD + t for t in ("str", "int", "float", "bool", "null", "timestamp", "binary")
)
_MERGE_TAG = _STD + "merge"
_MAX_NODES = 200_000  # values after expanding aliases: stops "billion laughs" documents


class _Loader(yaml.SafeLoader):
    """The safe loader; it only composes and builds scalars, never arbitrary objects."""


class _TooLarge(Exception):
    pass


@dataclass
class Parsed:
    """A parsed document: its data, the line of every value, and the problems found.

    ``data`` is ``None`` when the document could not be read at all. A location in
    ``poisoned`` holds a value that was replaced because of a problem already reported.
    """

    data: Any
    lines: dict[Loc, int] = field(default_factory=dict)
    problems: list[tuple[Loc, int, str]] = field(default_factory=list)
    poisoned: set[Loc] = field(default_factory=set)


def format_loc(loc: Loc) -> str:
    """Format a location as ``pipelines.sensors.transforms[1].with.unit``.

    Example:
        >>> format_loc(("pipelines", "a", "transforms", 1, "with"))
        'pipelines.a.transforms[1].with'
    """
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def read(file: str) -> Parsed:
    """Read and parse the YAML file ``file``; unreadable files become a problem.

    Returns:
        The parsed document, with ``data`` ``None`` when nothing usable was read.
    """
    try:
        info = os.stat(file)
        if not (stat.S_ISREG(info.st_mode) or stat.S_ISDIR(info.st_mode)):
            # a FIFO would hang, /dev/zero never end (a folder fails below, as before)
            return _fatal(0, "cannot read config file: not a regular file")
        if info.st_size > MAX_CONFIG_BYTES:
            return _fatal(0, f"cannot read config file: larger than {MAX_CONFIG_BYTES} bytes")
        with open(file, "rb") as fh:
            raw = fh.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        return _fatal(0, f"cannot read config file: {exc.strerror or type(exc).__name__}")
    if len(raw) > MAX_CONFIG_BYTES:
        return _fatal(0, f"cannot read config file: larger than {MAX_CONFIG_BYTES} bytes")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        return _fatal(line, "cannot read config file: not valid UTF-8")
    return parse(text)


def parse(text: str) -> Parsed:
    """Parse YAML ``text`` into plain values with their lines; never raises for bad input."""
    try:
        loader = _Loader(text)  # its reader refuses non-printable characters (a NUL) at once
        node = loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        return _syntax_problem(exc)
    except yaml.reader.ReaderError as exc:
        line = text[: exc.position].count("\n") + 1
        return _fatal(line, "invalid YAML: the file contains a non-printable character")
    except yaml.YAMLError as exc:
        return _fatal(0, f"invalid YAML: {type(exc).__name__}")
    except RecursionError:
        return _fatal(0, "invalid YAML: values are nested too deeply")
    if node is None:
        return _fatal(0, "config file is empty; expected a mapping with `pipelines`")
    builder = _Builder(loader)
    try:
        data = builder.value(node, ())
    except (_TooLarge, RecursionError):
        return _fatal(0, "invalid YAML: the document is too large after expanding aliases")
    finally:
        loader.dispose()
    parsed = Parsed(data, builder.lines, builder.problems, builder.poisoned)
    if not isinstance(data, dict):
        found = _kind(node)
        msg = f"the top level must be a mapping with `pipelines`, found {found}"
        parsed.problems.append(((), node.start_mark.line + 1, msg))
        parsed.data = None
    return parsed


def _fatal(line: int, message: str) -> Parsed:
    return Parsed(None, problems=[((), line, message)])


def _syntax_problem(exc: yaml.MarkedYAMLError) -> Parsed:
    mark = exc.problem_mark or exc.context_mark
    line = mark.line + 1 if mark else 0
    problem = exc.problem or exc.context or "syntax error"
    if "'\\t'" in problem:
        return _fatal(line, "invalid YAML: tab character in indentation; indent with spaces")
    column = f" (column {mark.column + 1})" if mark else ""
    return _fatal(line, f"invalid YAML: {problem}{column}")


def _kind(node: Node) -> str:
    if isinstance(node, SequenceNode):
        return "a list"
    if isinstance(node, MappingNode):
        return "a mapping"
    return "a single value"


def _show_tag(tag: str) -> str:
    return "!!" + tag[len(_STD) :] if tag.startswith(_STD) else tag


class _Builder:
    """Turns nodes into values, recording lines and collecting problems."""

    def __init__(self, loader: _Loader) -> None:
        self.loader = loader
        self.lines: dict[Loc, int] = {(): 1}
        self.problems: list[tuple[Loc, int, str]] = []
        self.poisoned: set[Loc] = set()
        self.count = 0
        self.active: set[int] = set()

    def problem(self, loc: Loc, node: Node, message: str) -> None:
        self.problems.append((loc, node.start_mark.line + 1, message))
        self.poisoned.add(loc)

    def value(self, node: Node, loc: Loc) -> Any:
        self.count += 1
        if self.count > _MAX_NODES:
            raise _TooLarge
        if id(node) in self.active:
            self.problem(loc, node, "recursive YAML alias")
            return None
        if isinstance(node, ScalarNode):
            return self.scalar(node, loc)
        if not self.check_tag(node, loc):
            return None
        self.active.add(id(node))
        try:
            if isinstance(node, SequenceNode):
                return self.sequence(node, loc)
            return self.mapping(node, loc)  # type: ignore[arg-type]
        finally:
            self.active.discard(id(node))

    def check_tag(self, node: Node, loc: Loc) -> bool:
        expected = _STD + ("seq" if isinstance(node, SequenceNode) else "map")
        if node.tag == expected:
            return True
        msg = f"unsupported YAML tag `{_show_tag(node.tag)}`; only plain values are allowed"
        self.problem(loc, node, msg)
        return False

    def scalar(self, node: ScalarNode, loc: Loc) -> Any:
        if node.tag not in _SCALAR_TAGS:
            msg = f"unsupported YAML tag `{_show_tag(node.tag)}`; only plain values are allowed"
            self.problem(loc, node, msg)
            return None
        try:
            return self.loader.construct_object(node, deep=True)
        except (yaml.YAMLError, ValueError):
            self.problem(loc, node, f"invalid `{_show_tag(node.tag)}` value")
            return None

    def sequence(self, node: SequenceNode, loc: Loc) -> list[Any]:
        items = []
        for i, item in enumerate(node.value):
            self.lines[(*loc, i)] = item.start_mark.line + 1
            items.append(self.value(item, (*loc, i)))
        return items

    def mapping(self, node: MappingNode, loc: Loc) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for merged in [v for k, v in node.value if k.tag == _MERGE_TAG]:
            result.update(self.merge(merged, loc))
        first: dict[str, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                continue
            key = self.key(key_node, loc)
            if key is None:
                continue
            line = key_node.start_mark.line + 1
            if key in first:
                msg = f"duplicate key (first defined on line {first[key]})"
                self.problems.append(((*loc, key), line, msg))
                continue
            first[key] = line
            self.lines[(*loc, key)] = line
            result[key] = self.value(value_node, (*loc, key))
        return result

    def merge(self, node: Node, loc: Loc) -> dict[str, Any]:
        nodes = node.value if isinstance(node, SequenceNode) else [node]
        merged: dict[str, Any] = {}
        for sub in reversed(nodes):  # earlier mappings in a merge list take precedence
            if not isinstance(sub, MappingNode):
                self.problem(loc, sub, "a merge key `<<` needs a mapping or a list of mappings")
                continue
            merged.update(self.value(sub, loc) or {})
        return merged

    def key(self, node: Node, loc: Loc) -> str | None:
        if isinstance(node, ScalarNode) and node.tag in _SCALAR_TAGS:
            return str(node.value)
        self.problem(loc, node, "mapping keys must be plain strings")
        return None
