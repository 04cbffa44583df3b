"""Turn results JSON into ``docs/performance.md`` and ``docs/perf/*.png``.

``python -m bench --report bench/results/bench-latest.json`` rebuilds them without
measuring again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench import targets
from bench.common import fmt_range, fmt_si
from bench.harness import ROOT

DOC = ROOT / "docs" / "performance.md"
PLOTS = ROOT / "docs" / "perf"
RESULTS = ROOT / "bench" / "results"
OPT_IN_SWEEPS = ("fanout-clients",)
"""Sweeps that are not in the default run: their latest saved results go into the docs."""


def _load(path: Path) -> dict[str, Any] | None:
    import orjson

    try:
        data = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def with_opt_in(results: dict[str, Any]) -> dict[str, Any]:
    """``results`` plus the latest saved opt-in pieces it lacks (the fan-out clients sweep,
    the frozen-client memory run), each marked with when and how it was measured."""
    out = dict(results)
    sweeps = dict(out.get("sweeps") or {})
    for name in OPT_IN_SWEEPS:
        saved = None if name in sweeps else _load(RESULTS / f"sweep-{name}-latest.json")
        if saved and name in saved.get("sweeps", {}):
            meta = saved.get("meta", {})
            sweeps[name] = saved["sweeps"][name] | {
                "measured": meta.get("date", "?"),
                "measured_command": meta.get("command", "?"),
            }
    out["sweeps"] = sweeps
    if not out.get("fanout_memory"):
        saved = _load(RESULTS / "fanout-memory-latest.json")
        if saved and saved.get("fanout_memory"):
            meta = saved.get("meta", {})
            out["fanout_memory"] = saved["fanout_memory"] | {
                "measured": meta.get("date", "?"),
                "measured_command": meta.get("command", "?"),
            }
    return out


def _measured(piece: dict[str, Any]) -> list[str]:
    """A line saying a piece comes from another run than the page's header."""
    if "measured" not in piece:
        return []
    return [
        f"From a separate run: measured {piece['measured']} with `{piece['measured_command']}`.",
        "",
    ]


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
                f"`{name}` / `{pair['ref']}`, same run: **{fmt_range(pair, _ratio)}**{cost}."
            )
    return [*out, ""] if out else out


def _ratio(x: float) -> str:
    return f"{x:.3g}"


def _ms(x: float) -> str:
    return f"{x:.3f}"


def _pct(s: dict[str, float] | None) -> str:
    return f"{s['median']:.0%}" if s else ""


def reproduce(name: str, group: dict[str, Any], meta: dict[str, Any]) -> str:
    """The command that reproduces one group's table."""
    n = group.get("cli_n", meta["n"])
    return f"python -m bench --only {name} --n {n} --reps {group['reps']}"


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
        ratio = fmt_range(r, _ratio) if r else ("1.00" if name == base else "")
        if res.get("status") == "partial":  # inside the table (was appended after the last `|`)
            ratio += " (partial: time budget)"
        if latency:
            out.append(
                f"| {label} | {fmt_range(s['p50_ms'], _ms)} | {fmt_range(s['p99_ms'], _ms)} "
                f"| {s['max_ms']['max']:.2f} | {ratio} |"
            )
        else:
            mb = f"{s['mb_s']['median']:.0f}" if "mb_s" in s else ""
            out.append(
                f"| {label} | {fmt_range(s['rate'])} | {mb} | {ratio} "
                f"| {_pct(s.get('server_cpu_frac'))} | {_pct(s.get('client_cpu_frac'))} |"
            )
    return out


