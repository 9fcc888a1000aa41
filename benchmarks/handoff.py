"""Hand-off latency: a step's task report received -> the next step dispatched.

The event-driven operator against `--poll-only` (the fast path off, the kopf timer alone
drives it, like the seed's 15 s loop), in one run, on a chain of N steps (s1 <- s2 <- ...)
with the scripted agent. Each mode gets a fresh sandbox cluster and its own operator
(kopf, the HTTP API, real PostgreSQL) from the demo's local stack (`makima.cli.demo.stack`),
as `makima demo` and the integration tests run them: the operator in this process, the
sandbox on a thread of its own; every task is a real sandbox Job running `makima task run`
+ the scripted agent.

Three figures per hand-off, printed side by side:
- `operator`: what the operator itself records in `makima_handoff_latency_seconds`
  (`Controller.task_reported` -> `Controller.apply` after DispatchStep and its status
  patch); the exact values are captured as they are observed, and the histogram's own
  count/sum are checked against them;
- `store`: from the task rows, finished_at of the previous task -> created_at of the next
  step's task (the row is inserted before the Job is created, so this is a little lower);
- the first hand-off of each run is planning -> first step (the plan's steps must be
  created first; on the timer alone that is two ticks), the others are step -> step.

Then the idle cost: with every directive Completed, the timer keeps firing; the Kubernetes
API calls (`makima_kube_api_calls_total`) and store queries per timer reconcile show what
the safety net costs when nothing changes.

    python benchmarks/handoff.py [--steps 5] [--tick 15] [--idle-ticks 2] [--dsn DSN]

Without `--dsn` (or MAKIMA_BENCH_DATABASE_URL) an embedded PostgreSQL with the operator's
default settings (synchronous_commit=off) runs in a temporary directory.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import logging
import os
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from makima.cli.demo.origin import create_origin
from makima.cli.demo.stack import embedded_postgres, local_stack
from makima.control import controller as controller_module
from makima.control import metrics
from makima.control.runtime import Operator
from makima.core.tasks import Task, TaskKind

GROUP_PATH = "/apis/makima.dev/v1alpha1/namespaces/default"
TERMINAL = ("Completed", "Failed", "Paused")


# ---- helpers -------------------------------------------------------------------------------


async def make_origin(root: Path) -> Path:
    seed = root / "seed"
    seed.mkdir()
    (seed / "README.md").write_text("# bench\n")
    return await create_origin(root / "origin.git", seed, "main", "initial")


def chain_directive(name: str, repo: Path, steps: int) -> dict[str, Any]:
    """s1 <- s2 <- ... <- sN, each step writing one file: a trivial agent."""
    plan = [
        {
            "name": f"s{i}",
            "title": f"step {i}",
            "orderIndex": i - 1,
            **({"dependsOn": [f"s{i - 1}"]} if i > 1 else {}),
        }
        for i in range(1, steps + 1)
    ]
    script = {
        "plan": plan,
        "steps": {f"s{i}": {"files": {f"chain/s{i}.txt": f"{i}\n"}} for i in range(1, steps + 1)},
    }
    return {
        "apiVersion": "makima.dev/v1alpha1",
        "kind": "Directive",
        "metadata": {"name": name},
        "spec": {
            "title": f"hand-off benchmark ({name})",
            "goal": f"a chain of {steps} steps",
            "repository": {"url": f"file://{repo}"},
            "execution": {"mode": "Job", "retries": 0, "stepTimeout": "5m", "maxParallelSteps": 1},
            "agent": {
                "command": ["makima", "agent", "scripted"],
                "env": [{"name": "MAKIMA_AGENT_SCRIPT", "value": yaml.safe_dump(script)}],
            },
        },
    }


def counter_total(name: str, **labels: str) -> float:
    """Sum of a counter's `_total` samples whose labels include `labels`."""
    total = 0.0
    for family in metrics.REGISTRY.collect():
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


def histogram_count_sum(name: str) -> tuple[float, float]:
    count = total = 0.0
    for family in metrics.REGISTRY.collect():
        for s in family.samples:
            if s.name == f"{name}_count":
                count = s.value
            elif s.name == f"{name}_sum":
                total = s.value
    return count, total


def api_calls() -> float:
    return counter_total("makima_kube_api_calls_total")


def reconciles(trigger: str | None = None) -> float:
    return counter_total("makima_reconciles_total", **({"trigger": trigger} if trigger else {}))


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (small samples: no interpolation beyond the data)."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q * len(ordered) + 0.5)))
    return ordered[rank - 1]


