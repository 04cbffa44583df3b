"""Stage loader: short names, module:attr, shapes, options, params, request params."""

from __future__ import annotations

import functools
import itertools
import re
import sys
import textwrap
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import stages
from pipeline.config import loader, models as config
from pipeline.errors import ConfigError, StageLoadError, StageParamsError
from pipeline.stage import RetryPolicy
from pipeline.testing import make_stage, run_pipeline

STAGES = """\
from pipeline import sink, stream_transform

async def numbers(count: int = 3, limit: int = 10):
    for i in range(min(count, limit)):
        yield {"n": i}

def sync_numbers(count: int = 3):
    yield from ({"n": i} for i in range(count))

def listed(count: int = 3):
    return [{"n": i} for i in range(count)]

def scale(chunk, *, factor: float, unit: str = "m"):
    return chunk

async def ascale(chunk, factor: float = 1.0):
    return chunk

async def explode(chunk):
    yield chunk

def split(chunk):
    yield chunk

def two(chunk, other, /):
    return chunk

@stream_transform
async def pairs(chunks):
    async for c in chunks:
        yield c

@sink
def collect(envelope):
    pass

@sink(stream=True)
async def stream_collect(envelopes):
    async for e in envelopes:
        pass

def plain_sink(envelope):
    pass

class Tools:
    @staticmethod
    def double(chunk):
        return chunk

class Async:
    async def __call__(self, chunk):
        return chunk

async_instance = Async()

def helper():
    return {}["missing"]
"""

_counter = itertools.count()


@pytest.fixture
def mod() -> str:
    """A fresh name for the test's stage module (`M` in configs and messages)."""
    return f"loader_stages_{next(_counter)}"


@pytest.fixture
def resolve(
    write_config: Callable[..., Path], isolated_imports: None, mod: str
) -> Callable[..., dict[str, loader.ResolvedPipeline]]:
    """Write a config (``M:`` stands for the test's stage module) and resolve it."""

    def run(text: str, **files: str) -> dict[str, loader.ResolvedPipeline]:
        files = {k: re.sub(r"\bM\b", mod, v) for k, v in files.items()}
        path = write_config(text.replace("M:", f"{mod}:"), **{f"{mod}.py": STAGES}, **files)
        return loader.resolve(config.load(path, environ={"STAGE": f"{mod}:nothing"}))

    return run


@pytest.fixture
def problems(resolve: Callable[..., object], mod: str) -> Callable[..., list[str]]:
    """Resolve a bad config; return its problems as `LINE: path: message`, module as `M`."""

    def run(text: str, **files: str) -> list[str]:
        with pytest.raises(ConfigError) as info:
            resolve(text, **files)
        return [f"{p.line}: {p.path}: {p.message}".replace(mod, "M") for p in info.value.problems]

    return run


def _pipeline(body: str, source: str = "M:numbers") -> str:
    return f"pipelines:\n  p:\n    source:\n      use: {source}\n" + textwrap.indent(
        textwrap.dedent(body), "    "
    )


def test_resolves_every_kind_with_ids_and_options(resolve: Callable[..., dict]) -> None:
    """Each stage gets its kind, id, bound params and options."""
    body = """\
    transforms:
      - use: M:scale
        with: {factor: "2"}
        concurrency: 4
        ordered: false
        timeout: 1.5
        retry: {attempts: 3, backoff: 0.1}
      - use: M:ascale
      - use: M:explode
      - use: M:split
        id: splitter
        blocking: true
      - use: M:pairs
      - use: M:Tools.double
      - use: M:async_instance
    sinks:
      - use: M:collect
      - use: M:plain_sink
        blocking: true
    dead_letter: {use: M:stream_collect}
    """
    rp = resolve(_pipeline(body))["p"]
    assert (rp.source.id, rp.source.kind, rp.source.params) == (
        "source:numbers",
        "source",
        {"count": 3, "limit": 10},
    )
    assert [(s.id, s.kind) for s in rp.transforms] == [
        ("transforms[0]:scale", "map"),
        ("transforms[1]:ascale", "map"),
        ("transforms[2]:explode", "flat_map"),
        ("splitter", "flat_map"),
        ("transforms[4]:pairs", "stream"),
        ("transforms[5]:double", "map"),
        ("transforms[6]:async_instance", "map"),
    ]
    first = rp.transforms[0]
    assert first.params == {"factor": 2.0, "unit": "m"}
    assert (first.concurrency, first.ordered, first.timeout) == (4, False, 1.5)
    assert first.retry == RetryPolicy(attempts=3, backoff=0.1, max_backoff=30.0)
    assert rp.transforms[3].blocking is True
    assert [(s.id, s.kind, s.blocking) for s in rp.sinks] == [
        ("sinks[0]:collect", "sink", False),
        ("sinks[1]:plain_sink", "sink", True),
    ]
    assert rp.dead_letter is not None and rp.dead_letter.id == "dead_letter:stream_collect"
    assert rp.dead_letter.meta is not None and rp.dead_letter.meta.stream


