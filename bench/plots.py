"""The pictures of the performance report (matplotlib, Agg backend): ``docs/perf/*.png``.

One horizontal bar chart per group, curves per sweep (with the same-run ratio and the
server RSS below when measured), RSS against stream length for the memory run and RSS
against time for the frozen-client run. matplotlib is imported when a plot is drawn.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.common import fmt_si
from bench.harness import ROOT
from bench.mdtables import rss_points, sweep_command

if TYPE_CHECKING:
    from matplotlib.figure import Figure

PLOTS = ROOT / "docs" / "perf"


def _save(fig: Figure, path: Path) -> None:
    """Lay out, write (110 dpi) and close a figure."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


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
    _save(fig, path)
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
    rss = {v: pts for v in curves if (pts := rss_points(sweep, v))}
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
    path = PLOTS / f"sweep-{name}.png"
    _save(fig, path)
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
    path = PLOTS / "memory.png"
    _save(fig, path)
    return path


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
    path = PLOTS / "fanout-memory.png"
    _save(fig, path)
    return path