def render(results: dict[str, Any]) -> str:
    """The whole markdown document."""
    meta = results["meta"]
    v = meta["versions"]
    lines = [
        "# Performance",
        "",
        "Generated by `python -m bench` (bench/run.py); do not edit by hand. Rebuild from",
        "saved results with `python -m bench --report bench/results/bench-latest.json`.",
        "",
        f"Measured {meta['date']} with `{meta['command']}`: {meta['cpus']} CPUs "
        f"({meta['cpu_model']}), Python {meta['python']}, "
        + ", ".join(f"{k} {x}" for k, x in v.items() if x)
        + ".",
        "Peers: "
        + ", ".join(
            f"{k} {x}" if x else f"{k} not installed" for k, x in meta.get("peers", {}).items()
        )
        + " (Bytewax: the `bench` extra; Pathway: the `pathway` extra, about 130 packages and"
        " 1 GB, so not in `all`).",
        f"Servers pinned to CPU {meta['server_cpu']}, clients to CPU {meta['client_cpu']}; "
        f"load average before {', '.join(f'{x:.2f}' for x in meta['load_avg_before'])}.",
        "",
        "The machine is shared and noisy: **read the same-run ratios**. Each repetition runs",
        "every variant of a group once (round-robin), and a ratio is taken within one",
        "repetition. Cells show the median over repetitions and (min-max). Server and",
        "client CPU are the share of one core used during the read (median).",
        "Every read checks status 200 and the exact line count.",
        "",
        "How it is measured: `bench/client.py` (raw socket, incremental chunked decoder,",
        "counts `\\n`, time from request sent to last byte); servers in `bench/servers/`",
        "on uvicorn (httptools + uvloop, no access log) on 127.0.0.1. Every envelope is",
        "built, transformed (`value_f`), stamped (cached-seconds clock) and encoded when",
        "produced, except the pre-encoded wire reference (D) and the blaster.",
        "Hand-written notes (instruction counts per change, profiles, what was tried) are",
        "in [perf-notes.md](perf-notes.md).",
        "",
        *targets.section(results),
    ]
    for name, group in results["groups"].items():
        lines += group_section(name, group, meta)
    for name, sweep in results.get("sweeps", {}).items():
        lines += sweep_section(name, sweep, meta)
    if results.get("memory"):
        lines += memory_section(results["memory"])
    if results.get("fanout_memory"):
        lines += fanout_memory_section(results["fanout_memory"])
    lines += [
        "## Plug points and what is not measured yet",
        "",
        "- Variants live in `bench/variants.py`; the framework entries are `framework`",
        "  (HTTP, `bench/configs/http.yaml`) and `engine` (in-process, `bench/inproc.py`).",
        "- Sweeps (curves) live in `bench/sweeps.py`: `python -m bench --list`. The",
        "  in-process curves and the memory run are measured by `bench/scaling.py`.",
        "- Opt-in pieces (not in the default run) are folded in from their latest saved",
        "  results: `python -m bench --sweep fanout-clients --docs` (K = 1 to 1000).",
        "- `python -m bench --only GROUP --docs` measures some groups and replaces their",
        "  sections here (each says when it was measured), leaving the rest as it is.",
        "- Not yet: the transforms and concurrency curves over HTTP (the framework server).",
        "",
    ]
    return "\n".join(lines)


def sweep_command(name: str, sweep: dict[str, Any]) -> str:
    """The command that reproduces one sweep."""
    return f"python -m bench --only {name} --n {sweep.get('n', '')} --reps {sweep.get('reps', '')}"


