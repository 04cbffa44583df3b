"""Built-in sources: counter, file (read and follow), stdin."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

import anyio
import pytest

from pipeline import BadChunk
from pipeline.testing import run_stage
from stages import sources
from tests.stages.helpers import open_fds

ROOT = Path(__file__).resolve().parents[2]
POLL = 0.01


async def collect(gen: AsyncGenerator[Any, None], limit: int | None = None) -> list[Any]:
    out = []
    with anyio.fail_after(10):
        async for item in gen:
            out.append(item)
            if limit is not None and len(out) >= limit:
                break
    await gen.aclose()
    return out


class Tail:
    """Consume a source in a background task, so a test can write while it reads."""

    def __init__(self, gen: AsyncGenerator[Any, None]) -> None:
        self.gen = gen
        self.items: list[Any] = []
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Tail:
        self.task = asyncio.create_task(self._consume())
        return self

    async def _consume(self) -> None:
        async for item in self.gen:
            self.items.append(item)

    async def wait_for(self, n: int) -> list[Any]:
        with anyio.fail_after(10):
            while len(self.items) < n:
                assert self.task is not None
                if self.task.done():
                    self.task.result()
                await asyncio.sleep(POLL / 2)
        return self.items

    async def __aexit__(self, *exc: object) -> None:
        assert self.task is not None
        self.task.cancel()
        await asyncio.wait([self.task])
        await self.gen.aclose()


def append(path: Path, text: str) -> None:
    with path.open("a") as fh:
        fh.write(text)


# -- counter -------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_counter_yields_count_numbers_from_start() -> None:
    """`counter` yields {"n": i} for `count` numbers starting at `start`."""
    out = await run_stage(sources.counter, count=3, start=10)
    out.assert_finished().assert_data([{"n": 10}, {"n": 11}, {"n": 12}])


@pytest.mark.anyio
async def test_counter_without_count_is_endless() -> None:
    """`count: null` keeps counting until the consumer stops."""
    got = await collect(sources.counter(count=None), limit=250)
    assert got == [{"n": i} for i in range(250)]


@pytest.mark.anyio
async def test_counter_with_interval() -> None:
    """With an interval the numbers still all arrive, in order."""
    out = await run_stage(sources.counter, count=3, interval=0.001)
    out.assert_finished().assert_data([{"n": i} for i in range(3)])


@pytest.mark.anyio
async def test_counter_gives_the_loop_a_turn() -> None:
    """Without an interval, other tasks still run while the counter is consumed."""
    turns = 0
    stop = False

    async def other() -> None:
        nonlocal turns
        while not stop:
            turns += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(other())
    await asyncio.sleep(0)
    before = turns
    got = await collect(sources.counter(count=1000))
    stop = True
    await task
    assert len(got) == 1000
    assert turns - before >= 9


@pytest.mark.anyio
async def test_counter_rejects_a_negative_count() -> None:
    """A negative count is a clear error: the run ends with it, before any chunk."""
    out = await run_stage(sources.counter, count=-1)
    out.assert_reason("error").assert_data([])
    out.assert_error(
        stage="source:counter", type="ValueError", message=r"^`count` must be 0 or more, got -1$"
    )


# -- file, to the end ---------------------------------------------------------------------------


@pytest.mark.anyio
async def test_file_lines_without_line_endings(tmp_path: Path) -> None:
    """Each line comes without its \\n or \\r\\n; a last line without newline counts."""
    path = tmp_path / "in.txt"
    path.write_bytes(b"a\nb\r\n\nc")
    assert await collect(sources.file(path=str(path))) == ["a", "b", "", "c"]
    assert open_fds(path) == []


@pytest.mark.anyio
async def test_file_ndjson_bad_line_is_a_chunk_error_in_a_run(tmp_path: Path) -> None:
    """In a run, a malformed NDJSON line is a chunk_error holding the line; the run goes on."""
    path = tmp_path / "in.ndjson"
    path.write_text('{"a": 1}\nnot json\n[1, 2]\n')
    out = await run_stage(sources.file, path=str(path), format="ndjson")
    out.assert_finished().assert_data([{"a": 1}, [1, 2]])
    out.assert_chunk_errors({"stage": "source:file", "chunk": "not json"})
    out.assert_stats(processed=2, chunk_errors=1, errors=0)
    assert open_fds(path) == []


@pytest.mark.anyio
async def test_file_ndjson_bad_line_is_a_bad_chunk(tmp_path: Path) -> None:
    """A malformed line becomes a BadChunk and the lines after it still come; blanks skip."""
    path = tmp_path / "in.ndjson"
    path.write_text('{"a": 1}\n\n  \nnot json\n[1, 2]\n')
    got = await collect(sources.file(path=str(path), format="ndjson"))
    assert got[0] == {"a": 1}
    assert got[2] == [1, 2]
    bad = got[1]
    assert isinstance(bad, BadChunk)
    assert bad.raw == "not json"
    assert isinstance(bad.error, ValueError)
    assert str(bad.error).startswith("invalid JSON")
    assert len(got) == 3


@pytest.mark.anyio
async def test_file_undecodable_line_is_a_bad_chunk(tmp_path: Path) -> None:
    """A line that is not valid text in the encoding becomes a BadChunk."""
    path = tmp_path / "in.txt"
    path.write_bytes(b"ok\n\xff\xfe\nfine\n")
    got = await collect(sources.file(path=str(path)))
    assert got[0] == "ok"
    assert got[2] == "fine"
    assert isinstance(got[1], BadChunk)
    assert isinstance(got[1].error, UnicodeDecodeError)


@pytest.mark.anyio
async def test_file_other_encoding(tmp_path: Path) -> None:
    """Lines are decoded with the given encoding."""
    path = tmp_path / "in.txt"
    path.write_bytes("café\n".encode("latin-1"))
    assert await collect(sources.file(path=str(path), encoding="latin-1")) == ["café"]


@pytest.mark.anyio
async def test_file_larger_than_one_read_block(tmp_path: Path) -> None:
    """Lines that straddle read blocks come out whole."""
    path = tmp_path / "big.ndjson"
    lines = [f'{{"i": {i}, "pad": "{"x" * (i % 50)}"}}' for i in range(20_000)]
    path.write_text("\n".join(lines) + "\n")
    got = await collect(sources.file(path=str(path), format="ndjson"))
    assert [c["i"] for c in got] == list(range(20_000))


@pytest.mark.anyio
async def test_missing_file_raises_a_clear_error(tmp_path: Path) -> None:
    """Without follow, a missing file is a FileNotFoundError naming the path."""
    path = tmp_path / "nope.txt"
    with pytest.raises(FileNotFoundError, match=f"no such file `{path}`"):
        await collect(sources.file(path=str(path)))


@pytest.mark.anyio
async def test_file_rejects_an_unknown_encoding(tmp_path: Path) -> None:
    """An unknown encoding fails before reading."""
    with pytest.raises(LookupError):
        await collect(sources.file(path=str(tmp_path / "x"), encoding="no-such-codec"))


# -- file, following ----------------------------------------------------------------------------


def follow(path: Path, **kw: Any) -> AsyncGenerator[Any, None]:
    return sources.file(path=str(path), follow=True, poll_interval=POLL, **kw)


@pytest.mark.anyio
async def test_follow_reads_appended_lines_and_waits_for_partial_ones(tmp_path: Path) -> None:
    """Appended lines come as they are written; a partial line waits for its newline."""
    path = tmp_path / "log.txt"
    path.write_text("one\n")
    async with Tail(follow(path)) as tail:
        assert await tail.wait_for(1) == ["one"]
        append(path, "two\nthr")
        assert await tail.wait_for(2) == ["one", "two"]
        for _ in range(5):  # the partial line is not emitted however long we wait
            await asyncio.sleep(POLL)
        assert tail.items == ["one", "two"]
        append(path, "ee\nfour\n")
        assert await tail.wait_for(4) == ["one", "two", "three", "four"]
    assert open_fds(path) == []


@pytest.mark.anyio
async def test_follow_from_end_skips_existing_lines(tmp_path: Path) -> None:
    """With from_end only lines appended after the start come."""
    path = tmp_path / "log.txt"
    path.write_text("old\n")
    async with Tail(follow(path, from_end=True)) as tail:
        await asyncio.sleep(POLL * 3)
        append(path, "new\n")
        assert await tail.wait_for(1) == ["new"]


@pytest.mark.anyio
async def test_follow_survives_rotation(tmp_path: Path) -> None:
    """After a rename and a new file, the old file's tail then the new file come."""
    path = tmp_path / "app.log"
    path.write_text("a1\n")
    async with Tail(follow(path)) as tail:
        await tail.wait_for(1)
        append(path, "a2\na3")  # written just before the rotation, partial last line
        path.rename(tmp_path / "app.log.1")
        path.write_text("b1\n")
        assert await tail.wait_for(4) == ["a1", "a2", "a3", "b1"]
        append(path, "b2\n")
        assert await tail.wait_for(5) == ["a1", "a2", "a3", "b1", "b2"]
    assert open_fds(path) == []
    assert open_fds(tmp_path / "app.log.1") == []


