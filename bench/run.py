"""``python -m bench``: run the groups of `bench.variants`, print a table, save JSON + docs.

Each group is measured round-robin: repetition r runs every variant of the group once
(the order rotates), so ratios to the group's base are same-run ratios. Tables show the
median over repetitions and (min-max).

Examples::

    python -m bench                            # everything, N = 200 000, 5 reps (< 12 min,
                                               # + up to 4 min per broker group)
    python -m bench --quick                    # smoke test: N = 20 000, 3 reps, no docs
    python -m bench --only http --only inproc  # groups or variant names
    python -m bench --only framework --reps 7
    python -m bench --only transforms          # a default sweep (curve), or concurrency
    python -m bench --only memory --memory-n 10000000   # RSS vs stream length
    python -m bench --sweep fanout-clients     # any curve alone (see bench/sweeps.py)
    python -m bench --sweep fanout-clients --docs   # ... and fold it into the docs
    python -m bench --only fanout-memory --fanout-seconds 60   # frozen client, RSS vs time
    python -m bench --report bench/results/latest.json   # rebuild docs from saved JSON
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import shlex
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from bench.common import cpu_plan, fmt_range, fmt_si, summary
from bench.harness import ROOT, Server, measure_http, run_json, servers_for
from bench.memory import (
    DEFAULT_MEMORY_N,
    FANOUT_QUICK_SECONDS,
    FANOUT_SECONDS,
    run_fanout_memory,
    run_memory,
)
from bench.sweeps import SWEEPS, run_sweep
from bench.variants import GROUPS, Group, HttpVariant, Params, ProcVariant, Variant

RESULTS = ROOT / "bench" / "results"
PACKAGES = ("orjson", "starlette", "uvicorn", "uvloop", "httptools", "nexios", "anyio")
PEERS = ("bytewax", "pathway")
"""Peer frameworks: their versions go into the report's header (or "not installed")."""
DEFAULT_N = 200_000
DEFAULT_REPS = 5
DEFAULT_BUDGET = 690.0
"""Seconds for the groups and sweeps (the peers' runs take ~70 s of it)."""


def log(msg: str) -> None:
    """Progress goes to stderr; the final table to stdout."""
    sys.stderr.write(msg + "\n")
    sys.stderr.flush()


def _selected(group: Group, only: list[str]) -> list[Variant]:
    if not only or group.name in only:
        return list(group.variants)
    return [v for v in group.variants if v.name in only]


def _summarise(group: Group, results: dict[str, dict[str, Any]]) -> None:
    """Add per-variant summaries and same-run ratios to the base, in place."""
    metric = "p50_ms" if group.kind == "latency" else "rate"
    base = results.get(group.base or "")
    to_ideal = group.base == "ideal"  # each rep carries its own ideal rate
    for res in results.values():
        ok = [r for r in res["reps"] if r.get("ok")]
        res["ok_reps"] = len(ok)
        if not ok:
            continue
        keys = ["rate", "mb_s", "server_cpu_frac", "client_cpu_frac", "elapsed"]
        keys += ["server_rss", "server_hwm"]
        if group.kind == "latency":
            keys += ["p50_ms", "p99_ms", "max_ms"]
        res["summary"] = {
            k: summary([float(r[k]) for r in ok if isinstance(r.get(k), int | float)])
            for k in keys
            if any(isinstance(r.get(k), int | float) for r in ok)
        }
        if to_ideal:
            ideal = [float(r["rate"]) / float(r["ideal"]) for r in ok if r.get("ideal")]
            if ideal:
                res["ratio"] = summary(ideal)
        elif base is not None and base is not res:
            ratios = [
                float(r[metric]) / float(b[metric])
                for r, b in zip(res["reps"], base["reps"], strict=False)
                if r.get("ok") and b.get("ok") and b.get(metric)
            ]
            if ratios:
                res["ratio"] = summary(ratios)
    for vname, ref in group.pairs:
        a, b = results.get(vname), results.get(ref)
        if a is None or b is None:
            continue
        pair = [
            float(r[metric]) / float(q[metric])
            for r, q in zip(a["reps"], b["reps"], strict=False)
            if r.get("ok") and q.get("ok") and q.get(metric)
        ]
        if pair:
            a.setdefault("ratios_to", []).append({"ref": ref, **summary(pair)})