def sweep_section(name: str, sweep: dict[str, Any], meta: dict[str, Any]) -> list[str]:
    """Markdown for one sweep: command, a table (one row per value), the plot."""
    vnames: list[str] = []
    labels: dict[str, str] = {}
    base = ""
    for point in sweep["points"]:
        base = point["group"].get("base") or base
        for vname, res in point["group"]["variants"].items():
            if vname not in labels:
                vnames.append(vname)
                labels[vname] = res["label"].split(", K=")[0]
    head = [sweep["x_label"]]
    for v in vnames:
        head.append(f"{v}: env/s")
        if v != base:
            head.append(f"{v}: x {base}")
    out = [
        f"## {sweep['title']}",
        "",
        *_measured(sweep),
        f"Command: `{sweep_command(name, sweep)}` (envelopes per run: "
        + ", ".join(f"{p['group']['params']['n']}" for p in sweep["points"])
        + f"; {sweep.get('reps', '?')} repetitions per value).",
        "",
        "Variants: " + "; ".join(f"`{v}` = {labels[v]}" for v in vnames) + ".",
        "",
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
                row.append(fmt_range(r, _ratio) if r else "")
        out.append("| " + " | ".join(row) + " |")
    out.append("")
    out += _rss_table(sweep, vnames)
    if sweep.get("reading"):
        out += [sweep["reading"], ""]
    if (PLOTS / f"sweep-{name}.png").exists():
        out += [f"![{name}](perf/sweep-{name}.png)", ""]
    return out


def _rss_points(sweep: dict[str, Any], vname: str) -> list[tuple[float, dict[str, float]]]:
    pts = []
    for point in sweep["points"]:
        s = point["group"]["variants"].get(vname, {}).get("summary", {}).get("server_rss")
        if s:
            pts.append((point["x"], s))
    return pts


def _rss_table(sweep: dict[str, Any], vnames: list[str]) -> list[str]:
    """Server RSS (MB, median and min-max over reps) per swept value, when measured."""
    have = [v for v in vnames if _rss_points(sweep, v)]
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


def fanout_memory_section(fm: dict[str, Any]) -> list[str]:
    """Markdown for the frozen-client memory run: the numbers, then RSS against time."""
    res = fm["result"]
    mb = 2**20
    out = [
        f"## {fm['title']}",
        "",
        *_measured(fm),
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
    if (PLOTS / "fanout-memory.png").exists():
        out += ["![fanout-memory](perf/fanout-memory.png)", ""]
    return out


def plot_fanout_memory(fm: dict[str, Any]) -> Path | None:
    """Server RSS (MB) against time, with the healthy client's lines on a second axis."""
    samples = fm["result"].get("samples") or []
    if not samples:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot(
        [t for t, _, _ in samples],
        [r / 2**20 for _, r, _ in samples],
        marker="o",
        label="server RSS (MB)",
    )
    ax.set_xlabel("seconds since the source started")
    ax.set_ylabel("server RSS, MB")
    ax.set_ylim(bottom=0)
    ax2 = ax.twinx()
    ax2.plot(
        [t for t, _, _ in samples],
        [n / 1e3 for _, _, n in samples],
        "g--",
        lw=1,
        label="healthy client: lines read (k)",
    )
    ax2.set_ylabel("lines read by the healthy client (k)")
    ax2.set_ylim(bottom=0)
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=7, loc="lower right")
    ax.set_title(f"{fm['title']}\n{fm['command']}", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = PLOTS / "fanout-memory.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


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
    if (PLOTS / "memory.png").exists():
        out += ["![memory](perf/memory.png)", ""]
    return out


def plot_group(name: str, group: dict[str, Any], path: Path, command: str = "") -> bool:
    """A horizontal bar chart of medians with min-max whiskers; False if nothing to plot.

    ``command`` (the one that reproduces the group) is printed under the title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    latency = group["kind"] == "latency"
    key = "p50_ms" if latency else "rate"
    rows = [
        (res["label"], res["summary"][key])
        for res in group["variants"].values()
        if res.get("summary") and key in res["summary"]
    ]
    if not rows:
        return False
    labels = [r[0].replace("`", "") for r in rows][::-1]
    med = [r[1]["median"] for r in rows][::-1]
    lo = [r[1]["median"] - r[1]["min"] for r in rows][::-1]
    hi = [r[1]["max"] - r[1]["median"] for r in rows][::-1]
    fig, ax = plt.subplots(figsize=(9, 0.55 * len(rows) + 1.4))
    ax.barh(labels, med, xerr=[lo, hi], capsize=3, color="#4c72b0", label="p50")
    if latency:  # p99 beside p50, on a log scale (a loaded run's p99 is far out)
        p99 = [
            res["summary"]["p99_ms"]["median"]
            for res in group["variants"].values()
            if res.get("summary") and key in res["summary"]
        ][::-1]
        ax.barh(labels, p99, color="#dd8452", alpha=0.5, label="p99", zorder=0)
        ax.set_xscale("log")
        ax.set_xlim(left=min(med) / 3, right=max(p99) * 1.5)
        ax.legend(fontsize=8)
        ax.set_xlabel("latency, ms (log scale; p50 median with min-max whiskers, p99 median)")
    else:
        ax.set_xscale("log")
        ax.set_xlabel("envelopes/s (log scale; median, min-max whiskers)")
        for y, (m, h) in enumerate(zip(med, hi, strict=True)):
            ax.text((m + h) * 1.08, y, fmt_si(m), va="center", fontsize=8)
        low = min(m - lo_ for m, lo_ in zip(med, lo, strict=True))
        ax.set_xlim(
            left=max(low, 1.0) / 5, right=max(m + h for m, h in zip(med, hi, strict=True)) * 3
        )
    title = group["title"] + (f"\n{command}" if command else "")
    ax.set_title(title, fontsize=9)
    ax.tick_params(axis="y", labelsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_sweep(name: str, sweep: dict[str, Any], meta: dict[str, Any]) -> Path | None:
    """Top: one curve per variant, median (line) and min-max (band) against the swept
    value, with the ideal (dashed) when the runs report one. Bottom: the same-run ratio to
    the base (or to the ideal)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves: dict[str, list[tuple[float, dict[str, float]]]] = {}
    ratios: dict[str, list[tuple[float, dict[str, float]]]] = {}
    labels: dict[str, str] = {}
    ideal: list[tuple[float, float]] = []
    base = ""
    for point in sweep["points"]:
        base = point["group"].get("base") or base
        for vname, res in point["group"]["variants"].items():
            s = res.get("summary", {}).get("rate")
            if s:
                curves.setdefault(vname, []).append((point["x"], s))
                labels.setdefault(vname, res["label"].split(", K=")[0].replace("`", ""))
            if res.get("ratio"):
                ratios.setdefault(vname, []).append((point["x"], res["ratio"]))
            ideals = [r["ideal"] for r in res.get("reps", []) if r.get("ideal")]
            if ideals and (not ideal or ideal[-1][0] != point["x"]):
                ideal.append((point["x"], float(ideals[0])))
    if not curves:
        return None
    rss = {v: pts for v in curves if (pts := _rss_points(sweep, v))}
    rows = 1 + bool(ratios) + bool(rss)
    fig, axes = plt.subplots(rows, 1, figsize=(8, 3.4 * rows + 1.0), sharex=True, squeeze=False)
    ax = axes[0][0]
    colors: dict[str, Any] = {}
    for vname, pts in curves.items():
        xs = [p[0] for p in pts]
        (line,) = ax.plot(xs, [p[1]["median"] for p in pts], marker="o", label=labels[vname])
        colors[vname] = line.get_color()
        ax.fill_between(xs, [p[1]["min"] for p in pts], [p[1]["max"] for p in pts], alpha=0.2)
    if ideal:
        ax.plot([p[0] for p in ideal], [p[1] for p in ideal], "k--", label="ideal", lw=1)
    ax.set_xscale(sweep.get("xscale", "linear"))
    ax.set_yscale(sweep.get("yscale", "linear"))
    ax.set_ylabel("envelopes/s")
    ax.set_title(f"{sweep['title']}\n{sweep_command(name, sweep)}", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    if ratios:
        rx = axes[1][0]
        for vname, pts in ratios.items():
            xs = [p[0] for p in pts]
            rx.plot(
                xs,
                [p[1]["median"] for p in pts],
                marker="o",
                color=colors.get(vname),
                label=labels.get(vname, vname),
            )
            rx.fill_between(
                xs,
                [p[1]["min"] for p in pts],
                [p[1]["max"] for p in pts],
                alpha=0.2,
                color=colors.get(vname),
            )
        if base == "ideal":
            rx.axhline(0.8, color="k", ls=":", lw=1, label="target 0.8")
        rx.axhline(1.0, color="k", ls="--", lw=1)
        rx.set_ylabel(f"ratio to {base} (same run)")
        rx.set_ylim(bottom=0)
        rx.legend(fontsize=7)
        rx.grid(alpha=0.3)
    if rss:
        mx = axes[-1][0]
        for vname, pts in rss.items():
            xs = [p[0] for p in pts]
            mx.plot(
                xs,
                [p[1]["median"] / 2**20 for p in pts],
                marker="o",
                color=colors.get(vname),
                label=labels.get(vname, vname),
            )
        mx.set_ylabel("server RSS after the read, MB")
        mx.set_ylim(bottom=0)
        mx.legend(fontsize=7)
        mx.grid(alpha=0.3)
    axes[-1][0].set_xlabel(sweep["x_label"])
    fig.tight_layout()
    path = PLOTS / f"sweep-{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_memory(mem: dict[str, Any]) -> Path | None:
    """RSS (MB) against envelopes published, one line per sink."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    drawn = False
    for sink, v in mem["variants"].items():
        samples = v["result"].get("samples") or []
        if not samples:
            continue
        drawn = True
        ax.plot(
            [c / 1e6 for c, _, _ in samples],
            [rss / 2**20 for _, rss, _ in samples],
            marker="o",
            label=f"{sink}: {v['label'].replace('`', '')}",
        )
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xlabel("envelopes published (millions)")
    ax.set_ylabel("RSS, MB")
    ax.set_ylim(bottom=0)
    ax.set_title(f"{mem['title']}\n{mem['command']}", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = PLOTS / "memory.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


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
    if plot and (PLOTS / f"{name}.png").exists():
        lines += [f"![{name}](perf/{name}.png)", ""]
    return lines


def update_sections(results: dict[str, Any]) -> None:
    """Fold the groups of a partial run (``--only ... --docs``) into the existing document.

    Each group's section replaces the one with the same title, or goes before the plug
    points when the document has none yet. No plot is
    drawn: the pictures in docs/perf/ come from full runs.
    """
    meta = results["meta"]
    text = DOC.read_text()
    for name, group in results["groups"].items():
        dated = group | {"measured": meta["date"], "load_avg_before": meta["load_avg_before"]}
        section = "\n".join(group_section(name, dated, meta, plot=False))
        head = f"## {group['title']}\n"
        start = text.find(head)
        if start < 0:
            start = end = _insertion_point(text)
        else:
            nxt = text.find("\n## ", start + len(head))
            end = len(text) if nxt < 0 else nxt + 1
        text = text[:start] + section + "\n" + text[end:]
    DOC.write_text(text)


def _insertion_point(text: str) -> int:
    """Where a new section goes: before the plug points."""
    at = text.find("\n## Plug points")
    return at + 1 if at >= 0 else len(text)


def write(results: dict[str, Any]) -> None:
    """Write the plots, then the markdown."""
    for name, group in results["groups"].items():
        command = reproduce(name, group, results["meta"])
        plot_group(name, group, PLOTS / f"{name}.png", command)
    for name, sweep in results.get("sweeps", {}).items():
        plot_sweep(name, sweep, results["meta"])
    if results.get("memory"):
        plot_memory(results["memory"])
    if results.get("fanout_memory"):
        plot_fanout_memory(results["fanout_memory"])
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(render(results))
    targets.update_readme(results)