@pytest.mark.anyio
async def test_follow_survives_a_missing_file(tmp_path: Path) -> None:
    """A file that is missing at the start, or deleted and recreated, is picked up."""
    path = tmp_path / "later.log"
    async with Tail(follow(path)) as tail:
        await asyncio.sleep(POLL * 3)
        path.write_text("first\n")
        assert await tail.wait_for(1) == ["first"]
        path.unlink()
        await asyncio.sleep(POLL * 3)
        path.write_text("second\n")
        assert await tail.wait_for(2) == ["first", "second"]


@pytest.mark.anyio
async def test_follow_restarts_after_truncation(tmp_path: Path) -> None:
    """When the file shrinks it is read again from the top."""
    path = tmp_path / "app.log"
    path.write_text("a long first line\nanother long line\n")
    async with Tail(follow(path)) as tail:
        await tail.wait_for(2)
        with path.open("r+") as fh:
            fh.truncate(0)
        await asyncio.sleep(POLL * 3)
        append(path, "x\n")
        assert await tail.wait_for(3) == ["a long first line", "another long line", "x"]


@pytest.mark.anyio
async def test_follow_ndjson(tmp_path: Path) -> None:
    """Following an NDJSON file parses each appended line."""
    path = tmp_path / "events.ndjson"
    path.write_text("")
    async with Tail(follow(path, format="ndjson")) as tail:
        append(path, '{"n": 1}\n{"n"')
        assert await tail.wait_for(1) == [{"n": 1}]
        append(path, ": 2}\n")
        assert await tail.wait_for(2) == [{"n": 1}, {"n": 2}]


