"""Stages that hold a resource (`pipeline.resource`): set up once, torn down on every ending.

Each resource stage of the test module counts its set-ups and tear-downs; every test
asserts both, for a source, a transform and a sink of one pipeline, after a run that
finished, failed, was cancelled, shut down or reloaded.
"""

from __future__ import annotations

import asyncio
import http.server
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from pipeline.config import loader
from pipeline.engine.run import Run
from pipeline.errors import ConfigError

pytestmark = pytest.mark.anyio

STAGES = """
import asyncio
import contextlib

import httpx

from pipeline import resource, sink

OPENED: dict[str, int] = {}
CLOSED: dict[str, int] = {}
CALLS: dict[str, int] = {}


def _open(name):
    OPENED[name] = OPENED.get(name, 0) + 1


def _close(name):
    CLOSED[name] = CLOSED.get(name, 0) + 1


@resource
async def numbers(*, count: int = 5, delay: float = 0.0, fail_at: int = -1):
    _open("source")
    try:
        async def gen():
            for n in range(count):
                if n == fail_at:
                    raise RuntimeError("source broke")
                if delay:
                    await asyncio.sleep(delay)
                yield {"n": n}
        yield gen
    finally:
        _close("source")


@resource
async def scale(*, factor: int = 2, broken: bool = False):
    _open("transform")
    if broken:
        raise ConnectionError("cannot reach the service")
    try:
        def apply(chunk):
            CALLS["transform"] = CALLS.get("transform", 0) + 1
            return {**chunk, "x": chunk["n"] * factor}
        yield apply
    finally:
        await asyncio.sleep(0)  # an awaiting clean-up, like closing a client
        _close("transform")


@resource
@contextlib.asynccontextmanager
async def explode(*, every: int = 1):
    _open("flat")
    try:
        async def split(chunk):
            for i in range(every):
                yield {**chunk, "i": i}
        yield split
    finally:
        _close("flat")


@sink(receives="data")
@resource
async def collect(*, into: str = "got"):
    _open("sink")
    got = []
    try:
        def write(data):
            got.append(data)
        yield write
    finally:
        CALLS[into] = len(got)
        _close("sink")


@resource
async def not_callable():
    yield 42


@resource
async def bad_close():
    yield lambda chunk: chunk
    raise OSError("cannot close")


@resource
def not_a_context(*, n: int = 1):
    return n


@sink(stream=True)
@resource
async def stream_marked():
    yield print


@resource
async def enrich(*, base_url: str):
    async with httpx.AsyncClient(base_url=base_url) as client:
        async def call(chunk: dict) -> dict:
            reply = await client.get("/double", params={"n": chunk["n"]})
            return {**chunk, "double": int(reply.text)}
        yield call
"""

CONFIG = """
pipelines:
  p:
    source: {{use: 'rstages:numbers', with: {source}}}
    transforms:
      - use: 'rstages:scale'
        with: {transform}
      - use: 'rstages:explode'
        with: {{every: 2}}
    sinks:
      - use: 'rstages:collect'
"""


@pytest.fixture
def build(
    tmp_path: Path, isolated_imports: None
) -> Iterator[Callable[..., tuple[Run, list[dict[str, Any]], Any]]]:
    """Build the pipeline `p` with the given ``with:`` values; return the run and module."""
    (tmp_path / "rstages.py").write_text(STAGES)

    def make(
        source: str = "{}", transform: str = "{}", text: str | None = None
    ) -> tuple[Run, list[dict[str, Any]], Any]:
        path = tmp_path / "pipelines.yaml"
        path.write_text(text or CONFIG.format(source=source, transform=transform))
        _, resolved = loader.load_and_resolve(path)
        rp = resolved["p"]
        seen: list[dict[str, Any]] = []
        run = Run(
            "p",
            rp.source,
            rp.transforms,
            rp.sinks,
            rp.dead_letter,
            max_chunk_errors=rp.config.max_chunk_errors,
            publish=lambda env, line: seen.append(env),
        )
        return run, seen, sys.modules["rstages"]

    yield make


def _balanced(mod: Any, *names: str) -> dict[str, tuple[int, int]]:
    return {n: (mod.OPENED.get(n, 0), mod.CLOSED.get(n, 0)) for n in names}


