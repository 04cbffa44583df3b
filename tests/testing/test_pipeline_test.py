"""`pipeline test` as a real subprocess: reports, diffs, exit codes, faults, JUnit, golden files."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import pytest

ROOT = Path(__file__).resolve().parents[2]

STAGES = """
import asyncio
from pipeline import sink, stream_transform

def double(chunk, *, factor: int = 2):
    if chunk.get("bad"):
        raise ValueError(f"bad chunk {chunk['n']}")
    return {**chunk, "n": chunk["n"] * factor}

def only_even(chunk):
    return chunk if chunk["n"] % 2 == 0 else None

def explode(chunk):
    for i in range(chunk.get("parts", 1)):
        yield {"n": chunk["n"], "part": i}

@stream_transform
async def pairs(chunks):
    batch = []
    async for chunk in chunks:
        batch.append(chunk)
        if len(batch) == 2:
            yield {"items": batch}
            batch = []
    if batch:
        yield {"items": batch}

async def numbers(count: int = 3):
    for n in range(count):
        yield {"n": n}

async def forever():
    while True:
        await asyncio.sleep(0.05)
        yield {"n": 0}

@sink(receives="data")
def printer(data, *, prefix: str = ""):
    print(prefix, data)
"""

CONFIG = """
pipelines:
  calc:
    source:
      use: my_stages:numbers
      with: {count: 3}
    transforms:
      - use: my_stages:double
      - use: my_stages:only_even
    sinks:
      - use: file
        with: {path: out/calc.ndjson}
      - use: my_stages:printer
  split:
    source: {use: my_stages:numbers}
    transforms:
      - use: my_stages:explode
      - use: my_stages:pairs
  slow:
    source: {use: my_stages:forever}
