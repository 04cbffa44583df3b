"""The ``pipeline`` command: parse arguments, call plain functions, map errors to exits.

Exit codes: 0 every run ended without ``error``; 1 a run failed; 2 bad config or usage.
Only this module decides exit codes.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import click
import orjson

from pipeline import log as logmod
from pipeline.engine import deadline
from pipeline.errors import ConfigError, PipelineError

__all__ = ["main"]

F = TypeVar("F", bound=Callable[..., Any])


def _common(fn: F) -> F:
    fn = click.option(
        "--log-format",
        type=click.Choice(["auto", "console", "json"]),
        default="auto",
        show_default=True,
        help="Log format on stderr: console on a terminal, JSON lines otherwise.",
    )(fn)
    return click.option(
        "--log-level",
        type=click.Choice(["debug", "info", "warning", "error"]),
        default="info",
        show_default=True,
    )(fn)


def _config_option(fn: F) -> F:
    return click.option(
        "-c",
        "--config",
        "config_path",
        envvar="PIPELINE_CONFIG",
        multiple=True,
        default=("pipelines.yaml",),
        show_default=True,
        help="Config file (or $PIPELINE_CONFIG); repeat to merge files, later ones win.",
    )(fn)


def _set_option(fn: F) -> F:
    return click.option(
        "--set",
        "sets",
        multiple=True,
        metavar="PATH=VALUE",
        help="Override one value, e.g. pipelines.NAME.source.with.count=10 (YAML-typed).",
    )(fn)


def _fail_config(exc: ConfigError) -> None:
    for problem in exc.problems:
        click.echo(str(problem), err=True)
    sys.exit(2)


def _shown(config_path: tuple[str, ...], sets: tuple[str, ...] = ()) -> str:
    """How a command names its config: ``a.yaml + b.yaml + --set k=v``."""
    return " + ".join([*config_path, *(f"--set {s}" for s in sets)])


def load_pipelines(
    config_path: tuple[str, ...], sets: tuple[str, ...] = ()
) -> tuple[Any, dict[str, Any]]:
    """Load and resolve a config; exit 2 with every problem printed when it is bad."""
    from pipeline.config import loader

    try:
        return loader.load_and_resolve(config_path, sets=sets)
    except ConfigError as exc:
        _fail_config(exc)
        raise  # unreachable


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ndjson-pipeline", prog_name="pipeline")
def main() -> None:
    """Real-time NDJSON pipelines whose stages are plain Python functions."""


@main.command()
@click.argument("names", nargs=-1)
@_config_option
@click.option("--serve", is_flag=True, help="Serve the pipelines over HTTP.")
@click.option("--host", default=None, help="Bind address (default: server.host).")
@click.option(
    "--port", type=click.IntRange(0, 65535), default=None, help="Port, 0 for any free one."
)
@click.option(
    "--reload",
    "watch",
    is_flag=True,
    help="With --serve: reload when the config or a stage module changes (SIGHUP always does).",
)
@_set_option
@_common
def run(
    names: tuple[str, ...],
    config_path: tuple[str, ...],
    sets: tuple[str, ...],
    serve: bool,
    host: str | None,
    port: int | None,
    watch: bool,
    log_format: logmod.LogFormat,
    log_level: str,
) -> None:
    """Run pipelines: envelopes to stdout, or served over HTTP with --serve."""
    logmod.configure(log_format, log_level)
    data = None if serve else data_stdout()  # before stage modules are imported
    cfg, resolved = load_pipelines(config_path, sets)
    unknown = [n for n in names if n not in resolved]
    if unknown:
        known = ", ".join(f"`{n}`" for n in resolved)
        shown = _shown(config_path, sets)
        click.echo(f"{shown}: unknown pipeline `{unknown[0]}` (known: {known})", err=True)
        sys.exit(2)
    if watch and not serve:
        click.echo("pipeline run: --reload needs --serve", err=True)
        sys.exit(2)
    if serve:
        from pipeline.config import snapshot
        from pipeline.server.process import serve as serve_fn

        def take(previous: snapshot.Snapshot) -> snapshot.Snapshot:
            return snapshot.take(config_path, sets=sets, previous=previous)

        current = snapshot.of(cfg, resolved, config_path)
        code = serve_fn(
            cfg,
            resolved,
            names=list(names),
            host=host,
            port=port,
            current=current,
            take=take,
            watch=watch,
        )
        sys.exit(leave(code))
    picked = list(names) or [n for n, p in resolved.items() if p.config.trigger == "start"]
    timeout = cfg.server.shutdown_timeout
    sys.exit(run_to_stdout(resolved, picked, shutdown_timeout=timeout, out=data))


def data_stdout() -> BinaryIO:
    """Keep standard output for the envelopes alone; return it as a binary file.

    Whatever else would reach stdout (a stage's ``print()``, a library writing to file
    descriptor 1, a subprocess) goes to stderr instead: ``sys.stdout`` becomes
    ``sys.stderr`` and descriptor 1 a copy of descriptor 2, so the NDJSON is never
    corrupted.
    """
    sys.stdout.flush()
    data = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return data


def run_to_stdout(
    resolved: dict[str, Any],
    names: list[str],
    *,
    shutdown_timeout: float,
    out: BinaryIO | None = None,
) -> int:
    """Run ``names`` to completion, every envelope to ``out`` (default: stdout); return
    the exit code."""
    from pipeline.client import progress
    from pipeline.engine.stdout import stdout_stage
    from pipeline.engine.supervisor import Supervisor

    sup = Supervisor(
        {n: resolved[n] for n in names},
        extra_sinks=[stdout_stage(out)],
        shutdown_timeout=shutdown_timeout,
    )

    async def go() -> dict[str, Any]:
        _install_signals(sup)
        sup.start(names)
        if not progress.wanted():
            return await sup.wait()
        meters = {n: sup.meter(n) for n in names}
        async with progress.Progress(meters, lambda n: str(sup.state(n)["state"])):
            return await sup.wait()

    reasons = deadline.run(go())
    return leave(1 if any(r == "error" for r in reasons.values()) else 0)


def leave(code: int) -> int:
    """Return ``code``; or exit at once with it when stage threads are stuck (the
    interpreter would wait for them forever) or a shutdown signal came (the exit is
    bounded: the interpreter's teardown is skipped)."""
    stuck = deadline.stuck_threads()
    if stuck:
        logmod.get_logger().error("threads_abandoned", threads=stuck)
    if stuck or deadline.signalled():
        deadline.leave(code)
    return code


def _install_signals(sup: Any) -> None:
    """SIGINT/SIGTERM: drain, bounded by ``shutdown_timeout`` + 1 s; a second: exit 1.

    Python-level handlers, not the loop's: they run even while a stage holds the loop.
    """
    loop = asyncio.get_running_loop()
    hits = [0]
    tasks: list[asyncio.Task[None]] = []

    def begin() -> None:
        logmod.get_logger().info("signal_received")
        tasks.append(loop.create_task(sup.shutdown()))

    def on_signal(signum: int, frame: object) -> None:
        hits[0] += 1
        if hits[0] > 1:
            os.write(2, b'{"event":"forced_exit","signal":"%s"}\n' % _signame(signum))
            os._exit(1)
        deadline.arm(sup.shutdown_timeout + 1.0)
        loop.call_soon_threadsafe(begin)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)


