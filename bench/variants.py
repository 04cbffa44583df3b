"""The registry of benchmark variants, in groups. PLUG POINTS for the framework are here.

A variant is a name, a label, and how to measure it:

- `HttpVariant`: a command that starts a server on a given port (run from the repository
  root, pinned to the server CPU), the URL path to read, and the line count to expect.
  A server that does not start (exits, or does not listen within ``ready_timeout``) is
  reported as *skipped* with the reason; a wrong status or count as *failed*.
- `ProcVariant`: a command that measures itself and prints one JSON object (in-process
  runs).

A `Group` is measured round-robin: every repetition runs each of its variants once, so
ratios to the group's ``base`` are taken within one repetition (same-run ratios).

To add a framework variant, append an entry to a group's list below (see ``framework``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

PY = sys.executable
CONFIG = "bench/configs/http.yaml"


@dataclass(frozen=True, slots=True)
class Params:
    """What one measurement of a group reads."""

    n: int
    """Envelopes per connection."""
    rep: int = 0
    interval: float = 0.0
    clients: int = 1


@dataclass(frozen=True, slots=True)
class HttpVariant:
    """A server command plus the stream to read from it."""

    name: str
    label: str
    command: Callable[[int], list[str]]
    """port -> argv."""
    path: Callable[[Params], str]
    expect: Callable[[Params], int] = lambda p: p.n
    env: Callable[[Params], Mapping[str, str]] = lambda p: {}
    """Extra environment of the server (computed once per group run)."""
    server_key: str = ""
    """Variants with the same key share one server process (default: the name)."""
    ready_timeout: float = 20.0
    note: str = ""


@dataclass(frozen=True, slots=True)
class ProcVariant:
    """A command that measures itself and prints one JSON object (``rate``, ``ok``...)."""

    name: str
    label: str
    command: Callable[[Params], list[str]]
    note: str = ""


Variant = HttpVariant | ProcVariant


@dataclass(frozen=True, slots=True)
class Group:
    """Variants measured round-robin with the same parameters."""

    name: str
    title: str
    variants: tuple[Variant, ...]
    base: str | None = None
    kind: Literal["rate", "latency"] = "rate"
    params: Callable[[int], Params] = lambda n: Params(n=n)
    """``--n`` -> the group's parameters."""
    reps: Callable[[int], int] = lambda reps: reps
    reading: str = ""
    command_extra: str = ""
    client_args: tuple[str, ...] = field(default=())
    pairs: tuple[tuple[str, str], ...] = ()
    """(variant, reference): also report variant / reference, same run (e.g. the cost of
    a frozen client)."""
    budget: float = 0.0
    """Seconds of its own, not taken from ``--budget`` (0: it shares ``--budget``). A
    broker group fills a real broker and starts worker processes per measurement."""


def module_server(module: str) -> Callable[[int], list[str]]:
    """``python -m bench.servers.MODULE --port PORT``."""
    return lambda port: [PY, "-m", f"bench.servers.{module}", "--port", str(port)]


def stream_path(route: str = "/stream") -> Callable[[Params], str]:
    """``ROUTE?n=N&interval=S``."""

    def path(p: Params) -> str:
        q = f"{route}?n={p.n}"
        return q + (f"&interval={p.interval}" if p.interval else "")

    return path


def blaster(per: int) -> HttpVariant:
    """The client-ceiling server: pre-framed bytes, ``per`` envelopes per HTTP chunk."""
    return HttpVariant(
        name=f"blaster-{per}",
        label=f"client ceiling: blaster, {per} envelope{'s' if per > 1 else ''} per chunk",
        command=lambda port: [PY, "-m", "bench.blaster", "--port", str(port)],
        path=lambda p: f"/blast?n={p.n}&per={per}",
        server_key="blaster",
    )


# ---- PLUG POINT: the framework over HTTP ---------------------------------------------
# `python -m pipeline run --serve -c bench/configs/http.yaml --port PORT`, from the repo
# root, with BENCH_N / BENCH_INTERVAL in the environment (the config interpolates them).
# It streams `starting`, N `processing` and `complete`: N + 2 lines.


def framework_command(port: int) -> list[str]:
    """The framework's server for ``bench/configs/http.yaml``."""
    return [PY, "-m", "pipeline", "run", "--serve", "-c", CONFIG, "--port", str(port)]