def run_group(
    group: Group,
    variants: list[Variant],
    params: Params,
    reps: int,
    *,
    deadline: float,
) -> dict[str, Any]:
    """Measure ``variants`` of ``group`` round-robin ``reps`` times; return its results."""
    server_cpu, client_cpu = cpu_plan()
    logdir = RESULTS / "logs"
    results: dict[str, dict[str, Any]] = {
        v.name: {"label": v.label, "note": v.note, "status": "ok", "message": "", "reps": []}
        for v in variants
    }
    http = [v for v in variants if isinstance(v, HttpVariant)]
    log(f"== {group.name}: {group.title} (n={params.n}, reps={reps})")
    with servers_for(http, params, cpu=server_cpu, logdir=logdir) as servers:
        live: list[Variant] = []
        for v in variants:
            if isinstance(v, HttpVariant):
                srv = servers[v.server_key or v.name]
                if isinstance(srv, str):
                    results[v.name].update(status="skipped", message=srv)
                    log(f"   SKIP {v.name}: {srv}")
                    continue
            live.append(v)
        # warm-up: one short read per variant (imports, caches, JIT-free but lazy paths)
        for v in live:
            warm = replace(params, n=min(params.n, 2000), interval=0.0, rep=-1)
            res = _measure(v, servers, warm, group, client_cpu, server_cpu, check=False)
            if res.get("skipped"):
                results[v.name].update(status="skipped", message=res["skipped"])
                log(f"   SKIP {v.name}: {res['skipped']}")
        live = [v for v in live if results[v.name]["status"] == "ok"]
        for rep in range(reps):
            order = live[rep % len(live) :] + live[: rep % len(live)] if live else []
            for v in order:
                if results[v.name]["status"] != "ok":
                    continue
                if time.monotonic() > deadline:
                    results[v.name].update(status="partial", message="time budget exhausted")
                    continue
                p = replace(params, rep=rep)
                res = _measure(v, servers, p, group, client_cpu, server_cpu, check=True)
                res["rep"] = rep
                results[v.name]["reps"].append(res)
                if not res.get("ok"):
                    msg = res.get("error") or res.get("skipped") or "failed"
                    results[v.name].update(status="failed", message=str(msg))
                    log(f"   FAIL {v.name} rep {rep}: {msg}")
                else:
                    log(f"   {v.name:>15} rep {rep}: {_short(group, res)}")
    _summarise(group, results)
    return {
        "title": group.title,
        "kind": group.kind,
        "base": group.base,
        "reading": group.reading,
        "params": {"n": params.n, "interval": params.interval, "clients": params.clients},
        "reps": reps,
        "variants": results,
    }


def cli_n(group: Group, params: Params, n: int) -> int:
    """The ``--n`` the docs' "Command:" line shows for ``group`` run with ``params``:
    their own ``n`` when ``--n`` with it gives the same parameters (a fixed or capped
    size), else the ``n`` of this run."""
    return params.n if group.params(params.n) == params else n


def _short(group: Group, res: dict[str, Any]) -> str:
    if group.kind == "latency":
        return f"p50 {res.get('p50_ms', 0):.3f} ms, p99 {res.get('p99_ms', 0):.3f} ms"
    return f"{res.get('rate', 0) / 1e3:,.1f} k env/s"


def _measure(
    v: Variant,
    servers: dict[str, Server | str],
    params: Params,
    group: Group,
    client_cpu: int | None,
    server_cpu: int | None,
    *,
    check: bool,
) -> dict[str, Any]:
    if isinstance(v, ProcVariant):
        return run_json(v.command(params), cpu=server_cpu, timeout=300.0)
    srv = servers[v.server_key or v.name]
    assert isinstance(srv, Server)
    if not check:  # warm-up: any count is fine
        v = replace(v, expect=lambda p: -1)
    res = measure_http(v, srv, params, cpu=client_cpu, client_args=group.client_args)
    if not check:
        res["ok"] = True
    return res


