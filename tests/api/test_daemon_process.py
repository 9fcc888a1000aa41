"""`makima daemon` in-process against the real API: spawn, run, report, cancel, reconnect.

One test runs the real runner (`run_task`) with a shell-command agent on a bare git
repository; the others inject a runner callable to control timing.
"""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from makima.control import api as api_pkg
from makima.core.protocol import EventType, Outcome, TaskEvent, TaskResult, TaskSpec
from makima.core.tasks import TaskState
from makima.dataplane.client import TaskClient
from makima.dataplane.daemon import DAEMON_CONNECT_PATH, ENV_DAEMON_TOKEN, Daemon, DaemonConfig, TaskRunner, task_env
from tests.support.wait import eventually

from .conftest import DAEMON_TOKEN, NAMESPACE, Api, make_task, spec_of


@asynccontextmanager
async def running_daemon(
    api: Api, tmp_path: Path, runner: TaskRunner | None = None, token: str = DAEMON_TOKEN, capacity: int = 1
) -> AsyncIterator[Daemon]:
    config = DaemonConfig(
        api_url=api.url,
        namespace=NAMESPACE,
        name="laptop",
        token=token,
        labels={"os": "linux"},
        capacity=capacity,
        work_dir=tmp_path / "work",
        backoff_initial=0.05,
        backoff_max=0.2,
    )
    daemon = Daemon(config, runner)
    job = asyncio.create_task(daemon.run())
    try:
        yield daemon
    finally:
        daemon.stop()
        await asyncio.wait_for(job, 10)


async def connected(daemon: Daemon) -> str:
    await asyncio.wait_for(daemon.connected.wait(), 10)
    assert daemon.daemon_id is not None
    return daemon.daemon_id


def git(*args: str, cwd: Path | None = None) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def bare_repo(tmp_path: Path) -> Path:
    """A bare repository with one commit on main, playing the remote."""
    bare, seed = tmp_path / "remote.git", tmp_path / "seed"
    git("init", "-q", "--bare", "-b", "main", str(bare))
    git("init", "-q", "-b", "main", str(seed))
    (seed / "README.md").write_text("hello\n")
    git("-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-q", "--allow-empty", "-m", "init", cwd=seed)
    git("add", "README.md", cwd=seed)
    git("-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-q", "-m", "readme", cwd=seed)
    git("push", "-q", str(bare), "main", cwd=seed)
    return bare


