"""Where the targets stand, read from one run's results: a section of the report and the
README's performance table (both generated, so the one command keeps them current).

Each target is a same-run ratio (or a latency) picked out of the results JSON; a piece
the run did not measure is shown as "not measured", never guessed.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench.common import fmt_range, fmt_si
from bench.harness import ROOT

README = ROOT / "README.md"
BEGIN, END = "<!-- bench:table -->", "<!-- /bench:table -->"

Stats = dict[str, float]
Results = dict[str, Any]


def _variant(results: Results, group: str, variant: str) -> dict[str, Any]:
    v = results.get("groups", {}).get(group, {}).get("variants", {}).get(variant, {})
    return v if isinstance(v, dict) else {}


def ratio(group: str, variant: str) -> Callable[[Results], Stats | None]:
    """``variant``'s same-run ratio to its group's base."""
    return lambda r: _variant(r, group, variant).get("ratio")


def pair(group: str, variant: str, ref: str) -> Callable[[Results], Stats | None]:
    """``variant`` / ``ref``, same run (a group's ``pairs``)."""

    def get(r: Results) -> Stats | None:
        for p in _variant(r, group, variant).get("ratios_to", []):
            if p.get("ref") == ref:
                return {k: p[k] for k in ("median", "min", "max")}
        return None

    return get


def stat(group: str, variant: str, key: str) -> Callable[[Results], Stats | None]:
    """One summary statistic of a variant (e.g. ``p99_ms``)."""
    return lambda r: _variant(r, group, variant).get("summary", {}).get(key)


def swept(sweep: str, x: int, variant: str) -> Callable[[Results], Stats | None]:
    """A sweep's ratio at value ``x`` (e.g. the transforms curve at 10 async maps)."""

    def get(r: Results) -> Stats | None:
        for point in r.get("sweeps", {}).get(sweep, {}).get("points", []):
            if point.get("x") == x:
                found = point["group"]["variants"].get(variant, {}).get("ratio")
                return found if isinstance(found, dict) else None
        return None

    return get


@dataclass(frozen=True)
class Target:
    """One target of issue 15: what is compared, how to read it, the goal."""

    what: str
    get: Callable[[Results], Stats | None]
    goal: float
    at_least: bool = True
    unit: str = "x"

    def verdict(self, s: Stats) -> str:
        """ "met", or "missed by N %" (of the goal)."""
        m = s["median"]
        ok = m >= self.goal if self.at_least else m <= self.goal
        if ok:
            return "met"
        off = (self.goal - m) / self.goal if self.at_least else (m - self.goal) / self.goal
        return f"**missed** by {off:.0%}"


TARGETS = (
    Target(
        "HTTP, one client: framework / (C) hand-coalesced Starlette",
        pair("http", "framework", "C"),
        1.0,
    ),
    Target(
        "whole process to a file: framework / Bytewax", pair("whole", "framework", "bytewax"), 1.2
    ),
    Target("whole process to a file: framework / plain loop", ratio("whole", "framework"), 0.9),
    Target(
        "whole process to /dev/null: framework / Bytewax",
        pair("whole-null", "framework", "bytewax"),
        1.2,
    ),
    Target(
        "whole process to /dev/null: framework / plain loop", ratio("whole-null", "framework"), 0.9
    ),
    Target("in-process, 3 sync maps: engine / plain loop", ratio("inproc3", "engine3"), 0.9),
    Target(
        "in-process, 3 async maps: engine / plain loop", swept("transforms", 3, "engine-async"), 0.8
    ),
    Target(
        "in-process, 10 async maps: engine / plain loop",
        swept("transforms", 10, "engine-async"),
        0.7,
    ),
    Target(
        "latency under load, 10 k env/s to 100 clients: p99",
        stat("latency-load", "framework-load", "p99_ms"),
        2.0,
        at_least=False,
        unit=" ms",
    ),
)
PEERS = (
    ("whole process to a file: framework / Pathway", pair("whole", "framework", "pathway")),
    ("in-process, 3 maps: engine / Bytewax `run_main`", pair("inproc3", "engine3", "bytewax3")),
    ("in-process, 3 maps: engine / Pathway `pw.run`", pair("inproc3", "engine3", "pathway3")),
    ("latency at 100 env/s: framework p99 (ms)", stat("latency", "framework", "p99_ms")),
)


def _cell(s: Stats | None, unit: str = "x") -> str:
    if not s:
        return "not measured"
    fmt = (lambda x: f"{x:.3g}") if unit == "x" else (lambda x: f"{x:.2f}")
    return fmt_range(s, fmt) + ("" if unit == "x" else unit)


def section(results: Results) -> list[str]:
    """The report's section: every target of issue 15 and the peers, same run."""
    out = [
        "## Targets (issue 15), from this run",
        "",
        "Same-run ratios (median and min-max over the repetitions) of the groups below; "
        "a verdict reads the median. Re-run `python -m bench` on a quiet machine before "
        "reading much into a miss of a few per cent.",
        "",
        "| target | measured | goal | verdict |",
        "| --- | ---: | ---: | --- |",
    ]
    for t in TARGETS:
        s = t.get(results)
        goal = f"{'>=' if t.at_least else '<='} {t.goal:g}{t.unit}"
        out.append(f"| {t.what} | {_cell(s, t.unit)} | {goal} | {t.verdict(s) if s else ''} |")
    out += ["", "| peers and latency (no goal) | measured |", "| --- | ---: |"]
    for what, get in PEERS:
        out.append(f"| {what} | {_cell(get(results), ' ms' if '(ms)' in what else 'x')} |")
    return [*out, ""]


def _x(s: Stats | None) -> str:
    return f"{s['median']:.3g}x" if s else "n/a"


def readme_rows(results: Results) -> list[str]:
    """The README's performance table (medians of this run)."""
    peers = results.get("meta", {}).get("peers", {})
    bw, pw = peers.get("bytewax") or "?", peers.get("pathway") or "?"
    fw_rate = stat("http", "framework", "rate")(results)
    load = _variant(results, "latency-load", "framework-load").get("summary", {})
    lat = _variant(results, "latency", "framework").get("summary", {})
    mem = results.get("memory", {}).get("variants", {})
    growth = [
        f"{r['growth'] / 2**20:+.2f} MB over {r['lines'] / 1e6:.0f} M envelopes ({name})"
        for name, v in mem.items()
        if isinstance((r := v.get("result") or {}).get("growth"), int) and r.get("lines")
    ]
    rows = [
        (
            "one HTTP client, 3 transforms, every envelope numbered and retained",
            f"~{fmt_si(fw_rate['median']) if fw_rate else 'n/a'} envelopes/s: "
            f"{_x(ratio('http', 'framework')(results))} a per-line Starlette "
            f"`StreamingResponse`, {_x(pair('http', 'framework', 'C')(results))} a "
            "hand-coalesced one doing less work",
        ),
        (
            "one process as users run it, `pipeline run > out.ndjson`, 1 M readings, 3 maps",
            f"{_x(ratio('whole', 'framework')(results))} a plain asyncio loop writing 256 KB "
            f"blocks, {_x(pair('whole', 'framework', 'bytewax')(results))} Bytewax {bw}, "
            f"{_x(pair('whole', 'framework', 'pathway')(results))} Pathway {pw} (same work)",
        ),
        (
            "in-process engine vs a plain `async for` loop doing the same work",
            f"{_x(ratio('inproc3', 'engine3')(results))} (3 sync maps; "
            f"{_x(pair('inproc3', 'engine3', 'bytewax3')(results))} Bytewax's `run_main`, "
            f"{_x(pair('inproc3', 'engine3', 'pathway3')(results))} Pathway's `pw.run`), "
            f"{_x(swept('transforms', 3, 'engine-async')(results))} (3 async), "
            f"{_x(swept('transforms', 10, 'engine-async')(results))} (10 async)",
        ),
        (
            "100 clients of one stream",
            f"{_x(ratio('fanout', 'framework-fanout')(results))} a hand-rolled broadcast with "
            "per-client queues",
        ),
        (
            "latency, source to client",
            (f"p99 {lat['p99_ms']['median']:.2f} ms at 100 envelopes/s" if lat else "n/a")
            + (
                f"; p50 {load['p50_ms']['median']:.2f} ms, p99 {load['p99_ms']['median']:.1f} ms "
                "at 10 k/s to 100 clients"
                if load
                else ""
            ),
        ),
        ("memory, from the first million envelopes on", "; ".join(growth) or "n/a"),
    ]
    return ["| what | result |", "| --- | --- |", *(f"| {a} | {b} |" for a, b in rows)]


def update_readme(results: Results) -> bool:
    """Replace the README's table between its markers; False if it has no markers."""
    text = README.read_text()
    pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), re.DOTALL)
    if not pattern.search(text):
        return False
    table = "\n".join([BEGIN, *readme_rows(results), END])
    README.write_text(pattern.sub(lambda _: table, text))
    return True
