"""Property: any sequence of chunk outcomes gives a well-formed envelope stream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from hypothesis import HealthCheck, given, settings, strategies as st

from pipeline.testing import make_stage, run_pipeline

OUTCOMES = st.one_of(
    st.just(("ok", 0)),
    st.just(("drop", 0)),
    st.just(("raise", 0)),
    st.just(("unencodable", 0)),
    st.just(("slow", 0)),
    st.tuples(st.just("flat"), st.integers(0, 3)),
)


def model(plan: list[tuple[str, int]]) -> list[str]:
    """The statuses a plan must produce, in order."""
    out = ["starting"]
    for kind, k in plan:
        if kind in ("ok", "slow"):
            out.append("processing")
        elif kind in ("raise", "unencodable"):
            out.append("chunk_error")
        elif kind == "flat":
            out.extend(["processing"] * k)
    return [*out, "complete"]


async def act(chunk: dict[str, Any]) -> Any:
    kind = chunk["kind"]
    if kind == "drop":
        return None
    if kind == "raise":
        raise ValueError(f"chunk {chunk['i']}")
    if kind == "unencodable":
        return {"bad": object()}
    if kind == "slow":
        await asyncio.sleep(0.0005)
    return chunk


async def fan(chunk: dict[str, Any]) -> AsyncIterator[Any]:
    if chunk["kind"] != "flat":
        yield chunk
        return
    for j in range(chunk["k"]):
        yield {**chunk, "j": j}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plan=st.lists(OUTCOMES, max_size=25), concurrency=st.sampled_from([1, 3]))
def test_envelope_stream_matches_model(plan: list[tuple[str, int]], concurrency: int) -> None:
    """seq is 1..N without gaps, stats match, one complete last, order as the model says."""

    async def source() -> AsyncIterator[dict[str, Any]]:
        for i, (kind, k) in enumerate(plan):
            yield {"i": i, "kind": kind, "k": k}

    stage = make_stage(act, id="act", concurrency=concurrency, ordered=True)
    envs = asyncio.run(run_pipeline(source, [stage, fan]))
    statuses = [e["status"] for e in envs]
    assert statuses == model(plan)
    assert [e["seq"] for e in envs] == list(range(1, len(envs) + 1))
    assert len({e["run"] for e in envs}) == 1
    stats = envs[-1]["stats"]
    assert stats["processed"] == statuses.count("processing")
    assert stats["chunk_errors"] == statuses.count("chunk_error")
    assert stats["errors"] == 0
    assert envs[-1]["reason"] == "finished"
    data_order = [(e["data"]["i"], e["data"].get("j", 0)) for e in envs if "data" in e]
    assert data_order == sorted(data_order)
