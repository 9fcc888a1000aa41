"""`make bench`: every benchmark in one run, one table, one JSON file, one plot.

Runs, one after the other on this machine (each in its own process, the load average
recorded as each figure is taken):
- `store.py --pgbench`: P4, CAS transitions/s at 8 writers against pgbench -N at 8 clients
  on the same embedded server;
- `handoff.py`: P1, hand-off latency, event-driven against `--poll-only`, and the idle
  cost of a Completed directive (P2);
- `scale.py`: P5 (a 200-step and a 10-step plan), P3 (directives x steps held by one
  operator process: ingest, idle CPU, RSS, SQL and API calls per idle directive, the curve
  over the sizes), operator start-up with every directive present;
- `controller.py`: the controller's own bookkeeping per directive over N (in-process).

Prints the table (figure, goal, measured, baseline, ratio, load), writes
`benchmarks/results/latest.json` (a list of {name, value, unit, goal, baseline, ratio,
load}) and `latest.png` (the P3 curve), and copies both to `<date>.json` / `<date>.png`.
Goals are reported, not asserted; a benchmark that fails makes the run exit non-zero.

    python benchmarks/run.py [--full] [--only store handoff scale controller]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


@dataclass
class Figure:
    name: str
    value: float | None
    unit: str
    goal: str
    baseline: float | None = None
    ratio: float | None = None
    load: float | None = None


def run_script(name: str, args: list[str], out: Path, timeout: float) -> dict[str, Any] | None:
    cmd = [sys.executable, str(HERE / name), *args, "--json", str(out)]
    print(f"\n=== {name} {' '.join(args)}", flush=True)
    started = time.perf_counter()
    try:
        proc = subprocess.run(cmd, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        print(f"{name}: timed out after {timeout:.0f} s", flush=True)
        if out.exists():
            data: dict[str, Any] = json.loads(out.read_text())
            data["complete"] = False
            return data
        return None
    print(f"=== {name}: exit {proc.returncode} in {time.perf_counter() - started:.0f} s", flush=True)
    if not out.exists():
        return None
    data: dict[str, Any] = json.loads(out.read_text())
    if proc.returncode != 0:
        data["complete"] = False  # the figures it saved before failing are still reported
    return data


def store_figures(d: dict[str, Any]) -> list[Figure]:
    row = next(r for r in d["rows"] if r["writers"] == 8)
    tps = d.get("pgbench_tps")
    return [
        Figure(
            "P4 store CAS transitions/s, 8 writers",
            row["rate"],
            "1/s",
            ">= pgbench -N tps (8 clients, same server)",
            baseline=tps,
            ratio=row["rate"] / tps if tps else None,
            load=d["load"][0],
        )
    ]


def handoff_figures(d: dict[str, Any]) -> list[Figure]:
    ev, poll = d.get("event") or {}, d.get("poll") or {}
    load = d["load"][0]
    ratio = poll["mean"] / ev["mean"] if ev.get("mean") and poll.get("mean") else None
    figs = [
        Figure(
            f"P1 hand-off p99 (n={ev.get('n')}, step -> step)",
            ev.get("p99"),
            "s",
            "< 0.2 s",
            baseline=poll.get("mean"),
            load=load,
        ),
        Figure(
            f"P1 hand-off mean, event-driven vs poll-only (tick {poll.get('tick', 0):g} s)",
            ev.get("mean"),
            "s",
            ">= 50x faster than poll-only",
            baseline=poll.get("mean"),
            ratio=ratio,
            load=load,
        ),
    ]
    runs = ev.get("idle_timer_runs") or 0
    if runs:
        figs.append(
            Figure(
                "P2 idle Completed directive: API calls per tick",
                ev["idle_api_calls"] / runs,
                "calls",
                "0",
                load=load,
            )
        )
        figs.append(
            Figure(
                "P2 idle Completed directive: SQL queries per tick",
                ev["idle_queries"] / runs,
                "queries",
                "0",
                load=load,
            )
        )
    return figs


def scale_figures(d: dict[str, Any]) -> list[Figure]:
    load = d["load"][0]
    figs = [
        Figure(
            "P5 200-step plan: submitted -> all steps exist, first wave dispatched",
            d["p5_200_seconds"],
            "s",
            "< 3 s",
            load=load,
        ),
        Figure("P5 10-step plan: same", d["p5_10_seconds"], "s", "< 1 s", load=load),
    ]
    points = d["points"]
    first = points[0] if points else None
    for p in points:
        size = f"{p['directives']}x{p['steps']}"
        base = first["idle_cpu_per_directive_ms"] if first else None
        figs += [
            Figure(
                f"P3 {size}: ingest (applied -> all Completed)",
                p["ingest_seconds"],
                "s",
                "minutes, not hours",
                load=load,
            ),
            Figure(f"P3 {size}: operator RSS", p["rss_mib"], "MiB", "< 1536 MiB (at 2000x25)", load=load),
            Figure(
                f"P3 {size}: idle operator CPU per 15 s tick",
                p["idle_cpu_per_tick"],
                "CPU s",
                "< 1.5 s (at 2000x25)",
                load=load,
            ),
            Figure(
                f"P3 {size}: idle CPU per directive per tick",
                p["idle_cpu_per_directive_ms"],
                "ms",
                "flat as N grows (ratio to the smallest N)",
                baseline=base,
                ratio=p["idle_cpu_per_directive_ms"] / base if base else None,
                load=load,
            ),
            Figure(
                f"P3 {size}: ingest CPU per directive",
                p["ingest_cpu_per_directive_ms"],
                "ms",
                "flat as N grows (ratio to the smallest N)",
                baseline=first["ingest_cpu_per_directive_ms"] if first else None,
                ratio=p["ingest_cpu_per_directive_ms"] / first["ingest_cpu_per_directive_ms"] if first else None,
                load=load,
            ),
            Figure(
                f"P2 {size}: SQL transactions per idle directive per tick",
                p["idle_sql_per_directive_tick"],
                "xact",
                "0",
                load=load,
            ),
            Figure(
                f"P2 {size}: Kubernetes calls per idle directive per tick",
                p["idle_api_per_directive_tick"],
                "calls",
                "0",
                load=load,
            ),
        ]
    if not d.get("complete", True):
        return figs  # interrupted before the restart
    figs.append(
        Figure(
            f"start-up with {d['startup_directives']} directives: process start -> kopf ready",
            d["startup_seconds"],
            "s",
            "< 2 s (2000 directives, idle machine)",
            baseline=d["first_start_seconds"],
            load=load,
        )
    )
    return figs


def controller_figures(rows: list[dict[str, Any]], load: float) -> list[Figure]:
    base = rows[0]
    figs = []
    for r in rows:
        figs.append(
            Figure(
                f"controller bookkeeping, {r['n']} directives: idle check per directive",
                r["idle_cpu_per_directive_ms"],
                "ms",
                "flat as N grows",
                baseline=base["idle_cpu_per_directive_ms"],
                ratio=r["idle_cpu_per_directive_ms"] / base["idle_cpu_per_directive_ms"],
                load=load,
            )
        )
        figs.append(
            Figure(
                f"controller bookkeeping, {r['n']} directives: event reconcile per directive",
                r["ingest_cpu_per_directive_ms"],
                "ms",
                "flat as N grows",
                baseline=base["ingest_cpu_per_directive_ms"],
                ratio=r["ingest_cpu_per_directive_ms"] / base["ingest_cpu_per_directive_ms"],
                load=load,
            )
        )
    return figs


def fmt(v: float | None) -> str:
    if v is None:
        return "-"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:.3g}"


def print_table(figs: list[Figure]) -> None:
    w = max(len(f.name) for f in figs)
    print(f"\n{'figure':<{w}}  {'goal':<42} {'measured':>10} {'unit':<6} {'baseline':>9} {'ratio':>7} {'load':>5}")
    for f in figs:
        print(
            f"{f.name:<{w}}  {f.goal:<42} {fmt(f.value):>10} {f.unit:<6} {fmt(f.baseline):>9} "
            f"{fmt(f.ratio):>7} {fmt(f.load):>5}"
        )


def plot(scale: dict[str, Any] | None, controller: list[dict[str, Any]] | None, path: Path) -> bool:
    if not scale and not controller:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    if scale and scale["points"]:
        pts = scale["points"]
        xs = [p["directives"] for p in pts]
        ax = axes[0]
        ax.plot(xs, [p["idle_cpu_per_directive_ms"] for p in pts], "o-", label="idle CPU / directive / tick (ms)")
        ax.plot(
            xs, [p["ingest_cpu_per_directive_ms"] / 100 for p in pts], "s-", label="ingest CPU / directive (100 ms)"
        )
        ax2 = ax.twinx()
        ax2.plot(xs, [p["rss_mib"] for p in pts], "^--", color="grey", label="RSS (MiB)")
        ax2.set_ylabel("RSS (MiB)")
        ax.set_xlabel(f"directives x {pts[0]['steps']} steps (operator process)")
        ax.set_title(f"P3: one operator process (load {scale['load'][0]:.1f})")
        ax.legend(loc="upper left", fontsize=8)
        ax2.legend(loc="upper right", fontsize=8)
    else:
        axes[0].text(0.5, 0.5, "the scale benchmark did not finish", ha="center", va="center")
        axes[0].set_axis_off()
    if controller:
        ax = axes[1]
        xs = [r["n"] for r in controller]
        ax.plot(xs, [r["idle_cpu_per_directive_ms"] for r in controller], "o-", label="idle check / directive (ms)")
        ax.plot(
            xs, [r["ingest_cpu_per_directive_ms"] for r in controller], "s-", label="event reconcile / directive (ms)"
        )
        ax.set_xlabel("directives x 25 steps (controller in-process)")
        ax.set_title("controller bookkeeping per directive")
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="P3 at 100, 500 and 2,000 directives x 25 steps")
    parser.add_argument("--only", nargs="+", default=["store", "handoff", "scale", "controller"])
    parser.add_argument("--scale-sizes", type=int, nargs="+", default=[10, 30, 60])
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="makima-bench-"))
    figs: list[Figure] = []
    failed: list[str] = []
    scale = controller = None
    try:
        if "store" in args.only:
            d = run_script("store.py", ["--writers", "8", "--seconds", "5", "--pgbench"], tmp / "store.json", 600)
            figs += store_figures(d) if d else []
            failed += [] if d else ["store"]
        if "handoff" in args.only:
            hargs = ["--steps", "20", "--poll-steps", "4", "--idle-ticks", "2"]
            d = run_script("handoff.py", hargs, tmp / "handoff.json", 1200)
            figs += handoff_figures(d) if d else []
            failed += [] if d else ["handoff"]
        if "scale" in args.only:
            sizes = ["--full"] if args.full else ["--sizes", *map(str, args.scale_sizes)]
            scale = run_script("scale.py", sizes, tmp / "scale.json", 7200 if args.full else 1500)
            figs += scale_figures(scale) if scale else []
            failed += [] if scale and scale.get("complete", True) else ["scale"]
        if "controller" in args.only:
            load = os.getloadavg()[0]
            d = run_script("controller.py", ["--sizes", "100", "500", "2000"], tmp / "controller.json", 900)
            controller = d["rows"] if d else None
            figs += controller_figures(controller, load) if controller else []
            failed += [] if controller else ["controller"]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if figs:
        print_table(figs)
    RESULTS.mkdir(exist_ok=True)
    latest = RESULTS / "latest.json"
    latest.write_text(json.dumps([asdict(f) for f in figs], indent=2) + "\n")
    png = RESULTS / "latest.png"
    plotted = plot(scale, controller, png)
    day = datetime.date.today().isoformat()
    shutil.copy(latest, RESULTS / f"{day}.json")
    if plotted:
        shutil.copy(png, RESULTS / f"{day}.png")
    print(f"\nwrote {latest}{' and ' + str(png) if plotted else ''} (copied to {day}.*)")
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
