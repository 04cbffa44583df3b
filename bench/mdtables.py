"""The Markdown tables of the performance report, and how one cell is written.

A cell shows a median and (min-max) over repetitions (``fmt_range``); ratios, latencies
and CPU shares each have their own number format. ``bench.sections`` puts these tables
into the document; the commands that reproduce a group or a sweep are here too, as they
head its table and title its plot.
"""

from __future__ import annotations

from typing import Any

from bench.common import fmt_range


def fmt_ratio(x: float) -> str:
    """A same-run ratio, three significant digits."""
    return f"{x:.3g}"


def fmt_ms(x: float) -> str:
    """A latency in milliseconds, three decimals."""
    return f"{x:.3f}"


def fmt_pct(s: dict[str, float] | None) -> str:
    """The median of a CPU share as a percentage; empty when not measured."""
    return f"{s['median']:.0%}" if s else ""


def reproduce(name: str, group: dict[str, Any], meta: dict[str, Any]) -> str:
    """The command that reproduces one group's table."""
    n = group.get("cli_n", meta["n"])
    return f"python -m bench --only {name} --n {n} --reps {group['reps']}"


def sweep_command(name: str, sweep: dict[str, Any]) -> str:
    """The command that reproduces one sweep."""
    return f"python -m bench --only {name} --n {sweep.get('n', '')} --reps {sweep.get('reps', '')}"


def table(group: dict[str, Any]) -> list[str]:
    """Markdown rows for one group."""
    base = group.get("base")
    out: list[str] = []
    latency = group["kind"] == "latency"
    if latency:
        out.append(f"| variant | p50 ms | p99 ms | max ms | p50 x ({base or '-'}) |")
        out.append("| --- | ---: | ---: | ---: | ---: |")
    else:
        rt = f"x ({base})" if base else "x"
        out.append(f"| variant | env/s | MB/s | {rt} | server CPU | client CPU |")
        out.append("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, res in group["variants"].items():
        label = res["label"]
        s = res.get("summary")
        if not s:
            msg = res.get("message", "").replace("|", "/")
            if len(msg) > 160:
                msg = msg[:157] + "..."
            cells = 4 if latency else 5
            out.append(f"| {label} | **{res['status']}**: {msg} |" + " |" * (cells - 1))
            continue
        r = res.get("ratio")
        ratio = fmt_range(r, fmt_ratio) if r else ("1.00" if name == base else "")
        if res.get("status") == "partial":  # inside the table (was appended after the last `|`)
            ratio += " (partial: time budget)"
        if latency:
            out.append(
                f"| {label} | {fmt_range(s['p50_ms'], fmt_ms)} | {fmt_range(s['p99_ms'], fmt_ms)} "
                f"| {s['max_ms']['max']:.2f} | {ratio} |"
            )
        else:
            mb = f"{s['mb_s']['median']:.0f}" if "mb_s" in s else ""
            out.append(
                f"| {label} | {fmt_range(s['rate'])} | {mb} | {ratio} "
                f"| {fmt_pct(s.get('server_cpu_frac'))} | {fmt_pct(s.get('client_cpu_frac'))} |"
            )
    return out


def pairs_lines(group: dict[str, Any]) -> list[str]:
    """One line per same-run ratio between two variants (e.g. the cost of a frozen client)."""
    out: list[str] = []
    for name, res in group["variants"].items():
        for pair in res.get("ratios_to", []):
            cost = (
                f", a cost of {1 - pair['median']:.1%} (median) to the other clients"
                if "frozen" in name
                else ""
            )
            out.append(
                f"`{name}` / `{pair['ref']}`, same run: **{fmt_range(pair, fmt_ratio)}**{cost}."
            )
    return [*out, ""] if out else out


def sweep_variants(sweep: dict[str, Any]) -> tuple[list[str], dict[str, str], str]:
    """A sweep's variant names in order of appearance, their labels (without the swept
    value) and the base variant, read from all its points."""
    vnames: list[str] = []
    labels: dict[str, str] = {}
    base = ""
    for point in sweep["points"]:
        base = point["group"].get("base") or base
        for vname, res in point["group"]["variants"].items():
            if vname not in labels:
                vnames.append(vname)
                labels[vname] = res["label"].split(", K=")[0]
    return vnames, labels, base


def sweep_table(sweep: dict[str, Any], vnames: list[str], base: str) -> list[str]:
    """One row per swept value: each variant's env/s and its same-run ratio to the base."""
    head = [sweep["x_label"]]
    for v in vnames:
        head.append(f"{v}: env/s")
        if v != base:
            head.append(f"{v}: x {base}")
    out = [
        "| " + " | ".join(head) + " |",
        "| " + " | ".join(["---:"] * len(head)) + " |",
    ]
    for point in sweep["points"]:
        row = [str(point["x"])]
        for v in vnames:
            res = point["group"]["variants"].get(v, {})
            s = res.get("summary", {}).get("rate")
            row.append(fmt_range(s) if s else f"**{res.get('status', 'n/a')}**")
            if v != base:
                r = res.get("ratio")
                row.append(fmt_range(r, fmt_ratio) if r else "")
        out.append("| " + " | ".join(row) + " |")
    return out


def rss_points(sweep: dict[str, Any], vname: str) -> list[tuple[float, dict[str, float]]]:
    """(swept value, server RSS summary) for one variant, where it was measured."""
    pts = []
    for point in sweep["points"]:
        s = point["group"]["variants"].get(vname, {}).get("summary", {}).get("server_rss")
        if s:
            pts.append((point["x"], s))
    return pts


def rss_table(sweep: dict[str, Any], vnames: list[str]) -> list[str]:
    """Server RSS (MB, median and min-max over reps) per swept value, when measured."""
    have = [v for v in vnames if rss_points(sweep, v)]
    if not have:
        return []
    out = [
        "Server RSS after the read, MB:",
        "",
        "| " + " | ".join([sweep["x_label"], *(f"{v}: RSS MB" for v in have)]) + " |",
        "| " + " | ".join(["---:"] * (len(have) + 1)) + " |",
    ]
    for point in sweep["points"]:
        row = [str(point["x"])]
        for v in have:
            s = point["group"]["variants"].get(v, {}).get("summary", {}).get("server_rss")
            row.append(fmt_range(s, lambda x: f"{x / 2**20:.0f}") if s else "")
        out.append("| " + " | ".join(row) + " |")
    return [*out, ""]
