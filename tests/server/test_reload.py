"""Hot reload (SPEC §11): SIGHUP and ``--reload`` on a real server subprocess."""

from __future__ import annotations

import shutil
import signal
import textwrap
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.http_helpers import ServerProcess, wait_until

STAGES = """
    import asyncio

    import helpers


    async def ticks(interval: float = 0.01):
        n = 0
        while True:
            n += 1
            yield {"n": n}
            await asyncio.sleep(interval)


    def tag(chunk):
        return {**chunk, "label": helpers.label()}
"""

HELPERS_V1 = """
    def label():
        return "v1"
"""

CONFIG = """
    server: {{shutdown_timeout: 5}}
    pipelines:
      a:
        source: {{use: my_stages:ticks, with: {{interval: {interval}}}}}
        transforms:
          - use: my_stages:tag
        sinks:
          - use: file
            with: {{path: {out}/a.ndjson, mode: append, fsync: false}}
      b:
        source: {{use: my_stages:ticks, with: {{interval: 0.02}}}}
        sinks:
          - use: file
            with: {{path: {out}/b.ndjson, mode: append, fsync: false}}
"""


def envelopes(path: Path) -> list[dict[str, Any]]:
    """Every whole line of an NDJSON file written by the file sink."""
    if not path.exists():
        return []
    data = path.read_bytes()
    whole = data[: data.rfind(b"\n") + 1]  # the sink may be writing the last line right now
    return [orjson.loads(x) for x in whole.split(b"\n") if x.strip()]


def pipelines(server: ServerProcess) -> dict[str, Any]:
    return httpx.get(server.url("/pipelines"), timeout=5).json()  # type: ignore[no-any-return]


def state(server: ServerProcess, name: str) -> dict[str, Any]:
    return next(p for p in pipelines(server)["pipelines"] if p["name"] == name)


def outcomes_logged(server: ServerProcess) -> int:
    """How many reload outcomes (of any kind) the server has logged."""
    events = ('"reloaded"', '"reload_rejected"', '"reload_failed"')
    return sum(server.log_text.count(e) for e in events)


def sighup(server: ServerProcess, timeout: float = 20) -> None:
    """Send SIGHUP and wait until the server has logged that reload's outcome."""
    before = outcomes_logged(server)
    server.signal(signal.SIGHUP)
    wait_until(lambda: outcomes_logged(server) > before, timeout=timeout)


def reload_ten_times(server: ServerProcess, module: Path, out: Path) -> None:
    """Ten times: let 20 more envelopes reach ``out``, bump ``VERSION`` in ``module``,
    reload with SIGHUP."""
    for n in range(1, 11):
        enough = len(envelopes(out)) + 20
        wait_until(lambda: len(envelopes(out)) > enough, timeout=20)  # noqa: B023
        text = module.read_text()
        module.write_text(text.replace(f"VERSION = {n - 1}\n", f"VERSION = {n}\n"))
        sighup(server, timeout=30)


def write_project(root: Path, out: Path | None = None) -> Path:
    """Two ticking pipelines (`a` uses helpers.label) writing to ``out`` (``root/out``)."""
    root.mkdir(exist_ok=True)
    (root / "my_stages.py").write_text(textwrap.dedent(STAGES))
    (root / "helpers.py").write_text(textwrap.dedent(HELPERS_V1))
    out = out or root / "out"
    out.mkdir(exist_ok=True)
    config = root / "pipelines.yaml"
    config.write_text(textwrap.dedent(CONFIG.format(out=out, interval=0.01)))
    return config


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return write_project(tmp_path)


