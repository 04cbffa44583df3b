"""Check what a run emitted against a case's ``expect``; each miss is a `Miss` with a diff.

The keys of ``expect`` (all optional):

- ``data``: the ``data`` of every ``processing`` envelope, exactly, in order.
- ``contains``: chunks found among the ``data`` in this order (a mapping matches a
  chunk holding at least its keys, with the same values).
- ``where``: conditions ``{path, equals | regex | contains | exists, at}`` on every
  ``processing`` envelope (or the one at index ``at``); ``path`` starts at the
  envelope: ``data.items[0].id``.
- ``count``: how many ``processing`` envelopes.
- ``chunk_errors``: every ``chunk_error``, in order: ``{stage, type, message, chunk}``
  (``stage``: the id or the place; ``message``: a regular expression searched for).
- ``error``: the run's ``error`` envelope, the same way.
- ``stats``: a subset of the ``complete`` stats; ``reason`` (default ``finished``).
- ``statuses``: the status of every envelope, in order.
- ``acked``: the input chunks acknowledged (numbers from 1), ``all`` or ``none``.
- ``files``: what a kept sink wrote: ``{path, data | lines | contains | text}``.
- ``golden``: a file holding the whole envelope stream (without ``run``, ``timestamp``
  and ``duration_s``); ``pipeline test --update`` writes it.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from pipeline.testing.cases import Case, ChunkErrorSpec, Condition, FileSpec
from pipeline.testing.compare import (
    MISSING,
    compact,
    diff,
    equal,
    error_matches,
    error_view,
    matches,
    resolve_path,
)
from pipeline.testing.harness import RunResult

__all__ = ["Miss", "check", "golden_lines"]


@dataclass
class Miss:
    """One expectation that did not hold: where it is written, what, and a diff."""

    loc: tuple[str | int, ...]
    message: str
    diff: list[str] = field(default_factory=list)


def golden_lines(result: RunResult) -> list[str]:
    """The envelope stream as golden-file lines: without run id, timestamps and duration."""
    lines = []
    for env in result.envelopes:
        env = {k: v for k, v in env.items() if k not in ("run", "timestamp", "pipeline")}
        if "stats" in env:
            env["stats"] = {k: v for k, v in env["stats"].items() if k != "duration_s"}
        lines.append(compact(env))
    return lines


def check(case: Case, result: RunResult, *, update: bool = False, tmp: str = "") -> list[Miss]:
    """Every expectation of ``case`` that ``result`` does not meet (empty: the case passed).

    With ``update``, a ``golden`` file is (re)written from ``result`` instead of compared.
    """
    e = case.expect
    misses: list[Miss] = []
    if result.timed_out:
        return [Miss(("timeout",), f"the run did not finish within {case.timeout:g} s")]
    if e.reason != result.reason:
        shown = _error_text(result)
        misses.append(
            Miss(
                ("expect", "reason"), f"reason: expected `{e.reason}`, got `{result.reason}`{shown}"
            )
        )
    for key, checker in _CHECKS:
        if key in e.model_fields_set:
            misses += checker(case, result)
    if e.golden is not None:
        misses += _golden(case, result, update)
    misses += [m for n, f in enumerate(e.files) for m in _file(n, f, tmp, case.base_dir)]
    return misses


def _error_text(result: RunResult) -> str:
    err = result.error
    if err is None:
        return ""
    return f" ({err['stage']}: {err['error']['type']}: {err['error']['message']})"


def _data(case: Case, result: RunResult) -> list[Miss]:
    expected, got = case.expect.data or [], result.data
    if equal(expected, got):
        return []
    first = next(
        (i for i, (x, y) in enumerate(zip(expected, got, strict=False)) if not equal(x, y)),
        min(len(expected), len(got)),
    )
    loc: tuple[str | int, ...] = (
        ("expect", "data", first) if first < len(expected) else ("expect", "data")
    )
    message = (
        f"data: {len(expected)} chunks expected, {len(got)} came; first difference at [{first}]"
    )
    return [Miss(loc, message, diff(expected, got))]


def _contains(case: Case, result: RunResult) -> list[Miss]:
    got, start = result.data, 0
    for n, wanted in enumerate(case.expect.contains or []):
        hit = next((i for i in range(start, len(got)) if matches(wanted, got[i])), None)
        if hit is None:
            message = f"contains[{n}]: no processing data matches {compact(wanted)}"
            after = f" after [{start - 1}]" if start else ""
            return [Miss(("expect", "contains", n), message + after, diff([wanted], got))]
        start = hit + 1
    return []


def _where(case: Case, result: RunResult) -> list[Miss]:
    processing = [e for e in result.envelopes if e["status"] == "processing"]
    misses = []
    for n, cond in enumerate(case.expect.where):
        picked = list(enumerate(processing))
        if cond.at is not None:
            i = cond.at if cond.at >= 0 else len(processing) + cond.at
            picked = [(i, processing[i])] if 0 <= i < len(processing) else []
            if not picked:
                message = f"where[{n}]: no processing envelope [{cond.at}] ({len(processing)} came)"
                misses.append(Miss(("expect", "where", n, "at"), message))
                continue
        for i, env in picked:
            problem = _condition(cond, resolve_path(env, cond.path))
            if problem:
                message = f"where[{n}]: `{cond.path}` of processing envelope [{i}] {problem}"
                misses.append(Miss(("expect", "where", n), message, [f"  {compact(env)}"]))
                break
    return misses


def _condition(cond: Condition, value: Any) -> str | None:
    shown = "is missing" if value is MISSING else f"is {compact(value)}"
    given = cond.model_fields_set
    if "exists" in given:
        return None if (value is not MISSING) == cond.exists else shown
    if value is MISSING:
        return shown
    if "equals" in given:
        return None if equal(cond.equals, value) else f"{shown}, expected {compact(cond.equals)}"
    if "regex" in given:
        ok = isinstance(value, str) and re.search(cond.regex or "", value) is not None
        return None if ok else f"{shown}, expected a match of /{cond.regex}/"
    return (
        None
        if _has(value, cond.contains)
        else f"{shown}, expected it to contain {compact(cond.contains)}"
    )


def _has(value: Any, part: Any) -> bool:
    if isinstance(value, str):
        return isinstance(part, str) and part in value
    if isinstance(value, list):
        wanted = part if isinstance(part, list) else [part]
        return all(any(matches(w, v) for v in value) for w in wanted)
    return matches(part, value)


def _count(case: Case, result: RunResult) -> list[Miss]:
    got = len(result.data)
    if got == case.expect.count:
        return []
    message = f"count: {case.expect.count} processing envelopes expected, {got} came"
    return [Miss(("expect", "count"), message)]


def _spec_view(spec: ChunkErrorSpec) -> dict[str, Any]:
    return {
        k: getattr(spec, k)
        for k in ("stage", "type", "message", "chunk")
        if k in spec.model_fields_set
    }


def _chunk_errors(case: Case, result: RunResult) -> list[Miss]:
    specs, got = case.expect.chunk_errors or [], result.errors
    for n, (spec, env) in enumerate(zip(specs, got, strict=False)):
        if not error_matches(_spec_view(spec), env):
            message = f"chunk_errors[{n}] does not match the chunk_error that came"
            views = [_spec_view(s) for s in specs]
            return [
                Miss(
                    ("expect", "chunk_errors", n),
                    message,
                    diff(views, [error_view(g) for g in got]),
                )
            ]
    if len(specs) != len(got):
        message = f"chunk_errors: {len(specs)} expected, {len(got)} came"
        views = [_spec_view(s) for s in specs]
        return [
            Miss(("expect", "chunk_errors"), message, diff(views, [error_view(g) for g in got]))
        ]
    return []


def _error(case: Case, result: RunResult) -> list[Miss]:
    spec, env = case.expect.error, result.error
    if spec is None or (env is not None and error_matches(_spec_view(spec), env)):
        return []
    got = [error_view(env)] if env is not None else []
    return [
        Miss(
            ("expect", "error"),
            "error: the run's error envelope differs",
            diff([_spec_view(spec)], got),
        )
    ]


def _stats(case: Case, result: RunResult) -> list[Miss]:
    wanted, got = case.expect.stats or {}, result.stats
    wrong = [k for k, v in wanted.items() if k not in got or not equal(v, got[k])]
    if not wrong:
        return []
    shown = {k: got.get(k) for k in wanted}
    message = "stats: " + ", ".join(
        f"`{k}` expected {compact(wanted[k])}, got {compact(got.get(k))}" for k in wrong
    )
    return [Miss(("expect", "stats", wrong[0]), message, diff([wanted], [shown]))]


def _statuses(case: Case, result: RunResult) -> list[Miss]:
    expected, got = case.expect.statuses or [], result.statuses
    if expected == got:
        return []
    return [
        Miss(("expect", "statuses"), "statuses: the envelope statuses differ", diff(expected, got))
    ]


def _acked(case: Case, result: RunResult) -> list[Miss]:
    wanted = case.expect.acked
    total = len(result.inputs or ())
    numbers = list(range(1, total + 1)) if wanted == "all" else [] if wanted == "none" else wanted
    got = [i + 1 for i in result.acked]
    if numbers == got:
        return []
    message = (
        f"acked: expected chunks {compact(numbers)} acknowledged, got {compact(got)} (of {total})"
    )
    return [Miss(("expect", "acked"), message)]


def _golden(case: Case, result: RunResult, update: bool) -> list[Miss]:
    path = case.base_dir / (case.expect.golden or "")
    got = golden_lines(result)
    if update:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(line + "\n" for line in got))
        return []
    try:
        expected = path.read_text().splitlines()
    except OSError:
        message = f"golden: cannot read `{case.expect.golden}`; `pipeline test --update` writes it"
        return [Miss(("expect", "golden"), message)]
    if expected == got:
        return []
    lines = list(difflib.unified_diff(expected, got, "expected", "got", lineterm=""))
    message = f"golden: the envelopes differ from `{case.expect.golden}` (`--update` rewrites it)"
    return [Miss(("expect", "golden"), message, lines)]


def _file(n: int, spec: FileSpec, tmp: str, base_dir: Path) -> list[Miss]:
    loc = ("expect", "files", n)
    path = Path(spec.path.replace("{tmp}", tmp))
    try:
        text = (path if path.is_absolute() else Path.cwd() / path).read_text()
    except OSError as exc:
        return [Miss(loc, f"files[{n}]: cannot read `{spec.path}`: {exc.strerror}")]
    lines = text.splitlines()
    misses = []
    if spec.lines is not None and len(lines) != spec.lines:
        misses.append(
            Miss((*loc, "lines"), f"files[{n}]: {spec.lines} lines expected, {len(lines)} found")
        )
    if spec.contains is not None and spec.contains not in text:
        message = f"files[{n}]: `{spec.path}` does not contain {compact(spec.contains)}"
        misses.append(Miss((*loc, "contains"), message))
    if spec.text is not None and text != spec.text:
        diff_lines = list(
            difflib.unified_diff(spec.text.splitlines(), lines, "expected", "got", lineterm="")
        )
        misses.append(
            Miss((*loc, "text"), f"files[{n}]: the text of `{spec.path}` differs", diff_lines)
        )
    if spec.data is not None:
        try:
            envs = [orjson.loads(line) for line in lines if line.strip()]
        except orjson.JSONDecodeError:
            return [*misses, Miss((*loc, "data"), f"files[{n}]: `{spec.path}` is not NDJSON")]
        got = [
            e.get("data") for e in envs if isinstance(e, dict) and e.get("status") == "processing"
        ]
        if not equal(spec.data, got):
            misses.append(
                Miss(
                    (*loc, "data"),
                    f"files[{n}]: the data in `{spec.path}` differs",
                    diff(spec.data, got),
                )
            )
    return misses


_CHECKS: list[tuple[str, Callable[[Case, RunResult], list[Miss]]]] = [
    ("data", _data),
    ("contains", _contains),
    ("where", _where),
    ("count", _count),
    ("chunk_errors", _chunk_errors),
    ("error", _error),
    ("stats", _stats),
    ("statuses", _statuses),
    ("acked", _acked),
]
