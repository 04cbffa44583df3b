"""The command line as a real subprocess: exit codes, stdout NDJSON, stderr logs, signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent

STAGES = """
import asyncio, time

async def endless(interval: float = 0.01):
    n = 0
    while True:
        yield {"n": n}
        n += 1
        await asyncio.sleep(interval)

def dies():
    yield 1
    raise OSError("disk gone")

def picky(chunk):
    if chunk["n"] == 1:
        raise ValueError("one is bad")
    return chunk

def stuck(chunk):
    time.sleep(60)
    return chunk
"""


def cli(*args: str, cwd: Path, env: dict[str, str] | None = None, **kw: Any) -> Any:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=60,
        **kw,
    )


def envelopes(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines()]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "my_stages.py").write_text(STAGES)
    (tmp_path / "pipelines.yaml").write_text(
        """
pipelines:
  counting:
    description: three numbers, one bad
    source: {use: counter, with: {count: 3}}
    transforms:
      - use: my_stages:picky
    sinks:
      - use: file
        with: {path: out/counting.ndjson}
  failing:
    source: {use: "my_stages:dies"}
  on_demand:
    trigger: request
    request_params: [count]
    source: {use: counter, with: {count: 2}}
"""
    )
    return tmp_path


def test_run_writes_ndjson_and_exits_zero(project: Path) -> None:
    """`run NAME` prints only envelopes on stdout, logs JSON on stderr, exits 0."""
    proc = cli("run", "counting", cwd=project)
    assert proc.returncode == 0, proc.stderr
    envs = envelopes(proc.stdout)
    assert [e["status"] for e in envs] == [
        "starting",
        "processing",
        "chunk_error",
        "processing",
        "complete",
    ]
    assert [e["seq"] for e in envs] == [1, 2, 3, 4, 5]
    assert envs[2]["stage"] == "transforms[0]:picky"
    logs = [json.loads(line) for line in proc.stderr.splitlines()]
    assert {"run_started", "run_completed"} <= {entry["event"] for entry in logs}
    written = (project / "out/counting.ndjson").read_text()
    assert written == proc.stdout


def test_run_failure_exits_one(project: Path) -> None:
    """A run that ends with `error` exits 1."""
    proc = cli("run", "failing", cwd=project)
    assert proc.returncode == 1
    statuses = [e["status"] for e in envelopes(proc.stdout)]
    assert statuses == ["starting", "processing", "error", "complete"]
    assert "Traceback" not in proc.stdout


def test_run_without_names_runs_start_pipelines(project: Path) -> None:
    """With no NAME, every `trigger: start` pipeline runs (not `request` ones)."""
    proc = cli("run", cwd=project)
    assert proc.returncode == 1
    names = {e["pipeline"] for e in envelopes(proc.stdout)}
    assert names == {"counting", "failing"}


def test_unknown_pipeline_is_usage_error(project: Path) -> None:
    """An unknown pipeline name exits 2 naming it and the known ones."""
    proc = cli("run", "nope", cwd=project)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "pipelines.yaml: unknown pipeline `nope` (known: `counting`, `failing`, `on_demand`)"
    )
    assert proc.stdout == ""


def test_bad_usage_exits_two(project: Path) -> None:
    """An unknown option is a usage error: exit 2."""
    assert cli("run", "--bogus", cwd=project).returncode == 2


def test_missing_config_exits_two(tmp_path: Path) -> None:
    """A missing config file exits 2 with a message naming it, no traceback."""
    proc = cli("validate", "-c", "absent.yaml", cwd=tmp_path)
    assert proc.returncode == 2
    assert "absent.yaml" in proc.stderr and "Traceback" not in proc.stderr


def test_config_from_environment_variable(project: Path, tmp_path: Path) -> None:
    """$PIPELINE_CONFIG names the config when -c is not given."""
    other = tmp_path / "elsewhere"
    other.mkdir()
    proc = cli("validate", cwd=other, env={"PIPELINE_CONFIG": str(project / "pipelines.yaml")})
    assert proc.returncode == 0, proc.stderr
    assert "3 pipelines" in proc.stdout


def test_validate_and_list(project: Path) -> None:
    """`validate` exits 0 on a good config; `list` shows pipelines and their stages."""
    assert cli("validate", cwd=project).returncode == 0
    proc = cli("list", cwd=project)
    assert proc.returncode == 0
    assert "counting  [trigger: start, retain: 10000, max_chunk_errors: none]" in proc.stdout
    assert "my_stages:picky" in proc.stdout
    as_json = json.loads(cli("list", "--json", cwd=project).stdout)
    assert list(as_json["pipelines"]) == ["counting", "failing", "on_demand"]
    one = project / "one.yaml"
    one.write_text("pipelines:\n  a:\n    source: {use: counter}\n")
    assert cli("validate", "-c", str(one), cwd=project).stdout == f"{one}: ok (1 pipeline: a)\n"


def test_list_shows_every_option(tmp_path: Path) -> None:
    """`list` and `list --json` show ids, per-chunk options, retain and max_chunk_errors."""
    (tmp_path / "pipelines.yaml").write_text(
        """
