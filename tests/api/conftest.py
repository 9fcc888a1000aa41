"""Fixtures for the operator API: a real aiohttp server on localhost over a real TaskStore.

The controller's callables are small, named test doubles (`fixed_spec`, `ReportRecorder`,
`StepRules`, `DaemonTokens`); the store, HTTP and WebSocket are real.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from makima.control.api import ApiDeps, build_app
from makima.control.executors.daemons import DaemonHub, DaemonSettings
from makima.control.store import TaskStore, hash_token, new_token
from makima.core.protocol import AgentSettings, Problem, StepSubmission, TaskSpec, WorkspacePlan
from makima.core.tasks import Task, TaskKind, TaskState

NAMESPACE = "team-a"
DAEMON_TOKEN = "daemon-token-for-team-a"
READER_TOKEN = "reader-token-0123456789"


def spec_of(task: Task, command: list[str] | None = None, repo_url: str = "file:///nowhere.git") -> TaskSpec:
    return TaskSpec(
        task_id=task.id,
        kind=task.kind,
        attempt=task.attempt,
        generation=task.generation,
        namespace=task.namespace,
        directive=task.directive_name,
        step=task.step_name,
        title=f"task {task.step_name or task.kind.value}",
        prompt="do the thing",
        workspace=WorkspacePlan(repo_url=repo_url, branch=task.branch),
        agent=AgentSettings(command=command or ["sh", "-c", "echo hi"]),
    )


async def fixed_spec(task: Task) -> TaskSpec | None:
    """The controller's spec_for, standing in: a spec derived from the task row alone."""
    return spec_of(task)


@dataclass
class ReportRecorder:
    """on_task_report double: remembers each task it was called with."""

    calls: list[Task] = field(default_factory=list)

    async def __call__(self, task: Task) -> None:
        self.calls.append(task)


@dataclass
class StepRules:
    """validate_steps double: dependencies must name a submitted step; names in `forbidden` are refused."""

    forbidden: set[str] = field(default_factory=set)
    seen: list[list[str]] = field(default_factory=list)

    async def __call__(self, task: Task, steps: list[StepSubmission]) -> list[Problem]:
        self.seen.append([s.name for s in steps])
        names = {s.name for s in steps}
        problems = [
            Problem(message=f"depends on unknown step {dep!r}", field="dependsOn", step=s.name)
            for s in steps
            for dep in s.depends_on
            if dep not in names
        ]
        problems += [
            Problem(message="name is reserved", field="name", step=s.name) for s in steps if s.name in self.forbidden
        ]
        return problems


@dataclass
class DaemonTokens:
    """verify_daemon_token double: one token per namespace."""

    tokens: dict[str, str] = field(default_factory=lambda: {NAMESPACE: DAEMON_TOKEN})

    async def __call__(self, namespace: str, token: str) -> bool:
        return self.tokens.get(namespace) == token


@dataclass
class Readiness:
    ready: bool = True

    async def __call__(self) -> bool:
        return self.ready


@dataclass
class Api:
    client: TestClient[web.Request, web.Application]
    deps: ApiDeps
    store: TaskStore
    hub: DaemonHub
    reports: ReportRecorder
    rules: StepRules
    readiness: Readiness

    @property
    def url(self) -> str:
        return str(self.client.make_url("")).rstrip("/")


async def make_task(
    store: TaskStore,
    kind: TaskKind = TaskKind.STEP,
    state: TaskState = TaskState.DISPATCHED,
    namespace: str = NAMESPACE,
    executor_ref: str | None = None,
    branch: str | None = None,
    generation: int = 1,
) -> tuple[Task, str]:
    """A task row with a fresh token, moved to `state` the legal way."""
    token = new_token()
    task = Task(
        id=str(uuid.uuid4()),
        kind=kind,
        namespace=namespace,
        directive_uid="uid-directive",
        directive_name="demo",
        step_uid="uid-step" if kind is TaskKind.STEP else None,
        step_name="build" if kind is TaskKind.STEP else None,
        branch=branch or (f"makima/demo/build-{uuid.uuid4().hex[:6]}" if kind is TaskKind.STEP else None),
        executor="daemon" if executor_ref else None,
        executor_ref=executor_ref,
        generation=generation,
    )
    task, _ = await store.create_task(task, token_hash=hash_token(token))
    path = {
        TaskState.PENDING: [],
        TaskState.DISPATCHED: [TaskState.DISPATCHED],
        TaskState.RUNNING: [TaskState.DISPATCHED, TaskState.RUNNING],
        TaskState.SUCCEEDED: [TaskState.DISPATCHED, TaskState.SUCCEEDED],
        TaskState.FAILED: [TaskState.DISPATCHED, TaskState.FAILED],
        TaskState.LOST: [TaskState.DISPATCHED, TaskState.LOST],
        TaskState.CANCELLED: [TaskState.CANCELLED],
    }[state]
    for step in path:
        task = await store.transition(task.id, task.version, step)
    return task, token


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def daemon_settings() -> DaemonSettings:
    return DaemonSettings(
        heartbeat_seconds=0.2, lost_after_seconds=1.0, hello_timeout_seconds=1.0, spawn_timeout_seconds=2.0
    )


@pytest.fixture
async def api(store: TaskStore, daemon_settings: DaemonSettings) -> AsyncIterator[Api]:
    hub = DaemonHub(store, daemon_settings)
    reports, rules, readiness = ReportRecorder(), StepRules(), Readiness()
    deps = ApiDeps(
        store=store,
        hub=hub,
        spec_for=fixed_spec,
        validate_steps=rules,
        on_task_report=reports,
        verify_daemon_token=DaemonTokens(),
        ready=readiness,
        reader_token=READER_TOKEN,
    )
    server = TestServer(build_app(deps), host="127.0.0.1")
    client = TestClient(server)
    await client.start_server()
    try:
        yield Api(client=client, deps=deps, store=store, hub=hub, reports=reports, rules=rules, readiness=readiness)
    finally:
        await client.close()
