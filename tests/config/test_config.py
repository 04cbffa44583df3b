"""Config layer: safe YAML with lines, ${VAR} interpolation, schema, describe."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from pipeline.config import env as _env, models as config, parse as _yaml
from pipeline.errors import ConfigError, EnvVarError

MINIMAL = """\
pipelines:
  demo:
    source: {use: counter}
"""


def _problems(path: Path, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        config.load(path, environ=environ or {})
    return [str(p) for p in info.value.problems]


# --- _yaml ---------------------------------------------------------------------------


def test_format_loc_uses_dots_and_indexes() -> None:
    """Keys are joined with dots and sequence indexes are bracketed."""
    assert _yaml.format_loc(("pipelines", "a", "transforms", 1, "with", "unit")) == (
        "pipelines.a.transforms[1].with.unit"
    )
    assert _yaml.format_loc(()) == ""


def test_parse_records_the_line_of_every_value() -> None:
    """Every key and sequence item maps to its 1-based line."""
    parsed = _yaml.parse("a:\n  b:\n    - x\n    - {c: 1}\n")
    assert parsed.data == {"a": {"b": ["x", {"c": 1}]}}
    assert parsed.lines == {(): 1, ("a",): 1, ("a", "b"): 2, ("a", "b", 0): 3,
                            ("a", "b", 1): 4, ("a", "b", 1, "c"): 4}  # fmt: skip
    assert parsed.problems == []


def test_parse_reports_duplicate_keys_and_keeps_the_first() -> None:
    """PyYAML keeps the last duplicate silently; we report it and keep the first."""
    parsed = _yaml.parse("a: 1\nb: 2\na: 3\n")
    assert parsed.data == {"a": 1, "b": 2}
    assert parsed.problems == [(("a",), 3, "duplicate key (first defined on line 1)")]


def test_parse_rejects_object_tags() -> None:
    """An object-construction tag is reported and never constructed."""
    parsed = _yaml.parse("a: !!python/object/apply:os.system [ls]\nb: !custom x\n")
    assert parsed.data == {"a": None, "b": None}
    assert [m for _, _, m in parsed.problems] == [
        "unsupported YAML tag `!!python/object/apply:os.system`; only plain values are allowed",
        "unsupported YAML tag `!custom`; only plain values are allowed",
    ]
    assert parsed.poisoned == {("a",), ("b",)}


def test_parse_reports_a_bad_explicit_scalar() -> None:
    """A standard tag whose value does not fit is a problem, not an exception."""
    assert _yaml.parse("a: !!int abc\n").problems == [(("a",), 1, "invalid `!!int` value")]


def test_parse_supports_merge_keys_with_explicit_keys_winning() -> None:
    """`<<: *anchor` merges a mapping; keys written beside it override it."""
    parsed = _yaml.parse("base: &b {x: 1, y: 2}\nc:\n  <<: *b\n  y: 3\n")
    assert parsed.data["c"] == {"x": 1, "y": 3}
    assert parsed.problems == []


def test_parse_reports_a_recursive_alias() -> None:
    """A sequence that contains itself is reported instead of looping."""
    parsed = _yaml.parse("a: &x [1, *x]\n")
    assert parsed.problems == [(("a", 1), 1, "recursive YAML alias")]


def test_parse_syntax_error_has_line_and_no_traceback() -> None:
    """A syntax error becomes one problem with its line and column."""
    parsed = _yaml.parse("a:\n  b: c: d\n")
    assert parsed.data is None
    assert parsed.problems == [
        ((), 2, "invalid YAML: mapping values are not allowed here (column 7)")
    ]


def test_parse_keys_stay_strings() -> None:
    """Keys are kept as written, so `1:` or `yes:` is a string key."""
    assert _yaml.parse("1: a\nyes: b\n").data == {"1": "a", "yes": "b"}


def test_read_reports_a_file_that_is_not_utf8(tmp_path: Path) -> None:
    """Bytes that are not UTF-8 give a problem on their line."""
    path = tmp_path / "bad.yaml"
    path.write_bytes(b"a: 1\nb: \xff\n")
    assert _yaml.read(str(path)).problems == [((), 2, "cannot read config file: not valid UTF-8")]


# --- _env ----------------------------------------------------------------------------


def test_interpolate_replaces_string_values_only() -> None:
    """Keys and non-string values are left alone; defaults and escapes work."""
    data = {"${K}": "${A}-${B:-two}", "n": 3, "lit": "$${A}", "l": ["${A}"]}
    out = _env.interpolate(data, {"A": "one", "K": "key"})
    assert out.data == {"${K}": "one-two", "n": 3, "lit": "${A}", "l": ["one"]}
    assert out.env_paths == {("${K}",), ("l", 0)}
    assert out.secrets == {"one"}
    assert out.problems == []


def test_interpolate_default_only_is_not_from_env() -> None:
    """A value built from its default alone is not marked as coming from the environment."""
    out = _env.interpolate({"t": "${TOKEN:-}"}, {})
    assert (out.data, out.env_paths) == ({"t": ""}, set())


def test_interpolate_reports_undefined_and_malformed_references() -> None:
    """Undefined variables are named; malformed references are explained."""
    out = _env.interpolate({"a": "${MISSING}", "b": "${", "c": "${1X}"}, {})
    assert out.problems == [
        (("a",), "environment variable `MISSING` is not set and has no default"),
        (("b",), _env.MALFORMED),
        (("c",), _env.MALFORMED),
    ]


# --- config.load ---------------------------------------------------------------------


def test_load_minimal_config_fills_defaults(write_config: Callable[..., Path]) -> None:
    """A config with one source gets every documented default."""
    path = write_config(MINIMAL)
    cfg = config.load(path, environ={})
    assert cfg.server == config.ServerConfig()
    assert (cfg.server.host, cfg.server.port, cfg.server.token) == ("127.0.0.1", 8000, "")
    demo = cfg.pipelines["demo"]
    assert (demo.trigger, demo.retain, demo.transforms, demo.sinks) == ("start", 10000, [], [])
    assert demo.source.use == "counter" and demo.source.with_ == {}
    assert cfg.base_dir == path.parent.resolve() and cfg.file == str(path)


def test_load_keeps_pipelines_in_file_order(write_config: Callable[..., Path]) -> None:
    """Pipelines come back in the order of the file."""
    text = "pipelines:\n" + "".join(f"  {n}:\n    source: {{use: c}}\n" for n in "zay")
    assert list(config.load(write_config(text), environ={}).pipelines) == ["z", "a", "y"]


def test_load_accepts_empty_with_and_lists(write_config: Callable[..., Path]) -> None:
    """`with:`, `transforms:` and `sinks:` left empty mean empty."""
    text = "pipelines:\n  p:\n    source:\n      use: c\n      with:\n    transforms:\n    sinks:\n"
    p = config.load(write_config(text), environ={}).pipelines["p"]
    assert (p.source.with_, p.transforms, p.sinks) == ({}, [], [])


def test_line_of_finds_paths_and_falls_back_to_ancestors(
    write_config: Callable[..., Path],
) -> None:
    """`line_of` takes a string or a location and uses the nearest known ancestor."""
    text = MINIMAL + "    transforms:\n      - use: m:f\n        with:\n          unit: c\n"
    cfg = config.load(write_config(text), environ={})
    assert cfg.line_of("pipelines.demo.transforms[0].with.unit") == 7
    assert cfg.line_of(("pipelines", "demo", "transforms", 0, "with", "missing")) == 6
    assert cfg.line_of("pipelines.demo.transforms[0].with.missing") == 6
    assert cfg.line_of("pipelines.demo.transforms[0]") == 5
    assert cfg.line_of("nowhere.at.all") == 1


def test_env_values_are_interpolated_and_coerced(write_config: Callable[..., Path]) -> None:
    """`port: ${PORT}` becomes an integer; the value is remembered as secret."""
    path = write_config("server:\n  port: ${PORT}\n" + MINIMAL)
    cfg = config.load(path, environ={"PORT": "9001"})
    assert cfg.server.port == 9001
    assert cfg.env_paths == {("server", "port")}


def test_secret_of_the_wrong_type_is_never_printed(write_config: Callable[..., Path]) -> None:
    """A secret that fails validation is described, never shown."""
    path = write_config("server:\n  port: ${SECRET}\n  heartbeat: ${SECRET}\n" + MINIMAL)
    problems = _problems(path, {"SECRET": "hunter2-secret"})
    assert problems == [
        f"{path}:2: server.port: expected an integer",
        f"{path}:3: server.heartbeat: expected a number",
    ]
    assert "hunter2" not in "".join(problems)


def test_only_undefined_variables_raise_env_var_error(write_config: Callable[..., Path]) -> None:
    """An undefined variable alone raises `EnvVarError`, naming the variable."""
    path = write_config("server:\n  token: ${TOKEN}\n" + MINIMAL)
    with pytest.raises(EnvVarError) as info:
        config.load(path, environ={})
    assert str(info.value) == (
        f"{path}:2: server.token: environment variable `TOKEN` is not set and has no default"
    )


def test_problems_of_all_kinds_come_together_in_line_order(
    write_config: Callable[..., Path],
) -> None:
    """YAML, environment and schema problems are reported in one pass, sorted by line."""
    text = (
        "server:\n  port: ${NOPE}\n  host: a\n  host: b\n  extra: 1\n"
        "pipelines:\n  p:\n    source: {use: c, concurrency: 0}\n    trigger: x\n"
    )
    path = write_config(text)
    assert _problems(path) == [
        f"{path}:2: server.port: environment variable `NOPE` is not set and has no default",
        f"{path}:4: server.host: duplicate key (first defined on line 3)",
        f"{path}:5: server.extra: unknown key; expected one of `host`, `port`, `token`, "
        "`client_buffer`, `client_buffer_bytes`, `heartbeat`, `max_clients`, `shutdown_timeout`, "
        "`cors_origins`, `metrics_token`, `max_head_bytes`, `max_headers`, `head_timeout`, "
        "`evict_idle_after`",
        f"{path}:8: pipelines.p.source.concurrency: expected an integer >= 1",
        f"{path}:9: pipelines.p.trigger: expected `start` or `request`",
    ]


def test_a_problem_value_is_not_reported_twice(write_config: Callable[..., Path]) -> None:
    """A rejected tag is not also reported as the wrong type."""
    path = write_config("server:\n  port: !!python/name:os.system\n" + MINIMAL)
    assert _problems(path) == [
        f"{path}:2: server.port: unsupported YAML tag `!!python/name:os.system`; "
        "only plain values are allowed"
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "{f}: config file is empty; expected a mapping with `pipelines`"),
        ("[1]\n", "{f}:1: the top level must be a mapping with `pipelines`, found a list"),
        ("server: {}\n", "{f}:1: missing required key `pipelines`"),
        (
            "pipelines: [a]\n",
            "{f}:1: pipelines: expected a mapping of pipeline names to "
            "pipelines, found another type",
        ),
        ("pipelines:\n  p: 3\n", "{f}:2: pipelines.p: expected a mapping"),
    ],
)
def test_top_level_shape_problems(
    write_config: Callable[..., Path], text: str, expected: str
) -> None:
    """The top level must be a mapping with at least one pipeline."""
    path = write_config(text)
    assert _problems(path) == [expected.format(f=path)]


def test_request_params_need_trigger_request(write_config: Callable[..., Path]) -> None:
    """`request_params` with the default trigger is a problem on its own line."""
    path = write_config(MINIMAL + "    request_params: [limit]\n")
    assert _problems(path) == [
        f"{path}:4: pipelines.demo.request_params: only allowed with `trigger: request`"
    ]


def test_missing_file_is_one_problem_without_line() -> None:
    """A file that does not exist is reported by the path given."""
    with pytest.raises(ConfigError) as info:
        config.load("no/such/pipelines.yaml")
    assert (
        str(info.value)
        == "no/such/pipelines.yaml: cannot read config file: No such file or directory"
    )


# --- describe and default path -------------------------------------------------------


def test_describe_masks_env_values_and_token(write_config: Callable[..., Path]) -> None:
    """`describe` hides every env-derived value and a non-empty token."""
    text = (
        "server:\n  token: plain-token\n  host: ${HOST}\n"
        "pipelines:\n  p:\n    description: d\n    source:\n      use: c\n"
        "      with: {url: 'http://${CREDS}@x', n: 2, nested: {k: '${HOST}'}}\n"
    )
    cfg = config.load(write_config(text), environ={"HOST": "h", "CREDS": "u:pw"})
    described = config.describe(cfg)
    assert described["server"]["token"] == "***"
    assert described["server"]["host"] == "***"
    assert described["pipelines"]["p"] == {
        "description": "d",
        "trigger": "start",
        "source": {
            "use": "c",
            "with": {"url": "***", "n": 2, "nested": {"k": "***"}},
            "id": "source:c",
            "blocking": False,
        },
        "transforms": [],
        "sinks": [],
        "dead_letter": None,
        "request_params": [],
        "retain": 10000,
        "retain_bytes": 64 * 1024 * 1024,
        "max_chunk_errors": None,
    }
    assert "u:pw" not in repr(described)


def test_default_config_path() -> None:
    """`$PIPELINE_CONFIG` wins over `./pipelines.yaml`."""
    assert config.default_config_path({}) == Path("pipelines.yaml")
    assert config.default_config_path({"PIPELINE_CONFIG": "x/p.yaml"}) == Path("x/p.yaml")