pipelines:
  p:
    source: {use: counter, with: {count: 3}}
    transforms:
      - use: parse_json
        concurrency: 4
        ordered: false
        timeout: 2.5
        retry: {attempts: 3, backoff: 0.1}
      - use: parse_json
        id: plain
    sinks: [{use: stdout}]
    retain: 50
    max_chunk_errors: 7
"""
    )
    as_json = json.loads(cli("list", "--json", cwd=tmp_path).stdout)["pipelines"]["p"]
    assert (as_json["retain"], as_json["max_chunk_errors"]) == (50, 7)
    assert as_json["source"] == {
        "use": "counter",
        "with": {"count": 3},
        "id": "source:counter",
        "blocking": False,
    }
    assert as_json["transforms"] == [
        {
            "use": "parse_json",
            "with": {},
            "id": "transforms[0]:parse_json",
            "concurrency": 4,
            "ordered": False,
            "timeout": 2.5,
            "retry": {"attempts": 3, "backoff": 0.1, "max_backoff": 30.0},
            "blocking": False,
        },
        {
            "use": "parse_json",
            "with": {},
            "id": "plain",
            "concurrency": 1,
            "ordered": True,
            "timeout": None,
            "retry": None,
            "blocking": False,
        },
    ]
    text = cli("list", cwd=tmp_path).stdout.splitlines()
    assert text == [
        "p  [trigger: start, retain: 50, max_chunk_errors: 7]",
        '  source      counter {"count":3}  id: source:counter',
        "  transforms  parse_json {}  id: transforms[0]:parse_json",
        '              concurrency: 4, ordered: false, timeout: 2.5, retry: {"attempts":3,'
        '"backoff":0.1,"max_backoff":30.0}, blocking: false',
        "  transforms  parse_json {}  id: plain",
        "  sinks       stdout {}  id: sinks[0]:stdout",
    ]


def test_list_masks_environment_values(tmp_path: Path) -> None:
    """Values that came from the environment are never printed by `list`."""
    (tmp_path / "pipelines.yaml").write_text(
        "pipelines:\n  p:\n    source: {use: file, with: {path: '${SECRET_PATH}'}}\n"
    )
    proc = cli("list", "--json", cwd=tmp_path, env={"SECRET_PATH": "hunter2-secret"})
    assert proc.returncode == 0, proc.stderr
    assert "hunter2-secret" not in proc.stdout + proc.stderr
    assert "***" in proc.stdout


def test_stages_lists_builtins() -> None:
    """`stages` lists every built-in; `--markdown` is docs/stages.md."""
    proc = cli("stages", cwd=ROOT)
    assert proc.returncode == 0
    for name in ("counter", "file", "stdin", "parse_json", "batch", "throttle", "dedupe"):
        assert name in proc.stdout
    md = cli("stages", "--markdown", cwd=ROOT).stdout
    assert md == (ROOT / "docs/stages.md").read_text()


def test_console_log_format(project: Path) -> None:
    """`--log-format console` writes human-readable logs, not JSON."""
    proc = cli("run", "counting", "--log-format", "console", cwd=project)
    assert proc.returncode == 0
    assert "run_started" in proc.stderr
    assert not proc.stderr.lstrip().startswith("{")


def _endless_project(tmp_path: Path, transform: str = "") -> Path:
    (tmp_path / "my_stages.py").write_text(STAGES)
    (tmp_path / "pipelines.yaml").write_text(
        f"""