def meta(args: argparse.Namespace) -> dict[str, Any]:
    """Where and with what the numbers were measured."""
    versions: dict[str, str | None] = {}
    for pkg in PACKAGES:
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            versions[pkg] = None
    peers: dict[str, str | None] = {}
    for pkg in PEERS:
        try:
            peers[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            peers[pkg] = None
    cpu_model = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    server_cpu, client_cpu = cpu_plan()
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": "python -m bench " + shlex.join(sys.argv[1:]),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_model": cpu_model,
        "cpus": len(os.sched_getaffinity(0)),
        "server_cpu": server_cpu,
        "client_cpu": client_cpu,
        "load_avg_before": os.getloadavg(),
        "n": args.n,
        "reps": args.reps,
        "versions": versions,
        "peers": peers,
    }


def print_tables(results: dict[str, Any]) -> None:
    """The summary table of every group, on stdout."""
    for name, g in results["groups"].items():
        print(f"\n## {name}: {g['title']}  (n={g['params']['n']}, reps={g['reps']})")
        base = g.get("base")
        for vname, res in g["variants"].items():
            s = res.get("summary")
            if res["status"] not in ("ok", "partial") or not s:
                print(f"  {vname:>15}  {res['status'].upper()}: {res['message']}")
                continue
            ratio = res.get("ratio")
            rtxt = f"x{base} {fmt_range(ratio, lambda x: f'{x:.3g}')}" if ratio else ""
            if g["kind"] == "latency":
                p50 = fmt_range(s["p50_ms"], lambda x: f"{x:.3f}")
                p99 = fmt_range(s["p99_ms"], lambda x: f"{x:.3f}")
                print(f"  {vname:>15}  p50 {p50} ms  p99 {p99} ms  {rtxt}")
            else:
                cpu = s.get("server_cpu_frac")
                ctxt = f"  server CPU {cpu['median']:.0%}" if cpu else ""
                ccpu = s.get("client_cpu_frac")
                ctxt += f"  client CPU {ccpu['median']:.0%}" if ccpu else ""
                print(f"  {vname:>15}  {fmt_range(s['rate'])} env/s  {rtxt}{ctxt}")
            for pair in res.get("ratios_to", []):
                rng = fmt_range(pair, lambda x: f"{x:.3g}")
                print(f"  {'':>15}  x{pair['ref']} (same run) {rng}")


def print_sweeps(results: dict[str, Any]) -> None:
    """One line per swept value: each variant's median rate and ratio (median, min-max)."""
    for name, sw in results.get("sweeps", {}).items():
        print(f"\n## sweep {name}: {sw['title']}  (reps={sw.get('reps', '?')})")
        for point in sw["points"]:
            g = point["group"]
            cells = []
            for vname, res in g["variants"].items():
                s = res.get("summary")
                if not s:
                    cells.append(f"{vname} {res['status'].upper()}")
                    continue
                r = res.get("ratio")
                rtxt = f" x{g['base']} {fmt_range(r, lambda x: f'{x:.3g}')}" if r else ""
                cells.append(f"{vname} {fmt_range(s['rate'])}{rtxt}")
            print(f"  {sw['x_label']}={point['x']:<4} " + " | ".join(cells))


def print_memory(results: dict[str, Any]) -> None:
    """RSS after the first sample interval and at the end, and the growth in between."""
    mem = results.get("memory")
    if not mem:
        return
    print(
        f"\n## memory: {mem['title']}  (n={mem['n']}, one rep, target: growth <= "
        f"{mem['target_mb']:g} MB)"
    )
    for sink, v in mem["variants"].items():
        res = v["result"]
        if res.get("rss_first") is None:
            print(f"  {sink:>15}  {v['status'].upper()}: {res.get('error') or res.get('skipped')}")
            continue
        growth = res.get("growth")
        gtxt = f"{growth / 2**20:+.2f} MB" if isinstance(growth, int) else "n/a"
        print(
            f"  {sink:>15}  RSS start {res['rss_start'] / 2**20:.1f} MB, after "
            f"{mem['every']:,} {res['rss_first'] / 2**20:.1f} MB, after {res['lines']:,} "
            f"{res['rss_last'] / 2**20:.1f} MB: growth {gtxt}  ({fmt_si(res['rate'])} env/s)"
            + ("  PARTIAL (budget)" if v["status"] == "partial" else "")
        )


