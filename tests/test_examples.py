"""The examples and the root config: every pipeline runs for real, every stage behaves.

Each pipeline of ``pipelines.yaml`` and ``examples/*/pipelines.yaml`` runs as a real
``python -m pipeline run NAME -c FILE`` subprocess from the repository root (the configs'
relative paths are relative to it), with ``$PIPELINE_OUT`` pointing the file sinks at a
temporary folder. Expectations are recomputed from the source data, never copied from
a previous output.
"""

from __future__ import annotations

import asyncio
import doctest
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml

import examples.access_logs.stages
import examples.scale_out.stages
import examples.sensors.stages
from examples.access_logs import generate
from examples.access_logs.stages import (
    only_errors,
    parse_line,
    parse_time,
    per_minute_status,
)
from examples.sensors.stages import (
    convert,
    detect_anomalies,
    locate,
    readings,
    rolling_mean,
    simulate,
    validate,
)
from pipeline.config import loader, models as pipeline_config
from pipeline.testing import collect_source, make_stage, run_pipeline

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = [ROOT / "pipelines.yaml", *sorted((ROOT / "examples").glob("*/pipelines.yaml"))]
ACCESS_LOG = ROOT / "examples" / "access_logs" / "access.log"
OUT_VAR = "${PIPELINE_OUT:-out}"

# The test's own reading of Combined Log Format, independent of the stage under test.
CLF = re.compile(
    r'\S+ \S+ \S+ \[(\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4})\] "\S+ \S+ \S+" '
    r'(\d{3}) (?:\d+|-) "[^"]*" "[^"]*"'
)


# -- helpers ------------------------------------------------------------------------------


BROKERED = {ROOT / "examples" / "scale_out" / "pipelines.yaml"}
"""Configs whose workers read a broker forever: run end to end in tests/test_scale_out.py."""


def _pipelines() -> Iterator[tuple[Path, str, dict[str, Any]]]:
    for config in CONFIGS:
        if config in BROKERED:
            continue
        declared = yaml.safe_load(config.read_text())["pipelines"]
        for name, spec in declared.items():
            yield config, name, spec


PIPELINES = list(_pipelines())


@dataclass
class Ran:
    """One finished ``pipeline run`` subprocess."""

    code: int
    envelopes: list[dict[str, Any]]
    lines: list[bytes]
    stderr: str


def _run_cli(*args: str, out: Path) -> Ran:
    env = {**os.environ, "PIPELINE_OUT": str(out)}
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=90,
        check=False,
    )
    lines = proc.stdout.splitlines(keepends=True)
    return Ran(proc.returncode, [orjson.loads(x) for x in lines], lines, proc.stderr.decode())


def _of(ran: Ran, status: str) -> list[dict[str, Any]]:
    return [e for e in ran.envelopes if e["status"] == status]


def _sink_path(stage: dict[str, Any], out: Path) -> Path:
    return Path(str(stage["with"]["path"]).replace(OUT_VAR, str(out)))


def _access_lines() -> tuple[list[str], list[tuple[datetime, int]]]:
    """Split access.log into damaged lines and (time, status) of the good ones."""
    damaged, good = [], []
    for line in ACCESS_LOG.read_text().splitlines():
        m = CLF.fullmatch(line)
        try:
            when = datetime.strptime(m[1], "%d/%b/%Y:%H:%M:%S %z") if m else None
        except ValueError:
            when = None
        if m is None or when is None:
            damaged.append(line)
        else:
            good.append((when, int(m[2])))
    return damaged, good


def _is_malformed(reading: dict[str, Any]) -> bool:
    value = reading.get("celsius")
    return "sensor" not in reading or type(value) not in (int, float)


def _expect_readings(spec: dict[str, Any]) -> tuple[int, int]:
    """(good, malformed) readings the `readings` source yields with this config's params."""
    params = {k: v for k, v in spec["source"].get("with", {}).items() if k != "interval"}
    produced = list(simulate(**params))
    bad = sum(_is_malformed(r) for r in produced)
    return len(produced) - bad, bad