server: {{shutdown_timeout: 30}}
pipelines:
  live:
    source: {{use: "my_stages:endless"}}
    {transform}
    sinks:
      - use: file
        with: {{path: out/live.ndjson}}
"""
    )
    return tmp_path


def _start(cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline", "run", "live"],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _read_rest(proc: subprocess.Popen[str], timeout: float = 30) -> str:
    """Read stdout to its end through the same buffered file as `_wait_for_lines` (so
    nothing it already buffered is lost, as with `communicate`), draining stderr aside."""
    assert proc.stdout is not None and proc.stderr is not None
    drain = threading.Thread(target=proc.stderr.read, daemon=True)
    drain.start()
    rest = proc.stdout.read()
    proc.wait(timeout=timeout)
    drain.join(timeout)
    return rest


def _wait_for_lines(proc: subprocess.Popen[str], n: int) -> list[str]:
    assert proc.stdout is not None
    return [proc.stdout.readline() for _ in range(n)]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_ends_run_with_shutdown(tmp_path: Path, sig: signal.Signals) -> None:
    """SIGINT/SIGTERM: complete(reason=shutdown) last, sinks flushed, exit 0."""
    with _start(_endless_project(tmp_path)) as proc:
        try:
            first = _wait_for_lines(proc, 5)
            proc.send_signal(sig)
            rest = _read_rest(proc)
        finally:
            proc.kill()
    assert proc.returncode == 0
    envs = envelopes("".join(first) + rest)
    assert envs[-1]["status"] == "complete" and envs[-1]["reason"] == "shutdown"
    assert [e["seq"] for e in envs] == list(range(1, len(envs) + 1))
    assert (tmp_path / "out/live.ndjson").read_text() == "".join(first) + rest


def test_second_signal_exits_at_once(tmp_path: Path) -> None:
    """A second signal exits at once even when in-flight work would hold shutdown."""
    transform = 'transforms: [{use: "my_stages:stuck", blocking: true}]'
    with _start(_endless_project(tmp_path, transform)) as proc:
        try:
            assert proc.stderr is not None
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                line = proc.stderr.readline()
                if "run_started" in line:
                    break
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=10)
        finally:
            proc.kill()
    assert proc.returncode == 1


def test_console_script_installed() -> None:
    """The `pipeline` console script is installed and answers --help."""
    proc = subprocess.run(
        [Path(sys.executable).parent / "pipeline", "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0
    for command in ("run", "validate", "list", "tail", "stages"):
        assert command in proc.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--port", "99999"],
            "Error: Invalid value for '--port': 99999 is not in the range 0<=x<=65535.",
        ),
        (
            ["--host", "256.1.1.1", "--port", "0"],
            "pipeline run --serve: cannot listen on 256.1.1.1:0: Name or service not known",
        ),
    ],
)
def test_serve_bad_address_exits_two(project: Path, args: list[str], message: str) -> None:
    """An impossible port or host is one clear line and exit 2, never a server elsewhere."""
    proc = cli("run", "--serve", *args, cwd=project)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == message
    assert "Traceback" not in proc.stderr


GATED = """
import asyncio
import os


async def gated(gate):
    yield {"n": 1}
    for _ in range(600):  # 30 s at most
        if os.path.exists(gate):
            yield {"n": 2}
            return
        await asyncio.sleep(0.05)
    yield {"late": True}