def framework_env(p: Params) -> Mapping[str, str]:
    """The config's knobs."""
    return {"BENCH_N": str(p.n), "BENCH_INTERVAL": str(p.interval)}


FRAMEWORK = HttpVariant(
    name="framework",
    label="framework: `pipeline run --serve`, readings + 3 transforms",
    command=framework_command,
    path=lambda p: "/pipelines/bench/stream?since=0",
    expect=lambda p: p.n + 2,
    env=framework_env,
    ready_timeout=30.0,
    note="bench/configs/http.yaml; N + 2 lines (starting, complete)",
)
# ---------------------------------------------------------------------------------------

A = HttpVariant(
    name="A",
    label="(A) Nexios `response.stream`, json.dumps per item",
    command=module_server("nexios_app"),
    path=stream_path(),
)
B = HttpVariant(
    name="B",
    label="(B) Starlette StreamingResponse, orjson line per item",
    command=module_server("starlette_line"),
    path=stream_path(),
)
C = HttpVariant(
    name="C",
    label="(C) Starlette, producer task -> Queue, ready items coalesced",
    command=module_server("starlette_coalesced"),
    path=stream_path(),
)
D = HttpVariant(
    name="D",
    label="(D) raw ASGI, pre-encoded, 256 per body (wire reference)",
    command=module_server("raw_asgi"),
    path=stream_path(),
    server_key="raw_asgi",
)
D_LIVE = HttpVariant(
    name="D-live",
    label="(D') raw ASGI, live work into bytearray, 256 per body",
    command=module_server("raw_asgi"),
    path=stream_path("/live"),
    server_key="raw_asgi",
)

FANOUT_CLIENTS = 100