# -- stdin --------------------------------------------------------------------------------------

STDIN_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    from pipeline import BadChunk
    from stages.sources import stdin

    async def main():
        async for chunk in stdin(format=sys.argv[1]):
            if isinstance(chunk, BadChunk):
                print("bad", repr(chunk.raw), flush=True)
            else:
                print(repr(chunk), flush=True)

    asyncio.run(main())
    """
)


def run_script(script: str, *args: str, stdin: bytes | None = None) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", script, *args],
        input=stdin,
        capture_output=True,
        cwd=ROOT,
        env=env,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    return proc.stdout.decode()


def test_stdin_reads_piped_lines_until_eof() -> None:
    """Piped lines come one by one and the source ends at EOF."""
    out = run_script(STDIN_SCRIPT, "lines", stdin=b"one\ntwo\r\n\nlast")
    assert out.splitlines() == ["'one'", "'two'", "''", "'last'"]


def test_stdin_ndjson_with_a_bad_line() -> None:
    """NDJSON on stdin is parsed; a bad line becomes a BadChunk."""
    out = run_script(STDIN_SCRIPT, "ndjson", stdin=b'{"a": 1}\noops\n[2]\n')
    assert out.splitlines() == ["{'a': 1}", "bad 'oops'", "[2]"]


def test_stdin_many_lines() -> None:
    """More input than one read block arrives complete and in order."""
    data = "".join(f"{i}\n" for i in range(50_000)).encode()
    out = run_script(STDIN_SCRIPT, "lines", stdin=data)
    assert out.splitlines() == [repr(str(i)) for i in range(50_000)]


def test_stdin_closed_while_waiting_does_not_hang() -> None:
    """Stopping the source while stdin stays open ends the process at once."""
    script = textwrap.dedent(
        """
        import asyncio
        from stages.sources import stdin

        async def main():
            gen = stdin()
            try:
                await asyncio.wait_for(anext(gen), 0.2)
            except TimeoutError:
                print("timed out", flush=True)
            await gen.aclose()

        asyncio.run(main())
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with subprocess.Popen(
        [sys.executable, "-c", script],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=ROOT,
        env=env,
    ) as proc:
        assert proc.stdout is not None
        out = proc.stdout.readline()
        assert proc.wait(timeout=60) == 0  # stdin is still open: the reader must not block exit
        assert proc.stdin is not None
        proc.stdin.close()
    assert out == b"timed out\n"