"""


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline", "test", *args],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def project(tmp_path: Path) -> Any:
    """A project folder with a config and a stages module; `write` adds a test file."""
    (tmp_path / "my_stages.py").write_text(STAGES)
    (tmp_path / "pipelines.yaml").write_text(CONFIG)

    def write(text: str, name: str = "calc.test.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text).lstrip())
        return path

    write.root = tmp_path  # type: ignore[attr-defined]
    return write


def test_passing_cases_print_one_line_each_and_exit_0(project: Any) -> None:
    """Every `*.test.yaml` beside the config runs by default; one PASS line per case."""
    project("""
        tests:
          - name: doubles and keeps the even ones
            pipeline: calc
            input: [{n: 1}, {n: 2}, {n: 3, bad: true}]
            expect:
              data: [{n: 2}, {n: 4}]
              chunk_errors:
                - {stage: "transforms[0]:double", type: ValueError, message: "^bad chunk 3$",
                   chunk: {n: 3}}
              stats: {processed: 2, chunk_errors: 1, errors: 0}
              statuses: [starting, processing, processing, chunk_error, complete]
              acked: all
          - name: with overrides a parameter
            pipeline: calc
            input: [{n: 1}]
            with:
              transforms[0]: {factor: 10}
            expect:
              data: [{n: 10}]
    """)
    project(
        """
        tests:
          - name: pairs of parts
            pipeline: split
            input: [{n: 1, parts: 3}]
            expect:
              data:
                - {items: [{n: 1, part: 0}, {n: 1, part: 1}]}
                - {items: [{n: 1, part: 2}]}
              where:
                - {path: "data.items[0].n", equals: 1}
                - {path: "data.items[-1].part", equals: 2, at: 1}
                - {path: data.items, contains: {part: 0}, at: 0}
                - {path: data.missing, exists: false}
        """,
        name="split.test.yaml",
    )
    out = cli(cwd=project.root)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.splitlines() == [
        "PASS calc.test.yaml: doubles and keeps the even ones",
        "PASS calc.test.yaml: with overrides a parameter",
        "PASS split.test.yaml: pairs of parts",
        "3 passed, 0 failed",
    ]
    assert not (project.root / "out").exists(), "sinks must be in-memory unless kept"


def test_a_failed_expectation_names_its_line_and_shows_a_diff(project: Any) -> None:
    """FILE:LINE points at the first differing item; the diff shows expected and got."""
    project("""
        tests:
          - name: good
            pipeline: calc
            input: [{n: 1}]
            expect:
              data: [{n: 2}]
          - name: wrong data
            pipeline: calc
            input: [{n: 1}, {n: 2}]
            expect:
              data:
                - {n: 2}
                - {n: 5}
              stats: {processed: 3}
    """)
    out = cli("calc.test.yaml", cwd=project.root)
    assert out.returncode == 1
    lines = out.stdout.splitlines()
    assert lines[0] == "PASS calc.test.yaml: good"
    assert lines[1] == (
        "FAIL calc.test.yaml:13: wrong data: "
        "data: 2 chunks expected, 2 came; first difference at [1]"
    )
    assert lines[2:7] == [
        "       --- expected",
        "       +++ got",
        "       @@ -1,2 +1,2 @@",
        '        {"n":2}',
        '       -{"n":5}',
    ]
    assert lines[7] == '       +{"n":4}'
    assert "calc.test.yaml:14: wrong data: stats: `processed` expected 3, got 2" in out.stdout
    assert lines[-1] == "1 passed, 1 failed"


def test_conditions_and_chunk_errors_report_what_came(project: Any) -> None:
    """A failing condition shows the envelope; a wrong chunk_error shows both lists."""
    project("""
        tests:
          - name: conditions
            pipeline: calc
            input: [{n: 1}, {n: 2}]
            expect:
              where:
                - {path: data.n, regex: "^[0-9]+$"}
          - name: errors
            pipeline: calc
            input: [{n: 1, bad: true}]
            expect:
              chunk_errors:
                - {stage: "transforms[1]", type: ValueError}
          - name: contains
            pipeline: calc
            input: [{n: 1}, {n: 2}]
            expect:
              contains: [{n: 4}, {n: 2}]
          - name: acks and count
            pipeline: calc
            input: [{n: 1}]
            expect:
              count: 2
              acked: none
    """)
    out = cli(cwd=project.root)
    assert out.returncode == 1
    text = out.stdout
    assert (
        "FAIL calc.test.yaml:7: conditions: where[0]: `data.n` of processing envelope [0] "
        "is 2, expected a match of /^[0-9]+$/"
    ) in text
    assert "FAIL calc.test.yaml:13: errors: chunk_errors[0] does not match" in text
    assert '+  "stage": "transforms[0]:double",' in text
    assert "FAIL calc.test.yaml:18: contains: contains[1]: no processing data matches" in text
    assert "FAIL calc.test.yaml:23: acks and count: count: 2 processing envelopes expected" in text
    assert "calc.test.yaml:24: acks and count: acked: expected chunks [] acknowledged, got [1]" in (
        text
    )
    assert text.splitlines()[-1] == "0 passed, 4 failed"


def test_a_bad_test_file_is_exit_2_with_every_problem(project: Any) -> None:
    """Problems are reported like `validate`: FILE:LINE: path: message, nothing runs."""
    project("""
        tests:
          - name: unknown key
            pipeline: calc
            inputs: []
          - name: unknown pipeline
            pipeline: nope
          - name: unknown stage
            pipeline: calc
            input: []
            with:
              transforms[7]: {factor: 2}
          - name: wrong parameter
            pipeline: calc
            input: []
            with:
              transforms[0]: {factor: many}
          - name: bad regex
            pipeline: calc
            input: []
            expect:
              chunk_errors: [{message: "("}]
          - name: missing input file
            pipeline: calc
            input: nowhere.ndjson
          - name: a fault on no stage
            pipeline: calc
            input: []
            faults: [{stage: "sinks[9]", on_chunk: 1}]
          - name: two checks in one condition
            pipeline: calc
            input: []
            expect:
              where: [{path: data.n, equals: 1, regex: x}]
    """)
    out = cli(cwd=project.root)
    assert out.returncode == 2, out.stdout
    assert out.stdout == ""
    assert out.stderr.splitlines() == [
        "calc.test.yaml:4: tests[0].inputs: unknown key; expected one of `name`, `pipeline`, "
        "`input`, `with`, `keep_sinks`, `faults`, `timeout`, `expect`",
        "calc.test.yaml:6: tests[1].pipeline: unknown pipeline `nope` (known: `calc`, `split`, "
        "`slow`)",
        "calc.test.yaml:11: tests[2].with.transforms[7]: no stage `transforms[7]` in pipeline "
        "`calc`; its stages: `source` (`source:numbers`), `transforms[0]` "
        "(`transforms[0]:double`), `transforms[1]` (`transforms[1]:only_even`), `sinks[0]` "
        "(`sinks[0]:file`), `sinks[1]` (`sinks[1]:printer`)",
        "calc.test.yaml:16: tests[3].with.transforms[0].factor: Input should be a valid integer, "
        "unable to parse string as an integer",
        "calc.test.yaml:21: tests[4].expect.chunk_errors[0].message: invalid regular expression: "
        "missing ), unterminated subpattern at position 0",
        "calc.test.yaml:24: tests[5].input: cannot read input file `nowhere.ndjson`: "
        "No such file or directory",
        "calc.test.yaml:28: tests[6].faults[0].stage: no stage `sinks[9]` in pipeline `calc`; "
        "its stages: `source` (`source:numbers`), `transforms[0]` (`transforms[0]:double`), "
        "`transforms[1]` (`transforms[1]:only_even`), `sinks[0]` (`sinks[0]:file`), `sinks[1]` "
        "(`sinks[1]:printer`)",
        "calc.test.yaml:33: tests[7].expect.where[0]: expected exactly one of `equals`, `regex`, "
        "`contains`, `exists`",
    ]


def test_no_test_file_and_a_bad_config_are_exit_2(project: Any) -> None:
    """Nothing to run is a usage error; so is a config that does not validate."""
    out = cli(cwd=project.root)
    assert out.returncode == 2
    assert out.stderr.strip() == "pipelines.yaml: no *.test.yaml beside it; name the test files"
    (project.root / "bad.yaml").write_text("pipelines:\n  x:\n    source: {use: nope}\n")
    out = cli("-c", "bad.yaml", cwd=project.root)
    assert out.returncode == 2
    assert out.stderr.startswith("bad.yaml:3: pipelines.x.source.use: unknown source `nope`")
    project("tests: []\n", name="empty.test.yaml")
    out = cli("empty.test.yaml", cwd=project.root)
    assert out.returncode == 2
    assert out.stderr.strip() == (
        "empty.test.yaml:1: tests: expected a non-empty list of test cases under `tests`"
    )


def test_faults_in_a_transform_a_stream_and_the_source(project: Any) -> None:
    """A fault fails the Nth chunk of a stage; in the source it ends the run with error."""
    project("""
        tests:
          - name: map fault
            pipeline: calc
            input: [{n: 1}, {n: 2}, {n: 3}]
            faults: [{stage: "transforms[0]", on_chunk: [1, 3], error: KeyError}]
            expect:
              data: [{n: 4}]
              chunk_errors:
                - {stage: "transforms[0]:double", type: KeyError, message: "chunk 1", chunk: {n: 1}}
                - {stage: "transforms[0]:double", type: KeyError, message: "chunk 3", chunk: {n: 3}}
              acked: all
          - name: flat map fault
            pipeline: split
            input: [{n: 1, parts: 1}, {n: 2, parts: 1}]
            faults: [{stage: "transforms[0]:explode", on_chunk: 2}]
            expect:
              data: [{items: [{n: 1, part: 0}]}]
              chunk_errors: [{stage: "transforms[0]", type: InjectedFault}]
          - name: stream fault ends the run
            pipeline: split
            input: [{n: 1}, {n: 2}, {n: 3}]
            faults: [{stage: "transforms[1]", on_chunk: 2, message: stream broke}]
            expect:
              reason: error
              error: {stage: "transforms[1]:pairs", type: InjectedFault, message: "^stream broke"}
              data: []
          - name: the replaced source fails
            pipeline: calc
            input: [{n: 2}, {n: 4}, {n: 6}]
            faults: [{stage: source, on_chunk: 3, error: ConnectionError}]
            expect:
              reason: error
              error: {stage: "source:numbers", type: ConnectionError}
              data: [{n: 4}, {n: 8}]
              acked: [1, 2]
          - name: the real source fails
            pipeline: calc
            with:
              source: {count: 5}
            faults: [{stage: source, on_chunk: 2}]
            expect:
              reason: error
              statuses: [starting, processing, error, complete]
    """)
    out = cli(cwd=project.root)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("PASS ") == 5


def test_kept_sinks_write_files_and_captured_sinks_do_not(project: Any) -> None:
    """`keep_sinks` runs the real sink; `{tmp}` is a fresh folder per case."""
    project("""
        tests:
          - name: keep the file sink
            pipeline: calc
            input: [{n: 1}, {n: 2}]
            keep_sinks: ["sinks[0]"]
            with:
              sinks[0]: {path: "{tmp}/calc.ndjson"}
            expect:
              files:
                - path: "{tmp}/calc.ndjson"
                  data: [{n: 2}, {n: 4}]
                  lines: 4
                  contains: '"status":"complete"'
          - name: a kept sink that fails
            pipeline: calc
            input: [{n: 1}, {n: 2}]
            keep_sinks: ["sinks[0]:file"]
            with:
              sinks[0]: {path: "{tmp}/calc.ndjson"}
            faults: [{stage: "sinks[0]", on_chunk: 2, error: OSError, message: disk full}]
            expect:
              reason: error
              error: {stage: "sinks[0]:file", type: OSError, message: disk full}
              acked: []
              files:
                - {path: "{tmp}/calc.ndjson", text: ""}
    """)
    out = cli(cwd=project.root)
    assert out.returncode == 1, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "PASS calc.test.yaml: keep the file sink"
    # the file sink wrote `starting` before it failed on the second envelope
    assert lines[1] == (
        "FAIL calc.test.yaml:26: a kept sink that fails: files[0]: the text of `{tmp}/calc.ndjson` "
        "differs"
    )
    assert any(line.strip().startswith('+{"status":"starting","pipeline":"calc"') for line in lines)
    assert not (project.root / "out").exists()


def test_a_run_that_does_not_end_fails_its_case(project: Any) -> None:
    """The case's `timeout` bounds the run; the report says it did not finish."""
    project("""
        tests:
          - name: endless
            pipeline: slow
            timeout: 0.3
            expect: {}
    """)
    out = cli(cwd=project.root)
    assert out.returncode == 1
    assert out.stdout.splitlines()[0] == (
        "FAIL calc.test.yaml:4: endless: the run did not finish within 0.3 s"
    )