async def _aiter(items: list[Any]) -> AsyncIterator[Any]:
    for item in items:
        yield item


async def _drain(gen: Any) -> list[Any]:
    return [x async for x in gen]


def _through(stream_fn: Any, items: list[Any], **params: Any) -> list[Any]:
    return asyncio.run(_drain(stream_fn(_aiter(items), **params)))


def _reading(sensor: str, celsius: float, seq: int = 1) -> dict[str, Any]:
    return {"sensor": sensor, "seq": seq, "ts": "2024-03-12T13:00:00.000Z", "celsius": celsius}


# -- every config and every pipeline, as real subprocesses --------------------------------


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: str(p.relative_to(ROOT)))
def test_config_validates(config: Path, tmp_path: Path) -> None:
    """`pipeline validate` accepts every shipped config and names all its pipelines."""
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline", "validate", "-c", str(config)],
        cwd=ROOT,
        env={**os.environ, "PIPELINE_OUT": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    names = yaml.safe_load(config.read_text())["pipelines"]
    noun = "pipeline" if len(names) == 1 else "pipelines"
    assert proc.stdout.strip().endswith(f"({len(names)} {noun}: {', '.join(names)})")


@pytest.mark.parametrize(
    ("config", "name", "spec"),
    PIPELINES,
    ids=[f"{c.relative_to(ROOT)}:{n}" for c, n, _ in PIPELINES],
)
def test_pipeline_runs_to_completion(
    config: Path, name: str, spec: dict[str, Any], tmp_path: Path
) -> None:
    """Each pipeline runs as a subprocess: starting, contiguous seq, one complete, sinks match."""
    ran = _run_cli("run", name, "-c", str(config), out=tmp_path)
    assert ran.code == 0, ran.stderr
    statuses = [e["status"] for e in ran.envelopes]
    assert statuses[0] == "starting"
    assert statuses[-1] == "complete"
    assert statuses.count("complete") == 1
    assert "error" not in statuses
    assert ran.envelopes[-1]["reason"] == "finished"
    assert [e["seq"] for e in ran.envelopes] == list(range(1, len(ran.envelopes) + 1))
    assert {e["pipeline"] for e in ran.envelopes} == {name}
    assert len({e["run"] for e in ran.envelopes}) == 1
    stats = ran.envelopes[-1]["stats"]
    assert stats["processed"] == len(_of(ran, "processing"))
    assert stats["chunk_errors"] == len(_of(ran, "chunk_error"))
    _check_sinks(spec, ran, tmp_path)
    _check_data(spec, ran)


def _check_sinks(spec: dict[str, Any], ran: Ran, out: Path) -> None:
    """A file sink holds exactly the run's stdout; the dead letter its chunk errors."""
    for stage in spec.get("sinks", []):
        assert stage["use"] == "file"
        assert _sink_path(stage, out).read_bytes() == b"".join(ran.lines)
    if "dead_letter" in spec:
        dead = _sink_path(spec["dead_letter"], out).read_bytes().splitlines()
        assert [orjson.loads(x) for x in dead] == _of(ran, "chunk_error")


def _check_data(spec: dict[str, Any], ran: Ran) -> None:
    source = spec["source"]["use"]
    uses = [t["use"].rsplit(":", 1)[-1] for t in spec.get("transforms", [])]
    if source.endswith(":readings"):
        _check_readings(spec, ran)
    elif uses[-1] == "per_minute_status":
        _check_per_minute(ran)
    elif uses[-1] == "only_errors":
        _check_only_errors(spec, ran)
    else:  # pragma: no cover - a new example needs its expectations here
        pytest.fail(f"no expectations for a pipeline ending in `{uses[-1]}`")


def _check_readings(spec: dict[str, Any], ran: Ran) -> None:
    good, malformed = _expect_readings(spec)
    assert len(_of(ran, "processing")) == good
    errors = _of(ran, "chunk_error")
    assert len(errors) == malformed
    assert {e["stage"] for e in errors} <= {"transforms[0]:validate"}
    assert all(_is_malformed(e["chunk"]) for e in errors)
    data = [e["data"] for e in _of(ran, "processing")]
    assert all(isinstance(d["temperature"], float) for d in data)
    seqs = [d["seq"] for d in data] + [e["chunk"]["seq"] for e in errors]
    assert sorted(seqs) == list(range(1, good + malformed + 1))


def _check_per_minute(ran: Ran) -> None:
    damaged, good = _access_lines()
    assert len(_of(ran, "chunk_error")) == len(damaged)
    assert sorted(e["chunk"] for e in _of(ran, "chunk_error")) == sorted(damaged)
    minutes = [e["data"] for e in _of(ran, "processing")]
    assert sum(m["requests"] for m in minutes) == len(good)
    for m in minutes:
        assert m["2xx"] + m["3xx"] + m["4xx"] + m["5xx"] == m["requests"]
    per_minute = Counter(w.astimezone(UTC).strftime("%Y%m%d%H%M") for w, _ in good)
    assert len(minutes) == len(per_minute)
    server_errors = sum(1 for _, status in good if status >= 500)
    assert sum(m["5xx"] for m in minutes) == server_errors


def _check_only_errors(spec: dict[str, Any], ran: Ran) -> None:
    damaged, good = _access_lines()
    floor = spec["transforms"][-1].get("with", {}).get("min_status", 400)
    assert len(_of(ran, "chunk_error")) == len(damaged)
    events = [e["data"] for e in _of(ran, "processing")]
    assert len(events) == sum(1 for _, status in good if status >= floor)
    assert all(e["status"] >= floor for e in events)


def test_root_config_runs_start_pipelines_by_default(tmp_path: Path) -> None:
    """`pipeline run` with no name runs every `trigger: start` pipeline, not the request ones."""
    config = ROOT / "pipelines.yaml"
    declared = yaml.safe_load(config.read_text())["pipelines"]
    ran = _run_cli("run", "-c", str(config), out=tmp_path)
    assert ran.code == 0, ran.stderr
    started = {e["pipeline"] for e in ran.envelopes}
    assert started == {n for n, p in declared.items() if p.get("trigger", "start") == "start"}
    assert {p.get("trigger", "start") for p in declared.values()} == {"start", "request"}
    finished = [e for e in ran.envelopes if e["status"] == "complete"]
    assert sorted(e["pipeline"] for e in finished) == sorted(started)


def test_root_request_pipeline_takes_count_from_the_query() -> None:
    """The `trigger: request` pipeline of the root config reads `count` from the query."""
    resolved = loader.resolve(pipeline_config.load(ROOT / "pipelines.yaml"))
    pipeline = resolved["readings"]
    assert pipeline.config.trigger == "request"
    params = loader.request_params(pipeline, {"count": "3"})
    assert params["count"] == 3
    envs = asyncio.run(
        run_pipeline(
            pipeline.source,
            list(pipeline.transforms),
            source_params={**params, "interval": 0.0},
        )
    )
    assert [e["status"] for e in envs] == ["starting", *["processing"] * 3, "complete"]


def _stream(client: httpx.Client, path: str, **params: Any) -> list[dict[str, Any]]:
    with client.stream("GET", path, params=params) as response:
        assert response.status_code == 200
        envs = [orjson.loads(line) for line in response.iter_lines() if line]
    return [e for e in envs if e["status"] not in ("heartbeat", "lagged")]


def _wait_until_up(client: httpx.Client, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the server exited early"
        try:
            if client.get("/healthz").status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    pytest.fail("the server did not come up within 30 s")


def test_root_config_serves_over_http(tmp_path: Path, free_port: int) -> None:
    """`pipeline run --serve` on the root config streams its pipelines and stops on SIGTERM."""
    pytest.importorskip("pipeline.server.process", reason="the HTTP server is not written yet")
    args = ["run", "--serve", "--port", str(free_port), "-c", str(ROOT / "pipelines.yaml")]
    env = {**os.environ, "PIPELINE_OUT": str(tmp_path), "PIPELINE_TOKEN": ""}
    with (
        subprocess.Popen(
            [sys.executable, "-m", "pipeline", *args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        ) as proc,
        httpx.Client(base_url=f"http://127.0.0.1:{free_port}", timeout=60) as client,
    ):
        try:
            _wait_until_up(client, proc)
            listed = client.get("/pipelines").text
            assert all(f'"{name}"' in listed for name in ("sensors", "access_logs", "readings"))
            on_demand = _stream(client, "/pipelines/readings/stream", count=3)
            assert [e["status"] for e in on_demand] == [
                "starting",
                *["processing"] * 3,
                "complete",
            ]
            live = _stream(client, "/pipelines/sensors/stream", since=0)
            assert live[0]["status"] == "starting"
            assert live[-1]["status"] == "complete"
            assert live[-1]["reason"] == "finished"
            assert [e["seq"] for e in live] == list(range(1, len(live) + 1))
        finally:
            proc.send_signal(signal.SIGTERM)
            _, stderr = proc.communicate(timeout=30)
        assert proc.returncode == 0, stderr.decode()


# -- sensors: the stages, called directly -------------------------------------------------


def test_simulate_is_repeatable_and_breaks_every_nth_reading() -> None:
    """Same seed, same readings; the readings whose seq `malformed_every` divides are bad."""
    first = list(simulate(count=100, seed=3, malformed_every=10))
    assert first == list(simulate(count=100, seed=3, malformed_every=10))
    assert first != list(simulate(count=100, seed=4, malformed_every=10))
    assert [r["seq"] for r in first if _is_malformed(r)] == list(range(10, 101, 10))
    assert not any(_is_malformed(r) for r in simulate(count=100, malformed_every=0))
    assert [r["sensor"] for r in simulate(sensors=3, count=4)] == ["s-1", "s-2", "s-3", "s-1"]


def test_readings_source_yields_the_simulated_readings_with_timestamps() -> None:
    """The async source yields what `simulate` computes, each with an RFC 3339 UTC `ts`."""
    got = asyncio.run(collect_source(readings, count=30, interval=0.0, malformed_every=7))
    expected = list(simulate(count=30, malformed_every=7))
    assert [{k: v for k, v in r.items() if k != "ts"} for r in got] == expected
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", r["ts"]) for r in got)


def test_readings_source_rejects_bad_parameters() -> None:
    """A bad parameter ends the run with an `error` naming it."""
    envs = asyncio.run(run_pipeline(readings, source_params={"sensors": 0}))
    assert [e["status"] for e in envs] == ["starting", "error", "complete"]
    assert envs[1]["error"]["message"] == "`sensors` must be 1 or more, got 0"


@pytest.mark.parametrize(
    ("reading", "message"),
    [
        ({"seq": 1, "ts": "t", "celsius": 1.0}, "reading has no `sensor`"),
        ({"sensor": "s-1", "seq": 1, "ts": "t"}, "reading has no `celsius`"),
        (
            {"sensor": "s-2", "seq": 1, "ts": "t", "celsius": "ERR"},
            '`celsius` must be a number, got "ERR" from sensor `s-2`',
        ),
        (
            {"sensor": "s-3", "seq": 1, "ts": "t", "celsius": None},
            "`celsius` must be a number, got null from sensor `s-3`",
        ),
        (
            {"sensor": "s-4", "seq": 1, "ts": "t", "celsius": "21,4"},
            '`celsius` must be a number, got "21,4" from sensor `s-4`',
        ),
        (
            {"sensor": "s-1", "seq": 1, "ts": "t", "celsius": True},
            "`celsius` must be a number, got true from sensor `s-1`",
        ),
        (
            {"sensor": "s-1", "seq": 1, "ts": "t", "celsius": float("nan")},
            "`celsius` must be finite, got nan from sensor `s-1`",
        ),
        ("21.5", "expected a reading (an object), got `str`"),
    ],
)
def test_validate_rejects_malformed_readings(reading: Any, message: str) -> None:
    """A malformed reading raises ValueError with a message naming what is wrong."""
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        validate(reading)


def test_validate_returns_a_clean_reading() -> None:
    """A good reading comes back with only its fields and a float value."""
    raw = {"sensor": "s-1", "seq": 4, "ts": "t", "celsius": 21, "extra": "dropped"}
    assert validate(raw) == {"sensor": "s-1", "seq": 4, "ts": "t", "celsius": 21.0}


@pytest.mark.parametrize(
    ("unit", "value"), [("celsius", 25.0), ("fahrenheit", 77.0), ("kelvin", 298.15)]
)
def test_convert_adds_temperature_in_the_unit(unit: Any, value: float) -> None:
    """`convert` keeps `celsius` and adds `temperature` and `unit`."""
    assert convert({"celsius": 25.0}, unit=unit) == {
        "celsius": 25.0,
        "temperature": value,
        "unit": unit,
    }


def test_locate_adds_the_site_from_the_registry() -> None:
    """Known probes get their site and zone; others are `unassigned`."""
    assert asyncio.run(locate({"sensor": "s-3"}, latency=0)) == {
        "sensor": "s-3",
        "site": "cold-store",
        "zone": "bay-1",
    }
    assert asyncio.run(locate({"sensor": "s-99"}, latency=0))["site"] == "unassigned"


def test_detect_anomalies_flags_range_and_jumps_per_sensor() -> None:
    """Out-of-range values and jumps from the same probe's last value are flagged."""
    items = [
        _reading("s-1", 20.0),
        _reading("s-2", 5.0),
        _reading("s-1", 21.0),
        _reading("s-1", 85.0),
        _reading("s-2", 6.0),
        _reading("s-1", 20.5),
        _reading("s-2", -127.0),
    ]
    got = _through(detect_anomalies, items, low=-10, high=45, jump=8)
    assert [r["anomalies"] for r in got] == [
        [],
        [],
        [],
        ["above_range", "jump"],
        [],
        ["jump"],
        ["below_range", "jump"],
    ]


def test_rolling_mean_averages_the_last_good_readings_per_sensor() -> None:
    """The mean covers a probe's last `window` unflagged temperatures."""
    items = [
        {"sensor": "a", "temperature": 10.0, "anomalies": []},
        {"sensor": "b", "temperature": 99.0, "anomalies": ["above_range"]},
        {"sensor": "a", "temperature": 20.0, "anomalies": []},
        {"sensor": "a", "temperature": 90.0, "anomalies": ["jump"]},
        {"sensor": "a", "temperature": 40.0, "anomalies": []},
        {"sensor": "b", "temperature": 3.0, "anomalies": []},
    ]
    got = _through(rolling_mean, items, window=2)
    assert [r["mean"] for r in got] == [10.0, None, 15.0, 15.0, 30.0, 3.0]
    with pytest.raises(ValueError, match=r"^`window` must be 1 or more, got 0$"):
        _through(rolling_mean, items, window=0)


def test_sensors_pipeline_in_process() -> None:
    """The whole sensors chain, in-process: bad readings become chunk errors, the rest flow."""
    envs = asyncio.run(
        run_pipeline(
            readings,
            [
                validate,
                make_stage(convert, params={"unit": "kelvin"}),
                make_stage(locate, params={"latency": 0.0}, concurrency=4, timeout=1.0),
                detect_anomalies,
                make_stage(rolling_mean, params={"window": 5}),
            ],
            source_params={"count": 60, "interval": 0.0, "malformed_every": 20},
        )
    )
    errors = [e for e in envs if e["status"] == "chunk_error"]
    data = [e["data"] for e in envs if e["status"] == "processing"]
    assert [e["chunk"]["seq"] for e in errors] == [20, 40, 60]
    assert [d["seq"] for d in data] == [s for s in range(1, 61) if s % 20]
    assert all(d["unit"] == "kelvin" and "mean" in d and "site" in d for d in data)
    assert envs[-1]["reason"] == "finished"


# -- access logs: the stages, called directly ---------------------------------------------

GOOD_LINE = (
    '203.0.113.9 - mia [12/Mar/2024:14:07:59 +0100] "POST /api/v1/orders HTTP/1.1" 503 157 '
    '"https://shop.example.com/cart" "okhttp/4.12.0"'
)


def test_parse_line_returns_an_event() -> None:
    """A Combined Log Format line becomes an event with UTC time and typed fields."""
    assert parse_line(GOOD_LINE) == {
        "ip": "203.0.113.9",
        "user": "mia",
        "time": "2024-03-12T13:07:59Z",
        "method": "POST",
        "path": "/api/v1/orders",
        "status": 503,
        "bytes": 157,
        "referrer": "https://shop.example.com/cart",
        "agent": "okhttp/4.12.0",
    }
    not_modified = GOOD_LINE.replace(" 503 157 ", " 304 - ").replace(" mia ", " - ")
    event = parse_line(not_modified.replace('"https://shop.example.com/cart"', '"-"'))
    assert (event["status"], event["bytes"], event["user"], event["referrer"]) == (
        304,
        0,
        None,
        None,
    )


@pytest.mark.parametrize(
    "line",
    [
        GOOD_LINE[:60],
        GOOD_LINE[:120] + GOOD_LINE,
        "x]!Qm@#lk 3;;",
        "",
        GOOD_LINE.replace("12/Mar/2024:14:07:59", "31/Feb/2024:14:07:59"),
        GOOD_LINE.replace("Mar", "Mrz"),
    ],
    ids=["cut-short", "run-together", "noise", "empty", "no-such-day", "bad-month"],
)
def test_parse_line_rejects_damaged_lines(line: str) -> None:
    """A damaged line raises ValueError, which the engine turns into a chunk error."""
    with pytest.raises(ValueError, match=r"^(not a Combined Log Format line|bad timestamp|day)"):
        parse_line(line)


def test_parse_line_rejects_non_text() -> None:
    """Only lines of text are parsed."""
    with pytest.raises(ValueError, match=r"^expected a line of text, got `dict`$"):
        parse_line({"line": GOOD_LINE})


def test_parse_time_handles_negative_offsets() -> None:
    """A timestamp west of UTC keeps its offset."""
    assert parse_time("01/Jan/2024:23:30:00 -0430").isoformat() == "2024-01-01T23:30:00-04:30"


def test_only_errors_keeps_failed_requests() -> None:
    """Events below `min_status` are dropped (None), the rest pass unchanged."""
    assert only_errors({"status": 404}) == {"status": 404}
    assert only_errors({"status": 304}) is None
    assert only_errors({"status": 404}, min_status=500) is None


def test_per_minute_status_counts_each_minute() -> None:
    """A minute is emitted when the next one starts, the last one at the end."""
    events = [
        {"time": "2024-03-12T13:00:05Z", "status": 200},
        {"time": "2024-03-12T13:00:59Z", "status": 404},
        {"time": "2024-03-12T13:01:00Z", "status": 500},
        {"time": "2024-03-12T13:03:10Z", "status": 301},
        {"time": "2024-03-12T13:03:11Z", "status": 201},
    ]
    assert _through(per_minute_status, events) == [
        {"minute": "2024-03-12T13:00:00Z", "requests": 2, "2xx": 1, "3xx": 0, "4xx": 1, "5xx": 0},
        {"minute": "2024-03-12T13:01:00Z", "requests": 1, "2xx": 0, "3xx": 0, "4xx": 0, "5xx": 1},
        {"minute": "2024-03-12T13:03:00Z", "requests": 2, "2xx": 1, "3xx": 1, "4xx": 0, "5xx": 0},
    ]
    assert _through(per_minute_status, []) == []


def test_access_log_is_reproducible_from_the_generator(tmp_path: Path) -> None:
    """The committed access.log is exactly what generate.py writes."""
    written = generate.write(tmp_path / "access.log")
    assert written.read_bytes() == ACCESS_LOG.read_bytes()


def test_access_log_looks_like_half_an_hour_of_traffic() -> None:
    """About 3,000 lines over ~30 minutes, ~1% damaged, with a mix of status classes."""
    damaged, good = _access_lines()
    assert len(damaged) + len(good) == 3000
    assert 0.005 <= len(damaged) / 3000 <= 0.02
    span = max(w for w, _ in good) - min(w for w, _ in good)
    assert 25 * 60 <= span.total_seconds() <= 30 * 60
    classes = Counter(status // 100 for _, status in good)
    assert set(classes) == {2, 3, 4, 5}
    assert classes[2] / len(good) > 0.6
    statuses = {status for _, status in good}
    assert {200, 301, 304, 404, 500} <= statuses
    assert [w for w, _ in good] == sorted(w for w, _ in good)


# -- the READMEs: their commands and samples match the code -------------------------------

READMES = sorted((ROOT / "examples").glob("*/README.md"))
FENCE = re.compile(r"```(\w*)\n(.*?)```", re.DOTALL)


def _blocks(readme: Path, lang: str) -> list[str]:
    return [body for kind, body in FENCE.findall(readme.read_text()) if kind == lang]


@pytest.mark.parametrize("readme", READMES, ids=lambda p: p.parent.name)
def test_readme_commands_name_real_configs_and_pipelines(readme: Path) -> None:
    """Every `pipeline` command in an example README names a config and pipelines it declares."""
    commands = [
        line.split("#")[0].split()
        for body in _blocks(readme, "sh")
        for line in body.splitlines()
        if line.startswith("pipeline ")
    ]
    assert commands
    for words in commands:
        config = ROOT / words[words.index("-c") + 1]
        declared = yaml.safe_load(config.read_text())["pipelines"]
        named = [w for w in words[2 : words.index("-c")] if not w.startswith("-")]
        assert set(named) <= set(declared), words


def test_sensors_readme_samples_have_the_real_shape() -> None:
    """The envelopes shown in the sensors README have the fields a real run gives."""
    envs = asyncio.run(
        run_pipeline(
            readings,
            [validate, convert, locate, detect_anomalies, rolling_mean],
            source_params={"count": 25, "interval": 0.0},
        )
    )
    real = {e["status"]: e for e in envs}
    samples = [orjson.loads(b) for b in _blocks(ROOT / "examples/sensors/README.md", "json")]
    assert [s["status"] for s in samples] == ["processing", "chunk_error"]
    for sample in samples:
        assert sample.keys() == real[sample["status"]].keys()
    assert samples[0]["data"].keys() == real["processing"]["data"].keys()
    assert samples[1]["stage"] == real["chunk_error"]["stage"]


def test_access_logs_readme_counts_are_the_real_ones() -> None:
    """A per-minute count quoted in the access-logs README is what the pipeline computes."""
    events = []
    for line in ACCESS_LOG.read_text().splitlines():
        try:
            events.append(parse_line(line))
        except ValueError:
            continue
    minutes = _through(per_minute_status, events)
    text = (ROOT / "examples/access_logs/README.md").read_text()
    quoted = [orjson.loads(m) for m in re.findall(r'\{"minute": [^}]*\}', text)]
    assert quoted
    for sample in quoted:
        assert sample in minutes


@pytest.mark.parametrize(
    "module",
    [examples.sensors.stages, examples.access_logs.stages, generate, examples.scale_out.stages],
    ids=lambda m: m.__name__,
)
def test_docstring_examples_run(module: Any) -> None:
    """The `>>>` examples in the example modules' docstrings hold."""
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0
