"""pipeline.testing in-process: faults in every kind of stage, swapped ends, setup errors."""

from __future__ import annotations

import asyncio
import re
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from pipeline import sink, stream_transform
from pipeline.testing import Fault, Pipelines, captured_sink, make_stage, run_stage, source_from
from pipeline.testing.harness import CaseSetupError, run_pipeline_case, run_stages

pytestmark = pytest.mark.anyio

STAGES = """
import asyncio
from pipeline import sink, stream_transform

async def slow_double(chunk):
    await asyncio.sleep(0)
    return chunk * 2

def twice(chunk):
    yield chunk
    yield chunk

async def atwice(chunk):
    yield chunk
    yield chunk

@stream_transform
async def running_sum(chunks):
    total = 0
    async for chunk in chunks:
        total += chunk
        yield total

def numbers(count: int = 3):
    yield from range(1, count + 1)

@sink(receives="lines")
def lines(line):
    pass

written = []

def remember(env):
    written.append(env["status"])
"""

CONFIG = """
pipelines:
  p:
    source: {use: harness_stages:numbers}
    transforms:
      - use: harness_stages:slow_double
      - use: harness_stages:twice
      - use: harness_stages:atwice
      - use: harness_stages:running_sum
    sinks:
      - use: harness_stages:lines
      - use: harness_stages:remember
"""


@pytest.fixture
def pipes(tmp_path: Path, isolated_imports: None) -> Pipelines:
    (tmp_path / "harness_stages.py").write_text(textwrap.dedent(STAGES))
    (tmp_path / "pipelines.yaml").write_text(CONFIG)
    return Pipelines(tmp_path / "pipelines.yaml")


def test_every_kind_of_transform_runs_and_can_fail(pipes: Pipelines) -> None:
    """Async map, generator, async generator and stream stages each fail on their Nth chunk."""
    pipes.run("p", [1, 2]).assert_finished().assert_data([2, 4, 6, 8, 12, 16, 20, 24])
    for place, errors in (("transforms[0]", 1), ("transforms[1]", 1), ("transforms[2]", 1)):
        out = pipes.run("p", [1, 2], faults=[Fault(place, on_chunk=2)])
        out.assert_finished().assert_stats(chunk_errors=errors).assert_acked("all")
        assert out.errors[0]["stage"].startswith(place)
    out = pipes.run(
        "p", [1, 2], faults=[Fault("transforms[3]", on_chunk=3, error="ZeroDivisionError")]
    )
    out.assert_reason("error").assert_error(stage="transforms[3]", type="ZeroDivisionError")
    assert out.data == [2, 4]


def test_the_real_source_with_overrides_and_a_fault(pipes: Pipelines) -> None:
    """Without chunks the configured source runs; a sync generator source can fail too."""
    out = pipes.run("p", with_={"source": {"count": 1}})
    out.assert_finished().assert_data([2, 4, 6, 8])
    assert out.acked == [] and out.unacked == []
    out = pipes.run("p", faults=[Fault("source", on_chunk=2, message="gone")])
    out.assert_reason("error").assert_error(stage="source", message="^gone")


def test_sinks_are_captured_as_they_would_receive(pipes: Pipelines) -> None:
    """A lines sink is captured as lines and read back as envelopes; kept sinks run."""
    out = pipes.run("p", [1])
    captured = out.sinks["sinks[0]:lines"]
    assert captured.receives == "lines" and all(isinstance(i, bytes) for i in captured.items)
    assert captured.envelopes == out.envelopes and captured.data == out.data
    import harness_stages  # type: ignore[import-not-found]

    harness_stages.written.clear()
    out = pipes.run(
        "p", [1], keep_sinks=["sinks[1]:remember"], faults=[Fault("sinks[1]", on_chunk=3)]
    )
    out.assert_reason("error").assert_error(stage="sinks[1]:remember", type="InjectedFault")
    assert harness_stages.written == ["starting", "processing"]


