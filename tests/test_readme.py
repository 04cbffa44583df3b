"""The README's first-screen example runs exactly as shown."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

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
