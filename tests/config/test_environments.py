"""Configs per environment: several ``-c`` files merged in order, and ``--set`` overrides."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.config import models as config
from pipeline.config.loader import load_and_resolve
from pipeline.errors import ConfigError
from tests.test_cli import cli

BASE = """\
server:
  port: 8000
  token: base-token
pipelines:
  sensors:
    description: base
    source:
      use: counter
      with: {count: 5, interval: 0}
    transforms:
      - use: dedupe
        with: {key: n}
    sinks:
      - use: file
        with: {path: base.ndjson}
    retain: 100
"""

PROD = """\
server:
  port: 9000
pipelines:
  sensors:
    source:
      with: {count: 1000}
    sinks: []
  extra:
    source: {use: counter}
"""


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    (tmp_path / "base.yaml").write_text(BASE)
    (tmp_path / "prod.yaml").write_text(PROD)
    return tmp_path / "base.yaml", tmp_path / "prod.yaml"


def test_later_files_win_key_by_key_and_replace_lists(files: tuple[Path, Path]) -> None:
    """Mappings merge recursively, later keys win, lists are replaced whole, and new
    pipelines are added; values not overridden keep their first file."""
    cfg = config.load(files, environ={})
    sensors = cfg.pipelines["sensors"]
    assert cfg.server.port == 9000 and cfg.server.token == "base-token"
    assert sensors.source.use == "counter"
    assert sensors.source.with_ == {"count": 1000, "interval": 0}
    assert sensors.sinks == [] and sensors.retain == 100 and sensors.description == "base"
    assert list(cfg.pipelines) == ["sensors", "extra"]
    assert cfg.files == tuple(str(f) for f in files)


def test_every_problem_points_at_the_file_it_came_from(files: tuple[Path, Path]) -> None:
    """A bad value is reported at its own file and line, whichever file wrote it."""
    base, prod = files
    base.write_text(BASE.replace("retain: 100", "retain: -1"))
    prod.write_text(PROD + "    retain: many\n")
    with pytest.raises(ConfigError) as info:
        load_and_resolve([base, prod], environ={})
    assert [str(p) for p in info.value.problems] == [
        f"{base}:16: pipelines.sensors.retain: expected an integer >= 0",
        f"{prod}:10: pipelines.extra.retain: expected an integer",
    ]


def test_set_overrides_with_yaml_types(files: tuple[Path, Path]) -> None:
    """`--set` values are YAML: numbers, booleans, lists; list items by index; a pipeline
    whose name has dots is found whole; and they win over every file."""
    base, prod = files
    cfg = config.load(
        [base, prod],
        environ={},
        sets=[
            "pipelines.sensors.source.with.count=10",
            "pipelines.sensors.transforms[0].with.key=m",
            "server.cors_origins=[http://a, http://b]",
            "pipelines.sensors.retain=7",
            "server.host='0.0.0.0'",
            "pipelines.extra.trigger=request",
        ],
    )
    sensors = cfg.pipelines["sensors"]
    assert sensors.source.with_ == {"count": 10, "interval": 0}
    assert sensors.transforms[0].with_ == {"key": "m"}
    assert cfg.server.cors_origins == ["http://a", "http://b"]
    assert sensors.retain == 7 and cfg.server.host == "0.0.0.0"
    assert cfg.pipelines["extra"].trigger == "request"
    assert cfg.file_of(("pipelines", "sensors", "retain")) == "--set"
    assert cfg.line_of(("pipelines", "sensors", "retain")) == 4
    dotted = BASE.replace("  sensors:", "  a.b:")
    base.write_text(dotted)
    cfg = config.load([base], environ={}, sets=["pipelines.a.b.retain=3"])
    assert cfg.pipelines["a.b"].retain == 3


def test_bad_set_arguments_are_problems(files: tuple[Path, Path]) -> None:
    """A --set that is not PATH=VALUE, points into a scalar or past a list, or whose value
    does not validate, is reported as `--set:N`."""
    base, _ = files
    with pytest.raises(ConfigError) as info:
        config.load(
            [base],
            environ={},
            sets=[
                "no-equals",
                "pipelines.sensors.retain.x=1",
                "pipelines.sensors.transforms[3].use=x",
                "pipelines.sensors.source.with.interval=[",
                "pipelines.sensors.retain=lots",
            ],
        )
    assert [str(p) for p in info.value.problems] == [
        "--set:1: `--set no-equals`: expected PATH=VALUE, for example pipelines.NAME.retain=100",
        "--set:2: `--set pipelines.sensors.retain.x`: `pipelines.sensors.retain` is not a mapping",
        "--set:3: `--set pipelines.sensors.transforms[3].use`: "
        "`pipelines.sensors.transforms` has 1 items",
        "--set:4: `--set pipelines.sensors.source.with.interval`: the value is not valid YAML",
        "--set:5: pipelines.sensors.retain: expected an integer",
    ]


def test_validate_and_list_show_files_and_sets_with_secrets_masked(
    files: tuple[Path, Path],
) -> None:
    """`validate` names every file and --set; `list` shows the merged config, with a
    token given by --set masked."""
    base, _ = files
    cwd = base.parent
    args = ("-c", "base.yaml", "-c", "prod.yaml", "--set", "pipelines.sensors.retain=5")
    secret = ("--set", "server.token=hunter2-token")
    proc = cli("validate", *args, *secret, cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == (
        "base.yaml + prod.yaml + --set pipelines.sensors.retain=5 + --set server.token=***: "
        "ok (2 pipelines: sensors, extra)\n"
    )
    listed = cli("list", *args, *secret, cwd=cwd)
    assert listed.returncode == 0, listed.stderr
    assert "config: base.yaml + prod.yaml\n  --set pipelines.sensors.retain=5\n" in listed.stdout
    assert 'source      counter {"count":1000,"interval":0}' in listed.stdout
    as_json = json.loads(cli("list", "--json", *args, *secret, cwd=cwd).stdout)
    assert as_json["files"] == ["base.yaml", "prod.yaml"]
    assert as_json["sets"] == ["pipelines.sensors.retain=5", "server.token=***"]
    assert as_json["server"]["port"] == 9000 and as_json["server"]["token"] == "***"
    for out in (proc, listed):
        assert "hunter2" not in out.stdout + out.stderr
    bad = cli("validate", *args, "--set", "pipelines.sensors.retain=-2", cwd=cwd)
    assert bad.returncode == 2
    assert bad.stderr == "--set:2: pipelines.sensors.retain: expected an integer >= 0\n"


def test_run_merges_files_and_sets(files: tuple[Path, Path]) -> None:
    """`pipeline run` runs the merged config: the count from --set, no sinks from prod."""
    base, _ = files
    cwd = base.parent
    proc = cli(
        "run",
        "sensors",
        "-c",
        "base.yaml",
        "-c",
        "prod.yaml",
        "--set",
        "pipelines.sensors.source.with.count=3",
        cwd=cwd,
    )
    assert proc.returncode == 0, proc.stderr
    data = [json.loads(x)["data"] for x in proc.stdout.splitlines() if '"processing"' in x]
    assert len(data) == 3
    assert not (cwd / "base.ndjson").exists()


def test_env_var_config_takes_several_files(files: tuple[Path, Path]) -> None:
    """`$PIPELINE_CONFIG` may name several files, separated by spaces."""
    base, _ = files
    proc = cli("validate", cwd=base.parent, env={"PIPELINE_CONFIG": "base.yaml prod.yaml"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("base.yaml + prod.yaml: ok (2 pipelines")