def runs_of(envs: list[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(e["run"] for e in envs))


def test_sighup_restarts_only_the_pipeline_whose_imported_code_changed(project: Path) -> None:
    """An edit of a module the stage module imports restarts that pipeline with the new
    code (complete(reason=reload), then a new run at once); the other keeps its run."""
    out = project.parent / "out"
    with ServerProcess(project) as server:
        wait_until(lambda: len(envelopes(out / "a.ndjson")) > 5)
        run_b = state(server, "b")["run"]
        run_a = state(server, "a")["run"]
        (project.parent / "helpers.py").write_text("def label():\n    return 'v2'\n")
        sighup(server)
        wait_until(
            lambda: any(
                e.get("data", {}).get("label") == "v2" for e in envelopes(out / "a.ndjson")
            ),
            timeout=20,
        )
        assert state(server, "b")["run"] == run_b
        assert state(server, "b")["state"] == "running"
        new_a = state(server, "a")
        assert new_a["run"] != run_a and new_a["state"] == "running"
        body = pipelines(server)["reload"]
        assert (body["applied"], body["rejected"], body["failed"]) == (1, 0, 0)
        assert body["problems"] == [] and body["last_outcome"] == "applied"
        assert body["changed"] == {"changed": ["a"]}
        assert body["last_success"] == body["last_attempt"] is not None
    a = envelopes(out / "a.ndjson")
    first = [e for e in a if e["run"] == run_a]
    assert first[-1]["status"] == "complete" and first[-1]["reason"] == "reload"
    assert [e["seq"] for e in first] == list(range(1, len(first) + 1))
    assert {e["data"]["label"] for e in first if e["status"] == "processing"} == {"v1"}
    second = [e for e in a if e["run"] == new_a["run"]]
    assert second[0]["status"] == "starting"
    assert {e["data"]["label"] for e in second if e["status"] == "processing"} == {"v2"}
    b = envelopes(out / "b.ndjson")
    assert runs_of(b) == [run_b]
    assert b[-1]["reason"] == "shutdown"
    line = next(x for x in server.stderr if '"reloaded"' in x)
    logged = orjson.loads(line)
    assert logged["changed"] == ["a"] and logged["unchanged"] == 1
    assert logged["trigger"] == "SIGHUP"


def test_invalid_reload_changes_nothing_and_is_reported(project: Path) -> None:
    """A stage module that no longer imports, then a bad value: every problem is logged as
    FILE:LINE: path: message and shown under `reload`; the runs go on untouched."""
    out = project.parent / "out"
    with ServerProcess(project) as server:
        wait_until(lambda: len(envelopes(out / "a.ndjson")) > 5)
        runs = {n: state(server, n)["run"] for n in ("a", "b")}
        (project.parent / "helpers.py").write_text("def label(:\n")
        sighup(server)
        body = pipelines(server)["reload"]
        assert (body["applied"], body["rejected"], body["failed"]) == (0, 1, 0)
        assert body["last_success"] is None and body["last_outcome"] == "rejected"
        assert len(body["problems"]) == 3  # every stage from my_stages
        file = str(project)
        assert body["problems"][0].startswith(f"{file}:5: pipelines.a.source.use: module ")
        assert "SyntaxError" in body["problems"][0] and "helpers.py:1" in body["problems"][0]
        assert f'"problem":"{body["problems"][0]}' in server.log_text.replace("\\\\", "\\")
        assert {n: state(server, n)["run"] for n in ("a", "b")} == runs

        (project.parent / "helpers.py").write_text(textwrap.dedent(HELPERS_V1))
        project.write_text(project.read_text().replace("interval: 0.01", "interval: -x"))
        sighup(server)
        body = pipelines(server)["reload"]
        assert body["rejected"] == 2
        assert body["problems"] == [
            f"{file}:5: pipelines.a.source.with.interval: Input should be a valid number, "
            "unable to parse string as a number"
        ]
        assert {n: state(server, n)["run"] for n in ("a", "b")} == runs
        assert all(state(server, n)["state"] == "running" for n in ("a", "b"))

        project.write_text(project.read_text().replace("interval: -x", "interval: 0.01"))
        sighup(server)
        body = pipelines(server)["reload"]
        assert (body["applied"], body["rejected"], body["problems"]) == (1, 2, [])
        assert body["changed"] == {}  # back to what runs: nothing to restart
        assert {n: state(server, n)["run"] for n in ("a", "b")} == runs


def test_watch_reloads_a_changed_definition_and_old_tokens_get_the_new_run(
    project: Path,
) -> None:
    """--reload: editing pipelines.yaml restarts the edited pipeline; a resume token of the
    old run gets the new run from its first retained envelope."""
    out = project.parent / "out"
    with ServerProcess(project, args=("--reload",)) as server:
        wait_until(lambda: len(envelopes(out / "a.ndjson")) > 5)
        old = {n: state(server, n)["run"] for n in ("a", "b")}
        wait_until(lambda: '"reload_watching"' in server.log_text)
        project.write_text(project.read_text().replace("interval: 0.01", "interval: 0.005"))
        wait_until(lambda: outcomes_logged(server) == 1, timeout=30)
        assert state(server, "b")["run"] == old["b"]
        new_a = state(server, "a")["run"]
        assert new_a != old["a"]
        assert '"trigger":"watch"' in server.log_text
        assert "change detected" not in server.log_text  # watchfiles' own line is quiet
        with httpx.stream(
            "GET", server.url(f"/pipelines/a/stream?since={old['a']}:3"), timeout=10
        ) as response:
            lines = response.iter_lines()
            notice, first = orjson.loads(next(lines)), orjson.loads(next(lines))
        assert (notice["status"], notice["reason"]) == ("lagged", "run_changed")
        assert (notice["previous_run"], notice["run"]) == (old["a"], new_a)
        assert first["run"] == new_a and first["seq"] == 1 and first["status"] == "starting"


def test_watch_finds_a_project_folder_that_was_replaced(tmp_path: Path) -> None:
    """--reload: the project folder is deleted (the reload is rejected: the config is
    gone, the runs go on), then a new one is moved into its place: the watcher finds it
    and reloads it (the pipeline whose code changed restarts, the other keeps its run)."""
    project, out = tmp_path / "project", tmp_path / "out"
    config = write_project(project, out)
    with ServerProcess(config, args=("--reload",)) as server:
        wait_until(lambda: '"reload_watching"' in server.log_text)
        runs = {n: state(server, n)["run"] for n in ("a", "b")}
        shutil.rmtree(project)
        wait_until(lambda: '"reload_watch_waiting"' in server.log_text, timeout=30)
        assert '"reloaded"' not in server.log_text
        assert {n: state(server, n)["run"] for n in ("a", "b")} == runs
        staging = tmp_path / "staging"
        write_project(staging, out)
        (staging / "helpers.py").write_text("def label():\n    return 'v2'\n")
        staging.rename(project)
        wait_until(lambda: '"reloaded"' in server.log_text, timeout=30)
        wait_until(lambda: server.log_text.count('"reload_watching"') == 2)
        assert state(server, "b")["run"] == runs["b"]
        assert state(server, "a")["run"] != runs["a"]
        wait_until(
            lambda: any(
                e.get("data", {}).get("label") == "v2" for e in envelopes(out / "a.ndjson")
            ),
            timeout=20,
        )
        (project / "helpers.py").write_text("def label():\n    return 'v3'\n")  # watched again
        wait_until(lambda: server.log_text.count('"reloaded"') == 2, timeout=30)


BROKER = """
    import asyncio
    from pathlib import Path

    from pipeline import Message

    VERSION = 0


    def _ids(path):
        p = Path(path)
        return [int(x) for x in p.read_text().split()] if p.exists() else []


    def _append(path, i):
        with open(path, "a") as fh:
            fh.write(f"{i}\\n")


    async def messages(state: str, interval: float = 0.002):
        \"\"\"A file-backed broker: what was delivered and not acked is delivered again.\"\"\"
        delivered, acked = _ids(state + ".delivered"), set(_ids(state + ".acked"))

        def ack_of(i):
            return lambda: _append(state + ".acked", i)

        for i in sorted(set(delivered) - acked):
            _append(state + ".redelivered", i)
            yield Message({"id": i}, ack=ack_of(i))
        i = max(delivered, default=0)
        while True:
            i += 1
            _append(state + ".delivered", i)
            yield Message({"id": i}, ack=ack_of(i))
            await asyncio.sleep(interval)
"""

WORK = """

    async def work(chunk):
        import asyncio

        await asyncio.sleep(0.005)
        return {**chunk, "version": VERSION}
"""

UNDER_LOAD = """
    server: {{shutdown_timeout: 10}}
    pipelines:
      {module}:
        source: {{use: {source}, with: {{{params}}}}}
        transforms:
          - use: {module}:work
            concurrency: 8
        sinks:
          - use: file
            with: {{path: {out}, mode: append, fsync: false}}
"""


def under_load(root: Path, module: str, code: str, source: str, params: str, out: Path) -> Path:
    """A project whose pipeline reads ``source`` and whose transform `work` (in ``module``:
    ``code`` + `WORK`) tags each chunk with the module's ``VERSION``, eight at a time."""
    (root / f"{module}.py").write_text(textwrap.dedent(code + WORK))
    config = root / "pipelines.yaml"
    text = UNDER_LOAD.format(module=module, source=source, params=params, out=out)
    config.write_text(textwrap.dedent(text))
    return config


def test_acking_source_under_load_loses_nothing_across_ten_reloads(tmp_path: Path) -> None:
    """Ten reloads of a pipeline whose source acks: every message delivered is written
    and acked exactly once, each old run drains (nothing left for redelivery) and ends
    with complete(reason=reload), and each new run runs the new code."""
    state, out = tmp_path / "broker", tmp_path / "out.ndjson"
    config = under_load(tmp_path, "broker", BROKER, "broker:messages", f"state: {state}", out)
    with ServerProcess(config) as server:
        reload_ten_times(server, tmp_path / "broker.py", out)
        wait_until(lambda: any(e.get("data", {}).get("version") == 10 for e in envelopes(out)))
        server.signal(signal.SIGTERM)
        assert server.wait(30) == 0
    envs = envelopes(out)
    runs = runs_of(envs)
    assert len(runs) == 11
    reasons = [e["reason"] for e in envs if e["status"] == "complete"]
    assert reasons == ["reload"] * 10 + ["shutdown"]
    delivered = [int(x) for x in (tmp_path / "broker.delivered").read_text().split()]
    acked = [int(x) for x in (tmp_path / "broker.acked").read_text().split()]
    written = [e["data"]["id"] for e in envs if e["status"] == "processing"]
    assert delivered == list(range(1, len(delivered) + 1))
    assert sorted(acked) == delivered  # every message acked, exactly once
    assert sorted(written) == delivered  # ... and written, exactly once
    assert not (tmp_path / "broker.redelivered").exists()  # every drain finished its work
    assert len(delivered) > 10 * 20
    for i, run in enumerate(runs):
        versions = {e["data"]["version"] for e in envs if e["run"] == run and "data" in e}
        assert versions == {i}


def test_reload_rereads_every_file_and_keeps_the_sets(project: Path) -> None:
    """With several -c files and --set, a reload merges them all again: an edit of the
    overlay restarts the pipeline it touches and no other."""
    overlay = project.parent / "overlay.yaml"
    overlay.write_text("pipelines:\n  b:\n    description: first\n")
    args = ("-c", str(overlay), "--set", "pipelines.b.retain=7")
    with ServerProcess(project, args=args) as server:
        run_a, run_b = state(server, "a")["run"], state(server, "b")["run"]
        assert state(server, "b")["description"] == "first"
        overlay.write_text("pipelines:\n  b:\n    description: second\n    retain: 1\n")
        sighup(server)
        assert pipelines(server)["reload"]["changed"] == {"changed": ["b"]}
        b = state(server, "b")
        assert b["description"] == "second" and b["run"] != run_b
        assert state(server, "a")["run"] == run_a
        with httpx.stream("GET", server.url("/pipelines/b/stream?since=0"), timeout=10) as r:
            lines = r.iter_lines()
            first = orjson.loads(next(lines))
        assert first["run"] == b["run"]


def test_event_source_follows_into_the_new_run(project: Path) -> None:
    """An EventSource reconnecting with Last-Event-ID of the reloaded run's `complete`
    gets the new run from its first retained envelope (not 204)."""
    out = project.parent / "out"
    with ServerProcess(project) as server:
        run_a = state(server, "a")["run"]
        (project.parent / "helpers.py").write_text("def label():\n    return 'v2'\n")
        sighup(server)
        last = [e for e in envelopes(out / "a.ndjson") if e["run"] == run_a][-1]
        assert last["status"] == "complete" and last["reason"] == "reload"
        headers = {"Last-Event-ID": f"{run_a}:{last['seq']}"}
        with httpx.stream(
            "GET", server.url("/pipelines/a/events"), headers=headers, timeout=10
        ) as response:
            assert response.status_code == 200
            datas = (x for x in response.iter_lines() if x.startswith("data:"))
            notice = orjson.loads(next(datas).removeprefix("data:").strip())
            first = orjson.loads(next(datas).removeprefix("data:").strip())
        assert (notice["status"], notice["reason"]) == ("lagged", "run_changed")
        assert first["status"] == "starting" and first["seq"] == 1
        assert first["run"] == state(server, "a")["run"] != run_a


REQUEST_CONFIG = """
    pipelines:
      r:
        trigger: request
        source: {use: my_stages:ticks, with: {interval: 0.01}}
        transforms:
          - use: my_stages:tag
"""


def test_request_pipeline_streams_drain_and_new_requests_run_new_code(tmp_path: Path) -> None:
    """A changed `trigger: request` pipeline: each open request run ends with
    complete(reason=reload); the next request runs the new code."""
    (tmp_path / "my_stages.py").write_text(textwrap.dedent(STAGES))
    (tmp_path / "helpers.py").write_text(textwrap.dedent(HELPERS_V1))
    config = tmp_path / "pipelines.yaml"
    config.write_text(textwrap.dedent(REQUEST_CONFIG))
    with ServerProcess(config) as server:
        with httpx.stream("GET", server.url("/pipelines/r/stream"), timeout=20) as response:
            lines = response.iter_lines()
            got = [orjson.loads(next(lines)) for _ in range(3)]
            (tmp_path / "helpers.py").write_text("def label():\n    return 'v2'\n")
            server.signal(signal.SIGHUP)
            got += [orjson.loads(x) for x in lines]
        assert got[-1]["status"] == "complete" and got[-1]["reason"] == "reload"
        labels = {e["data"]["label"] for e in got if e["status"] == "processing"}
        assert labels == {"v1"}
        wait_until(lambda: outcomes_logged(server) == 1, timeout=20)
        with httpx.stream("GET", server.url("/pipelines/r/stream"), timeout=20) as response:
            lines = response.iter_lines()
            fresh = [orjson.loads(next(lines)) for _ in range(3)]
        assert [e["status"] for e in fresh] == ["starting", "processing", "processing"]
        assert {e["data"]["label"] for e in fresh[1:]} == {"v2"}


def test_redis_stream_under_load_loses_nothing_across_ten_reloads(tmp_path: Path) -> None:
    """The built-in `redis_stream` source (a real consumer group) fed steadily while the
    pipeline's code is reloaded ten times: every entry is written once, nothing is left
    pending (each drain acked its work), and each run ran its own version of the code."""
    redis = pytest.importorskip("redis")
    stream, group = f"reload-{uuid.uuid4().hex}", "g"
    client = redis.Redis()
    client.xgroup_create(stream, group, id="0", mkstream=True)
    out = tmp_path / "out.ndjson"
    params = f"stream: {stream}, group: {group}, batch: 16, max_in_flight: 64"
    config = under_load(tmp_path, "rstages", "    VERSION = 0\n", "redis_stream", params, out)
    stop = threading.Event()
    produced: list[int] = []

    def produce() -> None:
        while not stop.is_set() and len(produced) < 20_000:
            client.xadd(stream, {"data": orjson.dumps({"id": len(produced) + 1})})
            produced.append(len(produced) + 1)
            time.sleep(0.002)

    producer = threading.Thread(target=produce, daemon=True)
    try:
        with ServerProcess(config) as server:
            producer.start()
            reload_ten_times(server, tmp_path / "rstages.py", out)
            stop.set()
            producer.join(10)
            total = len(produced)
            wait_until(
                lambda: len([e for e in envelopes(out) if e["status"] == "processing"]) >= total,
                timeout=30,
            )
            server.signal(signal.SIGTERM)
            assert server.wait(30) == 0
        envs = envelopes(out)
        written = [e["data"]["id"] for e in envs if e["status"] == "processing"]
        assert sorted(set(written)) == list(range(1, total + 1))  # nothing lost
        assert len(written) == total  # and nothing twice: every drain acked its work
        assert client.xpending(stream, group)["pending"] == 0
        reasons = [e["reason"] for e in envs if e["status"] == "complete"]
        assert reasons == ["reload"] * 10 + ["shutdown"]
        for i, run in enumerate(runs_of(envs)):
            versions = {e["data"]["version"] for e in envs if e["run"] == run and "data" in e}
            assert versions == {i}
    finally:
        stop.set()
        client.delete(stream)
        client.close()