ALL = ("source", "transform", "flat", "sink")


async def test_set_up_once_and_torn_down_after_a_finished_run(build: Any) -> None:
    """Each resource is set up once for the run, used for every chunk, then torn down."""
    run, seen, mod = build("{count: 5}")
    with anyio.fail_after(10):
        assert await run.execute() == "finished"
    assert [e["status"] for e in seen] == ["starting"] + ["processing"] * 10 + ["complete"]
    assert [e["data"] for e in seen[1:3]] == [{"n": 0, "x": 0, "i": 0}, {"n": 0, "x": 0, "i": 1}]
    assert _balanced(mod, *ALL) == dict.fromkeys(ALL, (1, 1))
    assert (mod.CALLS["transform"], mod.CALLS["got"]) == (5, 10)


async def test_torn_down_after_a_failed_run(build: Any) -> None:
    """The source fails: every resource is still torn down once."""
    run, seen, mod = build("{count: 5, fail_at: 2}")
    with anyio.fail_after(10):
        assert await run.execute() == "error"
    assert seen[-2]["status"] == "error" and seen[-2]["stage"] == "source:numbers"
    assert _balanced(mod, *ALL) == dict.fromkeys(ALL, (1, 1))


async def test_set_up_failure_is_a_run_error_and_the_others_are_torn_down(build: Any) -> None:
    """A transform whose set-up raises ends the run with `error` naming that stage."""
    run, seen, mod = build("{count: 5}", "{broken: true}")
    with anyio.fail_after(10):
        assert await run.execute() == "error"
    assert [e["status"] for e in seen] == ["starting", "error", "complete"]
    assert seen[1]["stage"] == "transforms[0]:scale"
    assert seen[1]["error"] == {"type": "ConnectionError", "message": "cannot reach the service"}
    assert _balanced(mod, "source", "flat", "sink") == {
        "source": (0, 0),
        "flat": (0, 0),
        "sink": (1, 1),
    }
    assert mod.OPENED["transform"] == 1 and "transform" not in mod.CLOSED


async def _started(run: Run) -> asyncio.Task[Any]:
    task = asyncio.create_task(run.execute())
    with anyio.fail_after(10):
        while run.processed < 4:
            await asyncio.sleep(0.001)
    return task


async def test_torn_down_after_cancel(build: Any) -> None:
    """A cancelled run (a client left) tears every resource down."""
    run, seen, mod = build("{count: 100000, delay: 0.001}")
    task = await _started(run)
    task.cancel()
    with anyio.fail_after(10), pytest.raises(asyncio.CancelledError):
        await task
    assert seen[-1]["reason"] == "cancelled"
    assert _balanced(mod, *ALL) == dict.fromkeys(ALL, (1, 1))


@pytest.mark.parametrize("reason", ["shutdown", "reload"])
async def test_torn_down_after_shutdown_and_reload(build: Any, reason: str) -> None:
    """stop() for a shutdown or a reload tears every resource down after the last chunk."""
    run, seen, mod = build("{count: 100000, delay: 0.001}")
    task = await _started(run)
    run.stop(reason)  # type: ignore[arg-type]
    with anyio.fail_after(10):
        assert await task == reason
    assert seen[-1]["reason"] == reason
    assert _balanced(mod, *ALL) == dict.fromkeys(ALL, (1, 1))


async def test_a_resource_that_yields_no_function_is_a_run_error(build: Any) -> None:
    """What a transform resource yields must be callable: else a clear run error."""
    text = "pipelines:\n  p:\n    source: {use: counter, with: {count: 2}}\n"
    text += "    transforms: [{use: 'rstages:not_callable'}]\n"
    run, seen, _ = build(text=text)
    with anyio.fail_after(10):
        assert await run.execute() == "error"
    assert seen[1]["stage"] == "transforms[0]:not_callable"
    assert seen[1]["error"]["message"] == (
        "stage `transforms[0]:not_callable` is a resource that yielded int, "
        "not a function of one chunk"
    )


