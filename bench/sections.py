"""The sections of ``docs/performance.md``: one per group, sweep and memory run.

Each section is a title, the command that reproduces it, its table (``bench.mdtables``),
the reading written beside the variants, and its picture from ``docs/perf/`` when one
has been drawn (``bench.plots``). ``bench.report`` puts them in order.
"""

from __future__ import annotations

from typing import Any

from bench.common import fmt_si
from bench.mdtables import (
    pairs_lines,
    reproduce,
    rss_table,
    sweep_command,
    sweep_table,
    sweep_variants,
    table,
)
from bench.plots import PLOTS


def measured_line(piece: dict[str, Any]) -> list[str]:
    """A line saying a piece comes from another run than the page's header."""
    if "measured" not in piece:
        return []
    return [
        f"From a separate run: measured {piece['measured']} with `{piece['measured_command']}`.",
        "",
    ]


def picture(alt: str, stem: str | None = None) -> list[str]:
    """The Markdown image of ``docs/perf/<stem>.png`` (``stem`` defaults to ``alt``) and a
    blank line, or nothing when that plot has not been drawn."""
    stem = stem or alt
    if not (PLOTS / f"{stem}.png").exists():
        return []
    return [f"![{alt}](perf/{stem}.png)", ""]


def group_section(
    name: str, group: dict[str, Any], meta: dict[str, Any], *, plot: bool = True
) -> list[str]:
    """The markdown section of one group: command, table, ratios, reading, plot."""
    p = group["params"]
    lines = [
        f"## {group['title']}",
        "",
        f"Command: `{reproduce(name, group, meta)}` "
        f"(per connection: {p['n']} envelopes"
        + (f", one every {p['interval'] * 1000:g} ms" if p["interval"] else "")
        + (f", {p['clients']} connections" if p["clients"] > 1 else "")
        + f"; {group['reps']} repetitions).",
        "",
    ]
    if "measured" in group:  # folded in from a run of its own
        lines += [
            f"Measured {group['measured']} (load average before "
            f"{', '.join(f'{x:.2f}' for x in group['load_avg_before'])}).",
            "",
        ]
    lines += [*table(group), "", *pairs_lines(group)]
    if group.get("reading"):
        lines += [group["reading"], ""]
    if plot:
        lines += picture(name)
    return lines


def sweep_section(name: str, sweep: dict[str, Any], meta: dict[str, Any]) -> list[str]:
    """Markdown for one sweep: command, a table (one row per value), the plot."""
    vnames, labels, base = sweep_variants(sweep)
    out = [
        f"## {sweep['title']}",
        "",
        *measured_line(sweep),
        f"Command: `{sweep_command(name, sweep)}` (envelopes per run: "
        + ", ".join(f"{p['group']['params']['n']}" for p in sweep["points"])
        + f"; {sweep.get('reps', '?')} repetitions per value).",
        "",
        "Variants: " + "; ".join(f"`{v}` = {labels[v]}" for v in vnames) + ".",
        "",
        *sweep_table(sweep, vnames, base),
        "",
        *rss_table(sweep, vnames),
    ]
    if sweep.get("reading"):
        out += [sweep["reading"], ""]
    out += picture(name, f"sweep-{name}")
    return out


def memory_section(mem: dict[str, Any]) -> list[str]:
    """Markdown for the memory run: one row per sink, the plot."""
    mb = 2**20
    out = [
        f"## {mem['title']}",
        "",
        f"Command: `{mem['command']}` (one run per sink, both at once, one per CPU; RSS is",
        f"`VmRSS` of the measuring process, sampled every {mem['every']:,} envelopes).",
        "",
        f"| sink | env/s | RSS at start | after {mem['every']:,} | at the end | envelopes "
        f"| growth (target <= {mem['target_mb']:g} MB) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for v in mem["variants"].values():
        res = v["result"]
        if res.get("rss_first") is None:
            msg = str(res.get("error") or res.get("skipped") or "").replace("|", "/")[:160]
            out.append(f"| {v['label']} | **{v['status']}**: {msg} | | | | | |")
            continue
        growth = res.get("growth")
        gtxt = f"{growth / mb:+.2f} MB" if isinstance(growth, int) else ""
        extra = " (partial: time budget)" if v["status"] == "partial" else ""
        out.append(
            f"| {v['label']} | {fmt_si(res['rate'])} | {res['rss_start'] / mb:.1f} MB "
            f"| {res['rss_first'] / mb:.1f} MB | {res['rss_last'] / mb:.1f} MB "
            f"| {res['lines']:,}{extra} | **{gtxt}** |"
        )
    out += [
        "",
        "Nothing is retained with the `bytearray` sink, so RSS must stay flat. The hub keeps",
        "a ring of `retain + client_buffer` lines in 64 KiB segments: RSS rises while the",
        "ring fills (the first samples), then stays flat whatever the stream's length.",
        "",
    ]
    out += picture("memory")
    return out


def fanout_memory_section(fm: dict[str, Any]) -> list[str]:
    """Markdown for the frozen-client memory run: the numbers, then RSS against time."""
    res = fm["result"]
    mb = 2**20
    out = [
        f"## {fm['title']}",
        "",
        *measured_line(fm),
        f"Command: `{fm['command']}` (`--quick`: 10 s). One framework server "
        "(`bench/configs/fanout.yaml`, `client_buffer: 1024`, `retain: 1000`), its source "
        f"paced at {fm['rate']:g} envelopes/s; one client that sends its request and never "
        "reads (4 KiB `SO_RCVBUF`) and one healthy client, both connected before the source "
        f"starts. Server `VmRSS` sampled every {fm['sample']:g} s.",
        "",
    ]
    if not res.get("samples"):
        msg = str(res.get("error") or res.get("skipped") or "").replace("|", "/")[:200]
        return [*out, f"**{fm['status']}**: {msg}", ""]
    out += [
        "| RSS at start | RSS at "
        f"{res['growth_from']:.0f} s | RSS at the end | max | growth "
        f"(target <= {fm['target_mb']:g} MB) | healthy client | frozen dropped | env/s |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| {res['samples'][0][1] / mb:.1f} MB | {res['rss_from'] / mb:.1f} MB "
        f"| {res['rss_end'] / mb:.1f} MB ({res['elapsed']:.0f} s) | {res['rss_max'] / mb:.1f} MB "
        f"| **{res['growth'] / mb:+.2f} MB** | {res['healthy_lines']:,} of {res['n'] + 2:,} lines "
        f"| {'yes' if res['dropped_clients'] >= 1 else 'no'} "
        f"(`dropped_clients` = {res['dropped_clients']}) | {fmt_si(res['rate'])} |",
        "",
    ]
    if not res.get("ok"):
        out += [f"**failed**: {res.get('error')}", ""]
    out += [
        "The hub holds one ring of `retain + client_buffer` lines (64 KiB segments) whatever the",
        "clients do; the frozen client is lapped after `client_buffer` envelopes beyond",
        "what the kernel and the transport buffer took, then dropped. RSS must stay flat",
        "from then on, however long the run.",
        "",
    ]
    out += picture("fanout-memory")
    return out