def test_setup_errors_name_the_part_of_the_test(pipes: Pipelines) -> None:
    """Unknown stages, a second fault, a source override with chunks, bad parameters."""
    rp = pipes["p"]
    one = [1]
    cases: list[tuple[list[int] | None, dict[str, Any], tuple[Any, ...], str]] = [
        (one, {"with_": {"nope": {}}}, ("with", "nope"), "no stage `nope` in pipeline `p`"),
        (one, {"with_": {"source": {"count": 2}}}, ("with", "source"), "replaced by the test's"),
        (None, {"with_": {"source": []}}, ("with", "source"), "expected a mapping"),
        (one, {"with_": {"transforms[0]": {"x": 1}}}, ("with", "transforms[0]", "x"), "unknown"),
        (one, {"keep_sinks": ["transforms[0]"]}, ("keep_sinks", 0), "no sink `transforms"),
        (one, {"faults": [Fault("nope")]}, ("faults", 0, "stage"), "no stage `nope`"),
        (
            one,
            {"faults": [Fault("sinks[0]"), Fault("sinks[0]:lines")]},
            ("faults", 1, "stage"),
            "a second fault",
        ),
    ]
    for chunks, kwargs, key, message in cases:
        with pytest.raises(CaseSetupError, match=re.escape(message)) as info:
            asyncio.run(run_pipeline_case(rp, chunks, **kwargs))
        assert info.value.key == key
    with pytest.raises(KeyError, match=r"no pipeline `q` in .* \(known: `p`\)"):
        pipes.run("q", [])


async def test_run_inside_an_event_loop_asks_for_arun(pipes: Pipelines) -> None:
    """`run` refuses to nest event loops and says what to use instead."""
    with pytest.raises(RuntimeError, match=re.escape("use `await pipelines.arun(...)`")):
        pipes.run("p", [1])
    (await pipes.arun("p", [1])).assert_finished()


async def test_source_from_and_captured_sink_compose_with_run_stages() -> None:
    """The building blocks: a list as a source (acks recorded), an in-memory data sink."""
    src = source_from([1, 2, 3])
    out_sink = captured_sink(receives="data")

    @stream_transform
    async def evens(chunks: AsyncIterator[int]) -> AsyncIterator[int]:
        async for chunk in chunks:
            if chunk % 2 == 0:
                yield chunk

    result = await run_stages(
        "blocks",
        make_stage(src, "source", id="source"),
        [make_stage(evens, id="transforms[0]:evens")],
        [out_sink.stage("sinks[0]:data")],
    )
    result.assert_finished()
    assert out_sink.data == [2] and out_sink.envelopes == []
    assert result.acked == [0, 1, 2]


async def test_run_stage_with_a_sink_and_a_timeout() -> None:
    """run_stage drives a @sink; a source that never ends is cut by its timeout."""
    seen: list[Any] = []

    @sink(receives="data")
    def keep(data: Any) -> None:
        seen.append(data)

    (await run_stage(keep, [{"a": 1}])).assert_finished().assert_acked([0])
    assert seen == [{"a": 1}]

    async def forever() -> AsyncIterator[int]:
        while True:
            await asyncio.sleep(0.01)
            yield 1

    out = await run_stage(forever, timeout=0.2)
    assert out.timed_out
    with pytest.raises(AssertionError, match="did not finish within its timeout"):
        out.assert_finished()


def test_assertion_messages_show_the_envelopes(pipes: Pipelines) -> None:
    """Every assert_* failure names what differs and lists the run's envelopes."""
    out = pipes.run("p", [1])
    checks = [
        (lambda: out.assert_reason("error"), "ended with reason `finished`, not `error`"),
        (lambda: out.assert_contains(7), r"no processing data matches chunks\[0\] 7"),
        (lambda: out.assert_chunk_errors({"type": "X"}), "the chunk_errors differ"),
        (lambda: out.assert_error(type="X"), "the run's error differs"),
        (lambda: out.assert_stats(processed=9), "the stats differ"),
        (lambda: out.assert_acked("none"), r"acked: expected \[\], got \[0\]"),
    ]
    for check, message in checks:
        with pytest.raises(AssertionError, match=message) as info:
            check()
        assert '"status":"complete"' in str(info.value)
