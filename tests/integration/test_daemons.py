"""The daemon path end to end: kopf + API + store + a real `makima daemon run` process.

The operator runs in-process against the sandbox cluster (see conftest); the daemon is a
real subprocess connected over the WebSocket with the namespace's daemon token (Secret
`makima-daemon-token`), running the real runner and the scripted agent.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp

from makima.cli.daemon import daemon_token_secret
from makima.control import metrics
from makima.control.runtime import Operator
from makima.core.tasks import Task, TaskKind, TaskState
from tests.support.wait import eventually

from .conftest import LOADED, Api, OperatorFactory, git, scripted

MAKIMA = str(Path(sys.executable).with_name("makima"))
DAEMON_TOKEN = "daemon-token-of-default-0123456789"

# A diamond: b and c start from a, d merges b and c.
DIAMOND: dict[str, Any] = {
    "plan": [
        {"name": "a", "title": "base module", "orderIndex": 0},
        {"name": "b", "title": "left", "dependsOn": ["a"], "orderIndex": 1},
        {"name": "c", "title": "right", "dependsOn": ["a"], "orderIndex": 1},
        {"name": "d", "title": "join", "dependsOn": ["b", "c"], "orderIndex": 2},
    ],
    "steps": {
        "a": {"files": {"pkg/__init__.py": '"""pkg"""\n', "pkg/base.py": "BASE = 1\n"}},
        "b": {"files": {"pkg/left.py": "from pkg.base import BASE\nLEFT = BASE + 1\n"}, "delete": ["README.md"]},
        "c": {"files": {"pkg/right.py": "RIGHT = 3\n", "docs/right.md": "# right\n"}},
        "d": {"files": {"pkg/join.py": "from pkg.left import LEFT\nfrom pkg.right import RIGHT\n"}},
    },
}


def seed_origin(path: Path) -> Path:
    """A bare repository with one commit on main (same content every time)."""
    git("init", "-q", "--bare", "-b", "main", str(path))
    work = path.with_suffix(".seed")
    git("clone", "-q", str(path), str(work))
    (work / "README.md").write_text("# demo project\n")
    (work / "setup.cfg").write_text("[metadata]\nname = demo\n")
    ident = ("-c", "user.name=t", "-c", "user.email=t@t")
    git(*ident, "-C", str(work), "add", ".")
    git(*ident, "-C", str(work), "commit", "-q", "-m", "initial")
    git("-C", str(work), "push", "-q", "origin", "HEAD:main")
    return path


async def create_daemon_token(api: Api, token: str = DAEMON_TOKEN) -> None:
    await api.request("POST", f"/api/v1/namespaces/{api.namespace}/secrets", daemon_token_secret(api.namespace, token))


def timer_runs() -> float:
    """Timer reconciles so far (each directive's run on each tick, quiet ones included)."""
    return metrics.REGISTRY.get_sample_value("makima_reconciles_total", {"trigger": "timer"}) or 0.0


class DaemonProcess:
    """`makima daemon run` as a real subprocess (SIGKILL-able)."""

    def __init__(self, proc: asyncio.subprocess.Process, name: str, log: Path) -> None:
        self.proc = proc
        self.name = name
        self.log = log

    def kill(self) -> None:
        """SIGKILL the daemon and everything it started (its process group)."""
        os.killpg(self.proc.pid, signal.SIGKILL)

    def output(self) -> str:
        return self.log.read_text() if self.log.exists() else ""


@asynccontextmanager
async def daemon_process(
    op: Operator, tmp_path: Path, name: str, capacity: int, labels: dict[str, str] | None = None
) -> AsyncIterator[DaemonProcess]:
    log = tmp_path / f"daemon-{name}.log"
    args = ["daemon", "run", "--api-url", op.api_url, "--namespace", "default", "--name", name]
    args += ["--capacity", str(capacity), "--work-dir", str(tmp_path / f"work-{name}")]
    for k, v in (labels or {}).items():
        args += ["--label", f"{k}={v}"]
    # The agent (`makima agent scripted`) is found on PATH, as on a developer's machine.
    path = os.pathsep.join([str(Path(MAKIMA).parent), os.environ.get("PATH", "/usr/bin:/bin")])
    env = {**os.environ, "PATH": path, "MAKIMA_DAEMON_TOKEN": DAEMON_TOKEN}
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            MAKIMA, *args, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    daemon = DaemonProcess(proc, name, log)
    try:
        await eventually(lambda: _connected(op, name, daemon), f"daemon {name} connected", 20, detail=daemon.output)
        yield daemon
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def _connected(op: Operator, name: str, daemon: DaemonProcess) -> bool:
    if daemon.proc.returncode is not None:
        raise AssertionError(f"daemon {name} exited with {daemon.proc.returncode}:\n{daemon.output()}")
    return any(v.name == name for v in op.hub.connected("default"))


def finished(d: dict[str, Any]) -> bool:
    return d.get("status", {}).get("phase") in ("Completed", "Failed", "Paused")


async def tasks_of(op: Operator, api: Api, name: str) -> list[Task]:
    uid = (await api.directive(name))["metadata"]["uid"]
    tasks: list[Task] = await op.store.tasks_for_directive(uid)
    return tasks


def trees(origin: Path, branches: dict[str, str]) -> dict[str, str]:
    return {key: git("-C", str(origin), "rev-parse", f"{branch}^{{tree}}") for key, branch in branches.items()}


async def run_diamond(api: Api, op: Operator, origin: Path, mode: str) -> tuple[dict[str, str], list[Task]]:
    """Run the diamond directive in `mode`; the tree of every step branch and of the PR branch."""
    name = f"diamond-{mode.lower()}"
    await api.apply_directive(scripted(name, origin, DIAMOND, execution={"mode": mode, "maxParallelSteps": 3}))
    done = await api.wait_for(name, finished, timeout=60, what=f"{name} to finish")
    assert done["status"]["phase"] == "Completed", done["status"]
    steps = await api.steps(name)
    branches = {step: obj["status"]["branch"] for step, obj in steps.items()}
    branches["pull-request"] = done["status"]["pullRequest"]["branch"]
    return trees(origin, branches), await tasks_of(op, api, name)


async def test_same_branches_via_jobs_and_via_a_daemon(
    api: Api, start_operator: OperatorFactory, tmp_path: Path
) -> None:
    op = await start_operator()
    await create_daemon_token(api)

    async with daemon_process(op, tmp_path, "laptop", capacity=4):
        # Side by side: `mode: Job` ignores the connected daemon, `mode: Daemon` uses only it.
        (via_jobs, job_tasks), (via_daemon, daemon_tasks) = await asyncio.gather(
            run_diamond(api, op, seed_origin(tmp_path / "jobs.git"), "Job"),
            run_diamond(api, op, seed_origin(tmp_path / "daemon.git"), "Daemon"),
        )

    # Every task (planning, four steps, completion) ran once, on the executor its mode asks for.
    assert sorted(t.kind.value for t in job_tasks) == sorted(t.kind.value for t in daemon_tasks)
    assert len(job_tasks) == 6
    assert {(t.executor, t.state, t.attempt) for t in job_tasks} == {("job", TaskState.SUCCEEDED, 1)}
    assert {(t.executor, t.state, t.attempt) for t in daemon_tasks} == {("daemon", TaskState.SUCCEEDED, 1)}
    daemon_ids = {t.executor_ref for t in daemon_tasks}
    assert len(daemon_ids) == 1 and daemon_ids != {None}
    assert len(await api.jobs()) == 6, "the daemon run created Jobs"

    # Same content everywhere: each step branch and the PR branch have identical trees.
    assert via_jobs.keys() == {"a", "b", "c", "d", "pull-request"}
    assert via_jobs == via_daemon
    # ... and they are the diamond's, not trivially equal: d holds everything, as does the PR.
    assert len({via_jobs[s] for s in "abcd"}) == 4
    assert via_jobs["d"] == via_jobs["pull-request"]
    files = git("-C", str(tmp_path / "daemon.git"), "ls-tree", "-r", "--name-only", via_daemon["pull-request"])
    assert files.split() == [
        "docs/right.md",
        "pkg/__init__.py",
        "pkg/base.py",
        "pkg/join.py",
        "pkg/left.py",
        "pkg/right.py",
        "setup.cfg",
    ]


async def test_auto_prefers_a_matching_daemon_with_free_capacity_else_a_job(
    api: Api, start_operator: OperatorFactory, origin: Path, tmp_path: Path
) -> None:
    op = await start_operator()
    await create_daemon_token(api)
    script = {
        "plan": [
            {"name": "left", "title": "left", "orderIndex": 0},
            {"name": "right", "title": "right", "orderIndex": 0},
        ],
        "steps": {"left": {"files": {"left.txt": "L\n"}}, "right": {"files": {"right.txt": "R\n"}}},
    }
    # `other` has room for everything but lacks the selector's label; `fast` has one slot.
    async with (
        daemon_process(op, tmp_path, "fast", capacity=1, labels={"pool": "fast"}),
        daemon_process(op, tmp_path, "other", capacity=4, labels={"pool": "slow"}),
    ):
        ids = {v.name: v.id for v in op.hub.connected("default")}
        body = scripted("routed", origin, script, execution={"mode": "Auto", "daemonSelector": {"pool": "fast"}})
        await api.apply_directive(body)
        done = await api.wait_for("routed", finished, timeout=40, what="routed to finish")
    assert done["status"]["phase"] == "Completed", done["status"]

    # The two parallel steps were routed in one pass: at most one fits the daemon's only slot
    # (usually one does; under load the planning task may still hold it), the rest are Jobs.
    steps = await api.steps("routed")
    executors = sorted((s["status"]["task"]["executor"], s["status"]["task"]["name"]) for s in steps.values())
    tasks = {t.id: t for t in await tasks_of(op, api, "routed")}
    step_tasks = [t for t in tasks.values() if t.kind is TaskKind.STEP]
    assert len(step_tasks) == 2 and {t.attempt for t in step_tasks} == {1}
    on_daemon = [t for t in step_tasks if t.executor == "daemon"]
    jobs = [t for t in step_tasks if t.executor == "job"]
    assert len(on_daemon) <= 1 and len(on_daemon) + len(jobs) == 2, executors
    assert {t.executor_ref for t in on_daemon} <= {ids["fast"]}
    assert sorted((t.executor, t.executor_ref) for t in step_tasks) == executors
    assert {j["metadata"]["name"] for j in await api.jobs()} == {t.executor_ref for t in jobs}
    # Planning and completion ran alone, so the matching daemon took them; `other` never got a task.
    others = [t for t in tasks.values() if t.kind is not TaskKind.STEP]
    assert {(t.kind, t.executor, t.executor_ref) for t in others} == {
        (TaskKind.PLANNING, "daemon", ids["fast"]),
        (TaskKind.COMPLETION, "daemon", ids["fast"]),
    }


# The agent notes its task token in $TOKENS/<task id> (what a leaked or zombie attempt would
# hold), then is the scripted agent.
TOKEN_NOTING_AGENT = [
    "sh",
    "-c",
    'printf %s "$MAKIMA_TASK_TOKEN" > "$TOKENS/$MAKIMA_TASK_ID" && exec makima agent scripted',
]


async def test_killed_daemon_task_is_lost_retried_once_on_a_job_and_its_late_report_refused(
    api: Api, start_operator: OperatorFactory, origin: Path, tmp_path: Path
) -> None:
    # Loss is detected from missing heartbeats: 5 s of silence is far beyond a busy machine's
    # stalls (beats every 0.5 s), and the waits below are deadlines for conditions, sized for
    # a loaded machine; none of them is a guess at how long things take.
    op = await start_operator(daemon_heartbeat_seconds=0.5, daemon_lost_after_seconds=5, tick_seconds=0.5)
    await create_daemon_token(api)
    tokens = tmp_path / "tokens"
    tokens.mkdir()
    script = {
        "plan": [{"name": "slow", "title": "slow work", "orderIndex": 0}],
        "steps": {"slow": {"sleep": 1.5, "files": {"slow.txt": "done\n"}}},
    }
    body = scripted("victim", origin, script, execution={"mode": "Auto", "retries": 2})
    body["spec"]["agent"]["command"] = TOKEN_NOTING_AGENT
    body["spec"]["agent"]["env"].append({"name": "TOKENS", "value": str(tokens)})

    async with daemon_process(op, tmp_path, "doomed", capacity=1) as daemon:
        await api.apply_directive(body)
        running = await api.wait_for(
            "victim",
            lambda d: d.get("status", {}).get("steps", {}).get("running") == 1,
            timeout=LOADED,
            what="step running",
        )
        assert running["status"]["phase"] == "Executing"
        step = (await api.steps("victim"))["slow"]["status"]
        assert step["task"]["executor"] == "daemon"
        lost_id = step["task"]["id"]
        await eventually(lambda: _task_file(tokens, lost_id), "the agent started", LOADED)
        daemon.kill()  # the machine dies: daemon and agent, no goodbye
        await daemon.proc.wait()

        async def declared_lost() -> bool:
            t = await op.store.get_task(lost_id)
            return t is not None and t.state is TaskState.LOST

        await eventually(declared_lost, "the killed attempt declared lost", LOADED)
        done = await api.wait_for("victim", finished, timeout=LOADED, what="victim to finish")
    assert done["status"]["phase"] == "Completed", done["status"]

    step = (await api.steps("victim"))["slow"]["status"]
    assert step["phase"] == "Succeeded" and step["attempts"] == 2
    assert step["task"]["executor"] == "job"
    step_tasks = sorted(
        (t for t in await tasks_of(op, api, "victim") if t.kind is TaskKind.STEP), key=lambda t: t.attempt
    )
    assert [(t.attempt, t.executor, t.state) for t in step_tasks] == [
        (1, "daemon", TaskState.LOST),
        (2, "job", TaskState.SUCCEEDED),
    ]
    lost = step_tasks[0]
    assert lost.id == lost_id and lost.error and "no heartbeat from daemon" in lost.error
    assert git("-C", str(origin), "show", f"{step['branch']}:slow.txt") == "done"

    # Fencing: the lost attempt's token no longer opens its task; nothing changes.
    token = (tokens / lost_id).read_text()
    events_before = await op.store.events(lost_id, 0, 1000)
    report = {"outcome": "succeeded", "branch": lost.branch, "commit": "0" * 40, "message": "late"}
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession() as session:
        for path, payload in (
            ("result", report),
            ("events", {"events": [{"type": "output", "payload": {"line": "x"}}]}),
        ):
            async with session.post(f"{op.api_url}/v1/tasks/{lost_id}/{path}", json=payload, headers=headers) as resp:
                assert resp.status == 403, await resp.text()
                assert "lost" in (await resp.json())["error"]
    after = await op.store.get_task(lost_id)
    assert after is not None
    assert (after.state, after.version, after.result, after.commit) == (
        lost.state,
        lost.version,
        lost.result,
        lost.commit,
    )
    assert await op.store.events(lost_id, 0, 1000) == events_before
    assert (await api.steps("victim"))["slow"]["status"]["commit"] == step["commit"] != "0" * 40


async def _task_file(tokens: Path, task_id: str) -> bool:
    return (tokens / task_id).exists() and bool((tokens / task_id).read_text())


async def test_daemon_mode_waits_for_a_daemon_and_starts_when_one_connects(
    api: Api, start_operator: OperatorFactory, origin: Path, tmp_path: Path
) -> None:
    op = await start_operator(tick_seconds=0.5)
    await create_daemon_token(api)
    script = {"plan": [{"name": "only", "title": "only step"}], "steps": {"only": {"files": {"only.txt": "1\n"}}}}
    await api.apply_directive(scripted("patient", origin, script, execution={"mode": "Daemon"}))
    waiting = await api.wait_for(
        "patient", lambda d: "waiting for a daemon" in d.get("status", {}).get("message", ""), timeout=LOADED
    )
    assert waiting["status"]["phase"] == "Planning"
    # Several timer runs after that status (tick 0.5 s): none may start a task without a daemon.
    runs = timer_runs()
    await eventually(lambda: timer_runs() >= runs + 3, "three more timer runs", LOADED)
    assert await tasks_of(op, api, "patient") == []

    async with daemon_process(op, tmp_path, "late", capacity=1):
        done = await api.wait_for("patient", finished, timeout=LOADED, what="patient to finish")
    assert done["status"]["phase"] == "Completed", done["status"]
    tasks = await tasks_of(op, api, "patient")
    assert len(tasks) == 3 and {(t.executor, t.state) for t in tasks} == {("daemon", TaskState.SUCCEEDED)}
    assert await api.jobs() == []


async def test_the_example_directive_completes_on_a_daemon(
    api: Api, start_operator: OperatorFactory, origin: Path, tmp_path: Path
) -> None:
    """Issue 8's "done when", daemon half: examples/directive.yaml, every task on a daemon."""
    from .conftest import example_directive

    op = await start_operator()
    await create_daemon_token(api)
    async with daemon_process(op, tmp_path, "runner", capacity=3):
        body = example_directive(origin)
        body["spec"]["execution"]["mode"] = "Daemon"
        await api.apply_directive(body)
        done = await api.wait_for("greeter", finished, timeout=90, what="the example to finish")
    assert done["status"]["phase"] == "Completed", done["status"]
    tasks = await tasks_of(op, api, "greeter")
    assert len(tasks) == 8 and {(t.executor, t.state) for t in tasks} == {("daemon", TaskState.SUCCEEDED)}
    assert await api.jobs() == []
    files = git("-C", str(origin), "ls-tree", "-r", "--name-only", done["status"]["pullRequest"]["branch"]).split()
    assert {"greeter/core.py", "greeter/__main__.py", "tests/test_greeter.py", "CHANGELOG.md"} <= set(files)
