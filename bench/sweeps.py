"""Sweeps: a group measured at several values of one parameter, plotted as curves.

A `Sweep` maps a value ``x`` to a `Group` and its `Params`; `run_sweep` measures the
group at every value (round-robin within each value, like any group) and
`bench.plots.plot_sweep` draws one curve per variant with its min-max band into
``docs/perf/sweep-NAME.png``. Adding a curve is one `Sweep` entry in `SWEEPS`.

``transforms`` and ``concurrency`` run in-process (`bench.scaling`) and are part of the
default ``python -m bench``; ``fanout-clients`` (baseline, ceiling and framework, K = 1 to
1000, with server RSS) runs only when asked (``--sweep fanout-clients``); its latest saved
results are folded into ``docs/performance.md`` whenever the docs are written.

To do: the transforms and concurrency curves over HTTP (a config with ``x`` transforms
written into ``bench/results/configs/`` and a copy of ``variants.FRAMEWORK`` pointed at it).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from bench.variants import (
    PY,
    Group,
    Params,
    ProcVariant,
    concurrency_variants,
    fanout_params,
    fanout_variants,
)


@dataclass(frozen=True, slots=True)
class Sweep:
    """One parameter swept over ``values``."""

    name: str
    title: str
    x_label: str
    values: Sequence[int]
    group: Callable[[int], Group]
    params: Callable[[int, int], Params]
    """(--n, x) -> parameters."""
    xscale: Literal["linear", "log"] = "linear"
    yscale: Literal["linear", "log"] = "linear"
    default: bool = False
    """Part of the default ``python -m bench`` run."""
    reading: str = ""


def _fanout_group(k: int) -> Group:
    return Group(
        name=f"fanout-k{k}",
        title=f"Fan-out, K={k}",
        variants=fanout_variants(k),
        base="fanout-queues",
    )


def _transforms_variant(mode: str, label: str, k: int, div: int = 1) -> ProcVariant:
    return ProcVariant(
        name=mode,
        label=label,
        command=lambda p: [
            *(PY, "-m", "bench.scaling", "transforms"),
            *("--mode", mode, "--k", str(k), "--n", str(max(1, p.n // div))),
        ],
    )


def _transforms_group(k: int) -> Group:
    return Group(
        name=f"transforms-k{k}",
        title=f"{k} per-chunk transforms",
        variants=(
            _transforms_variant("plain", "plain loop calling the functions", k),
            _transforms_variant("engine", "engine, sync transforms", k),
            # one async hop per transform is slower: half the envelopes keeps the run short
            _transforms_variant("engine-async", "engine, `async def` transforms", k, div=2),
            _transforms_variant(
                "plain-async", "plain loop awaiting the same `async def` transforms", k, div=2
            ),
        ),
        base="plain",
    )


def _concurrency_group(c: int) -> Group:
    return Group(
        name=f"concurrency-c{c}",
        title=f"concurrency {c}",
        variants=concurrency_variants(c),
        base="ideal",
    )


FANOUT_SWEEP_CLIENTS = (1, 10, 100, 300, 1000)
"""K of the fan-out sweep (1000 needs ``max_clients`` >= 1000: bench/configs/fanout.yaml)."""

CONCURRENCY_SECONDS = 0.3
"""Ideal duration of one concurrency-sweep run: c / 0.010 chunks/s for this long."""

SWEEPS: dict[str, Sweep] = {
    s.name: s
    for s in (
        Sweep(
            name="fanout-clients",
            title="Fan-out: aggregate envelopes/s and server RSS vs clients",
            x_label="clients (K)",
            values=FANOUT_SWEEP_CLIENTS,
            group=_fanout_group,
            # about 10 x n deliveries in all, at most n per client
            params=lambda n, k: replace(fanout_params(n, k), n=max(1000, min(n, 10 * n // k))),
            xscale="log",
            reading="Same measurement as the fan-out group, at each K: the baseline "
            "(per-client queues), the client's ceiling (blaster) and the framework (fresh "
            "server per run, gated `trigger: start` source, every client checked for N + 2 "
            "lines). Envelopes per client: n at K <= 10, then 10 n / K (at least 1000). "
            "Ratio: to the baseline, same run. Server RSS: `VmRSS` after the read (the "
            "framework's server is fresh each run; the baseline's serves every rep). "
            "Opt-in: `python -m bench --sweep fanout-clients` (about 3 minutes).",
        ),
        Sweep(
            name="transforms",
            title="In-process throughput vs number of per-chunk transforms",
            x_label="transforms",
            values=tuple(range(1, 11)),
            group=_transforms_group,
            params=lambda n, k: Params(n=max(1000, n // 4)),
            default=True,
            reading="Each transform sets `value_f` (the envelope keeps its size), then the "
            "envelope is stamped, encoded and appended to a `bytearray`. The engine fuses "
            "consecutive sync maps into one function; `async def` transforms are awaited in "
            "place by the source reader. `engine-async` and `plain-async` (a loop awaiting "
            "the same coroutine functions) run half the envelopes. Ratio: to `plain`, same "
            "run.",
        ),
        Sweep(
            name="concurrency",
            title="I/O-bound transform (10 ms await per chunk): throughput vs concurrency",
            x_label="concurrency",
            values=(1, 4, 16, 64, 256),
            group=_concurrency_group,
            params=lambda n, c: Params(n=max(10, round(c * 100 * CONCURRENCY_SECONDS))),
            xscale="log",
            yscale="log",
            default=True,
            reading="Ideal = concurrency / 0.010 s (dashed). Each run is "
            f"{CONCURRENCY_SECONDS:g} s at the ideal rate (concurrency x "
            f"{round(100 * CONCURRENCY_SECONDS)} chunks), start and end included.",
        ),
    )
}


def run_sweep(sweep: Sweep, *, n: int, reps: int, deadline: float) -> dict[str, Any]:
    """Measure ``sweep`` at each value; stop early (keeping what was measured) at ``deadline``."""
    from bench.run import run_group

    points: list[dict[str, Any]] = []
    for x in sweep.values:
        if time.monotonic() > deadline:
            break
        group = sweep.group(x)
        points.append(
            {
                "x": x,
                "group": run_group(
                    group, list(group.variants), sweep.params(n, x), reps, deadline=deadline
                ),
            }
        )
    return {
        "title": sweep.title,
        "x_label": sweep.x_label,
        "xscale": sweep.xscale,
        "yscale": sweep.yscale,
        "reading": sweep.reading,
        "n": n,
        "reps": reps,
        "points": points,
    }
