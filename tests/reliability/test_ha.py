"""Two operator replicas against one PostgreSQL and one cluster (finding 10 of issue 14).

Both are real `makima operator` processes electing the active one over a Lease in the
sandbox; task runners and the daemon reach them through a stand-in for the chart's
Service that follows readiness (`service.py`). Shown here:

- only the active replica dispatches; the standby's `/readyz` is 503 and `/healthz` 200;
- a daemon sent to the standby (endpoints not caught up) is refused with 503, retries and
  ends up connected to the active replica;
- SIGKILL of the active replica while a daemon step runs: the standby takes the Lease,
  adopts the running task, the daemon reconnects to it, and the directive completes with
  every step run exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from makima.control.store import TaskStore
from makima.core.lease import LeaseTimings
from makima_testing.sandbox import SandboxThread
from tests.integration.conftest import Api, scripted
from tests.integration.test_daemons import DAEMON_TOKEN, MAKIMA, DaemonProcess, create_daemon_token

from .conftest import free_port
from .harness import OperatorProcess
from .service import ReadyService

pytestmark = pytest.mark.slow

# Short, so that the test takes seconds; MAKIMA_HA_LEASE_SECONDS=15 measures the default.
LEASE_SECONDS = int(os.environ.get("MAKIMA_HA_LEASE_SECONDS", "6"))
LOADED = 300.0  # a deadline for a condition on a loaded machine, not an expected duration

# The agent logs each execution (kind, step, attempt) and holds step b until the gate file exists.
AGENT = (
    'echo "$MAKIMA_TASK_KIND ${MAKIMA_STEP:--} $MAKIMA_ATTEMPT ${MAKIMA_AGENT_MODE:--}" >> "$EXECUTIONS"\n'
    'if [ "$MAKIMA_STEP" = b ]; then while [ ! -e "$GATE" ]; do sleep 0.05; done; fi\n'
    "exec makima agent scripted\n"
)
SCRIPT = {
    "plan": [
        {"name": "a", "title": "first", "orderIndex": 0},
        {"name": "b", "title": "held while the active replica dies", "dependsOn": ["a"], "orderIndex": 1},
        {"name": "c", "title": "after the takeover", "dependsOn": ["b"], "orderIndex": 2},
    ],
    "steps": {name: {"files": {f"{name}.txt": f"{name}\n"}} for name in "abc"},
}


async def until(check: Callable[[], Awaitable[bool]], what: str, timeout: float = LOADED) -> float:
    """Wait for `check`; returns how long it took."""
    start = time.monotonic()
    while not await check():
        assert time.monotonic() - start < timeout, f"not true after {timeout:.0f} s: {what}"
        await asyncio.sleep(0.1)
    return time.monotonic() - start


async def status_of(session: aiohttp.ClientSession, port: int, path: str) -> int | None:
    with contextlib.suppress(aiohttp.ClientError, TimeoutError, OSError):
        async with session.get(f"http://127.0.0.1:{port}{path}", timeout=aiohttp.ClientTimeout(total=3)) as r:
            return r.status
    return None


async def metric(session: aiohttp.ClientSession, port: int, name: str) -> float:
    """Sum of a series' samples on one replica's /metrics."""
    async with session.get(f"http://127.0.0.1:{port}/metrics") as r:
        text = await r.text()
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name)


def lease_holder(sandbox: SandboxThread) -> str:
    lease = sandbox.get("coordination.k8s.io/v1", "Lease", "makima", "default")
    return str((lease.get("spec") or {}).get("holderIdentity") or "")


@contextlib.asynccontextmanager
async def daemon_via(url: str, tmp_path: Path) -> AsyncIterator[DaemonProcess]:
    log = tmp_path / "daemon.log"
    args = ["daemon", "run", "--api-url", url, "--namespace", "default", "--name", "d1", "--capacity", "2"]
    args += ["--work-dir", str(tmp_path / "daemon-work")]
    path = os.pathsep.join([str(Path(MAKIMA).parent), os.environ.get("PATH", "/usr/bin:/bin")])
    env = {**os.environ, "PATH": path, "MAKIMA_DAEMON_TOKEN": DAEMON_TOKEN}
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            MAKIMA, *args, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    daemon = DaemonProcess(proc, "d1", log)
    try:
        yield daemon
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                daemon.kill()
                await proc.wait()


async def test_one_active_replica_and_a_takeover_that_redoes_nothing(
    api: Api, sandbox: SandboxThread, pg_dsn: str, origin: Path, tmp_path: Path
) -> None:
    ports = {"a": free_port(), "b": free_port()}
    executions, gate = tmp_path / "executions.log", tmp_path / "gate"
    await create_daemon_token(api)
    with ReadyService(list(ports.values())) as service:
        base = {
            **os.environ,
            "KUBECONFIG": str(sandbox.kubeconfig),
            "MAKIMA_DATABASE_URL": pg_dsn,
            "MAKIMA_API_URL": service.url,  # runners and daemons go through the Service
            "MAKIMA_TICK_SECONDS": "5",
            "MAKIMA_RETRY_BASE_SECONDS": "0.2",
            "MAKIMA_RETRY_MAX_SECONDS": "1",
            "MAKIMA_DAEMON_HEARTBEAT_SECONDS": "2",
            "MAKIMA_DAEMON_LOST_AFTER_SECONDS": "20",
            "MAKIMA_LEASE_NAME": "makima",
            "MAKIMA_LEASE_NAMESPACE": "default",
            "MAKIMA_LEASE_SECONDS": str(LEASE_SECONDS),
        }
        ops = {
            name: OperatorProcess(
                {
                    **base,
                    "MAKIMA_API_LISTEN": f"127.0.0.1:{port}",
                    "MAKIMA_STATE_DIR": str(tmp_path / f"state-{name}"),
                    "MAKIMA_POD_NAME": f"op-{name}",
                },
                port,
                tmp_path / f"operator-{name}.log",
            )
            for name, port in ports.items()
        }
        async with aiohttp.ClientSession() as session:
            try:
                # a first, so that it is the active one; then b, which stands by.
                ops["a"].start()
                await ops["a"].wait_ready(session, timeout=LOADED)
                assert lease_holder(sandbox).startswith("op-a-")
                ops["b"].start()
                b = ports["b"]
                await until(lambda: _is(session, b, "/healthz", 200), "b to be up")
                assert await status_of(session, b, "/readyz") == 503
                assert await metric(session, b, "makima_active_replica") == 0
                assert await metric(session, ports["a"], "makima_active_replica") == 1

                # A daemon whose first connections land on the standby (endpoints not caught up).
                service.pin(b)
                async with daemon_via(service.url, tmp_path) as daemon:
                    await until(lambda: _logged(daemon, "answered 503"), "the standby to refuse the daemon")
                    service.pin(None)  # the endpoints follow readiness: only a
                    await until(
                        lambda: _gauge_is(session, ports["a"], "makima_daemons_connected", 1), "the daemon on a"
                    )
                    assert await metric(session, b, "makima_daemons_connected") == 0
                    assert "refused this daemon" not in daemon.output()

                    directive = scripted("ha", origin, SCRIPT, execution={"mode": "Daemon", "retries": 1})
                    directive["spec"]["agent"]["command"] = ["sh", "-c", AGENT]
                    directive["spec"]["agent"]["env"] += [
                        {"name": "GATE", "value": str(gate)},
                        {"name": "EXECUTIONS", "value": str(executions)},
                    ]
                    await api.apply_directive(directive)
                    await until(lambda: _step_running(api, "b"), "step b running on the daemon")
                    await until(lambda: _executed(executions, "b"), "step b's agent to start")
                    # Only the active replica acted: it dispatched; the standby made no call that writes.
                    assert await metric(session, ports["a"], "makima_tasks_dispatched_total") >= 3  # plan, a, b
                    assert await metric(session, b, "makima_tasks_dispatched_total") == 0
                    assert await _writes(session, b) == 0

                    # The active replica dies while b runs.
                    killed = time.monotonic()
                    ops["a"].kill()
                    await until(lambda: _is(session, b, "/readyz", 200), "b to take over")
                    takeover = time.monotonic() - killed
                    assert lease_holder(sandbox).startswith("op-b-")
                    await until(lambda: _gauge_is(session, b, "makima_daemons_connected", 1), "the daemon on b")
                    gate.touch()
                    done = await api.wait_for(
                        "ha", lambda d: d.get("status", {}).get("phase") in ("Completed", "Failed"), what="the end"
                    )
                    assert done["status"]["phase"] == "Completed", done["status"]
                    assert await metric(session, b, "makima_tasks_dispatched_total") >= 2  # c, completion
            finally:
                for op in ops.values():
                    op.stop()

    # Every step ran once: one task row and one execution each, no retry.
    store = await TaskStore.connect(pg_dsn)
    try:
        tasks = await store.tasks_for_directive(done["metadata"]["uid"])
    finally:
        await store.close()
    rows = Counter((t.kind.value, t.step_name) for t in tasks)
    assert rows == {
        ("planning", None): 1,
        ("step", "a"): 1,
        ("step", "b"): 1,
        ("step", "c"): 1,
        ("completion", None): 1,
    }
    assert {(t.executor, t.attempt, t.state.value) for t in tasks} == {("daemon", 1, "succeeded")}
    runs = Counter(tuple(line.split()[:3]) for line in executions.read_text().splitlines())
    assert all(n == 1 for n in runs.values()), runs
    steps = await api.steps("ha")
    assert {n: (s["status"]["phase"], s["status"]["attempts"]) for n, s in steps.items()} == {
        n: ("Succeeded", 1) for n in "abc"
    }
    # The figure docs/operations.md quotes: the standby became ready this long after the kill
    # (lease expiry, then its kopf start-up on a busy machine).
    bound = LeaseTimings.for_duration(LEASE_SECONDS).takeover_bound
    print(f"\ntakeover: standby ready {takeover:.1f} s after SIGKILL of the active replica (lease bound {bound:.1f} s)")
    assert takeover >= LEASE_SECONDS - LeaseTimings.for_duration(LEASE_SECONDS).retry_period


async def _is(session: aiohttp.ClientSession, port: int, path: str, status: int) -> bool:
    return await status_of(session, port, path) == status


async def _gauge_is(session: aiohttp.ClientSession, port: int, name: str, value: float) -> bool:
    with contextlib.suppress(aiohttp.ClientError, OSError):
        return await metric(session, port, name) == value
    return False


async def _logged(daemon: DaemonProcess, text: str) -> bool:
    if daemon.proc.returncode is not None:
        raise AssertionError(f"the daemon exited:\n{daemon.output()}")
    return text in daemon.output()


async def _step_running(api: Api, step: str) -> bool:
    phase = ((await api.steps("ha")).get(step, {}).get("status") or {}).get("phase")
    assert phase not in ("Failed", "Skipped"), phase
    return phase == "Running"


async def _executed(executions: Path, step: str) -> bool:
    lines = await asyncio.to_thread(lambda: executions.read_text().splitlines() if executions.exists() else [])
    return any(line.split()[1] == step for line in lines)


async def _writes(session: aiohttp.ClientSession, port: int) -> float:
    """Kubernetes API calls that write, made by one replica (its makima_kube_api_calls_total)."""
    async with session.get(f"http://127.0.0.1:{port}/metrics") as r:
        text = await r.text()
    return sum(
        s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "makima_kube_api_calls_total"
        and s.labels.get("resource") != "leases"
        and s.labels["verb"] != "get"
    )