"""


def test_run_writes_a_lone_envelope_at_once(tmp_path: Path) -> None:
    """stdout gathers what is ready, but never holds back a lone envelope."""
    gate = tmp_path / "gate"
    (tmp_path / "gated_stages.py").write_text(GATED)
    (tmp_path / "pipelines.yaml").write_text(
        f"pipelines:\n  p:\n    source: {{use: 'gated_stages:gated', with: {{gate: '{gate}'}}}}\n"
    )
    with subprocess.Popen(
        [sys.executable, "-m", "pipeline", "run", "p"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            first = _wait_for_lines(proc, 2)  # starting, then the lone envelope
            gate.touch()
            rest, _ = proc.communicate(timeout=60)
        finally:
            proc.kill()
    assert proc.returncode == 0
    envs = envelopes("".join(first) + rest)
    assert [e["status"] for e in envs] == ["starting", "processing", "processing", "complete"]
    assert [e["data"] for e in envs[1:3]] == [{"n": 1}, {"n": 2}]


def test_run_file_sink_writes_a_lone_envelope_at_once(tmp_path: Path) -> None:
    """The file sink gathers what is ready, but a lone envelope is in the file before
    the source produces the next one (a live reader of the file sees it)."""
    gate, out = tmp_path / "gate", tmp_path / "out.ndjson"
    (tmp_path / "gated_stages.py").write_text(GATED)
    (tmp_path / "pipelines.yaml").write_text(
        f"pipelines:\n  p:\n    source: {{use: 'gated_stages:gated', with: {{gate: '{gate}'}}}}\n"
        f"    sinks: [{{use: file, with: {{path: '{out}'}}}}]\n"
    )
    with subprocess.Popen(
        [sys.executable, "-m", "pipeline", "run", "p"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            seen = ""
            for _ in range(600):  # 30 s at most; the source gives up after as long
                seen = out.read_text() if out.exists() else ""
                if seen.count("\n") >= 2:
                    break
                time.sleep(0.05)
            gate.touch()
            proc.communicate(timeout=60)
        finally:
            proc.kill()
    assert proc.returncode == 0
    assert [e["status"] for e in envelopes(seen)] == ["starting", "processing"]
    envs = envelopes(out.read_text())
    assert [e["status"] for e in envs] == ["starting", "processing", "processing", "complete"]
    assert [e["data"] for e in envs[1:3]] == [{"n": 1}, {"n": 2}]


def test_run_writes_long_runs_whole_and_in_order(project: Path) -> None:
    """Thousands of envelopes, written in batches, arrive complete and in order."""
    count = "pipelines.on_demand.source.with.count=5000"
    proc = cli("run", "on_demand", "--set", count, cwd=project)
    assert proc.returncode == 0, proc.stderr
    envs = envelopes(proc.stdout)
    assert [e["seq"] for e in envs] == list(range(1, 5003))
    assert sum(e["status"] == "processing" for e in envs) == 5000


def test_what_a_stage_prints_goes_to_stderr_not_into_the_ndjson(tmp_path: Path) -> None:
    """A stage printing at import and per chunk, and writing to file descriptor 1: stdout
    holds only the envelopes (every line JSON), the printed text is on stderr."""
    (tmp_path / "noisy.py").write_text(
        "import os\n"
        "print('imported noisy')\n"
        "def shout(chunk):\n"
        "    print('got', chunk)\n"
        "    os.write(1, b'raw write\\n')\n"
        "    return chunk\n"
    )
    (tmp_path / "pipelines.yaml").write_text(
        "pipelines:\n  loud:\n    source: {use: counter, with: {count: 3}}\n"
        "    transforms: [{use: noisy:shout}]\n"
    )
    proc = cli("run", "loud", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert [e["status"] for e in envelopes(proc.stdout)] == [
        "starting",
        *["processing"] * 3,
        "complete",
    ]
    assert "imported noisy" in proc.stderr
    assert proc.stderr.count("raw write") == 3
    assert proc.stderr.count("got {") == 3


def test_run_off_a_terminal_never_imports_rich(project: Path) -> None:
    """Progress lines are for terminals: a piped `pipeline run` does not load rich."""
    proc = cli("run", "counting", cwd=project, env={"PYTHONPROFILEIMPORTTIME": "1"})
    assert proc.returncode in (0, 1), proc.stderr
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if "|" in line}
    assert "pipeline.engine.run" in imported  # the import report is there
    assert not {m for m in imported if m.startswith(("rich.", "pygments"))}