def test_short_names_come_from_the_builtins_table(
    resolve: Callable[..., dict], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A short name is looked up for the stage's role and named by it in the id."""
    monkeypatch.setitem(stages.BUILTINS["source"], "nums", "loader_stages_builtin:numbers")
    text = _pipeline("", source="nums")
    rp = resolve(text, **{"loader_stages_builtin.py": STAGES})["p"]
    assert rp.source.id == "source:nums"


def test_config_folder_is_put_on_sys_path_once(resolve: Callable[..., dict]) -> None:
    """Resolving twice adds the config's folder to the front of sys.path once."""
    resolve(_pipeline(""))
    first = sys.path[0]
    resolve(_pipeline(""))
    assert sys.path.count(first) == 1


@pytest.mark.parametrize(
    ("use", "message"),
    [
        (
            "nope",
            "unknown transform `nope`; expected `module:callable` or a built-in transform: "
            "`batch`, `dedupe`, `parse_json`, `throttle`",
        ),
        (
            "a:b:c",
            "unknown transform `a:b:c`; expected `module:callable` or a built-in "
            "transform: `batch`, `dedupe`, `parse_json`, `throttle`",
        ),
        (
            "counter",
            "`counter` is a built-in source, not a transform; built-in transforms: "
            "`batch`, `dedupe`, `parse_json`, `throttle`",
        ),
        (
            "no_such_module_xyz:f",
            "cannot import module `no_such_module_xyz`: No module named 'no_such_module_xyz'",
        ),
        ("M:Tools.nope", "`M:Tools` has no attribute `nope`"),
        (
            "M:two",
            "`M:two` takes more than one required positional parameter; a transform "
            "takes the chunk, and keyword parameters from `with:`",
        ),
    ],
)
def test_use_problems(problems: Callable[..., list[str]], use: str, message: str) -> None:
    """Each bad `use:` of a transform gets one precise message on its line."""
    found = problems(_pipeline(f"transforms:\n  - use: {use}\n"))
    assert found == [f"6: pipelines.p.transforms[0].use: {message}"]


def test_import_failure_points_at_the_module_line(problems: Callable[..., list[str]]) -> None:
    """The real cause is shown with the line inside the module, even via a helper."""
    broken = "import M\n\nx = 1\nM.helper()\n"
    found = problems(
        _pipeline("transforms:\n  - use: broken_helper:f\n"), **{"broken_helper.py": broken}
    )
    assert found == [
        "6: pipelines.p.transforms[0].use: module `broken_helper` failed to import: "
        "KeyError: 'missing' (broken_helper.py:4)"
    ]


def test_syntax_error_in_module(problems: Callable[..., list[str]]) -> None:
    """A module with a syntax error names the file and line."""
    found = problems(
        _pipeline("transforms:\n  - use: bad_syntax:f\n"), **{"bad_syntax.py": "x = (\n"}
    )
    assert found == [
        "6: pipelines.p.transforms[0].use: module `bad_syntax` failed to import: "
        "SyntaxError: '(' was never closed (bad_syntax.py:1)"
    ]


@pytest.mark.parametrize(
    ("source", "extra", "message"),
    [
        (
            "M:numbers",
            "blocking: true",
            "5: pipelines.p.source.blocking: `blocking: true` is for sync functions; "
            "`M:numbers` is async",
        ),
        (
            "M:listed",
            "blocking: true",
            "5: pipelines.p.source.blocking: `blocking: true` on a source needs a sync "
            "generator function; `M:listed` is not",
        ),
        (
            "M:numbers",
            "retry: {attempts: 2}",
            "5: pipelines.p.source.retry: only per-chunk transforms take `retry`; "
            "this stage is a source",
        ),
        (
            "M:scale",
            "with: {factor: 2}",
            "5: pipelines.p.source.with.chunk: required parameter is missing",
        ),
        (
            "M:collect",
            "with: {}",
            "4: pipelines.p.source.use: `M:collect` is a sink (marked `@sink`); "
            "it cannot be used as a source",
        ),
    ],
)
def test_source_problems(
    problems: Callable[..., list[str]], source: str, extra: str, message: str
) -> None:
    """Sources are checked for shape and for options they do not take."""
    assert problems(f"pipelines:\n  p:\n    source:\n      use: {source}\n      {extra}\n") == [
        message
    ]


def test_sync_generator_source_may_block(resolve: Callable[..., dict]) -> None:
    """A sync generator source is allowed `blocking: true`."""
    text = "pipelines:\n  p:\n    source:\n      use: M:sync_numbers\n      blocking: true\n"
    assert resolve(text)["p"].source.blocking is True


def test_stream_sink_may_not_block(problems: Callable[..., list[str]]) -> None:
    """A stream sink is never run in a thread."""
    found = problems(_pipeline("sinks:\n  - use: M:stream_collect\n    blocking: true\n"))
    assert found == [
        "7: pipelines.p.sinks[0].blocking: `blocking: true` is not allowed on a stream stage"
    ]


def test_params_problems_map_to_with_paths(problems: Callable[..., list[str]]) -> None:
    """Missing, unknown and mistyped parameters are reported under `with`."""
    body = "transforms:\n  - use: M:scale\n    with:\n      unit: 3\n      bogus: 1\n"
    assert problems(_pipeline(body)) == [
        "7: pipelines.p.transforms[0].with.factor: required parameter is missing",
        "8: pipelines.p.transforms[0].with.unit: Input should be a valid string",
        "9: pipelines.p.transforms[0].with.bogus: unknown parameter",
    ]


def test_env_named_stage_is_not_shown(problems: Callable[..., list[str]]) -> None:
    """A `use:` taken from the environment is never printed in a problem."""
    assert problems(_pipeline("transforms:\n  - use: ${STAGE}\n")) == [
        "6: pipelines.p.transforms[0].use: cannot load the stage named by the environment "
        "(its name is not shown)"
    ]


def test_explicit_id_may_not_collide_with_a_derived_id(problems: Callable[..., list[str]]) -> None:
    """An `id:` equal to another stage's derived id is reported."""
    body = "transforms:\n  - use: M:ascale\n  - use: M:ascale\n    id: transforms[0]:ascale\n"
    assert problems(_pipeline(body)) == [
        "8: pipelines.p.transforms[1].id: stage id `transforms[0]:ascale` is already used"
    ]


# --- request_params ------------------------------------------------------------------

REQUEST = (
    "pipelines:\n  p:\n    trigger: request\n    request_params: [limit]\n"
    "    source:\n      use: M:numbers\n      with: {count: 5}\n"
)


def test_request_params_merge_over_with(resolve: Callable[..., dict]) -> None:
    """Declared query values are coerced and merged over `with:`; `since` is ignored."""
    rp = resolve(REQUEST)["p"]
    assert loader.request_params(rp, {"limit": "2", "since": "3"}) == {"count": 5, "limit": 2}
    assert loader.request_params(rp, {}) == {"count": 5, "limit": 10}


def test_undeclared_request_param_is_rejected(resolve: Callable[..., dict]) -> None:
    """A query key that is not declared is an error naming it."""
    rp = resolve(REQUEST)["p"]
    with pytest.raises(StageParamsError, match=r"^undeclared request parameter `count`$"):
        loader.request_params(rp, {"count": "100"})


def test_bad_request_param_value_is_not_echoed(resolve: Callable[..., dict]) -> None:
    """A bad value names the parameter and never repeats the value."""
    rp = resolve(REQUEST)["p"]
    with pytest.raises(StageParamsError) as info:
        loader.request_params(rp, {"limit": "s3cr3t-value"})
    assert str(info.value) == (
        "request parameter `limit`: Input should be a valid integer, "
        "unable to parse string as an integer"
    )
    assert info.value.errors == [(("limit",), str(info.value))]


def test_module_shadowed_by_the_builtin_package_gets_a_hint(
    problems: Callable[..., list[str]],
) -> None:
    """A `stages.py` beside the config loses to the built-in package, and we say so."""
    found = problems(_pipeline("transforms:\n  - use: stages:enrich\n"), **{"stages.py": ""})
    assert found == [
        "6: pipelines.p.transforms[0].use: module `stages` has no attribute `enrich` "
        "(`stages` beside the config is shadowed by an installed `stages`; rename it)"
    ]


class _SyncCall:
    def __call__(self, chunk: dict) -> dict:
        return {**chunk, "by": "sync"}


class _AsyncCall:
    async def __call__(self, chunk: dict) -> dict:
        return {**chunk, "by": "async"}


class _GenCall:
    def __call__(self, chunk: dict) -> Iterator[dict]:
        yield {**chunk, "by": "gen"}
        yield {**chunk, "by": "gen2"}


class _AsyncGenCall:
    async def __call__(self, chunk: dict) -> AsyncIterator[dict]:
        yield {**chunk, "by": "asyncgen"}


class _Methods:
    def tag(self, chunk: dict, *, label: str = "m") -> dict:
        return {**chunk, "by": label}

    async def atag(self, chunk: dict) -> dict:
        return {**chunk, "by": "amethod"}


async def _partial_target(chunk: dict, *, label: str) -> dict:
    return {**chunk, "by": label}


@pytest.mark.parametrize(
    ("fn", "calling", "expected"),
    [
        (_SyncCall(), "sync", [{"n": 0, "by": "sync"}]),
        (_AsyncCall(), "async", [{"n": 0, "by": "async"}]),
        (_GenCall(), "gen", [{"n": 0, "by": "gen"}, {"n": 0, "by": "gen2"}]),
        (_AsyncGenCall(), "asyncgen", [{"n": 0, "by": "asyncgen"}]),
        (functools.partial(_partial_target, label="p"), "async", [{"n": 0, "by": "p"}]),
        (_Methods().tag, "sync", [{"n": 0, "by": "m"}]),
        (_Methods().atag, "async", [{"n": 0, "by": "amethod"}]),
    ],
)
@pytest.mark.anyio
async def test_every_callable_shape_runs_as_validated(
    fn: Any, calling: str, expected: list[dict]
) -> None:
    """Callable objects, partials and bound methods are called as the loader decided."""
    stage = make_stage(fn, role="transform")
    assert stage.calling == calling
    envelopes = await run_pipeline(lambda: iter([{"n": 0}]), [stage])
    assert [e["data"] for e in envelopes if e["status"] == "processing"] == expected
    assert envelopes[-1]["stats"]["chunk_errors"] == 0


def test_make_stage_refuses_what_is_not_callable() -> None:
    """Building a stage in code from a non-callable raises the public `StageLoadError`."""
    with pytest.raises(StageLoadError, match=re.escape("a transform must be callable, got `int`")):
        make_stage(42, role="transform")  # type: ignore[arg-type]


def test_an_unknown_key_does_not_hide_the_stage_problems_beside_it(
    write_config: Callable[..., Path], isolated_imports: None
) -> None:
    """Schema and stage problems come in one pass, even beside an unknown or bad key."""
    path = write_config(
        """
        pipelines:
          demo:
            source: {use: counter, with: {count: 10, colour: red}}
            transforms:
              - use: nope_module:enrich
                concurency: 4
              - use: stages.transforms:parse_json
                concurrency: 0
                with: 5
            sinks:
              - use: fil
            retain: many
        """
    )
    with pytest.raises(ConfigError) as info:
        loader.load_and_resolve(path)
    assert [f"{p.line}: {p.path}: {p.message}" for p in info.value.problems] == [
        "4: pipelines.demo.source.with.colour: unknown parameter",
        "6: pipelines.demo.transforms[0].use: cannot import module `nope_module`: "
        "No module named 'nope_module'",
        "7: pipelines.demo.transforms[0].concurency: unknown key; expected one of `use`, "
        "`with`, `id`, `concurrency`, `ordered`, `timeout`, `retry`, `blocking`",
        "9: pipelines.demo.transforms[1].concurrency: expected an integer >= 1",
        "10: pipelines.demo.transforms[1].with: expected a mapping",
        "12: pipelines.demo.sinks[0].use: unknown sink `fil`; expected `module:callable` or "
        "a built-in sink: " + ", ".join(f"`{n}`" for n in sorted(stages.BUILTINS["sink"])),
        "13: pipelines.demo.retain: expected an integer",
    ]