def test_junit_report(project: Any) -> None:
    """--junit writes one testsuite per file and one testcase per case, failures included."""
    project("""
        tests:
          - name: ok
            pipeline: calc
            input: [{n: 1}]
            expect: {data: [{n: 2}]}
          - name: not ok
            pipeline: calc
            input: [{n: 1}]
            expect: {data: [{n: 3}]}
    """)
    out = cli("--junit", "report.xml", cwd=project.root)
    assert out.returncode == 1
    root = ET.parse(project.root / "report.xml").getroot()
    assert (root.tag, root.get("tests"), root.get("failures")) == ("testsuites", "2", "1")
    suite = root.find("testsuite")
    assert suite is not None and suite.get("name") == "calc.test.yaml"
    cases = suite.findall("testcase")
    assert [(c.get("name"), c.get("line")) for c in cases] == [("ok", "2"), ("not ok", "6")]
    assert cases[0].find("failure") is None
    failure = cases[1].find("failure")
    assert failure is not None
    assert failure.get("message") == "data: 1 chunks expected, 1 came; first difference at [0]"
    assert '-{"n":3}' in (failure.text or "")


def test_golden_files_are_written_by_update_and_then_compared(project: Any) -> None:
    """A missing golden file fails; --update writes it; a change shows as a diff."""
    test_file = project("""
        tests:
          - name: golden
            pipeline: calc
            input: [{n: 1}, {n: 2, bad: true}]
            expect:
              golden: golden/calc.ndjson
    """)
    out = cli(cwd=project.root)
    assert out.returncode == 1
    assert "cannot read `golden/calc.ndjson`; `pipeline test --update` writes it" in out.stdout
    out = cli("--update", cwd=project.root)
    assert out.returncode == 0, out.stdout
    assert out.stdout.splitlines()[0] == "PASS calc.test.yaml: golden (golden file written)"
    golden = (project.root / "golden" / "calc.ndjson").read_text().splitlines()
    assert golden[0] == '{"seq":1,"status":"starting"}'
    assert golden[1] == '{"data":{"n":2},"seq":2,"status":"processing"}'
    assert golden[2].startswith('{"chunk":{"bad":true,"n":2},"error":{"message":"bad chunk 2"')
    assert golden[3] == (
        '{"reason":"finished","seq":4,"stats":{"chunk_errors":1,"errors":0,"processed":1},'
        '"status":"complete"}'
    )
    assert cli(cwd=project.root).returncode == 0
    test_file.write_text(test_file.read_text().replace("{n: 1}", "{n: 5}"))
    out = cli(cwd=project.root)
    assert out.returncode == 1
    assert "golden: the envelopes differ from `golden/calc.ndjson`" in out.stdout
    assert '+{"data":{"n":10},"seq":2,"status":"processing"}' in out.stdout


