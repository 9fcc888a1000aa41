"""P3/P5/start-up: one real operator process holding many directives; a 200-step plan.

Three processes, as in a deployment: the sandbox cluster (`makima sandbox up`), the operator
(`makima operator`, the code under test; its CPU and RSS are what is measured) and this
script, which plays the people (it applies directives) and one daemon whose agent is instant
(a test double of the agent: through the real task API it submits the plan, reports each
step succeeded and the completion done, without git or a model). The store is an embedded
PostgreSQL in a temporary directory.

- P5 (fresh operator): a planner submits a 200-step plan (10 roots, 190 steps depending on
  them, maxParallelSteps 64); measured from the submission to "every DirectiveStep exists and
  the first wave (the 10 roots) is on the daemon"; then the same for a 10-step plan.
- P3: directives of `--steps` steps each (a tree: step i depends on step (i-1)//4) are added
  in increments up to each size in `--sizes`; for each size: the time to ingest the
  increment (applied -> all Completed), the operator's CPU per directive while ingesting,
  its CPU per tick when idle (over `--idle-ticks` ticks), its RSS, the SQL transactions and
  Kubernetes calls per idle directive per tick (from PostgreSQL's counters and the
  operator's /metrics).
- Start-up: the operator is restarted with every directive present; the time from the
  process start to its "kopf ready" log line.

    python benchmarks/scale.py [--sizes 100 300] [--steps 25] [--full] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import psutil
import yaml

from makima.control.store.embedded import EmbeddedPostgres
from makima.core.crds import all_crds
from makima.core.protocol import Outcome, StepSubmission, TaskResult, TaskSpec
from makima.core.tasks import TaskKind
from makima.dataplane.client import TaskClient
from makima.dataplane.daemon import Daemon, DaemonConfig

NS = "default"
GROUP_PATH = f"/apis/makima.dev/v1alpha1/namespaces/{NS}"
SHA = "0" * 40
TICK = 15.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def makima_cmd(*args: str) -> list[str]:
    return [sys.executable, "-c", "from makima.cli.main import main; main()", *args]


# ---- the instant agent (a test double), behind a real daemon connection ----------------------


@dataclass
class Agent:
    """What each task does, instantly, through the task API. Plans come from `plans`."""

    api_url: str
    plans: dict[str, list[StepSubmission]] = field(default_factory=dict)  # directive name -> plan
    hold_steps: set[str] = field(default_factory=set)  # directives whose steps never finish
    submitted_at: dict[str, float] = field(default_factory=dict)
    spawned: dict[str, list[tuple[str, float]]] = field(default_factory=dict)  # directive -> (step, t)

    async def run(self, spec: TaskSpec, token: str, workdir: Path) -> None:
        async with TaskClient(self.api_url, spec.task_id, token) as client:
            if spec.kind is TaskKind.PLANNING:
                plan = self.plans.get(spec.directive, [])
                self.submitted_at[spec.directive] = time.perf_counter()
                await client.submit_steps(plan)
                await client.post_result(TaskResult(outcome=Outcome.SUCCEEDED, commit=SHA, message="planned"))
            elif spec.kind is TaskKind.STEP:
                self.spawned.setdefault(spec.directive, []).append((spec.step or "", time.perf_counter()))
                if spec.directive in self.hold_steps:
                    await asyncio.Event().wait()  # runs until cancelled
                branch = spec.workspace.branch
                await client.post_result(TaskResult(outcome=Outcome.SUCCEEDED, branch=branch, commit=SHA))
            else:
                branch = spec.completion.directive_branch if spec.completion else spec.workspace.branch
                await client.post_result(TaskResult(outcome=Outcome.SUCCEEDED, branch=branch, commit=SHA))


def tree_plan(n: int) -> list[StepSubmission]:
    return [
        StepSubmission(name=f"s{i}", title=f"step {i}", depends_on=[f"s{(i - 1) // 4}"] if i else []) for i in range(n)
    ]


def fan_plan(roots: int, total: int) -> list[StepSubmission]:
    return [
        StepSubmission(name=f"s{i}", title=f"step {i}", depends_on=[] if i < roots else [f"s{i % roots}"])
        for i in range(total)
    ]


def directive(name: str, parallel: int = 8) -> dict[str, Any]:
    return {
        "apiVersion": "makima.dev/v1alpha1",
        "kind": "Directive",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "title": f"scale {name}",
            "goal": f"scale benchmark directive {name}",
            "repository": {"url": "https://example.invalid/repo.git"},
            # retries: a spawn the daemon does not ack in time falls back to a Job, whose pod
            # cannot run the instant agent; the retry goes back to the daemon.
            "execution": {"mode": "Daemon", "maxParallelSteps": parallel, "retries": 3},
            "agent": {"command": ["instant"]},
        },
    }


# ---- the processes ---------------------------------------------------------------------------


class Rig:
    """The sandbox process, the embedded store, the operator process, the daemon, a client."""

    def __init__(self, root: Path, profile: Path | None = None) -> None:
        self.root = root
        self.profile = profile  # run the (first) operator under pyinstrument, text report here
        self.pg = EmbeddedPostgres(root / "pg")
        self.dsn = ""
        self.sandbox: subprocess.Popen[bytes] | None = None
        self.operator: subprocess.Popen[bytes] | None = None
        self.op_log = root / "operator.log"
        self.kubeconfig = root / "sandbox" / "kubeconfig"
        self.url = ""
        self.api_port = free_port()
        self.api_url = f"http://127.0.0.1:{self.api_port}"
        self.http: aiohttp.ClientSession | None = None
        self.agent = Agent(self.api_url)
        self.daemon: Daemon | None = None
        self.daemon_task: asyncio.Task[None] | None = None
        self.started_at = 0.0

    async def start(self) -> None:
        self.dsn = await asyncio.to_thread(self.pg.start)
        (self.root / "sandbox").mkdir()
        log = (self.root / "sandbox.log").open("ab")
        self.sandbox = subprocess.Popen(  # noqa: ASYNC220 (a quick spawn; it runs beside us)
            makima_cmd("sandbox", "up", "--state-dir", str(self.root / "sandbox")),
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while not self.kubeconfig.exists():
            if self.sandbox.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the sandbox did not start: {(self.root / 'sandbox.log').read_text()[-2000:]}")
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)
        self.url = yaml.safe_load(self.kubeconfig.read_text())["clusters"][0]["cluster"]["server"]
        self.http = aiohttp.ClientSession()
        for crd in all_crds().values():
            await self.request("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd)
        self.token = "bench-daemon-token"
        secret = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "makima-daemon-token", "namespace": NS},
            "data": {"token": base64.b64encode(self.token.encode()).decode()},
        }
        await self.request("POST", f"/api/v1/namespaces/{NS}/secrets", secret)

    async def request(self, method: str, path: str, body: Any = None) -> Any:
        assert self.http is not None
        async with self.http.request(method, self.url + path, json=body) as r:
            data = await r.json()
            if r.status >= 400:
                raise RuntimeError(f"{method} {path}: {r.status} {data}")
            return data

    async def start_operator(self) -> float:
        """Start the operator process; returns seconds from spawn to its 'kopf ready' line."""
        env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "MAKIMA_DATABASE_URL": self.dsn,
            "MAKIMA_API_LISTEN": f"127.0.0.1:{self.api_port}",
            "MAKIMA_API_URL": self.api_url,
            "MAKIMA_STATE_DIR": str(self.root / "state"),
            "MAKIMA_TICK_SECONDS": str(TICK),
            "MAKIMA_RETRY_BASE_SECONDS": "1",
        }
        offset = self.op_log.stat().st_size if self.op_log.exists() else 0
        log = self.op_log.open("ab")
        self.started_at = time.perf_counter()
        cmd = makima_cmd("operator")
        if self.profile is not None:
            script = self.root / "operator_main.py"
            script.write_text("from makima.cli.main import main\n\nmain()\n")
            cmd = [sys.executable, "-m", "pyinstrument", "-r", "text", "-o", str(self.profile), str(script), "operator"]
            self.profile = None  # the restart (start-up figure) runs without it
        self.operator = subprocess.Popen(  # noqa: ASYNC220 (the spawn is part of the start-up timed)
            cmd, env=env, stdout=log, stderr=log, stdin=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.operator.poll() is not None:
                raise RuntimeError(f"the operator exited: {self.op_log.read_text()[-3000:]}")
            with self.op_log.open("rb") as f:
                f.seek(offset)
                if b"kopf ready" in f.read():
                    return time.perf_counter() - self.started_at
            await asyncio.sleep(0.05)
        raise RuntimeError("the operator did not get ready in 300 s")

    async def stop_operator(self) -> None:
        if self.operator is not None and self.operator.poll() is None:
            self.operator.send_signal(signal.SIGINT)
            try:
                await asyncio.to_thread(self.operator.wait, 60)
            except subprocess.TimeoutExpired:
                self.operator.kill()
        self.operator = None

    async def start_daemon(self, capacity: int = 256) -> None:
        config = DaemonConfig(
            api_url=self.api_url,
            namespace=NS,
            name="instant",
            token=self.token,
            capacity=capacity,
            work_dir=self.root / "work",
        )
        self.daemon = Daemon(config, runner=self.agent.run)
        self.daemon_task = asyncio.create_task(self.daemon.run())
        await asyncio.wait_for(self.daemon.connected.wait(), 60)

    async def stop_daemon(self) -> None:
        if self.daemon is not None and self.daemon_task is not None:
            self.daemon.stop()
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(self.daemon_task, 30)
        self.daemon = self.daemon_task = None

    async def close(self) -> None:
        await self.stop_daemon()
        await self.stop_operator()
        if self.http is not None:
            await self.http.close()
        if self.sandbox is not None and self.sandbox.poll() is None:
            self.sandbox.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                await asyncio.to_thread(self.sandbox.wait, 30)
        await asyncio.to_thread(self.pg.stop)

    # ---- measurements ----

    def proc(self) -> psutil.Process:
        assert self.operator is not None
        return psutil.Process(self.operator.pid)

    def cpu(self) -> float:
        t = self.proc().cpu_times()
        return float(t.user + t.system)

    def rss(self) -> int:
        return int(self.proc().memory_info().rss)

    async def metric(self, name: str) -> float:
        assert self.http is not None
        async with self.http.get(f"{self.api_url}/metrics") as r:
            text = await r.text()
        return sum(float(m.group(1)) for m in re.finditer(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))

    async def xacts(self) -> int:
        conn = await asyncpg.connect(self.dsn)
        try:
            return int(
                await conn.fetchval("SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = 'makima'")
            )
        finally:
            await conn.close()

    async def wait_gone(self, prefix: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            items = (await self.request("GET", f"{GROUP_PATH}/directives"))["items"]
            if not any(i["metadata"]["name"].startswith(prefix) for i in items):
                return
            await asyncio.sleep(0.2)
        raise RuntimeError(f"directives {prefix}* still there after {timeout} s")

    async def phases(self) -> dict[str, int]:
        data = await self.request("GET", f"{GROUP_PATH}/directives")
        out: dict[str, int] = {}
        for item in data["items"]:
            phase = (item.get("status") or {}).get("phase") or "Pending"
            out[phase] = out.get(phase, 0) + 1
        return out


# ---- P5 ------------------------------------------------------------------------------------------


async def plan_dispatch(rig: Rig, name: str, roots: int, total: int, parallel: int) -> float:
    """Seconds from the plan's submission to all steps existing and the roots on the daemon."""
    rig.agent.plans[name] = fan_plan(roots, total)
    rig.agent.hold_steps.add(name)
    await rig.request("POST", f"{GROUP_PATH}/directives", directive(name, parallel))
    deadline = time.monotonic() + 300
    all_exist = None
    while time.monotonic() < deadline:
        submitted = rig.agent.submitted_at.get(name)
        if submitted is not None and all_exist is None:
            data = await rig.request("GET", f"{GROUP_PATH}/directivesteps?labelSelector=makima.dev/directive={name}")
            if len(data["items"]) >= total:
                all_exist = time.perf_counter()
        spawned = rig.agent.spawned.get(name, [])
        if all_exist is not None and submitted is not None and len(spawned) >= min(roots, parallel):
            wave = sorted(t for _, t in spawned)[min(roots, parallel) - 1]
            return max(all_exist, wave) - submitted
        await asyncio.sleep(0.02)
    raise RuntimeError(f"{name}: the plan was not dispatched in 300 s")


