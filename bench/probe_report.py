"""Run hardening probes one after the other and report tried / survived / lost.

Shared by ``python -m bench attack`` and ``python -m bench soak``: each probe gets the
same prepared temporary folder, a probe that raises is a failed row (not a crash), and
rows are printed as a Markdown table as they come.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from bench.probe_kit import CANARY, Row

__all__ = ["HEADER", "Probe", "line", "run_probes"]

Probe = Callable[[Path], Row]
HEADER = ("| probe | tried | survived | lost | measured |", "| --- | --- | --- | ---: | --- |")


def line(name: str, row: Row) -> str:
    """One Markdown table row."""
    mark = "yes" if row["survived"] else "NO"
    return f"| {name} | {row['tried']} | {mark} | {row['lost']} | {row['figure']} |"


def run_probes(
    probes: Mapping[str, Probe],
    picked: Sequence[str],
    prepare: Callable[[Path], None],
    prefix: str,
) -> list[tuple[str, Row, float]]:
    """Run ``picked`` probes in one folder made by ``prepare``; print the table as it
    goes; return (name, row, seconds) per probe."""
    os.environ["CANARY"] = CANARY  # the configs interpolate it
    print(*HEADER, sep="\n")
    out: list[tuple[str, Row, float]] = []
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        folder = Path(tmp)
        prepare(folder)
        for name in picked:
            t0 = time.monotonic()
            try:
                row = probes[name](folder)
            except Exception as exc:  # a probe that breaks is a failed probe, not a crash
                row = {"tried": name, "survived": False, "lost": "?", "figure": repr(exc)}
            out.append((name, row, time.monotonic() - t0))
            print(line(name, row))
            sys.stdout.flush()
    return out