def _signame(signum: int) -> bytes:
    return signal.Signals(signum).name.encode()


@main.command()
@_config_option
@_set_option
@_common
def validate(
    config_path: tuple[str, ...],
    sets: tuple[str, ...],
    log_format: logmod.LogFormat,
    log_level: str,
) -> None:
    """Load the config, import every stage, check every parameter."""
    from pipeline.config.paths import missing_files

    logmod.configure(log_format, log_level)
    cfg, resolved = load_pipelines(config_path, sets)
    from pipeline.config.models import shown_sets

    for problem in missing_files(cfg, resolved):
        click.echo(f"warning: {problem}", err=True)
    shown = _shown(config_path, tuple(shown_sets(cfg)))
    noun = "pipeline" if len(resolved) == 1 else "pipelines"
    click.echo(f"{shown}: ok ({len(resolved)} {noun}: {', '.join(resolved)})")


@main.command(name="list")
@_config_option
@_set_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@_common
def list_(
    config_path: tuple[str, ...],
    sets: tuple[str, ...],
    as_json: bool,
    log_format: logmod.LogFormat,
    log_level: str,
) -> None:
    """List the pipelines of a config (values from the environment are masked)."""
    from pipeline.config import models as config

    logmod.configure(log_format, log_level)
    try:
        cfg = config.load(config_path, sets=sets)
    except ConfigError as exc:
        _fail_config(exc)
    described = config.describe(cfg)
    if as_json:
        click.echo(orjson.dumps(described, option=orjson.OPT_INDENT_2).decode())
        return
    click.echo(_render_list(described))


_DEFAULTS = {"concurrency": 1, "ordered": True, "timeout": None, "retry": None, "blocking": False}


def _render_list(described: dict[str, Any]) -> str:
    lines = []
    if len(described.get("files", [])) > 1 or described.get("sets"):
        lines.append("config: " + " + ".join(described["files"]))
        lines += [f"  --set {s}" for s in described.get("sets", [])]
    for name, p in described.get("pipelines", {}).items():
        limit = p.get("max_chunk_errors")
        limit_text = "none" if limit is None else limit
        lines.append(
            f"{name}  [trigger: {p.get('trigger', 'start')}, retain: {p.get('retain')}, "
            f"max_chunk_errors: {limit_text}]"
        )
        if p.get("description"):
            lines.append(f"  {p['description']}")
        for role in ("source", "transforms", "sinks", "dead_letter"):
            stages = p.get(role)
            if not stages:
                continue
            for st in stages if isinstance(stages, list) else [stages]:
                params = orjson.dumps(st.get("with", {})).decode()
                lines.append(f"  {role:<11} {st['use']} {params}  id: {st['id']}")
                options = _options_text(st)
                if options:
                    lines.append(f"  {'':<11} {options}")
    return "\n".join(lines)


