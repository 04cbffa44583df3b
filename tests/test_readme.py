"""The README's first-screen example runs exactly as shown."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def block(lang: str, index: int = 0) -> str:
    return re.findall(rf"```{lang}\n(.*?)```", README, re.DOTALL)[index]


def test_setup_commands_match_ci() -> None:
    """The README's test command is exactly what .ci/run runs."""
    commands = block("bash", 0).splitlines()
    test_command = commands[1].split("#")[0].strip()
    assert test_command in (ROOT / ".ci/run").read_text()
    assert commands[0].startswith("pip install -e '.[all]' && pipeline run --serve")


def test_first_screen_example_runs(tmp_path: Path) -> None:
    """The stage and YAML of the README run and give the envelopes shown."""
    (tmp_path / "my_stages.py").write_text(block("python", 0))
    (tmp_path / "pipelines.yaml").write_text(block("yaml", 0))
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline", "run", "demo"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    envs = [json.loads(line) for line in proc.stdout.splitlines()]
    shown = [json.loads(line) for line in block("text", 0).splitlines() if '"..."' not in line]
    assert envs[1]["data"] == shown[1]["data"]
    errors = [e for e in envs if e["status"] == "chunk_error"]
    assert errors[0]["stage"] == "transforms[0]:enrich"
    assert errors[0]["error"] == {"type": "ValueError", "message": "sensor glitch"}
    assert errors[0]["chunk"] == {"n": 3}
    stats = envs[-1]["stats"]
    assert (stats["processed"], stats["chunk_errors"], envs[-1]["seq"]) == (90, 10, 102)


def test_first_screen_test_case_passes(tmp_path: Path) -> None:
    """Step 5's test file passes with `pipeline test`; a wrong expectation fails it."""
    (tmp_path / "my_stages.py").write_text(block("python", 0))
    (tmp_path / "pipelines.yaml").write_text(block("yaml", 0))
    case = block("yaml", 1)
    (tmp_path / "pipelines.test.yaml").write_text(case)
    command = [sys.executable, "-m", "pipeline", "test"]
    proc = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.splitlines()[-1] == "1 passed, 0 failed"
    (tmp_path / "pipelines.test.yaml").write_text(case.replace("ValueError", "KeyError"))
    proc = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "chunk_errors[0] does not match" in proc.stdout


def test_command_synopsis_matches_the_cli() -> None:
    """Each command of the README's synopsis shows exactly the options the CLI takes."""
    import click

    from pipeline.cli import main

    synopsis = re.search(r"```\n(pipeline run \[NAME.*?)```", README, re.DOTALL)
    assert synopsis is not None
    common = {"--log-level", "--log-format", "--help", "-h"}
    for line in synopsis[1].splitlines():
        name = line.split()[1]
        command = main.commands[name]
        shown = set(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", line))
        options = [
            set(p.opts)
            for p in command.params
            if isinstance(p, click.Option) and not set(p.opts) & common
        ]
        assert all(opts & shown for opts in options), line  # every option is shown
        assert shown <= set().union(*options), line  # and nothing else


def test_unknown_sink_message_is_the_loaders() -> None:
    """The README's `unknown sink` example is the message `validate` prints."""
    from pipeline.config.loader import _builtins, _unknown

    shown = re.search(r"unknown sink `fil`[^\n]*", README)
    assert shown is not None
    assert shown[0] == _unknown("fil", "sink", {"sink": {"file": "", "stdout": ""}})
    assert {"file", "stdout"} <= set(_builtins()["sink"])


def test_connect_step_runs_on_the_real_services(tmp_path: Path) -> None:
    """Step 6's source and sink, spliced into the demo, move Redis entries into PostgreSQL.

    Every entry is acknowledged only once its row (or its chunk_error) is in; a SIGTERM then
    ends the worker cleanly with nothing left pending in its group.
    """
    asyncpg = pytest.importorskip("asyncpg")
    redis = pytest.importorskip("redis")
    name = f"readme_{uuid.uuid4().hex[:10]}"
    snippet = block("yaml", 2).replace("readings", name).replace("group: enrich", f"group: {name}")
    demo = block("yaml", 0)
    source = re.search(r"    source: .*\n", demo)
    assert source is not None
    config = demo.replace(source[0], "") + snippet
    (tmp_path / "my_stages.py").write_text(block("python", 0))
    (tmp_path / "pipelines.yaml").write_text(config)
    dsn = re.search(r'dsn: "([^"]+)"', snippet)
    assert dsn is not None

    async def db(query: str) -> list[object]:
        conn = await asyncpg.connect(dsn[1])
        try:
            return list(await conn.fetch(query))
        finally:
            await conn.close()

    asyncio.run(db(f"CREATE TABLE {name} (id int PRIMARY KEY, unit text, value float8)"))
    r = redis.Redis.from_url("redis://127.0.0.1:6379")
    for n in range(1, 6):
        r.xadd(name, {"data": json.dumps({"n": n})})
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "run", "demo"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        rows: list[object] = []
        while len(rows) < 4 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
            rows = asyncio.run(db(f"SELECT id, unit, value FROM {name} ORDER BY id"))
        assert [tuple(row) for row in rows] == [  # type: ignore[arg-type]
            (1, "kelvin", 20.1),
            (2, "kelvin", 20.2),
            (4, "kelvin", 20.4),
            (5, "kelvin", 20.5),
        ]
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err.decode()
        envs = [json.loads(line) for line in out.splitlines()]
        assert [e["chunk"] for e in envs if e["status"] == "chunk_error"] == [{"n": 3}]
        assert envs[-1]["reason"] == "shutdown"
        pending = r.xpending(name, name)
        assert pending["pending"] == 0  # n=3 too: acked once its chunk_error was out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        r.delete(name)
        r.close()
        asyncio.run(db(f"DROP TABLE IF EXISTS {name}"))
