"""The sensors example tested with the pytest plugin: ``pytest examples/sensors``.

The ``pipelines`` fixture comes with the package; this module points it at the example's
own config. The source is replaced by the chunks given, sinks are in-memory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pipeline.testing import Fault, Pipelines

FAST = {"transforms[2]": {"latency": 0}}  # the simulated registry lookup, without its wait


@pytest.fixture
def pipelines_config() -> Path:
    """This example's config, instead of the project's root pipelines.yaml."""
    return Path(__file__).with_name("pipelines.yaml")


@pytest.fixture
def anyio_backend() -> str:
    """Async tests run on asyncio (anyio's pytest plugin drives them)."""
    return "asyncio"


def reading(seq: int, celsius: Any, sensor: str = "s-1") -> dict[str, Any]:
    """One reading as the probes send it."""
    return {
        "sensor": sensor,
        "seq": seq,
        "ts": f"2026-01-01T00:00:{seq:02d}.000Z",
        "celsius": celsius,
    }


def test_readings_are_converted_located_and_averaged(pipelines: Pipelines) -> None:
    """Each reading comes out in fahrenheit, with its site and a rolling mean."""
    result = pipelines.run("sensors", [reading(1, 20), reading(2, 22)], with_=FAST)
    result.assert_finished().assert_acked("all")
    result.assert_data(
        [
            {
                **reading(1, 20.0),
                "temperature": 68.0,
                "unit": "fahrenheit",
                "site": "greenhouse",
                "zone": "north",
                "anomalies": [],
                "mean": 68.0,
            },
            {
                **reading(2, 22.0),
                "temperature": 71.6,
                "unit": "fahrenheit",
                "site": "greenhouse",
                "zone": "north",
                "anomalies": [],
                "mean": 69.8,
            },
        ]
    )
    assert result.sinks["sinks[0]:file"].data == result.data


def test_a_malformed_reading_goes_to_the_dead_letter_sink(pipelines: Pipelines) -> None:
    """A reading without a number is a chunk_error; the dead-letter sink gets it; all acked."""
    result = pipelines.run("sensors", [reading(1, 20), reading(2, "ERR", "s-2")], with_=FAST)
    result.assert_finished().assert_acked("all").assert_stats(processed=1, chunk_errors=1)
    result.assert_chunk_errors(
        {"stage": "transforms[0]:validate", "type": "ValueError", "chunk": {"sensor": "s-2"}}
    )
    dead = result.sinks["dead_letter:file"].envelopes
    assert [e["status"] for e in dead] == ["chunk_error"]
    assert dead[0]["error"]["message"] == '`celsius` must be a number, got "ERR" from sensor `s-2`'


def test_a_jump_is_flagged_and_kept_out_of_the_mean(pipelines: Pipelines) -> None:
    """A reading far from the probe's previous one is an anomaly; the mean ignores it."""
    result = pipelines.run(
        "sensors",
        [reading(1, 20), reading(2, 40)],
        with_={**FAST, "transforms[1]": {"unit": "celsius"}},
    )
    result.assert_contains(
        {"seq": 1, "anomalies": []}, {"seq": 2, "anomalies": ["jump"], "mean": 20.0}
    )


def test_a_full_disk_ends_the_run_and_leaves_chunks_unacknowledged(pipelines: Pipelines) -> None:
    """The file sink failing on its third envelope: error, and only chunk 1 acknowledged."""
    result = pipelines.run(
        "sensors",
        [reading(1, 20), reading(2, 21), reading(3, 22)],
        with_=FAST,
        faults=[Fault("sinks[0]", on_chunk=3, error="OSError", message="disk full")],
    )
    result.assert_reason("error").assert_error(stage="sinks[0]:file", type="OSError")
    assert result.acked == [0]
    assert result.unacked == [1, 2]


def test_the_file_sink_writes_every_envelope(pipelines: Pipelines, tmp_path: Path) -> None:
    """Kept, the real file sink writes each envelope as one NDJSON line."""
    out = tmp_path / "sensors.ndjson"
    result = pipelines.run(
        "sensors",
        [reading(1, 5, "s-4")],
        with_={**FAST, "sinks[0]": {"path": str(out)}},
        keep_sinks=["sinks[0]"],
    )
    result.assert_finished()
    assert len(out.read_text().splitlines()) == len(result.envelopes) == 3
    assert '"site":"server-room"' in out.read_text()


@pytest.mark.anyio
async def test_the_real_source_small_and_fast(pipelines: Pipelines) -> None:
    """The simulated probes themselves, in an async test: every third reading is malformed."""
    result = await pipelines.arun(
        "sensors",
        with_={**FAST, "source": {"sensors": 2, "count": 6, "interval": 0, "malformed_every": 3}},
    )
    result.assert_finished().assert_stats(processed=4, chunk_errors=2)
    assert {chunk["sensor"] for chunk in result.data} == {"s-1", "s-2"}
