"""Test files of `pipeline test`: ``*.test.yaml`` -> checked `Case`\\s, every problem at once.

A test file holds ``tests:``, a list of cases. Each names a pipeline of the config, its
input (a list of chunks, or an NDJSON file beside the test file; without ``input`` the
pipeline's own source runs), ``with:`` overrides per stage, ``faults``, ``keep_sinks``
and ``expect`` (see `pipeline.testing.expect`). Everything is checked before any case
runs: the schema, the pipeline and stage names, the parameters, the input files and the
patterns. Each problem is a ``Problem`` printed as ``FILE:LINE: tests[0].expect: message``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import orjson
import pydantic
from pydantic import BaseModel, ConfigDict, Field

from pipeline.config.loader import ResolvedPipeline
from pipeline.config.models import describe_error
from pipeline.config.parse import Loc, format_loc, read
from pipeline.errors import ConfigError, Problem
from pipeline.testing.harness import CaseSetupError, Fault, prepare_case

__all__ = ["Case", "ChunkErrorSpec", "Condition", "Expect", "FileSpec", "load_cases"]

_IDENT = r"^[A-Za-z_][A-Za-z0-9_]*$"
_ENVELOPE = ("status", "pipeline", "run", "seq", "timestamp")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class FaultSpec(_Model):
    """``faults[]``: make a stage fail on purpose on its Nth chunk(s)."""

    stage: str
    on_chunk: int | list[int]
    error: str = Field(default="InjectedFault", pattern=_IDENT)
    message: str = "injected fault"

    def fault(self) -> Fault:
        """As a harness `Fault`."""
        on = self.on_chunk if isinstance(self.on_chunk, list) else [self.on_chunk]
        return Fault(self.stage, tuple(on), self.error, self.message)


class ChunkErrorSpec(_Model):
    """An expected ``chunk_error`` (or ``error``): stage, type, message pattern, chunk."""

    stage: str | None = None
    type: str | None = None
    message: str | None = None
    chunk: Any = None


class Condition(_Model):
    """``expect.where[]``: a path into ``processing`` envelopes and what it must hold."""

    path: str
    at: int | None = None
    equals: Any = None
    regex: str | None = None
    contains: Any = None
    exists: bool | None = None


class FileSpec(_Model):
    """``expect.files[]``: what a kept sink wrote to a file."""

    path: str
    data: list[Any] | None = None
    lines: int | None = Field(default=None, ge=0)
    contains: str | None = None
    text: str | None = None


class Expect(_Model):
    """``expect``: what must come out of the run; every key is optional."""

    data: list[Any] | None = None
    contains: list[Any] | None = None
    where: list[Condition] = Field(default_factory=list)
    count: int | None = Field(default=None, ge=0)
    chunk_errors: list[ChunkErrorSpec] | None = None
    error: ChunkErrorSpec | None = None
    stats: dict[str, Any] | None = None
    reason: Literal["finished", "error", "shutdown", "cancelled", "reload"] = "finished"
    statuses: list[str] | None = None
    acked: list[int] | Literal["all", "none"] | None = None
    files: list[FileSpec] = Field(default_factory=list)
    golden: str | None = None


class _CaseModel(_Model):
    name: str
    pipeline: str
    input: list[Any] | str | None = None
    with_: dict[str, dict[str, Any]] = Field(default_factory=dict, alias="with")
    keep_sinks: bool | list[str] = False
    faults: list[FaultSpec] = Field(default_factory=list)
    timeout: float = Field(default=30.0, gt=0)
    expect: Expect = Field(default_factory=Expect)


@dataclass
class Case:
    """One checked test case, ready to run."""

    file: str
    index: int
    name: str
    pipeline: ResolvedPipeline
    input: list[Any] | None
    with_: dict[str, dict[str, Any]]
    keep_sinks: bool | list[str]
    faults: list[Fault]
    timeout: float
    expect: Expect
    base_dir: Path
    lines: dict[Loc, int] = field(repr=False, default_factory=dict)

    def line(self, *loc: str | int) -> int:
        """The line of ``loc`` inside this case (or of its nearest ancestor)."""
        full: Loc = ("tests", self.index, *loc)
        while full not in self.lines and full:
            full = full[:-1]
        return self.lines.get(full, 1)

    @property
    def where(self) -> str:
        """``FILE:LINE`` of the case."""
        return f"{self.file}:{self.line()}"


def load_cases(file: str, pipelines: dict[str, ResolvedPipeline]) -> list[Case]:
    """Read the test file ``file`` and check every case against ``pipelines``.

    Raises:
        ConfigError: with every problem of the file, in line order.
    """
    parsed = read(file)
    problems = [Problem(file, line, format_loc(loc), msg) for loc, line, msg in parsed.problems]
    if parsed.data is None:
        raise ConfigError(problems)
    checker = _Checker(file, parsed.lines, pipelines)
    checker.problems += problems
    cases = checker.cases(parsed.data)
    if checker.problems:
        raise ConfigError(sorted(checker.problems, key=lambda p: p.line))
    return cases


class _Checker:
    def __init__(self, file: str, lines: dict[Loc, int], pipelines: dict[str, Any]) -> None:
        self.file = file
        self.lines = lines
        self.pipelines = pipelines
        self.base_dir = Path(file).resolve().parent
        self.problems: list[Problem] = []

    def add(self, loc: Loc, message: str) -> None:
        full = loc
        while full not in self.lines and full:
            full = full[:-1]
        self.problems.append(Problem(self.file, self.lines.get(full, 1), format_loc(loc), message))

    def cases(self, data: dict[str, Any]) -> list[Case]:
        for key in data:
            if key != "tests":
                self.add((key,), "unknown key; expected `tests`")
        tests = data.get("tests")
        if not isinstance(tests, list) or not tests:
            self.add(("tests",), "expected a non-empty list of test cases under `tests`")
            return []
        cases = [self.case(i, raw) for i, raw in enumerate(tests)]
        names: dict[str, int] = {}
        for case in cases:
            if case is None:
                continue
            if case.name in names:
                first = names[case.name]
                self.add(
                    ("tests", case.index, "name"), f"duplicate case name (first: tests[{first}])"
                )
            names.setdefault(case.name, case.index)
        return [c for c in cases if c is not None]

    def case(self, i: int, raw: Any) -> Case | None:
        loc: Loc = ("tests", i)
        try:
            model = _CaseModel.model_validate(raw)
        except pydantic.ValidationError as exc:
            for err in exc.errors(include_input=False, include_url=False):
                where, message = describe_error(_CaseModel, err)
                self.add((*loc, *where), message)
            return None
        rp = self.pipelines.get(model.pipeline)
        if rp is None:
            known = ", ".join(f"`{n}`" for n in self.pipelines)
            self.add((*loc, "pipeline"), f"unknown pipeline `{model.pipeline}` (known: {known})")
            return None
        before = len(self.problems)
        chunks = self.input(loc, model.input)
        faults = [f.fault() for f in model.faults]
        self.check_faults(loc, model.faults)
        self.check_expect((*loc, "expect"), model.expect)
        if model.input is None and "acked" in model.expect.model_fields_set:
            self.add((*loc, "expect", "acked"), "only a case with `input` can expect acks")
        try:
            prepare_case(
                rp,
                chunks if model.input is not None else None,
                with_=model.with_,
                keep_sinks=model.keep_sinks,
                faults=faults,
            )
        except CaseSetupError as exc:
            self.add((*loc, *exc.key), str(exc))
        if len(self.problems) > before:
            return None
        return Case(
            file=self.file,
            index=i,
            name=model.name,
            pipeline=rp,
            input=chunks if model.input is not None else None,
            with_=model.with_,
            keep_sinks=model.keep_sinks,
            faults=faults,
            timeout=model.timeout,
            expect=model.expect,
            base_dir=self.base_dir,
            lines=self.lines,
        )

    def input(self, loc: Loc, value: list[Any] | str | None) -> list[Any]:
        if not isinstance(value, str):
            return list(value or [])
        path = self.base_dir / value
        try:
            text = path.read_bytes()
        except OSError as exc:
            self.add((*loc, "input"), f"cannot read input file `{value}`: {exc.strerror}")
            return []
        chunks = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                chunks.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                self.add((*loc, "input"), f"`{value}` line {n}: not valid JSON")
                return []
        return chunks

    def check_faults(self, loc: Loc, faults: list[FaultSpec]) -> None:
        for n, f in enumerate(faults):
            on = f.on_chunk if isinstance(f.on_chunk, list) else [f.on_chunk]
            if not on or any(c < 1 for c in on):
                self.add((*loc, "faults", n, "on_chunk"), "expected chunk numbers >= 1")

    def check_expect(self, loc: Loc, expect: Expect) -> None:
        for n, cond in enumerate(expect.where):
            given = [
                k for k in ("equals", "regex", "contains", "exists") if k in cond.model_fields_set
            ]
            if len(given) != 1:
                msg = "expected exactly one of `equals`, `regex`, `contains`, `exists`"
                self.add((*loc, "where", n), msg)
            self.pattern((*loc, "where", n, "regex"), cond.regex)
        for n, ce in enumerate(expect.chunk_errors or []):
            self.pattern((*loc, "chunk_errors", n, "message"), ce.message)
        if expect.error is not None:
            self.pattern((*loc, "error", "message"), expect.error.message)
        if isinstance(expect.acked, list) and any(c < 1 for c in expect.acked):
            self.add((*loc, "acked"), "expected chunk numbers >= 1 (1 = the first input chunk)")
        for n, f in enumerate(expect.files):
            if not {"data", "lines", "contains", "text"} & f.model_fields_set:
                msg = "expected at least one of `data`, `lines`, `contains`, `text`"
                self.add((*loc, "files", n), msg)

    def pattern(self, loc: Loc, value: str | None) -> None:
        if value is None:
            return
        try:
            re.compile(value)
        except re.error as exc:
            self.add(loc, f"invalid regular expression: {exc}")