def fanout_params(n: int, clients: int = FANOUT_CLIENTS) -> Params:
    """Fan-out: ``n`` envelopes per client, ``clients`` connections (``--n`` / 10)."""
    return Params(n=max(100, n // 10), clients=clients)


def framework_fanout(clients: int, *, frozen: int = 0) -> ProcVariant:
    """The framework serving one ``trigger: start`` run to ``clients`` readers
    (`bench.fanout_fw`: a fresh server per measurement, a gated source; ``frozen``
    more connections that never read)."""
    suffix = f" + {frozen} frozen client (not counted)" if frozen else ""
    return ProcVariant(
        name="framework-fanout-frozen" if frozen else "framework-fanout",
        label=f"framework: `trigger: start` pipeline, hub ring, K={clients}{suffix}",
        command=lambda p: [
            *(PY, "-m", "bench.fanout_fw", "throughput", "--clients", str(p.clients)),
            *("--n", str(p.n), "--frozen", str(frozen)),
        ],
        note="bench/configs/fanout.yaml; N + 2 lines per client; fresh server per rep",
    )


def fanout_variants(clients: int, *, frozen: bool = False) -> tuple[Variant, ...]:
    """The broadcast baseline, the client's own ceiling and the framework for ``clients``
    connections (``frozen``: also the framework with one frozen client among them)."""
    return (
        HttpVariant(
            name="fanout-queues",
            label=f"broadcast, per-client Queue(1024), coalesced writes, K={clients}",
            command=module_server("fanout"),
            path=lambda p: f"/fanout?n={p.n}&clients={p.clients}&run=r{p.rep}",
        ),
        replace(
            blaster(256),
            name="fanout-ceiling",
            label=f"client ceiling: blaster, 256 per chunk, K={clients}",
        ),
        framework_fanout(clients),
        *((framework_fanout(clients, frozen=1),) if frozen else ()),
    )


def in_process(name: str, label: str, cap: int | None = None) -> ProcVariant:
    """``python -m bench.inproc NAME --n N`` (at most ``cap`` items)."""
    return ProcVariant(
        name=name,
        label=label,
        command=lambda p: [PY, "-m", "bench.inproc", name, "--n", str(min(p.n, cap or p.n))],
    )


def whole(name: str, label: str, out: str, cap: int | None = None) -> ProcVariant:
    """``python -m bench.whole NAME --n N --out OUT``: one whole process, timed from outside
    (at most ``cap`` items)."""
    return ProcVariant(
        name=name,
        label=label,
        command=lambda p: [
            *(PY, "-m", "bench.whole", name, "--n", str(min(p.n, cap or p.n)), "--out", out)
        ],
    )


PATHWAY_WHOLE = 200_000
PATHWAY_INPROC = 50_000
"""Items of a Pathway run: it does ~20 k items/s here (a Python UDF and a Json value per
row and map), so 1 M would take a minute per repetition. Its rate is compared."""


def whole_group(out: str) -> Group:
    """The whole-process group writing to a file (``out`` = file) or ``/dev/null``."""
    where = "a file" if out == "file" else "/dev/null"
    return Group(
        name="whole" if out == "file" else "whole-null",
        title=f"Whole process, as users run it: 3 per-item maps, envelopes to {where}",
        variants=(
            whole("plain", "plain asyncio loop, 256 KB writes (the limit)", out),
            whole("framework", "framework: `pipeline run bench > out`", out),
            whole("bytewax", "Bytewax: `python -m bytewax.run`, TestingSource, DynamicSink", out),
            *(
                (
                    whole(
                        "pathway",
                        "Pathway: `pw.run`, ConnectorSubject, 3 udf selects, subscribe "
                        f"({PATHWAY_WHOLE // 1000} k items)",
                        out,
                        PATHWAY_WHOLE,
                    ),
                )
                if out == "file"
                else ()
            ),
        ),
        base="plain",
        params=lambda n: Params(n=5 * n),
        pairs=(("framework", "bytewax"), ("framework", "pathway")),
        reading="Spawn to exit, start-up included (`bench/whole.py`, `bench/peers.py`). "
        "Targets: framework >= 1.2 x Bytewax and >= 0.9 x the plain loop.",
    )


def broker(name: str, label: str) -> ProcVariant:
    """``python -m bench.brokers NAME --n N`` (needs Redis and NATS on loopback)."""
    return ProcVariant(
        name=name,
        label=label,
        command=lambda p: [PY, "-m", "bench.brokers", name, "--n", str(p.n)],
    )


BROKER_N = 100_000
"""Messages per broker run (at most): the work is the broker's, not the engine's."""
ACK_LATENCY_N = 200
BROKER_BUDGET = 240.0
"""Seconds each broker group may take, on top of ``--budget`` (5 reps of 2 variants, each
filling the broker first: about 60 s on a quiet machine, 3x that under load)."""

LATENCY_N = 500
LOAD_RATE = 10_000
LOAD_N = 30_000
"""Envelopes of the latency-under-load run: 3 s at `LOAD_RATE`."""
LOAD_SAMPLE = 5
CONCURRENCY = 64
CONCURRENCY_N = 6400
"""Chunks of the ``concurrency`` group: 1 s at the ideal 6,400/s."""


def concurrency_variants(c: int) -> tuple[Variant, ...]:
    """An async transform awaiting 10 ms per chunk with ``concurrency: c`` (bench/scaling.py)."""

    def variant(mode: str, label: str) -> ProcVariant:
        return ProcVariant(
            name=mode,
            label=label,
            command=lambda p: [
                *(PY, "-m", "bench.scaling", "concurrency"),
                *("--mode", mode, "--c", str(c), "--n", str(p.n)),
            ],
        )

    return (
        variant("ordered", "engine, ordered"),
        variant("unordered", "engine, `ordered: false`"),
        variant("plain", "plain asyncio: tasks bounded by a semaphore, unordered (the limit)"),
    )


GROUPS: tuple[Group, ...] = (
    Group(
        name="clients",
        title="The client alone (against a server replaying bytes)",
        variants=(blaster(1), blaster(256)),
        params=lambda n: Params(n=5 * n),
        reading="The ceiling of `bench/client.py`: every HTTP number below must stay under it.",
    ),
    Group(
        name="http",
        title="HTTP streaming throughput, one client",
        variants=(A, B, C, D, D_LIVE, FRAMEWORK),
        base="B",
        pairs=(("framework", "C"),),
        reading="Target (issue 15): the framework >= 1.0 x (C), the hand-coalesced stream, "
        "which does less work (one transform, no numbering, no retention).",
    ),
    Group(
        name="inproc",
        title="In-process (no HTTP)",
        variants=(
            in_process("plain", "plain `async for` loop (the limit)"),
            in_process("engine", "framework engine (`pipeline.engine.run.Run`), 1 transform"),
        ),
        base="plain",
    ),
    Group(
        name="inproc3",
        title="In-process (no HTTP), 3 per-chunk transforms",
        variants=(
            in_process("plain3", "plain `async for` loop calling the 3 transforms (the limit)"),
            in_process("engine3", "framework engine (`pipeline.engine.run.Run`), 3 transforms"),
            in_process("bytewax3", "Bytewax `run_main`, the same 3 maps, sink to a bytearray"),
            in_process(
                "pathway3",
                f"Pathway `pw.run`, the same 3 maps, sink to a bytearray ({PATHWAY_INPROC // 1000}"
                " k items)",
                PATHWAY_INPROC,
            ),
        ),
        base="plain3",
        pairs=(("engine3", "bytewax3"), ("engine3", "pathway3")),
    ),
    whole_group("file"),
    whole_group("null"),
    Group(
        name="concurrency",
        title=f"I/O-bound transform: 10 ms await per chunk, concurrency {CONCURRENCY}",
        variants=concurrency_variants(CONCURRENCY),
        base="ideal",
        params=lambda n: Params(n=CONCURRENCY_N),
        reading=f"Ratio to the ideal {CONCURRENCY} / 0.010 s = {CONCURRENCY * 100:,} chunks/s "
        f"(target: >= 0.8). {CONCURRENCY_N} chunks per run; the time includes the run's "
        "start and end. `plain` keeps the tasks in flight with a semaphore, no engine.",
    ),
    Group(
        name="fanout",
        title=f"Fan-out: one source, K={FANOUT_CLIENTS} clients",
        variants=fanout_variants(FANOUT_CLIENTS, frozen=True),
        params=fanout_params,
        base="fanout-queues",
        pairs=(("framework-fanout-frozen", "framework-fanout"),),
        reading="Aggregate = K x envelopes per client / elapsed. One client process reads all "
        "K connections with `selectors`. Baseline: the source starts at the K-th request, "
        "time from the requests to the last byte. Framework (`bench/fanout_fw.py`): a fresh "
        "`pipeline run --serve` per measurement whose `trigger: start` source waits for a "
        "gate file; every client connects (`?since=0`) and is counted by the hub before the "
        "gate opens; time from the gate to the last byte of the last client; every client "
        "must get exactly N + 2 lines. The frozen client sends its request and never reads "
        "(4 KiB `SO_RCVBUF`); the run fails unless the hub dropped it "
        "(`dropped_clients` >= 1). Targets: framework >= 0.8 x the baseline; the frozen "
        "client costs the others < 5 % (`frozen / framework-fanout` >= 0.95).",
    ),
    Group(
        name="redis",
        budget=BROKER_BUDGET,
        title="Redis Streams end to end: XREADGROUP, 1 transform, XADD, XACK",
        variants=(
            broker("redis-loop", "hand-rolled redis-py + hiredis loop, COUNT 500, pipelined"),
            broker("redis-loop-script", "the same loop, the batch's XADDs in one script call"),
            broker("redis-engine", "`redis_stream` -> transform -> `redis_stream`, acked"),
        ),
        base="redis-loop",
        pairs=(("redis-engine", "redis-loop-script"),),
        params=lambda n: Params(n=min(n, BROKER_N)),
        reading="Same input, same transform, all ack every entry after writing its result. "
        "Target: the pipeline >= 0.8 x the hand-rolled loop. The `redis_stream` sink "
        "appends a batch with one script call (a server-side loop of XADD), where the loop "
        "pipelines one XADD per entry (redis-py spends about 8 us of CPU per pipelined "
        "command, 0.5 us per entry of the script call); `redis-loop-script` is the loop "
        "doing the same, and the pair ratio is the pipeline against it.",
    ),
    Group(
        name="nats",
        budget=BROKER_BUDGET,
        title="NATS JetStream end to end: fetch, 1 transform, publish (acked), ack",
        variants=(
            broker("nats-loop", "hand-rolled nats-py loop: fetch(500), publish_async, ack"),
            broker("nats-engine", "`nats` -> transform -> `nats` (jetstream: true), acked"),
        ),
        base="nats-loop",
        params=lambda n: Params(n=min(n, BROKER_N // 2)),
        reading="Target: the pipeline >= 0.8 x the hand-rolled loop. The `nats` sink "
        "(`jetstream: true`) gets the stream's acknowledgements on one reply subscription "
        "and checks each in place; the loop's `publish_async` makes a future and a PubAck "
        "per message. Both fetch with nats-py's `fetch` (a task per message inside).",
    ),
    Group(
        name="redis-workers",
        budget=BROKER_BUDGET,
        title="Scale-out: `pipeline run` workers sharing one Redis consumer group",
        variants=(
            broker("redis-workers-1", "1 worker process"),
            broker("redis-workers-2", "2 worker processes, same group"),
        ),
        base="redis-workers-1",
        params=lambda n: Params(n=min(n, BROKER_N)),
        reading="Rate over the span of the output stream's entry ids (Redis's clock); the "
        "input is written once every worker reads, so no start-up is inside the span. The "
        "workers may run on every CPU (until this round they inherited the measuring "
        "process's pin to one CPU: two workers shared one core). "
        "Redis, the workers and the client share 2 cores: per entry a worker spends about "
        "10-12 us of CPU and Redis about 2.5 (INFO cpu), so 2 workers reach at most about "
        "2 x 12 / (12 + 2.5) = 1.6 x one worker on an idle machine, and less with other "
        "jobs on the cores (the ratio then swings with the load). No claim runs in these "
        "runs (XAUTOCLAIM every claim_idle / 3 = 10 s finds nothing idle that long); the "
        "two consumers' XREADGROUPs are served one after the other by Redis.",
    ),
    Group(
        name="nats-workers",
        budget=BROKER_BUDGET,
        title="Scale-out: `pipeline run` workers sharing one NATS durable consumer",
        variants=(
            broker("nats-workers-1", "1 worker process"),
            broker("nats-workers-2", "2 worker processes, same durable"),
        ),
        base="nats-workers-1",
        params=lambda n: Params(n=min(n, BROKER_N // 2)),
        reading="Rate over the span of the output messages' stream timestamps (the "
        "server's clock). The workers may run on every CPU (they inherited the measuring "
        "process's pin to one CPU until this round). The input is stored before the "
        "workers start, so a second "
        "worker's start-up (about 1 s of CPU) can fall inside the span and count against "
        "2 workers. The server, the workers and the client share 2 cores.",
    ),
    Group(
        name="ack-latency",
        budget=BROKER_BUDGET,
        title="Ack latency on an idle stream (publish to ack, `file` sink)",
        variants=(
            broker("ack-latency", "Redis: one entry every 20 ms, read, written, XACKed"),
            broker("ack-latency-nats", "NATS: one message every 20 ms, read, written, acked"),
        ),
        kind="latency",
        params=lambda n: Params(n=ACK_LATENCY_N),
        reading="From the publish (XADD; JetStream publish, acknowledged by the stream) to "
        "the message read, transformed, written by a `file` sink and acknowledged, polled "
        "on XINFO GROUPS (Redis) or the consumer's ack floor (NATS), each poll one round "
        "trip (~0.1-1 ms). The ack is sent as soon as the sink accepted (no timer).",
    ),
    Group(
        name="latency",
        title="Latency at 100 envelopes/s (production to client read)",
        variants=(
            B,
            C,
            replace(FRAMEWORK, note="t set by the first transform unless the source sets it"),
        ),
        kind="latency",
        base="B",
        params=lambda n: Params(n=LATENCY_N, interval=0.01),
        client_args=("--latency", "--skip", "5"),
    ),
    Group(
        name="latency-load",
        title=f"Latency under load: {LOAD_RATE:,} envelopes/s to K={FANOUT_CLIENTS} clients",
        variants=(
            ProcVariant(
                name="framework-load",
                label=f"framework: paced source, hub ring, K={FANOUT_CLIENTS}, "
                f"{LOAD_SAMPLE} clients timed",
                command=lambda p: [
                    *(PY, "-m", "bench.fanout_fw", "latency", "--clients", str(FANOUT_CLIENTS)),
                    *("--rate", str(LOAD_RATE), "--n", str(p.n), "--sample", str(LOAD_SAMPLE)),
                ],
                note="t set by the source at production; fresh server per rep",
            ),
        ),
        kind="latency",
        params=lambda n: Params(n=LOAD_N),
        reading="From the reading's production in the source (its `t`, `time.monotonic`) to "
        f"the line read by one of {LOAD_SAMPLE} timed clients, while every one of the "
        f"{FANOUT_CLIENTS} clients reads the stream (`bench/fanout_fw.py latency`). "
        "Target: p99 <= 2 ms.",
    ),
)


def groups_by_name() -> dict[str, Group]:
    """The registry as a dict."""
    return {g.name: g for g in GROUPS}
