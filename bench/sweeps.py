"""Sweeps: a group measured at several values of one parameter, plotted as curves.

A `Sweep` maps a value ``x`` to a `Group` and its `Params`; `run_sweep` measures the
group at every value (round-robin within each value, like any group) and
`bench.report.plot_sweep` draws one curve per variant with its min-max band into
``docs/perf/sweep-NAME.png``. Adding a curve is one `Sweep` entry in `SWEEPS`.

To do (needs the framework): throughput vs number of transforms (1..10) by writing a
config with ``x`` transforms into ``bench/results/configs/`` and pointing a copy of
``variants.FRAMEWORK`` at it; throughput vs ``concurrency``, the same with
``concurrency: x`` on the transform; clients 1..1000 against the framework's stream.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from bench.variants import Group, Params, fanout_params, fanout_variants


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


def _fanout_group(k: int) -> Group:
    return Group(
        name=f"fanout-k{k}",
        title=f"Fan-out, K={k}",
        variants=fanout_variants(k),
        base="fanout-ceiling",
    )


SWEEPS: dict[str, Sweep] = {
    s.name: s
    for s in (
        Sweep(
            name="fanout-clients",
            title="Fan-out baseline: aggregate envelopes/s vs clients",
            x_label="clients (K)",
            values=(1, 10, 100, 300),
            group=_fanout_group,
            # about 10 x n deliveries in all, at most n per client
            params=lambda n, k: replace(fanout_params(n, k), n=max(1000, min(n, 10 * n // k))),
            xscale="log",
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
        "points": points,
    }