# ---- P3 ------------------------------------------------------------------------------------------


@dataclass
class SizePoint:
    directives: int
    steps: int
    ingest_seconds: float = 0.0
    ingest_cpu_per_directive_ms: float = 0.0
    idle_cpu_per_tick: float = 0.0
    idle_cpu_per_directive_ms: float = 0.0
    idle_sql_per_directive_tick: float = 0.0
    idle_api_per_directive_tick: float = 0.0
    rss_mib: float = 0.0
    job_fallbacks: int = 0  # spawns not acked in time (see the operator log), retried
    phases: dict[str, int] = field(default_factory=dict)


async def grow_to(rig: Rig, start: int, size: int, steps: int, idle_ticks: int) -> SizePoint:
    point = SizePoint(directives=size, steps=steps)
    cpu0, t0 = rig.cpu(), time.perf_counter()
    names = [f"d{i:05d}" for i in range(start, size)]
    for n in names:
        rig.agent.plans[n] = tree_plan(steps)
    sem = asyncio.Semaphore(16)

    async def apply(n: str) -> None:
        async with sem:
            await rig.request("POST", f"{GROUP_PATH}/directives", directive(n))

    await asyncio.gather(*(apply(n) for n in names))
    deadline = time.monotonic() + max(600.0, 4.0 * len(names) * steps)
    while time.monotonic() < deadline:
        phases = await rig.phases()
        point.phases = phases
        done = phases.get("Completed", 0)
        if done >= size:
            break
        if phases.get("Failed"):
            raise RuntimeError(f"directives failed: {phases}")
        await asyncio.sleep(2.0)
    else:
        raise RuntimeError(f"ingest of {size} directives not finished: {point.phases}")
    point.ingest_seconds = time.perf_counter() - t0
    point.ingest_cpu_per_directive_ms = 1000 * (rig.cpu() - cpu0) / len(names)
    await asyncio.sleep(TICK)  # let the last writes' own events and one timer pass settle
    sql0, api0, cpu0 = await rig.xacts(), await rig.metric("makima_kube_api_calls_total"), rig.cpu()
    await asyncio.sleep(idle_ticks * TICK)
    sql1, api1, cpu1 = await rig.xacts(), await rig.metric("makima_kube_api_calls_total"), rig.cpu()
    point.idle_cpu_per_tick = (cpu1 - cpu0) / idle_ticks
    point.idle_cpu_per_directive_ms = 1000 * point.idle_cpu_per_tick / size
    point.idle_sql_per_directive_tick = (sql1 - sql0 - 2) / idle_ticks / size  # minus our 2 reads
    point.idle_api_per_directive_tick = (api1 - api0) / idle_ticks / size
    point.rss_mib = rig.rss() / 2**20
    point.job_fallbacks = rig.op_log.read_text(errors="replace").count("falling back to a Job")
    return point