def print_fanout_memory(results: dict[str, Any]) -> None:
    """RSS of the framework server with a frozen client: start, growth, healthy count."""
    fm = results.get("fanout_memory")
    if not fm:
        return
    res = fm["result"]
    print(f"\n## fanout-memory: {fm['title']}  (target: growth <= {fm['target_mb']:g} MB)")
    if not res.get("samples"):
        print(f"  {fm['status'].upper()}: {res.get('error') or res.get('skipped')}")
        return
    mb = 2**20
    print(
        f"  RSS at {res['growth_from']:.0f} s {res['rss_from'] / mb:.1f} MB, at the end "
        f"({res['elapsed']:.0f} s) {res['rss_end'] / mb:.1f} MB, max {res['rss_max'] / mb:.1f} "
        f"MB: growth {res['growth'] / mb:+.2f} MB; healthy client {res['healthy_lines']:,} of "
        f"{res['n'] + 2:,} lines; dropped_clients {res['dropped_clients']}"
        + ("" if res.get("ok") else f"  FAILED: {res.get('error')}")
    )


def _latest_full() -> dict[str, Any] | None:
    """The newest saved results of a full run (no --only, --quick or --sweep), or None."""
    for path in sorted(RESULTS.glob("bench-2*.json"), reverse=True):
        data = orjson.loads(path.read_bytes())
        argv = shlex.split(str(data.get("meta", {}).get("command", "")))[3:]
        if not any(a in argv for a in ("--only", "--quick", "--sweep")):
            return data if isinstance(data, dict) else None
    return None