def _options_text(stage: dict[str, Any]) -> str:
    """The options a stage sets, as ``key: value`` pairs (all of them on a transform)."""
    shown = [k for k in _DEFAULTS if k in stage]
    if not any(stage[k] != _DEFAULTS[k] for k in shown):
        return ""
    return ", ".join(f"{k}: {orjson.dumps(stage[k]).decode()}" for k in shown)


@main.command()
@click.option("--markdown", is_flag=True, help="Print docs/stages.md instead of text.")
def stages(markdown: bool) -> None:
    """List the built-in stages and their parameters."""
    from pipeline.config import catalog

    docs = catalog.catalog()
    click.echo(catalog.render_markdown(docs) if markdown else catalog.render_text(docs), nl=False)


@main.command(name="test")
@click.argument("files", nargs=-1)
@_config_option
@_set_option
@click.option("--junit", "junit", default=None, help="Also write a JUnit XML report here.")
@click.option("--update", is_flag=True, help="Rewrite the golden files of the cases run.")
@click.option("-k", "keyword", default=None, help="Only the cases whose name contains this.")
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error", "critical"]),
    default="critical",
    show_default=True,
    help="Log level of the pipelines' own logs on stderr.",
)
def test_(
    files: tuple[str, ...],
    config_path: tuple[str, ...],
    sets: tuple[str, ...],
    junit: str | None,
    update: bool,
    keyword: str | None,
    log_level: str,
) -> None:
    """Run the YAML test cases of a config (default: every *.test.yaml beside it)."""
    from pipeline.testing import runner

    logmod.configure("json", log_level)
    _, resolved = load_pipelines(config_path, sets)
    beside = Path(config_path[0]).parent
    found = list(files) or [str(p) for p in sorted(beside.glob("*.test.yaml"))]
    if not found:
        shown = _shown(config_path, sets)
        click.echo(f"{shown}: no *.test.yaml beside it; name the test files", err=True)
        sys.exit(2)
    try:
        cases = runner.load_all(found, resolved)
    except ConfigError as exc:
        _fail_config(exc)
    if keyword is not None:
        cases = [c for c in cases if keyword in c.name]
    outcomes = runner.run_cases(cases, update=update, echo=click.echo)
    if junit:
        runner.write_junit(junit, outcomes)
    failed = sum(not o.passed for o in outcomes)
    click.echo(f"{len(outcomes) - failed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


@main.command()
@click.argument("target")
@_config_option
@click.option("--since", default=None, help="Resume after SEQ or RUN:SEQ.")
@click.option("--raw", is_flag=True, help="Print raw NDJSON.")
@click.option("--token", envvar="PIPELINE_TOKEN", default=None, help="Bearer token.")
@click.option(
    "-F",
    "--follow",
    "follow_runs",
    is_flag=True,
    help="Follow across runs and server restarts: a complete(reason=shutdown|reload) "
    "does not end it.",
)
@_common
def tail(
    target: str,
    config_path: tuple[str, ...],
    since: str | None,
    raw: bool,
    token: str | None,
    follow_runs: bool,
    log_format: logmod.LogFormat,
    log_level: str,
) -> None:
    """Follow a pipeline's stream (a URL, or a NAME served by the config's server)."""
    import pipeline.client.tail as tailmod

    logmod.configure(log_format, log_level)
    try:
        code = tailmod.tail(
            target,
            since=since,
            raw=raw,
            token=token,
            config_path=[Path(p) for p in config_path],
            follow_runs=follow_runs,
        )
    except PipelineError as exc:
        click.echo(f"pipeline tail: {exc}", err=True)
        sys.exit(2)
    sys.exit(code)


@main.command()
@click.argument("url", required=False)
@_config_option
@click.option("--token", envvar="PIPELINE_TOKEN", default=None, help="Bearer token.")
@click.option("--once", is_flag=True, help="Print one table (rates over one second) and exit.")
@_common
def top(
    url: str | None,
    config_path: tuple[str, ...],
    token: str | None,
    once: bool,
    log_format: logmod.LogFormat,
    log_level: str,
) -> None:
    """Live table of a server's pipelines and stages (URL, or the config's server)."""
    import pipeline.client.top as topmod

    logmod.configure(log_format, log_level)
    try:
        code = topmod.top(url, token=token, config_path=[Path(p) for p in config_path], once=once)
    except PipelineError as exc:
        click.echo(f"pipeline top: {exc}", err=True)
        sys.exit(2)
    sys.exit(code)


if __name__ == "__main__":  # pragma: no cover
    main()
