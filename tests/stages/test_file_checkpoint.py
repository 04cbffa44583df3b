"""The file source's checkpoint: resume after a restart, across rotation, never past an ack."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
from structlog.testing import capture_logs

from pipeline import BadChunk, Message
from stages import sources
from tests.http_helpers import wait_until

ROOT = Path(__file__).resolve().parents[2]


async def read(path: Path, ck: Path, *, ack: bool = True, **kw: Any) -> list[Any]:
    """Every item of one non-following run; acknowledge each one unless told not to."""
    out = []
    gen = sources.file(path=path, checkpoint=str(ck), checkpoint_interval=60, **kw)
    with anyio.fail_after(10):
        async for item in gen:
            assert isinstance(item, Message | BadChunk)
            out.append(item)
            if ack and item.ack is not None:
                item.ack()
    await gen.aclose()
    return out


def data(items: list[Any]) -> list[Any]:
    return [i.data if isinstance(i, Message) else ("bad", i.raw) for i in items]


def saved(ck: Path) -> dict[str, Any]:
    result: dict[str, Any] = orjson.loads(ck.read_bytes())
    return result


@pytest.mark.anyio
async def test_second_run_reads_only_what_was_appended(tmp_path: Path) -> None:
    """Run 1 reads everything and saves inode + offset; run 2 nothing; run 3 the new lines."""
    log, ck = tmp_path / "app.log", tmp_path / "state" / "ck.json"
    log.write_text("one\ntwo\r\n\nthree")
    assert data(await read(log, ck)) == ["one", "two", "", "three"]
    st = log.stat()
    assert saved(ck) == {"path": str(log), "dev": st.st_dev, "ino": st.st_ino, "offset": 15}
    assert await read(log, ck) == []
    with log.open("a") as fh:
        fh.write("\nfour\nfive\n")
    assert data(await read(log, ck)) == ["", "four", "five"]  # "three" was cut: ends here
    assert saved(ck)["offset"] == log.stat().st_size


@pytest.mark.anyio
async def test_only_acknowledged_lines_without_a_gap_move_the_checkpoint(tmp_path: Path) -> None:
    """Acks out of order: the offset stops before the first line not yet acknowledged."""
    log, ck = tmp_path / "app.ndjson", tmp_path / "ck.json"
    log.write_text('{"n": 1}\n{"n": 2}\nbad\n{"n": 4}\n')
    items = await read(log, ck, ack=False, format="ndjson")
    assert data(items) == [{"n": 1}, {"n": 2}, ("bad", "bad"), {"n": 4}]
    assert not ck.exists()  # nothing acknowledged, nothing saved
    # The source has stopped, so each ack that moves the mark is saved at once.
    items[0].ack()
    items[2].ack()  # line 3 before line 2
    assert saved(ck)["offset"] == len('{"n": 1}\n')
    items[1].ack()
    assert saved(ck)["offset"] == len('{"n": 1}\n{"n": 2}\nbad\n')
    assert data(await read(log, ck, format="ndjson")) == [{"n": 4}]


@pytest.mark.anyio
async def test_rotation_while_stopped_finishes_the_old_file_first(tmp_path: Path) -> None:
    """The file was rotated while nothing read it: its rest comes, then the new file."""
    log, ck = tmp_path / "app.log", tmp_path / "ck.json"
    log.write_text("a1\na2\n")
    assert data(await read(log, ck)) == ["a1", "a2"]
    with log.open("a") as fh:
        fh.write("a3\na4\n")
    log.rename(tmp_path / "app.log.1")
    log.write_text("b1\n")
    with capture_logs() as logs:
        assert data(await read(log, ck)) == ["a3", "a4", "b1"]
    assert [e["event"] for e in logs] == ["file_resuming_rotated"]
    assert saved(ck)["ino"] == log.stat().st_ino
    assert await read(log, ck) == []


@pytest.mark.anyio
async def test_truncated_file_is_read_from_the_top(tmp_path: Path) -> None:
    """A file now shorter than the saved offset was truncated: read it again from the top."""
    log, ck = tmp_path / "app.log", tmp_path / "ck.json"
    log.write_text("long line one\nlong line two\n")
    await read(log, ck)
    with log.open("w") as fh:  # same inode, shorter
        fh.write("new\n")
    assert data(await read(log, ck)) == ["new"]


@pytest.mark.anyio
async def test_unreadable_checkpoint_starts_over_and_says_so(tmp_path: Path) -> None:
    """A checkpoint that is not ours is logged and ignored (then replaced)."""
    log, ck = tmp_path / "app.log", tmp_path / "ck.json"
    log.write_text("x\n")
    ck.write_text("not json")
    with capture_logs() as logs:
        assert data(await read(log, ck)) == ["x"]
    assert [e["event"] for e in logs] == ["checkpoint_unreadable"]
    assert saved(ck)["offset"] == 2


@pytest.mark.anyio
async def test_followed_file_that_does_not_exist_logs_once_that_it_waits(tmp_path: Path) -> None:
    """One ``file_waiting`` line with the absolute path, however long the wait."""
    log = tmp_path / "later.log"
    gen = sources.file(path=log, follow=True, poll_interval=0.01)
    got: list[Any] = []

    async def consume() -> None:
        async for item in gen:
            got.append(item)

    with capture_logs() as logs, anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(consume)
            while not logs:
                await anyio.sleep(0.01)
            await anyio.sleep(0.1)  # ten more polls: still one line
            log.write_text("hello\n")
            while not got:
                await anyio.sleep(0.01)
            tg.cancel_scope.cancel()
    await gen.aclose()
    assert got == ["hello"]
    assert logs == [{"event": "file_waiting", "path": str(log), "log_level": "info"}]


def test_restart_reads_no_line_twice_and_loses_none(tmp_path: Path) -> None:
    """`pipeline run` follows a file with a checkpoint; SIGTERM, append, restart: exact."""
    log, out = tmp_path / "in.log", tmp_path / "out.ndjson"
    log.write_text("".join(f"line {i}\n" for i in range(50)))
    cfg = tmp_path / "pipelines.yaml"
    cfg.write_text(
        f"""
pipelines:
  tail:
    source:
      use: file
      with: {{path: {log}, follow: true, poll_interval: 0.02,
              checkpoint: {tmp_path}/ck.json, checkpoint_interval: 0.05}}
    sinks:
      - use: file
        with: {{path: {out}, fsync: false}}
"""
    )

    def run_until(total: int) -> None:
        with subprocess.Popen(
            [sys.executable, "-m", "pipeline", "run", "-c", str(cfg)],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        ) as proc:
            try:
                wait_until(lambda: len(lines(out)) >= total, timeout=30)
                proc.send_signal(signal.SIGTERM)
                assert proc.wait(30) == 0, proc.stderr.read() if proc.stderr else ""
            finally:
                if proc.poll() is None:
                    proc.kill()

    run_until(50)
    with log.open("a") as fh:
        fh.write("".join(f"line {i}\n" for i in range(50, 80)))
    run_until(80)
    with log.open("a") as fh:
        fh.write("line 80\n")
    run_until(81)
    assert lines(out) == [f"line {i}" for i in range(81)]


def lines(out: Path) -> list[str]:
    if not out.exists():
        return []
    envs = [orjson.loads(x) for x in out.read_bytes().splitlines()]
    return [e["data"] for e in envs if e["status"] == "processing"]