# ---- one mode ------------------------------------------------------------------------------


@dataclass
class Result:
    mode: str
    tick: float
    steps: int
    wall: float = 0.0
    phase: str = ""
    observed: list[float] = field(default_factory=list)  # exact values the operator observed
    hist_count: float = 0.0
    hist_sum: float = 0.0
    store: list[float] = field(default_factory=list)  # finished_at(prev) -> created_at(next step)
    job_seconds: list[float] = field(default_factory=list)  # step task started_at -> finished_at
    run_api_calls: float = 0.0
    run_reconciles: float = 0.0
    idle_timer_runs: float = 0.0
    idle_api_calls: float = 0.0
    idle_queries: int = 0
    idle_decides: int = 0
    idle_seconds: float = 0.0
    dropped_report_triggers: int = 0


class Recorder:
    """Captures each value observed by HANDOFF_SECONDS (the histogram keeps only buckets)."""

    def __init__(self) -> None:
        self.values: list[float] = []
        self._orig = metrics.HANDOFF_SECONDS.observe

    def __enter__(self) -> Recorder:
        def observe(amount: float, *args: Any, **kwargs: Any) -> None:
            self.values.append(amount)
            self._orig(amount, *args, **kwargs)

        metrics.HANDOFF_SECONDS.observe = observe  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        metrics.HANDOFF_SECONDS.observe = self._orig  # type: ignore[method-assign]


def store_handoffs(tasks: list[Task], steps: int) -> tuple[list[float], list[float]]:
    """Hand-offs from the rows: previous task finished_at -> next step task created_at."""
    planning = [t for t in tasks if t.kind is TaskKind.PLANNING]
    by_step = {t.step_name: t for t in tasks if t.kind is TaskKind.STEP}
    chain: list[Task] = planning[-1:] + [by_step[f"s{i}"] for i in range(1, steps + 1) if f"s{i}" in by_step]
    handoffs = []
    for prev, nxt in itertools.pairwise(chain):
        if prev.finished_at is not None and nxt.created_at is not None:
            handoffs.append((nxt.created_at - prev.finished_at).total_seconds())
    jobs = [
        (t.finished_at - t.started_at).total_seconds()
        for t in by_step.values()
        if t.started_at is not None and t.finished_at is not None
    ]
    return handoffs, jobs


async def run_mode(
    mode: str, poll_only: bool, tick: float, steps: int, idle_ticks: int, dsn: str, origin: Path, root: Path
) -> Result:
    res = Result(mode=mode, tick=tick, steps=steps)
    name = f"chain-{mode.replace(' ', '-').replace('_', '-')}"

    def on_built(op: Operator) -> None:
        if poll_only:
            # A task report must not reconcile at once in the baseline: only the timer may.
            # If the operator's --poll-only still schedules such runs, drop and count them.
            original = op.controller.trigger_soon

            def timer_only(key: Any, trigger: str) -> None:
                if trigger == "report":
                    res.dropped_report_triggers += 1
                    return
                original(key, trigger)

            op.controller.trigger_soon = timer_only  # type: ignore[method-assign]

    # The demo's local stack: the sandbox on its own thread with the CRDs, the operator in this loop.
    async with (
        local_stack(
            root / f"state-{name}",
            database_url=dsn,
            on_built=on_built,
            sandbox_options={"bookmark_interval": 2.0},
            tick_seconds=tick,
            poll_only=poll_only,
        ) as stack,
        aiohttp.ClientSession() as http,
    ):
        sandbox_url, op = stack.sandbox.url, stack.operator.parts
        api0, rec0 = api_calls(), reconciles()
        with Recorder() as recorder:
            started = time.perf_counter()
            async with http.post(
                f"{sandbox_url}{GROUP_PATH}/directives", json=chain_directive(name, origin, steps)
            ) as r:
                assert r.status == 201, await r.text()
                uid = (await r.json())["metadata"]["uid"]
            deadline = started + 60 + (steps + 4) * (tick + 30)
            status: dict[str, Any] = {}
            while time.perf_counter() < deadline:
                async with http.get(f"{sandbox_url}{GROUP_PATH}/directives/{name}") as r:
                    status = (await r.json()).get("status") or {}
                if status.get("phase") in TERMINAL:
                    break
                await asyncio.sleep(0.05)
            res.wall = time.perf_counter() - started
            res.phase = str(status.get("phase"))
        res.observed = recorder.values
        res.run_api_calls = api_calls() - api0
        res.run_reconciles = reconciles() - rec0

        tasks = await op.store.tasks_for_directive(uid)
        res.store, res.job_seconds = store_handoffs(list(tasks), steps)

        # Idle: everything Completed, only the timer fires. Count API calls and store queries.
        queries = decides = 0
        original_query = op.store.tasks_for_directive
        original_decide = controller_module.decide  # type: ignore[attr-defined]

        async def counted(*args: Any, **kwargs: Any) -> Any:
            nonlocal queries
            queries += 1
            return await original_query(*args, **kwargs)

        def counted_decide(*args: Any, **kwargs: Any) -> Any:
            nonlocal decides
            decides += 1
            return original_decide(*args, **kwargs)

        if idle_ticks <= 0:
            return res
        await asyncio.sleep(min(tick, 2.0))  # let the last status write's own event settle
        op.store.tasks_for_directive = counted  # type: ignore[method-assign]
        controller_module.decide = counted_decide  # type: ignore[attr-defined]
        api1, timer1 = api_calls(), reconciles("timer")
        t0 = time.perf_counter()
        try:
            await asyncio.sleep(idle_ticks * tick + 0.5)
        finally:
            controller_module.decide = original_decide  # type: ignore[attr-defined]
        res.idle_seconds = time.perf_counter() - t0
        res.idle_timer_runs = reconciles("timer") - timer1
        res.idle_api_calls = api_calls() - api1
        res.idle_queries = queries
        res.idle_decides = decides
    return res


