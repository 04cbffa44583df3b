"""``pipeline test``: load test files, run their cases, print one line per case, report.

Every file is checked before any case runs (a bad file is exit 2, like ``validate``).
Each case runs the real engine in this process (`pipeline.testing.harness`). A passing
case prints ``PASS FILE: name``; a failing one ``FAIL FILE:LINE: name: what`` with the
line of the expectation that failed, followed by a diff (``-`` expected, ``+`` got).
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from xml.etree import ElementTree as ET

from pipeline.config.loader import ResolvedPipeline
from pipeline.errors import ConfigError, Problem
from pipeline.testing.cases import Case, load_cases
from pipeline.testing.expect import Miss, check
from pipeline.testing.harness import run_pipeline_case

__all__ = ["Outcome", "load_all", "run_cases", "write_junit"]


@dataclass
class Outcome:
    """The result of one case: its misses (none: passed), the time it took."""

    case: Case
    misses: list[Miss] = field(default_factory=list)
    seconds: float = 0.0
    updated: bool = False

    @property
    def passed(self) -> bool:
        """Whether every expectation held."""
        return not self.misses

    def lines(self) -> list[str]:
        """The report of this case: one line, then one block per miss."""
        c = self.case
        if self.passed:
            note = " (golden file written)" if self.updated else ""
            return [f"PASS {c.file}: {c.name}{note}"]
        out = []
        for n, miss in enumerate(self.misses):
            head = "FAIL" if n == 0 else "    "
            out.append(f"{head} {c.file}:{c.line(*miss.loc)}: {c.name}: {miss.message}")
            out += [f"       {line}" for line in miss.diff]
        return out


def load_all(files: Iterable[str], pipelines: dict[str, ResolvedPipeline]) -> list[Case]:
    """Load and check every test file; every problem of every file at once.

    Raises:
        ConfigError: with the problems of every bad file.
    """
    cases: list[Case] = []
    problems: list[Problem] = []
    for file in files:
        try:
            cases += load_cases(file, pipelines)
        except ConfigError as exc:
            problems += exc.problems
    if problems:
        raise ConfigError(problems)
    return cases


def run_cases(
    cases: list[Case], *, update: bool = False, echo: Callable[[str], Any] = print
) -> list[Outcome]:
    """Run ``cases`` one after the other in one event loop, echoing each report."""

    async def go() -> list[Outcome]:
        outcomes = []
        for case in cases:
            outcome = await _run_one(case, update)
            for line in outcome.lines():
                echo(line)
            outcomes.append(outcome)
        return outcomes

    return asyncio.run(go())


async def _run_one(case: Case, update: bool) -> Outcome:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="pipeline-test-") as tmp:
        with_ = {k: _fill(v, tmp) for k, v in case.with_.items()}
        result = await run_pipeline_case(
            case.pipeline,
            case.input,
            with_=with_,
            keep_sinks=case.keep_sinks,
            faults=case.faults,
            timeout=case.timeout,
        )
        misses = check(case, result, update=update, tmp=tmp)
    seconds = time.monotonic() - started
    updated = update and case.expect.golden is not None and not misses
    return Outcome(case, misses, seconds, updated)


def _fill(value: Any, tmp: str) -> Any:
    """Replace ``{tmp}`` in every string of ``value`` by the case's temporary folder."""
    if isinstance(value, str):
        return value.replace("{tmp}", tmp)
    if isinstance(value, dict):
        return {k: _fill(v, tmp) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, tmp) for v in value]
    return value


def write_junit(path: str, outcomes: list[Outcome]) -> None:
    """Write a JUnit XML report: one ``testsuite`` per test file, one ``testcase`` per case."""
    root = ET.Element("testsuites", name="pipeline test")
    by_file: dict[str, list[Outcome]] = {}
    for o in outcomes:
        by_file.setdefault(o.case.file, []).append(o)
    for file, group in by_file.items():
        failed = sum(not o.passed for o in group)
        suite = ET.SubElement(
            root,
            "testsuite",
            name=file,
            tests=str(len(group)),
            failures=str(failed),
            errors="0",
            time=f"{sum(o.seconds for o in group):.3f}",
        )
        for o in group:
            case = ET.SubElement(
                suite, "testcase", classname=file, name=o.case.name, time=f"{o.seconds:.3f}"
            )
            case.set("file", file)
            case.set("line", str(o.case.line()))
            if not o.passed:
                failure = ET.SubElement(case, "failure", message=o.misses[0].message)
                failure.text = "\n".join(o.lines())
    root.set("tests", str(len(outcomes)))
    root.set("failures", str(sum(not o.passed for o in outcomes)))
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)