@dataclass
class ScaleResult:
    p5_200_seconds: float = 0.0
    p5_10_seconds: float = 0.0
    startup_seconds: float = 0.0
    startup_directives: int = 0
    first_start_seconds: float = 0.0
    points: list[SizePoint] = field(default_factory=list)
    load: tuple[float, float, float] = (0.0, 0.0, 0.0)
    complete: bool = False  # False: interrupted; what was measured so far is kept


async def run(
    sizes: list[int],
    steps: int,
    idle_ticks: int,
    root: Path,
    skip_p5: bool = False,
    profile: Path | None = None,
    out: Path | None = None,
) -> ScaleResult:
    res = ScaleResult()
    rig = Rig(root, profile)

    def save() -> None:  # after each figure, so an interrupted run still leaves its figures
        res.load = os.getloadavg()
        if out is not None:
            out.write_text(json.dumps(asdict(res), indent=2))

    try:
        await rig.start()
        res.first_start_seconds = await rig.start_operator()
        await rig.start_daemon()
        if not skip_p5:
            res.p5_200_seconds = await plan_dispatch(rig, "plan-200", roots=10, total=200, parallel=64)
            res.p5_10_seconds = await plan_dispatch(rig, "plan-10", roots=10, total=10, parallel=64)
            print(f"P5: 200 steps {res.p5_200_seconds:.2f} s, 10 steps {res.p5_10_seconds:.2f} s", flush=True)
            save()
            for name in ("plan-200", "plan-10"):
                await rig.request("DELETE", f"{GROUP_PATH}/directives/{name}")
            await rig.wait_gone("plan-")
        start = 0
        for size in sizes:
            point = await grow_to(rig, start, size, steps, idle_ticks)
            start = size
            res.points.append(point)
            save()
            print(
                f"P3: {size} x {steps}: ingest {point.ingest_seconds:.0f} s, idle {point.idle_cpu_per_tick:.2f} "
                f"CPU s/tick, RSS {point.rss_mib:.0f} MiB",
                flush=True,
            )
        await rig.stop_daemon()
        await rig.stop_operator()
        res.startup_directives = sizes[-1] if sizes else 0
        res.startup_seconds = await rig.start_operator()
        print(f"start-up with {res.startup_directives} directives: {res.startup_seconds:.2f} s", flush=True)
        res.complete = True
        save()
    finally:
        await rig.close()
    return res


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="*", default=[10, 30, 60])
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--idle-ticks", type=int, default=2)
    parser.add_argument("--full", action="store_true", help="the issue's sizes: 100, 500, 2,000 directives x 25")
    parser.add_argument("--skip-p5", action="store_true")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--profile", type=Path, help="run the operator under pyinstrument; its report goes here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.full:
        args.sizes, args.steps = [100, 500, 2000], 25
    root = Path(tempfile.mkdtemp(prefix="makima-scale-"))
    os.chmod(root, 0o755)
    try:
        res = asyncio.run(run(args.sizes, args.steps, args.idle_ticks, root, args.skip_p5, args.profile, args.json))
    except BaseException:
        log = root / "operator.log"
        if log.exists():
            print(log.read_text()[-4000:], file=sys.stderr)
        raise
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(asdict(res), indent=2))


if __name__ == "__main__":
    main()
