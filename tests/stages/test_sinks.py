"""Built-in sinks: stdout and file, with their lifecycle on end, error and cancellation."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncGenerator, Callable
from pathlib import Path

import anyio
import pytest

from pipeline.envelope import encode
from pipeline.stage import meta_of
from pipeline.testing import run_stage
from stages import sinks
from tests.stages.helpers import open_fds

LINES = [encode({"status": "processing", "seq": i, "data": {"n": i}}) for i in range(1, 4)]


async def feed(
    lines: list[bytes], *, then: Callable[[], object] | None = None
) -> AsyncGenerator[list[bytes], None]:
    """The lines one batch each, as a quiet stream hands them over; then ``then()``."""
    for line in lines:
        yield [line]
    if then is not None:
        result = then()
        if asyncio.iscoroutine(result):
            await result


def test_markers() -> None:
    """Both sinks are batch stream sinks receiving encoded lines."""
    for fn in (sinks.stdout, sinks.file):
        meta = meta_of(fn)
        assert meta is not None
        assert (meta.role, meta.stream, meta.receives, meta.batch) == ("sink", True, "lines", True)


# -- file ---------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_file_writes_every_line_and_closes(tmp_path: Path) -> None:
    """Missing folders are created; every line is written; the file is closed at the end."""
    path = tmp_path / "out" / "deep" / "run.ndjson"
    with anyio.fail_after(10):
        await sinks.file(feed(LINES), path=str(path))
    assert path.read_bytes() == b"".join(LINES)
    assert open_fds(path) == []


@pytest.mark.anyio
async def test_file_in_a_run_writes_every_envelope_then_acks(tmp_path: Path) -> None:
    """In a run the file holds each envelope's exact line; chunks are acked once written."""
    path = tmp_path / "run.ndjson"
    out = await run_stage(sinks.file, [{"n": 1}, {"n": 2}], path=str(path))
    out.assert_finished().assert_acked("all")
    assert path.read_bytes() == b"".join(encode(e) for e in out.envelopes)
    assert [e["status"] for e in out.envelopes] == [
        "starting",
        "processing",
        "processing",
        "complete",
    ]
    assert open_fds(path) == []


@pytest.mark.anyio
async def test_file_in_a_run_that_cannot_open_ends_with_error(tmp_path: Path) -> None:
    """A file sink that cannot open its file fails for good: error, nothing acked."""
    (tmp_path / "taken").write_text("a file, not a folder")
    out = await run_stage(sinks.file, [{"n": 1}], path=str(tmp_path / "taken" / "run.ndjson"))
    out.assert_reason("error").assert_acked([])
    out.assert_error(stage="sinks[0]:file", type="FileExistsError")


@pytest.mark.anyio
async def test_file_appends_by_default_and_truncates_on_request(tmp_path: Path) -> None:
    """By default lines are added at the end; ``mode: truncate`` replaces the content."""
    path = tmp_path / "run.ndjson"
    path.write_bytes(b"old\n")
    await sinks.file(feed(LINES[:1]), path=path)
    assert path.read_bytes() == b"old\n" + LINES[0]
    await sinks.file(feed(LINES[1:]), path=path, mode="truncate")
    assert path.read_bytes() == b"".join(LINES[1:])
    await sinks.file(feed(LINES[:1]), path=path, mode="append")
    assert path.read_bytes() == b"".join(LINES[1:]) + LINES[0]


@pytest.mark.anyio
async def test_file_rejects_an_unknown_mode(tmp_path: Path) -> None:
    """A mode that is neither append nor truncate fails before anything is written."""
    with pytest.raises(ValueError, match="`mode` must be 'append' or 'truncate', got 'x'"):
        await sinks.file(feed(LINES), path=tmp_path / "x.ndjson", mode="x")  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_file_flushes_each_batch_before_the_next_arrives(tmp_path: Path) -> None:
    """A batch is on disk (visible to other readers) before the sink asks for the next."""
    path = tmp_path / "run.ndjson"
    seen: list[bytes] = []
    batches = [LINES[:1], LINES[1:]]

    async def lines() -> AsyncGenerator[list[bytes], None]:
        for batch in batches:
            yield batch
            seen.append(path.read_bytes())

    await sinks.file(lines(), path=str(path), fsync=False)
    assert seen == [LINES[0], b"".join(LINES)]


@pytest.mark.anyio
async def test_file_fsyncs_at_the_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With fsync (the default) the file is synced once at the end; without, never."""
    calls: list[int] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        calls.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    await sinks.file(feed(LINES), path=str(tmp_path / "a.ndjson"))
    assert len(calls) == 1
    await sinks.file(feed(LINES), path=str(tmp_path / "b.ndjson"), fsync=False)
    assert len(calls) == 1


@pytest.mark.anyio
async def test_file_closes_when_the_iteration_fails(tmp_path: Path) -> None:
    """An error in the middle of the iteration: lines so far are kept, the file is closed."""
    path = tmp_path / "run.ndjson"

    def boom() -> None:
        raise RuntimeError("upstream failed")

    with pytest.raises(RuntimeError, match="upstream failed"):
        await sinks.file(feed(LINES[:2], then=boom), path=str(path))
    assert path.read_bytes() == b"".join(LINES[:2])
    assert open_fds(path) == []


@pytest.mark.anyio
async def test_file_closes_when_cancelled(tmp_path: Path) -> None:
    """Cancelled while waiting for the next line: lines so far are kept, the file is closed."""
    path = tmp_path / "run.ndjson"
    waiting = asyncio.Event()

    async def wait_forever() -> None:
        waiting.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(sinks.file(feed(LINES[:2], then=wait_forever), path=str(path)))
    with anyio.fail_after(10):
        await waiting.wait()
        assert path.read_bytes() == b"".join(LINES[:2])
        assert open_fds(path) != []
        task.cancel()
        await asyncio.wait([task])
    assert task.cancelled()
    assert path.read_bytes() == b"".join(LINES[:2])
    assert open_fds(path) == []


# -- stdout -------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_stdout_writes_every_line(capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    """Every line goes to stdout as it is, in order."""
    with anyio.fail_after(10):
        await sinks.stdout(feed(LINES))
    assert capsysbinary.readouterr().out == b"".join(LINES)


@pytest.mark.anyio
async def test_stdout_flushes_when_the_iteration_fails(
    capsysbinary: pytest.CaptureFixture[bytes],
) -> None:
    """Lines written before an error are flushed, and the error passes through."""

    def boom() -> None:
        raise RuntimeError("upstream failed")

    with pytest.raises(RuntimeError, match="upstream failed"):
        await sinks.stdout(feed(LINES[:1], then=boom))
    assert capsysbinary.readouterr().out == LINES[0]