@pytest.mark.parametrize(
    ("use", "error"),
    [
        ("bad_close", {"type": "OSError", "message": "cannot close"}),
        (
            "not_a_context",
            {
                "type": "TypeError",
                "message": "`not_a_context` is marked @resource but returned int, not an async "
                "context manager (write it as an async generator that yields once)",
            },
        ),
    ],
)
async def test_a_failing_tear_down_or_no_context_is_a_run_error(
    build: Any, use: str, error: dict[str, str]
) -> None:
    """A tear-down that raises, or no context manager at all: `error` naming the stage."""
    text = "pipelines:\n  p:\n    source: {use: counter, with: {count: 2}}\n"
    text += f"    transforms: [{{use: 'rstages:{use}'}}]\n"
    run, seen, _ = build(text=text)
    with anyio.fail_after(10):
        assert await run.execute() == "error"
    errors = [e for e in seen if e["status"] == "error"]
    assert [(e["stage"], e["error"]) for e in errors] == [(f"transforms[0]:{use}", error)]
    assert seen[-1]["status"] == "complete"


def test_resource_parameters_are_validated_like_any_stage(build: Any, tmp_path: Path) -> None:
    """`with:` is checked against the resource function's signature, with FILE:LINE."""
    with pytest.raises(ConfigError) as info:
        build("{count: five, colour: red}", "{factor: 2}")
    path = tmp_path / "pipelines.yaml"
    assert str(info.value).splitlines() == [
        f"{path}:4: pipelines.p.source.with.count: Input should be a valid integer, "
        "unable to parse string as an integer",
        f"{path}:4: pipelines.p.source.with.colour: unknown parameter",
    ]


class _Double(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    connections = 0

    def setup(self) -> None:
        super().setup()
        type(self).connections += 1

    def do_GET(self) -> None:
        n = int(self.path.partition("n=")[2])
        body = str(2 * n).encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


async def test_httpx_example_uses_one_client_for_every_chunk(build: Any) -> None:
    """The documented httpx enrichment: one client (one connection) for the whole run."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Double)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        text = "pipelines:\n  p:\n    source: {use: counter, with: {count: 20}}\n"
        text += f"    transforms: [{{use: 'rstages:enrich', with: {{base_url: '{url}'}}}}]\n"
        run, seen, _ = build(text=text)
        with anyio.fail_after(20):
            assert await run.execute() == "finished"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    data = [e["data"] for e in seen if e["status"] == "processing"]
    assert [d["double"] for d in data] == [2 * d["n"] for d in data] and len(data) == 20
    assert _Double.connections == 1


async def test_testing_helpers_run_resource_stages() -> None:
    """`pipeline.testing.run_pipeline` sets up and tears down resource stages too."""
    from pipeline import resource, sink
    from pipeline.testing import run_pipeline

    log: list[str] = []

    @resource
    async def numbers(count: int = 3) -> Any:
        log.append("source up")
        yield ({"n": n} for n in range(count))
        log.append("source down")

    @resource
    async def plus(*, k: int = 10) -> Any:
        log.append("map up")
        yield lambda chunk: {"n": chunk["n"] + k}
        log.append("map down")

    got: list[int] = []

    @sink(receives="data")
    @resource
    async def keep() -> Any:
        log.append("sink up")
        yield lambda data: got.append(data["n"])
        log.append("sink down")

    envs = await run_pipeline(numbers, [plus], [keep])
    assert [e["status"] for e in envs] == ["starting"] + ["processing"] * 3 + ["complete"]
    assert got == [10, 11, 12]
    assert sorted(log) == sorted(
        f"{w} {d}" for w in ("source", "map", "sink") for d in ("up", "down")
    )


def test_resource_options_and_markers_are_checked(build: Any, tmp_path: Path) -> None:
    """Per-chunk options on a resource source, or a stream marker: problems at load."""
    text = """pipelines:
  p:
    source:
      use: 'rstages:numbers'
      concurrency: 2
    sinks:
      - use: 'rstages:stream_marked'
"""
    with pytest.raises(ConfigError) as info:
        build(text=text)
    path = tmp_path / "pipelines.yaml"
    assert str(info.value).splitlines() == [
        f"{path}:5: pipelines.p.source.concurrency: only per-chunk transforms take "
        "`concurrency`; this is a resource source",
        f"{path}:7: pipelines.p.sinks[0].use: `rstages:stream_marked` is a resource: only a "
        "sink may be marked too (`@sink(receives=...)`)",
    ]