def save(results: dict[str, Any], stem: str) -> Path:
    """Write ``bench/results/STEM-DATE.json`` and ``latest.json``; return the first."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS / f"{stem}-{stamp}.json"
    data = orjson.dumps(results, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY)
    path.write_bytes(data)
    (RESULTS / f"{stem}-latest.json").write_bytes(data)
    return path


def main(argv: list[str] | None = None) -> int:
    """The CLI."""
    ap = argparse.ArgumentParser(
        prog="python -m bench",
        description="NDJSON streaming benchmarks: baselines and the framework, same-run ratios.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("Examples::", 1)[1] if __doc__ else None,
    )
    ap.add_argument("--n", type=int, default=None, help=f"envelopes per run ({DEFAULT_N})")
    ap.add_argument("--reps", type=int, default=None, help=f"repetitions ({DEFAULT_REPS})")
    ap.add_argument("--quick", action="store_true", help="N=20000, 3 reps, short latency run")
    ap.add_argument(
        "--only", action="append", default=[], metavar="NAME", help="a group or variant name"
    )
    ap.add_argument("--list", action="store_true", help="list groups and variants")
    ap.add_argument("--sweep", default=None, help="run only this sweep from bench/sweeps.py")
    ap.add_argument(
        "--memory-n",
        type=int,
        default=None,
        help=f"envelopes of the memory run ({DEFAULT_MEMORY_N}; --quick: 1000000)",
    )
    ap.add_argument(
        "--fanout-seconds",
        type=float,
        default=None,
        help=f"length of the frozen-client memory run ({FANOUT_SECONDS:g}; --quick: "
        f"{FANOUT_QUICK_SECONDS:g})",
    )
    ap.add_argument(
        "--budget",
        type=float,
        default=DEFAULT_BUDGET,
        help="seconds in all, besides the broker groups' own (Group.budget)",
    )
    ap.add_argument(
        "--docs",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="write docs/performance.md (default: only for a full, non-quick run; with "
        "--only, the sections of those groups are replaced in place)",
    )
    ap.add_argument("--report", type=Path, default=None, help="rebuild docs from a JSON file")
    args = ap.parse_args(argv)
    only = [x for item in args.only for x in item.split(",") if x]

    if args.list:
        for g in GROUPS:
            print(f"{g.name}: {g.title} (base: {g.base})")
            for v in g.variants:
                print(f"    {v.name:>15}  {v.label}")
        for s in SWEEPS.values():
            default = " (default run)" if s.default else ""
            print(f"sweep {s.name}: {s.title}{default}")
        print("memory: RSS vs stream length, bytearray and Hub sinks (default run)")
        print("fanout-memory: framework server RSS with a frozen client, 60 s (default run)")
        return 0

    from bench import report

    if args.report is not None:
        saved = orjson.loads(args.report.read_bytes())
        report.write(report.with_opt_in(saved))
        print_tables(saved)
        print_sweeps(saved)
        print_memory(saved)
        print_fanout_memory(saved)
        return 0

    args.n = args.n or (20_000 if args.quick else DEFAULT_N)
    args.reps = args.reps or (3 if args.quick else DEFAULT_REPS)
    deadline = time.monotonic() + args.budget
    results: dict[str, Any] = {"meta": meta(args), "groups": {}, "sweeps": {}}

    if args.sweep:
        if args.sweep not in SWEEPS:
            ap.error(f"unknown sweep {args.sweep!r}; known: {', '.join(SWEEPS)}")
        results["sweeps"][args.sweep] = run_sweep(
            SWEEPS[args.sweep], n=args.n, reps=args.reps, deadline=deadline
        )
        path = save(results, f"sweep-{args.sweep}")
        report.plot_sweep(args.sweep, results["sweeps"][args.sweep], results["meta"])
        print_sweeps(results)
        log(f"results: {path.relative_to(ROOT)}")
        if args.docs:  # fold it into the docs of the latest full run
            full = _latest_full()
            if full is None:
                log("docs: no saved full run (python -m bench) to fold the sweep into")
            else:
                report.write(report.with_opt_in(full))
                log("docs: docs/performance.md, docs/perf/*.png")
        return 0

    known = {g.name for g in GROUPS} | {v.name for g in GROUPS for v in g.variants}
    known |= set(SWEEPS) | {"memory", "fanout-memory"}
    unknown = [x for x in only if x not in known]
    if unknown:
        ap.error(f"unknown --only {unknown}; see --list")
    for group in GROUPS:
        if only and group.name not in only and not any(v.name in only for v in group.variants):
            continue
        variants = _selected(group, only)
        if not variants:
            continue
        params = group.params(args.n)
        if args.quick and group.kind == "latency":
            params = replace(params, n=200)
        started = time.monotonic()
        own = started + group.budget if group.budget else deadline
        results["groups"][group.name] = run_group(group, variants, params, args.reps, deadline=own)
        results["groups"][group.name]["cli_n"] = cli_n(group, params, args.n)
        if group.budget:  # its time was its own: the other groups keep theirs
            deadline += time.monotonic() - started
    if not only or "memory" in only:
        memory_n = args.memory_n or (1_000_000 if args.quick else DEFAULT_MEMORY_N)
        results["meta"]["memory_n"] = memory_n
        # the memory run gets at most 150 s and leaves 120 s of the budget to the sweeps
        results["memory"] = run_memory(
            memory_n, deadline=min(time.monotonic() + 150.0, deadline - 120.0)
        )
    if not only or "fanout-memory" in only:
        seconds = args.fanout_seconds or (FANOUT_QUICK_SECONDS if args.quick else FANOUT_SECONDS)
        results["fanout_memory"] = run_fanout_memory(seconds)
        save({"meta": results["meta"], "fanout_memory": results["fanout_memory"]}, "fanout-memory")
    for sweep in SWEEPS.values():
        if (sweep.name in only) if only else sweep.default:
            results["sweeps"][sweep.name] = run_sweep(
                sweep, n=args.n, reps=args.reps, deadline=deadline
            )
            if not sweep.default:  # opt-in: also saved alone, for the docs to fold in
                save(
                    {
                        "meta": results["meta"],
                        "sweeps": {sweep.name: results["sweeps"][sweep.name]},
                    },
                    f"sweep-{sweep.name}",
                )
    results["meta"]["load_avg_after"] = os.getloadavg()
    path = save(results, "bench")
    print_tables(results)
    print_sweeps(results)
    print_memory(results)
    print_fanout_memory(results)
    log(f"\nresults: {path.relative_to(ROOT)}")
    write_docs = args.docs if args.docs is not None else not (only or args.quick)
    if write_docs and only:  # a partial run: its groups' sections, in place
        report.update_sections(results)
        log("docs: the sections of " + ", ".join(results["groups"]) + " in docs/performance.md")
    elif write_docs:
        report.write(report.with_opt_in(results))
        log("docs: docs/performance.md, docs/perf/*.png")
    return 0
