"""The chaos harness: one directive driven to its pull request while the operator is killed.

What runs, all on this machine:
- the sandbox cluster (a test double of the Kubernetes API) in this process, whose Jobs run
  `makima task run` as real subprocesses;
- PostgreSQL (the suite's embedded server);
- the operator as a real subprocess (`makima operator`), SIGKILLed at random moments and
  started again on the same port;
- a `CutProxy` between the task runners and the operator (`MAKIMA_API_URL` points at it),
  cut at random moments for a few seconds: runner reports and heartbeats wait in silence;
- the scripted agent behind a wrapper that appends every execution to a log first.

The directive is generated: a chain of diamonds whose two sides run in parallel and
conflict, and whose join resolves the conflict (union), and one step that fails its first
attempt. Without
disturbance, every step takes one attempt except that one (two), planning and completion
one each: that is what `expected_attempts` says, and what a disturbed run must record too.

`run_chaos(config, ...)` returns a `ChaosReport`: the figures `make chaos` prints and the
problems found (empty when every promise held: completed with no human action, no attempt
redone or doubled, every event of every attempt stored once, the directive branch's tree as
planned, no Job still running and no token Secret left).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from makima.control.store import TaskStore
from makima.core.tasks import TaskState

from .proxy import CutProxy

WRAPPER = """\
import os, sys
log = sys.argv[1]
fields = [os.environ.get(k, "-") or "-" for k in
          ("MAKIMA_TASK_KIND", "MAKIMA_STEP", "MAKIMA_ATTEMPT", "MAKIMA_AGENT_MODE", "MAKIMA_TASK_ID")]
fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
os.write(fd, (" ".join(fields) + "\\n").encode())
os.close(fd)
os.execvp("makima", ["makima", "agent", "scripted"])
"""


@dataclass
class ChaosConfig:
    steps: int = 6
    kills: int = 3
    cuts: int = 1
    cut_seconds: tuple[float, float] = (2.0, 5.0)
    down_seconds: tuple[float, float] = (0.0, 1.5)  # how long the operator stays dead
    gap_seconds: tuple[float, float] = (0.0, 2.0)  # after the operator made progress, before the next disturbance
    progress_timeout: float = 60.0  # a disturbance comes anyway after this long without progress
    heartbeat_timeout: float = 60.0
    timeout: float = 600.0  # for the whole directive
    seed: int = 14


@dataclass
class ChaosReport:
    config: ChaosConfig
    completed: bool = False
    kills: int = 0
    cuts: int = 0
    recoveries: list[float] = field(default_factory=list)  # kill -> /readyz answers 200 again
    steps_lost: int = 0
    attempts_redone: int = 0
    attempts_doubled: int = 0
    events_lost: int = 0
    events_doubled: int = 0
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)

    def figures(self) -> str:
        rec = sorted(self.recoveries)
        p50 = statistics.median(rec) if rec else 0.0
        worst = rec[-1] if rec else 0.0
        return (
            f"steps {self.config.steps}, completed {self.completed} in {self.seconds:.0f}s; "
            f"kills survived {self.kills}, path cuts {self.cuts}; steps lost {self.steps_lost}, "
            f"attempts redone {self.attempts_redone}, doubled {self.attempts_doubled}; "
            f"recovery p50 {p50:.1f}s max {worst:.1f}s; events lost {self.events_lost}, "
            f"duplicated {self.events_doubled}"
        )


# ---- the directive ------------------------------------------------------------------------------


def chaos_plan(n: int) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, int]]:
    """(plan, step scripts, expected attempts per step) for about `n` steps."""
    plan: list[dict[str, Any]] = []
    scripts: dict[str, Any] = {}
    prev: str | None = None
    k = 0
    while len(plan) < n:
        k += 1
        root, left, right, join = f"root-{k}", f"left-{k}", f"right-{k}", f"join-{k}"
        shared = f"shared-{k}.txt"
        block = [
            (root, [prev] if prev else []),
            (left, [root]),
            (right, [root]),
            (join, [left, right]),
        ]
        for name, deps in block:
            if len(plan) >= n:
                break
            plan.append({"name": name, "title": f"Step {name}", "dependsOn": deps, "orderIndex": len(plan)})
            files = {f"steps/{name}.txt": f"{name}\n"}
            if name == left:
                files[shared] = f"base\n{left}\nend\n"
            elif name == right:
                files[shared] = f"base\n{right}\nend\n"
            scripts[name] = {"files": files, "output": [f"{name}: working"]}
            if name == join:
                scripts[name]["conflict"] = {"strategy": "union"}
        prev = join
    expected = {p["name"]: 1 for p in plan}
    flaky = plan[min(1, len(plan) - 1)]["name"]
    scripts[flaky]["fail_attempts"] = [1]
    expected[flaky] = 2
    return plan, scripts, expected


def expected_files(plan: list[dict[str, Any]]) -> dict[str, str]:
    return {f"steps/{p['name']}.txt": f"{p['name']}\n" for p in plan}


def directive(name: str, repo: Path, script: dict[str, Any], agent: list[str]) -> dict[str, Any]:
    return {
        "apiVersion": "makima.dev/v1alpha1",
        "kind": "Directive",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "title": f"chaos {name}",
            "goal": "survive the chaos",
            "repository": {"url": f"file://{repo}"},
            "execution": {"mode": "Job", "retries": 3, "stepTimeout": "10m", "maxParallelSteps": 4},
            "agent": {"command": agent, "env": [{"name": "MAKIMA_AGENT_SCRIPT", "value": yaml.safe_dump(script)}]},
        },
    }


# ---- the operator as a process ---------------------------------------------------------------


class OperatorProcess:
    """`makima operator` in a subprocess on a fixed port; kill() is SIGKILL."""

    def __init__(self, env: dict[str, str], port: int, log: Path) -> None:
        self.env = env
        self.port = port
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        with self.log.open("ab") as out:
            out.write(f"\n==== start {self.starts} ====\n".encode())
            out.flush()
            self.proc = subprocess.Popen(
                [str(Path(sys.executable).with_name("makima")), "operator"],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()

    async def wait_ready(self, session: aiohttp.ClientSession, timeout: float = 180.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        url = f"http://127.0.0.1:{self.port}/readyz"
        while loop.time() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"the operator exited ({self.proc.returncode}); see {self.log}")
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(url, timeout=aiohttp.ClientTimeout(total=3)) as r:
                    if r.status == 200:
                        return
            await asyncio.sleep(0.1)
        raise TimeoutError(f"the operator was not ready within {timeout:.0f}s; see {self.log}")


# ---- the run -------------------------------------------------------------------------------------


class Cluster:
    """What the harness reads from the sandbox (as kubectl would)."""

    def __init__(self, url: str, session: aiohttp.ClientSession) -> None:
        self.url = url
        self.session = session

    async def get(self, path: str) -> Any:
        async with self.session.get(self.url + path) as r:
            r.raise_for_status()
            return await r.json()

    async def post(self, path: str, body: Any) -> Any:
        async with self.session.post(self.url + path, json=body) as r:
            if r.status >= 400:
                raise AssertionError(f"POST {path}: {r.status} {await r.text()}")
            return await r.json()

    async def directive(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.get(f"/apis/makima.dev/v1alpha1/namespaces/default/directives/{name}")
        return result

    async def steps(self, name: str) -> dict[str, dict[str, Any]]:
        path = f"/apis/makima.dev/v1alpha1/namespaces/default/directivesteps?labelSelector=makima.dev/directive={name}"
        data = await self.get(path)
        return {i["metadata"]["labels"]["makima.dev/step"]: i for i in data["items"]}

    async def jobs(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = (await self.get("/apis/batch/v1/namespaces/default/jobs"))["items"]
        return items

    async def secrets(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = (await self.get("/api/v1/namespaces/default/secrets"))["items"]
        return items


def _read_executions(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


def _git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


async def run_chaos(
    config: ChaosConfig,
    *,
    workdir: Path,
    dsn: str,
    sandbox_url: str,
    kubeconfig: Path,
    origin: Path,
    api_port: int,
    log: Any = print,
) -> ChaosReport:
    rng = random.Random(config.seed)
    report = ChaosReport(config=config)
    executions = workdir / "executions.log"
    wrapper = workdir / "agent_wrapper.py"
    wrapper.write_text(WRAPPER)
    plan, scripts, expected = chaos_plan(config.steps)
    script = {"plan": plan, "steps": scripts, "conflict": {"strategy": "leave"}}
    agent = [sys.executable, str(wrapper), str(executions)]

    with CutProxy("127.0.0.1", api_port) as api_path:
        env = {
            **os.environ,
            "KUBECONFIG": str(kubeconfig),
            "MAKIMA_DATABASE_URL": dsn,
            "MAKIMA_API_LISTEN": f"127.0.0.1:{api_port}",
            "MAKIMA_API_URL": f"http://127.0.0.1:{api_path.port}",
            "MAKIMA_STATE_DIR": str(workdir / "state"),
            "MAKIMA_TICK_SECONDS": "5",
            "MAKIMA_RETRY_BASE_SECONDS": "0.2",
            "MAKIMA_RETRY_MAX_SECONDS": "1",
            "MAKIMA_HEARTBEAT_TIMEOUT_SECONDS": str(config.heartbeat_timeout),
        }
        operator = OperatorProcess(env, api_port, workdir / "operator.log")
        started = time.monotonic()
        async with aiohttp.ClientSession() as session:
            cluster = Cluster(sandbox_url, session)
            operator.start()
            try:
                await operator.wait_ready(session)
                await cluster.post(
                    "/apis/makima.dev/v1alpha1/namespaces/default/directives",
                    directive("chaos", origin, script, agent),
                )
                await _disturb(config, rng, report, operator, api_path, cluster, session, executions, log)
                report.completed = await _wait_completed(cluster, started + config.timeout)
                report.seconds = time.monotonic() - started
                if report.completed:
                    await _wait_settled(cluster, time.monotonic() + 60)
            finally:
                api_path.heal()
                operator.stop()

    await _check(report, plan, expected, executions, dsn, origin, sandbox_url)
    return report


async def _disturb(
    config: ChaosConfig,
    rng: random.Random,
    report: ChaosReport,
    operator: OperatorProcess,
    api_path: CutProxy,
    cluster: Cluster,
    session: aiohttp.ClientSession,
    executions: Path,
    log: Any,
) -> None:
    actions = ["kill"] * config.kills + ["cut"] * config.cuts
    rng.shuffle(actions)
    for what in actions:
        # Let the operator (or the runners) make some progress first, then strike at a random
        # moment soon after: a new Job, a step changing phase, an agent starting.
        await _progress(cluster, executions, time.monotonic() + config.progress_timeout)
        await asyncio.sleep(rng.uniform(*config.gap_seconds))
        phase = (await cluster.directive("chaos")).get("status", {}).get("phase")
        if phase in ("Completed", "Failed", "Paused"):
            log(f"chaos: {phase} before the remaining disturbance(s)")
            return
        if what == "kill":
            killed = time.monotonic()
            operator.kill()
            await asyncio.sleep(rng.uniform(*config.down_seconds))
            operator.start()
            await operator.wait_ready(session)
            report.kills += 1
            report.recoveries.append(time.monotonic() - killed)
        else:
            api_path.cut()
            await asyncio.sleep(rng.uniform(*config.cut_seconds))
            api_path.heal()
            report.cuts += 1


async def _state(cluster: Cluster, executions: Path) -> tuple[Any, ...]:
    jobs = await cluster.jobs()
    steps = await cluster.steps("chaos")
    phases = sorted(
        (n, (s.get("status") or {}).get("phase"), (s.get("status") or {}).get("attempts")) for n, s in steps.items()
    )
    finished = sum(1 for j in jobs if not (j.get("status") or {}).get("active"))
    return (len(jobs), finished, tuple(phases), len(await asyncio.to_thread(_read_executions, executions)))


async def _progress(cluster: Cluster, executions: Path, deadline: float) -> None:
    """Return once something moved (or at the deadline)."""
    before = await _state(cluster, executions)
    while time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        if await _state(cluster, executions) != before:
            return


async def _wait_completed(cluster: Cluster, deadline: float) -> bool:
    while time.monotonic() < deadline:
        phase = (await cluster.directive("chaos")).get("status", {}).get("phase")
        if phase == "Completed":
            return True
        if phase in ("Failed", "Paused"):
            return False  # a person would have to act: that is a failure of the run
        await asyncio.sleep(0.2)
    return False


async def _wait_settled(cluster: Cluster, deadline: float) -> None:
    """Jobs finish and token Secrets go shortly after the directive completes."""
    while time.monotonic() < deadline:
        jobs = await cluster.jobs()
        running = [j for j in jobs if (j.get("status") or {}).get("active")]
        tokens = [s for s in await cluster.secrets() if s["metadata"]["name"].endswith("-token")]
        if not running and not tokens:
            return
        await asyncio.sleep(0.2)


async def _check(
    report: ChaosReport,
    plan: list[dict[str, Any]],
    expected: dict[str, int],
    executions: Path,
    dsn: str,
    origin: Path,
    sandbox_url: str,
) -> None:
    problems = report.problems
    if not report.completed:
        problems.append("the directive did not complete without human action")
    # Executions: every (kind, step, attempt) ran its agent at most once.
    lines = _read_executions(executions)
    runs = Counter((k, s, a) for k, s, a, mode, _ in lines if mode in ("-", "task"))
    doubled = {key: n for key, n in runs.items() if n > 1}
    report.attempts_doubled = sum(n - 1 for n in doubled.values())
    if doubled:
        problems.append(f"attempts executed more than once: {doubled}")

    store = await TaskStore.connect(dsn)
    try:
        async with aiohttp.ClientSession() as session:
            cluster = Cluster(sandbox_url, session)
            d = await cluster.directive("chaos")
            steps = await cluster.steps("chaos")
            jobs = await cluster.jobs()
            secrets = await cluster.secrets()
        all_tasks = await store.tasks_for_directive(d["metadata"]["uid"])
        by_step = Counter(t.step_name for t in all_tasks if t.kind.value == "step")
        for name, want in expected.items():
            got = by_step.get(name, 0)
            phase = (steps.get(name, {}).get("status") or {}).get("phase")
            if phase != "Succeeded":
                report.steps_lost += 1
                problems.append(f"step {name} is {phase}")
            if got > want:
                report.attempts_redone += got - want
                problems.append(f"step {name}: {got} attempts, undisturbed {want}")
        for kind in ("planning", "completion"):
            n = sum(1 for t in all_tasks if t.kind.value == kind)
            if n > 1:
                report.attempts_redone += n - 1
                problems.append(f"{kind}: {n} attempts, undisturbed 1")
        # Events: every finished attempt has its first and its last event, each stored once.
        for t in all_tasks:
            if t.state not in (TaskState.SUCCEEDED, TaskState.FAILED):
                continue
            events = await store.events(t.id, 0, 1000)
            started_events = [e for e in events if e.type == "progress" and "task started" in str(e.payload)]
            results = [e for e in events if e.type == "result"]
            for what, found in (("start", started_events), ("result", results)):
                if not found:
                    report.events_lost += 1
                    problems.append(f"task {t.id} ({t.kind.value} {t.step_name or ''}): no {what} event")
                elif len(found) > 1:
                    report.events_doubled += len(found) - 1
                    problems.append(f"task {t.id}: {what} event stored {len(found)} times")
    finally:
        await store.close()

    running = [j["metadata"]["name"] for j in jobs if (j.get("status") or {}).get("active")]
    if running:
        problems.append(f"Jobs still running: {running}")
    tokens = [s["metadata"]["name"] for s in secrets if s["metadata"]["name"].endswith("-token")]
    if tokens:
        problems.append(f"token Secrets left: {tokens}")
    if report.completed:
        branch = (d.get("status") or {}).get("pullRequest", {}).get("branch")
        if not branch:
            problems.append("no pull request branch in the directive's status")
        else:
            tree = _git("ls-tree", "-r", "--name-only", branch, cwd=origin).split()
            for path, content in expected_files(plan).items():
                if path not in tree:
                    problems.append(f"{path} missing from {branch}")
                elif _git("show", f"{branch}:{path}", cwd=origin) != content:
                    problems.append(f"{path} on {branch} is not what its step wrote")