async def test_daemon_runs_a_task_with_the_real_runner_and_reports_through_the_api(
    api: Api, tmp_path: Path, bare_repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV_DAEMON_TOKEN, DAEMON_TOKEN)  # must not reach the agent
    for key, value in {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("GIT_COMMITTER_NAME", "t")
    monkeypatch.setenv("GIT_COMMITTER_EMAIL", "t@example.com")
    async with running_daemon(api, tmp_path) as daemon:
        daemon_id = await connected(daemon)
        [view] = api.hub.available(NAMESPACE)
        assert (view.id, view.labels) == (daemon_id, {"os": "linux"})

        task, token = await make_task(api.store, executor_ref=daemon_id, branch="makima/demo/build")
        agent = 'echo hi; echo "daemon=${MAKIMA_DAEMON_TOKEN:-unset}"; echo change > made-by-agent.txt'
        spec = spec_of(task, command=["sh", "-c", agent], repo_url=str(bare_repo))
        assert await api.hub.spawn(daemon_id, spec, token)

        async def finished() -> bool:
            t = await api.store.get_task(task.id)
            return t is not None and t.state.terminal

        await eventually(finished, "finished", timeout=60)
        stored = await api.store.get_task(task.id)
        assert stored is not None
        assert stored.state is TaskState.SUCCEEDED, stored.error
        assert stored.branch == "makima/demo/build"
        assert stored.commit == git("rev-parse", "makima/demo/build", cwd=bare_repo)
        assert git("show", "makima/demo/build:made-by-agent.txt", cwd=bare_repo) == "change"

        events = await api.store.events(task.id, 0, 1000)
        lines = " ".join(str(e.payload) for e in events if e.type == EventType.OUTPUT.value)
        assert "hi" in lines and "daemon=unset" in lines and DAEMON_TOKEN not in lines
        assert {EventType.PROGRESS.value, EventType.GIT.value, EventType.RESULT.value} <= {e.type for e in events}
        assert [t.state for t in api.reports.calls] == [TaskState.RUNNING, TaskState.SUCCEEDED]
        # the slot is freed first, the workspace removed just after: wait for both
        workspace = tmp_path / "work" / task.id

        async def cleaned_up() -> bool:
            return not daemon.tasks and not workspace.exists()

        await eventually(cleaned_up, "the workspace is cleaned up")


async def _no_tasks(daemon: Daemon) -> bool:
    return not daemon.tasks


class GatedRunner:
    """Injected runner: reports an event, then waits for `release` before posting its result."""

    def __init__(self, api_url: str) -> None:
        self.api_url = api_url
        self.release = asyncio.Event()
        self.started: list[str] = []
        self.cancelled: list[str] = []

    async def __call__(self, spec: TaskSpec, token: str, workdir: Path) -> None:
        self.started.append(spec.task_id)
        async with TaskClient(self.api_url, spec.task_id, token) as client:
            await client.post_events([TaskEvent(type=EventType.PROGRESS, payload={"message": "working"})])
            try:
                await self.release.wait()
            except asyncio.CancelledError:
                self.cancelled.append(spec.task_id)
                raise
            await client.post_result(
                TaskResult(outcome=Outcome.SUCCEEDED, branch=spec.workspace.branch, commit="c" * 40)
            )


async def test_daemon_cancels_a_task_when_the_operator_asks(api: Api, tmp_path: Path) -> None:
    runner = GatedRunner(api.url)
    async with running_daemon(api, tmp_path, runner) as daemon:
        daemon_id = await connected(daemon)
        task, token = await make_task(api.store, executor_ref=daemon_id)
        assert await api.hub.spawn(daemon_id, spec_of(task), token)
        await eventually(lambda: _running(api, task.id), "the task is running")
        assert await api.hub.cancel(daemon_id, task.id)
        await eventually(lambda: _no_tasks(daemon), "the daemon has no tasks left")
        assert runner.cancelled == [task.id]


async def _running(api: Api, task_id: str) -> bool:
    t = await api.store.get_task(task_id)
    return t is not None and t.state is TaskState.RUNNING


async def test_daemon_refuses_work_beyond_its_capacity(api: Api, tmp_path: Path) -> None:
    runner = GatedRunner(api.url)
    async with running_daemon(api, tmp_path, runner, capacity=1) as daemon:
        daemon_id = await connected(daemon)
        first, first_token = await make_task(api.store, executor_ref=daemon_id)
        assert await api.hub.spawn(daemon_id, spec_of(first), first_token)
        # The hub would not even ask; pretend its view is stale so the daemon itself must refuse.
        conn = api.hub._conns[daemon_id]
        conn.hello = conn.hello.model_copy(update={"capacity": 2})
        second, second_token = await make_task(api.store, executor_ref=daemon_id)
        assert await api.hub.spawn(daemon_id, spec_of(second), second_token) is False
        assert runner.started == [first.id]
        runner.release.set()
        await eventually(lambda: _no_tasks(daemon), "the daemon has no tasks left")
        stored = await api.store.get_task(first.id)
        assert stored is not None and stored.state is TaskState.SUCCEEDED


async def test_daemon_reconnects_and_keeps_its_running_task(api: Api, tmp_path: Path) -> None:
    runner = GatedRunner(api.url)
    async with running_daemon(api, tmp_path, runner) as daemon:
        daemon_id = await connected(daemon)
        task, token = await make_task(api.store, executor_ref=daemon_id)
        assert await api.hub.spawn(daemon_id, spec_of(task), token)

        assert await api.hub.drop(daemon_id, "test: network blip")

        async def back() -> bool:
            view = api.hub.get(daemon_id)
            return daemon.connections >= 2 and view is not None and task.id in view.in_flight

        await eventually(back, "the daemon reconnected with its task")
        row = await api.store.get_daemon(daemon_id)
        assert row is not None and row.connected
        assert runner.cancelled == []  # kept running through the reconnect
        runner.release.set()
        await eventually(lambda: _no_tasks(daemon), "the daemon has no tasks left")
        stored = await api.store.get_task(task.id)
        assert stored is not None and stored.state is TaskState.SUCCEEDED


async def test_daemon_with_a_bad_token_keeps_retrying_and_never_registers(api: Api, tmp_path: Path) -> None:
    async with running_daemon(api, tmp_path, token="wrong-daemon-token") as daemon:
        await eventually(lambda: daemon.attempts >= 3, "the daemon tried three times")
        assert daemon.connections == 0 and not daemon.connected.is_set()
    assert await api.store.connected_daemons(NAMESPACE) == []


def test_the_daemon_token_is_hidden_from_tasks_and_paths_agree() -> None:
    env = {ENV_DAEMON_TOKEN: "x", "MAKIMA_TASK_TOKEN": "y", "PATH": "/bin", "HOME": "/h"}
    assert task_env(env) == {"PATH": "/bin", "HOME": "/h"}
    assert DAEMON_CONNECT_PATH == api_pkg.DAEMON_CONNECT_PATH


def test_reconnect_waits_grow_with_full_jitter_and_are_capped() -> None:
    from makima.dataplane.daemon import reconnect_delay

    for tries in range(1, 12):
        cap = min(30.0, 0.5 * 2 ** (tries - 1))
        waits = [reconnect_delay(tries, 0.5, 30.0) for _ in range(200)]
        assert all(0.0 <= w <= cap for w in waits)  # full jitter: anywhere from 0 to the cap
        assert max(waits) > 0.75 * cap and min(waits) < 0.25 * cap  # spread over the whole range
    assert len({reconnect_delay(3, 0.5, 30.0) for _ in range(20)}) == 20


async def test_cancelling_a_daemon_task_ends_the_agent_and_everything_it_started(
    api: Api, tmp_path: Path, bare_repo: Path
) -> None:
    """Issue 17 item 3: the real runner on a daemon; the agent starts children in its own
    group, in a new session (setsid) and as a sub-shell orphan, all carrying a random mark.
    After the operator cancels the task none of them may be left (looked up in /proc)."""
    from tests.runner.test_process_tree import TREE, describe, marked

    mark = uuid.uuid4().hex
    async with running_daemon(api, tmp_path) as daemon:
        daemon_id = await connected(daemon)
        task, token = await make_task(api.store, executor_ref=daemon_id, branch="makima/demo/tree")
        spec = spec_of(task, command=["sh", "-c", TREE], repo_url=str(bare_repo))
        spec = spec.model_copy(update={"agent": spec.agent.model_copy(update={"env": {"TEST_MARK": mark}})})
        assert await api.hub.spawn(daemon_id, spec, token)

        async def started() -> bool:
            return len(marked(mark)) >= 5

        # Deadlines, not expected durations: a clone and five process starts on a loaded machine.
        await eventually(started, "started", timeout=180)
        assert await api.hub.cancel(daemon_id, task.id)
        await eventually(lambda: _no_tasks(daemon), "the daemon has no tasks left", timeout=120)

        async def none_left() -> bool:
            return not marked(mark)

        try:
            await eventually(none_left, "no process is left", timeout=60)
        except AssertionError:
            raise AssertionError(f"survivors: {describe(marked(mark))}") from None