def test_input_from_an_ndjson_file_and_keyword_filter(project: Any) -> None:
    """`input: FILE` reads NDJSON beside the test file; -k picks cases by name."""
    (project.root / "in.ndjson").write_text('{"n": 1}\n\n{"n": 2}\n')
    project("""
        tests:
          - name: from a file
            pipeline: calc
            input: in.ndjson
            expect: {data: [{n: 2}, {n: 4}]}
          - name: skipped
            pipeline: calc
            input: [{n: 1}]
            expect: {data: []}
    """)
    out = cli("-k", "file", cwd=project.root)
    assert out.returncode == 0, out.stdout
    assert out.stdout.splitlines() == ["PASS calc.test.yaml: from a file", "1 passed, 0 failed"]
    (project.root / "in.ndjson").write_text('{"n": 1}\n{oops\n')
    out = cli(cwd=project.root)
    assert out.returncode == 2
    assert (
        out.stderr.strip() == "calc.test.yaml:4: tests[0].input: `in.ndjson` line 2: not valid JSON"
    )


def test_the_examples_pass() -> None:
    """Every example's pipelines.test.yaml passes; each example ships a pytest file too."""
    configs = sorted(ROOT.glob("examples/*/pipelines.yaml"))
    tested = [c for c in configs if list(c.parent.glob("*.test.yaml"))]
    assert {"sensors", "access_logs"} <= {c.parent.name for c in tested}
    for config in tested:
        assert (config.parent / "test_pipelines.py").exists(), config.parent
        out = cli("-c", str(config.relative_to(ROOT)), cwd=ROOT)
        assert out.returncode == 0, out.stdout + out.stderr
        lines = out.stdout.splitlines()
        assert lines[-1].endswith(" passed, 0 failed") and not lines[-1].startswith("0 ")