# ---- report --------------------------------------------------------------------------------


def row(label: str, values: list[float], wall: float | None, steps: int) -> str:
    if not values:
        return f"{label:<28} {steps:>5} {'-':>7} {'-':>7} {'-':>7} {'-':>7} {'':>8}"
    wall_text = f"{wall:>8.1f}" if wall is not None else f"{'':>8}"
    return (
        f"{label:<28} {steps:>5} {statistics.mean(values):>7.3f} {statistics.median(values):>7.3f} "
        f"{pct(values, 0.95):>7.3f} {max(values):>7.3f} {wall_text}"
    )


def report(results: list[Result], path_note: str, db_note: str) -> None:
    load = os.getloadavg()
    print()
    print("Hand-off latency: task report received -> next step dispatched (seconds)")
    print(f"  {path_note}")
    print(f"  {db_note}; {os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"{'mode / source':<28} {'n':>5} {'mean':>7} {'p50':>7} {'p95':>7} {'max':>7} {'wall s':>8}")
    for r in results:
        title = r.mode if not r.mode.startswith("poll") else f"{r.mode} (tick {r.tick:g} s)"
        print(f"{title}: {r.steps} steps, directive {r.phase}")
        print(row("  operator (all)", r.observed, r.wall, len(r.observed)))
        print(row("  operator (step -> step)", r.observed[1:], None, len(r.observed[1:])))
        print(row("  store rows (all)", r.store, None, len(r.store)))
        count_ok = int(r.hist_count) == len(r.observed) and abs(r.hist_sum - sum(r.observed)) < 1e-6
        print(
            f"  histogram: count {r.hist_count:.0f}, sum {r.hist_sum:.3f} s "
            f"({'matches' if count_ok else 'DOES NOT match'} the captured values); "
            f"expected {r.steps} hand-offs (planning -> s1, then {r.steps - 1} step -> step)"
        )
        if r.job_seconds:
            print(f"  a step's task ran {statistics.mean(r.job_seconds):.2f} s on average (started_at -> finished_at)")
        if r.dropped_report_triggers:
            print(
                f"  note: the operator's poll-only mode still scheduled {r.dropped_report_triggers} reconcile(s) "
                "on task reports; the benchmark dropped them so only the timer drives this run"
            )
    event = next((r for r in results if not r.mode.startswith("poll")), None)
    poll = next((r for r in results if r.mode.startswith("poll")), None)
    if event and poll and event.observed and poll.observed:
        e_steps, p_steps = event.observed[1:] or event.observed, poll.observed[1:] or poll.observed
        ratio = statistics.mean(poll.observed) / statistics.mean(event.observed)
        print(
            f"ratio poll-only / event-driven: mean hand-off {ratio:,.0f}x "
            f"(step -> step {statistics.mean(p_steps) / statistics.mean(e_steps):,.0f}x), "
            f"wall time {poll.wall / event.wall:.1f}x"
        )
        job = statistics.mean(poll.job_seconds) if poll.job_seconds else 0.0
        print(
            f"  on the timer alone a step -> step hand-off is the rest of the tick after the task's report "
            f"(tick {poll.tick:g} s - ~{job:.1f} s of task here); with task durations in random phase to the tick it "
            f"averages tick/2 = {poll.tick / 2:g} s (the seed's 15 s loop: ~7.5 s per hop, planning -> first "
            "step two ticks)"
        )
    print()
    print("Kubernetes API calls (through kube.py; kopf's long-lived watch streams not counted)")
    for r in results:
        if not r.idle_seconds and r.mode.startswith("poll"):
            per = r.run_api_calls / r.run_reconciles if r.run_reconciles else 0.0
            calls = f"{r.run_api_calls:.0f} calls / {r.run_reconciles:.0f} reconciles"
            print(f"  {r.mode:<12} during the run: {calls} = {per:.2f} per reconcile")
            continue
        per = r.run_api_calls / r.run_reconciles if r.run_reconciles else 0.0
        idle_per = r.idle_api_calls / r.idle_timer_runs if r.idle_timer_runs else 0.0
        print(
            f"  {r.mode:<12} during the run: {r.run_api_calls:.0f} calls / {r.run_reconciles:.0f} reconciles "
            f"= {per:.2f} per reconcile"
        )
        print(
            f"  {'':<12} idle ({r.idle_seconds:.0f} s, Completed): {r.idle_timer_runs:.0f} timer runs, "
            f"{r.idle_api_calls:.0f} API calls ({idle_per:.2f} per reconcile), "
            f"{r.idle_queries} task queries, decide() ran {r.idle_decides} time(s) "
            "(an idle directive's timer run compares a digest of its objects and stops; a full check "
            "with the store runs every 20th idle tick)"
        )


async def main_async(args: argparse.Namespace, root: Path) -> list[Result]:
    async with contextlib.AsyncExitStack() as stack:
        dsn = args.dsn or await stack.enter_async_context(embedded_postgres(root / "pg"))
        return await run_modes(args, dsn, root)


async def run_modes(args: argparse.Namespace, dsn: str, root: Path) -> list[Result]:
    origin = await make_origin(root)
    results = []
    modes = [("event-driven", False, args.tick), ("poll-only", True, args.poll_tick or args.tick)]
    for mode, poll_only, tick in modes:
        c0, s0 = histogram_count_sum("makima_handoff_latency_seconds")
        # The idle cost is measured on the default (event-driven) operator only.
        idle = 0 if poll_only else args.idle_ticks
        steps = (args.poll_steps or args.steps) if poll_only else args.steps
        res = await run_mode(mode, poll_only, tick, steps, idle, dsn, origin, root)
        c1, s1 = histogram_count_sum("makima_handoff_latency_seconds")
        res.hist_count, res.hist_sum = c1 - c0, s1 - s0
        results.append(res)
        print(f"{mode}: {res.phase} in {res.wall:.1f} s", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--tick", type=float, default=15.0, help="timer interval of both operators (default 15 s)")
    parser.add_argument("--poll-tick", type=float, default=None, help="a different tick for the poll-only run")
    parser.add_argument("--idle-ticks", type=int, default=2, help="timer ticks to watch once Completed")
    parser.add_argument("--dsn", default=os.environ.get("MAKIMA_BENCH_DATABASE_URL"))
    parser.add_argument("--poll-steps", type=int, default=None, help="a shorter chain for the poll-only run")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    root = Path(tempfile.mkdtemp(prefix="makima-handoff-"))
    os.chmod(root, 0o755)  # the embedded server may run as an unprivileged user
    try:
        results = asyncio.run(main_async(args, root))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    report(
        results,
        "real Job path: each task is a sandbox Job running `makima task run` + the scripted agent, in-process kopf",
        "external PostgreSQL" if args.dsn else "embedded PostgreSQL (synchronous_commit=off)",
    )
    if args.json:
        out = {}
        for r in results:
            values = r.observed[1:] or r.observed  # step -> step hand-offs
            out["poll" if r.mode.startswith("poll") else "event"] = {
                "n": len(values),
                "mean": statistics.mean(values) if values else None,
                "p50": pct(values, 0.50) if values else None,
                "p95": pct(values, 0.95) if values else None,
                "p99": pct(values, 0.99) if values else None,
                "max": max(values) if values else None,
                "phase": r.phase,
                "wall": r.wall,
                "tick": r.tick,
                "idle_timer_runs": r.idle_timer_runs,
                "idle_api_calls": r.idle_api_calls,
                "idle_queries": r.idle_queries,
            }
        out["load"] = os.getloadavg()  # type: ignore[assignment]
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
