"""A small world for driving decide(): the actions are applied by the operator's own code
(`Controller.apply`, the real `ActionApplier`, `TaskDispatcher` and `JobExecutor`) over
in-memory test doubles of the ports (`control.ports`), and tasks finish at random. Used by the
reconcile table tests and the property tests.

The doubles keep the World's state (a Directive, StepViews, Task rows) and behave as the real
parts do where decide() can tell: the Kubernetes double applies merge patches (RFC 7386) to
the objects it renders, the task-record double compare-and-sets along the same transitions as
the SQL store and stamps times from the World's clock. The SQL itself is tested against
PostgreSQL (tests/store), the Kubernetes calls against the sandbox and a real API server.
"""

from __future__ import annotations

import asyncio
import atexit
import random
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from makima.control.controller import Controller
from makima.control.dispatch import AgentDefaults, TaskDispatcher
from makima.control.executors.jobs import JobDefaults, JobExecutor
from makima.control.kube import DIRECTIVES, STEPS
from makima.control.store.errors import IllegalTransition, TaskNotFound, VersionConflict
from makima.control.store.task_store import UPDATABLE
from makima.core import naming
from makima.core.models import (
    API_VERSION,
    Directive,
    DirectiveStatus,
    DirectiveStepSpec,
    DirectiveStepStatus,
    StepPhase,
)
from makima.core.protocol import StepSubmission, TaskSpec
from makima.core.reconcile import (
    Action,
    DaemonView,
    DispatchStep,
    EmitEvent,
    ReconcileConfig,
    Snapshot,
    StepView,
)
from makima.core.tasks import TRANSITIONS, Task, TaskKind, TaskState

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
DIRECTIVE_UID = "dir-uid-1"


def directive(goal: str = "Build the thing", **spec: Any) -> Directive:
    body: dict[str, Any] = {
        "title": "Demo",
        "goal": goal,
        "repository": {"url": "https://git.example/demo.git"},
    }
    execution = spec.pop("execution", {})
    body["execution"] = {"mode": "Job", **execution}
    body.update(spec)
    return Directive.model_validate(
        {"metadata": {"name": "demo", "namespace": "team", "uid": DIRECTIVE_UID, "generation": 1}, "spec": body}
    )


def step(
    name: str,
    deps: Sequence[str] = (),
    order: int = 0,
    gen: int = 1,
    phase: StepPhase = StepPhase.PENDING,
    **status: Any,
) -> StepView:
    return StepView(
        name=name,
        uid=f"uid-{name}",
        spec=DirectiveStepSpec(
            directive="demo", title=f"Do {name}", depends_on=list(deps), order_index=order, generation=gen
        ),
        status=DirectiveStepStatus(phase=phase, **status),
    )


def task(
    kind: TaskKind,
    state: TaskState,
    *,
    attempt: int = 1,
    generation: int = 1,
    step: StepView | None = None,
    at: datetime = T0,
    **fields: Any,
) -> Task:
    if kind is TaskKind.STEP:
        assert step is not None
        tid = naming.step_task_id(step.uid, attempt)
    elif kind is TaskKind.PLANNING:
        tid = naming.planning_task_id(DIRECTIVE_UID, generation, attempt)
    else:
        tid = naming.completion_task_id(DIRECTIVE_UID, generation, attempt)
    base: dict[str, Any] = {
        "id": tid,
        "kind": kind,
        "namespace": "team",
        "directive_uid": DIRECTIVE_UID,
        "directive_name": "demo",
        "attempt": attempt,
        "generation": generation,
        "state": state,
        "executor": "job",
        "executor_ref": naming.job_name(tid),
        "created_at": at,
        "started_at": at,
        "heartbeat_at": at,
        "deadline_at": at + timedelta(hours=1),
    }
    if step is not None:
        base.update(step_uid=step.uid, step_name=step.name, branch=naming.step_branch(step.name, step.uid))
    if not state.active:
        base["finished_at"] = at
    base.update(fields)
    return Task(**base)


def subs_wire(subs: Sequence[StepSubmission]) -> list[dict[str, Any]]:
    return [s.model_dump(mode="json", by_alias=True) for s in subs]


Planner = Callable[[int, "World"], list[StepSubmission]]
KEY = ("team", "demo")  # the directive of every World: namespace, name


class SimulatedCrash(Exception):
    """The operator died at this point (raised by a test double, caught by `World.apply`)."""


@dataclass
class World:
    """Directive + steps + tasks + daemons, changed only by `apply` (the real shell) and
    `progress` (the data plane in miniature)."""

    directive: Directive
    now: datetime = T0
    steps: dict[str, StepView] = field(default_factory=dict)
    tasks: dict[str, Task] = field(default_factory=dict)
    daemons: list[tuple[str, int]] = field(default_factory=list)  # (id, capacity)
    events: list[EmitEvent] = field(default_factory=list)
    applied_dispatches: set[tuple[str, int]] = field(default_factory=set)
    notes: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.kube = SimKube(self)
        records = SimTaskRecords(self)
        daemons = SimDaemons(self)
        jobs = JobExecutor(self.kube, JobDefaults(image="makima-agent:sim", api_url="http://operator.sim"))
        dispatcher = TaskDispatcher(records, jobs, daemons, AgentDefaults(), self.kube)
        self.controller = Controller(
            self.kube,
            records,
            dispatcher,
            ReconcileConfig(),
            steps_source=lambda key: [],
            daemons=daemons,
            clock=lambda: self.now,
        )

    def load(self) -> dict[str, int]:
        """Active daemon tasks per daemon id."""
        load = {d: 0 for d, _ in self.daemons}
        for t in self.tasks.values():
            if t.state.active and t.executor == "daemon" and t.executor_ref in load:
                load[t.executor_ref] += 1
        return load

    def snapshot(self) -> Snapshot:
        load = self.load()
        views = [
            DaemonView(id=d, namespace="team", labels={"pool": "a"}, capacity=cap, in_flight=load[d])
            for d, cap in self.daemons
        ]
        return Snapshot(
            directive=self.directive,
            steps=list(self.steps.values()),
            tasks=list(self.tasks.values()),
            daemons=views,
        )

    # ---- the shell: the operator's own apply code over the doubles below ----------------------

    def apply(
        self, actions: Sequence[Action], crash_after: int | None = None, rng: random.Random | None = None
    ) -> None:
        """Apply `actions` with the controller's real code; `crash_after` = n: the operator dies
        after the first n actions (and, when the n-th launched a step, possibly before that
        step was marked Running)."""
        if crash_after is not None:
            actions = actions[:crash_after]
        if not actions:
            return
            last = actions[-1] if actions else None
            if isinstance(last, DispatchStep) and rng is not None and rng.random() < 0.5:
                self.kube.crash_on_patch = last.name  # died between launching the task and marking the step Running
        body = self.kube.directive_object()
        steps = [self.kube.step_object(s) for s in self.steps.values()]
        try:
            _loop().run_until_complete(self.controller.apply(KEY, body, steps, actions, self.directive))
        except SimulatedCrash:
            pass
        finally:
            self.kube.crash_on_patch = None

    def set_paused(self, paused: bool) -> None:
        spec = self.directive.spec.model_copy(update={"paused": paused})
        self.directive = self.directive.model_copy(update={"spec": spec})

    def set_goal(self, goal: str) -> None:
        spec = self.directive.spec.model_copy(update={"goal": goal})
        meta = self.directive.metadata.model_copy(update={"generation": self.directive.metadata.generation + 1})
        self.directive = self.directive.model_copy(update={"spec": spec, "metadata": meta})

    def patch_step(self, name: str, patch: dict[str, Any]) -> None:
        s = self.steps[name]
        body = s.status.wire()
        for k, v in patch.items():
            if v is None:
                body.pop(k, None)
            else:
                body[k] = v
        self.steps[name] = StepView(s.name, s.uid, s.spec, DirectiveStepStatus.model_validate(body))

    def finish(self, tid: str, state: TaskState, **fields: Any) -> None:
        t = self.tasks[tid]
        self.tasks[tid] = t.model_copy(update={"state": state, "finished_at": self.now, **fields})

    # ---- the data plane, in miniature --------------------------------------------------------

    def progress(self, rng: random.Random, planner: Planner, p_fail: float, settle: bool) -> None:
        """Let each active task succeed, fail, keep running (heartbeat) or go silent."""
        for t in sorted(self.tasks.values(), key=lambda t: t.id):
            if not t.state.active:
                continue
            roll = rng.random()
            if not settle and roll < 0.25:
                if rng.random() < 0.8:
                    self.tasks[t.id] = t.model_copy(update={"state": TaskState.RUNNING, "heartbeat_at": self.now})
                continue  # else silent: no heartbeat
            if rng.random() < p_fail:
                self.finish(t.id, TaskState.FAILED, error="agent exited with status 1")
            elif t.kind is TaskKind.PLANNING:
                self.finish(t.id, TaskState.SUCCEEDED, result={"steps": subs_wire(planner(t.generation, self))})
            elif t.kind is TaskKind.STEP:
                self.finish(t.id, TaskState.SUCCEEDED, commit="c0ffee", result={"branch": t.branch})
            else:
                self.finish(
                    t.id,
                    TaskState.SUCCEEDED,
                    result={"pull_request_url": "https://git.example/demo/pull/1", "branch": t.branch},
                )

    def step_running(self) -> int:
        return sum(1 for s in self.steps.values() if s.status.phase is StepPhase.RUNNING)

    def active_step_tasks(self) -> int:
        return sum(1 for t in self.tasks.values() if t.kind is TaskKind.STEP and t.state.active)


# ---- the ports, in memory (test doubles of control.ports) ---------------------------------------


def merge_patch(target: Any, patch: Any) -> Any:
    """JSON merge patch (RFC 7386), as the API server applies `patch_status` and `patch_directive`."""
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


class SimKube:
    """Test double of `ports.KubeGateway` over the World's Directive and steps: renders them as
    the objects the API returns, applies merge patches, counts resourceVersions. Events land in
    `World.events`; Jobs and Secrets are only recorded. `crash_on_patch` names a step whose
    status patch "kills the operator" (raises SimulatedCrash)."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.rv = 0
        self.crash_on_patch: str | None = None
        self.jobs: set[str] = set()
        self.secrets: set[str] = set()
        self.deleted = False

    def _rv(self) -> str:
        self.rv += 1
        return str(self.rv)

    def directive_object(self) -> dict[str, Any]:
        body = self.world.directive.wire()
        body["metadata"]["resourceVersion"] = self._rv()
        return body

    def step_object(self, step: StepView) -> dict[str, Any]:
        directive = self.world.directive.metadata
        return {
            "apiVersion": API_VERSION,
            "kind": "DirectiveStep",
            "metadata": {
                "name": naming.step_object_name(directive.name, step.name),
                "namespace": directive.namespace,
                "uid": step.uid,
                "labels": naming.step_labels(directive.name, step.name),
                "resourceVersion": self._rv(),
            },
            "spec": step.spec.wire(),
            "status": step.status.wire(),
        }

    def _step_named(self, object_name: str) -> StepView:
        directive = self.world.directive.metadata.name
        for step in self.world.steps.values():
            if naming.step_object_name(directive, step.name) == object_name:
                return step
        raise LookupError(f"no step object {object_name}")

    async def create_step(self, namespace: str, body: dict[str, Any]) -> dict[str, Any] | None:
        name = body["metadata"]["labels"][naming.LABEL_STEP]
        if name in self.world.steps:
            return None  # 409: it exists
        spec = DirectiveStepSpec.model_validate(body["spec"])
        self.world.steps[name] = StepView(name, f"uid-{name}", spec, DirectiveStepStatus())
        created = self.step_object(self.world.steps[name])
        del created["status"]  # status is a subresource: not written on create
        return created

    async def patch_status(self, plural: str, namespace: str, name: str, status: dict[str, Any]) -> dict[str, Any]:
        if plural == DIRECTIVES:
            current = self.world.directive
            merged = DirectiveStatus.model_validate(merge_patch(current.status.wire(), status))
            self.world.directive = current.model_copy(update={"status": merged})
            return self.directive_object()
        assert plural == STEPS, plural
        step = self._step_named(name)
        if step.name == self.crash_on_patch:
            raise SimulatedCrash(f"the operator died before marking step {step.name} Running")
        merged_step = DirectiveStepStatus.model_validate(merge_patch(step.status.wire(), status))
        self.world.steps[step.name] = replace(step, status=merged_step)
        return self.step_object(self.world.steps[step.name])

    async def patch_directive(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        self.world.directive = Directive.model_validate(merge_patch(self.world.directive.wire(), patch))
        return self.directive_object()

    async def delete_directive(self, namespace: str, name: str) -> None:
        self.deleted = True

    async def emit_event(self, obj: dict[str, Any], type_: str, reason: str, message: str) -> None:
        self.world.events.append(EmitEvent(type_, reason, message))  # type: ignore[arg-type]

    async def get_secret_data(self, namespace: str, name: str) -> dict[str, str] | None:
        return None

    async def create_secret(self, namespace: str, body: dict[str, Any]) -> None:
        self.secrets.add(body["metadata"]["name"])

    async def delete_secret(self, namespace: str, name: str) -> None:
        self.secrets.discard(name)

    async def create_job(self, namespace: str, body: dict[str, Any]) -> dict[str, Any] | None:
        name = body["metadata"]["name"]
        if name in self.jobs:
            return None
        self.jobs.add(name)
        return body

    async def delete_job(self, namespace: str, name: str) -> None:
        self.jobs.discard(name)


class SimTaskRecords:
    """Test double of `ports.TaskRecords` over `World.tasks`: insert-if-absent, compare-and-set
    on `version` along `TRANSITIONS`, the SQL store's time stamps (from the World's clock)."""

    def __init__(self, world: World) -> None:
        self.world = world

    async def create_task(self, task: Task) -> tuple[Task, bool]:
        existing = self.world.tasks.get(task.id)
        if existing is not None:
            return existing, False
        row = task.model_copy(update={"created_at": task.created_at or self.world.now})
        self.world.tasks[row.id] = row
        if row.kind is TaskKind.STEP and row.step_uid is not None:
            self.world.applied_dispatches.add((row.step_uid, row.attempt))
        return row, True

    async def get_task(self, task_id: str) -> Task | None:
        return self.world.tasks.get(task_id)

    def _current(self, task_id: str, expected_version: int, fields: Mapping[str, Any]) -> Task:
        unknown = set(fields) - UPDATABLE
        if unknown:
            raise ValueError(f"cannot set {sorted(unknown)}")
        row = self.world.tasks.get(task_id)
        if row is None:
            raise TaskNotFound(task_id)
        if row.version != expected_version:
            raise VersionConflict(task_id, expected_version, row.version)
        return row

    async def transition(
        self, task_id: str, expected_version: int, new_state: TaskState, *, now: datetime | None = None, **fields: Any
    ) -> Task:
        row = self._current(task_id, expected_version, fields)
        state = TaskState(new_state)
        if state not in TRANSITIONS[row.state]:
            raise IllegalTransition(task_id, row.state.value, state.value)
        at = now or self.world.now
        stamps: dict[str, Any] = {}
        if state is TaskState.RUNNING:
            stamps["started_at"] = row.started_at or at
        if state in (TaskState.DISPATCHED, TaskState.RUNNING):
            stamps["heartbeat_at"] = at
        if state.terminal:
            stamps["finished_at"] = row.finished_at or at
        update = {**stamps, **fields, "state": state, "version": row.version + 1}
        self.world.tasks[task_id] = row.model_copy(update=update)
        return self.world.tasks[task_id]

    async def update_fields(
        self, task_id: str, expected_version: int, *, now: datetime | None = None, **fields: Any
    ) -> Task:
        row = self._current(task_id, expected_version, fields)
        self.world.tasks[task_id] = row.model_copy(update={**fields, "version": row.version + 1})
        return self.world.tasks[task_id]

    async def tasks_for_directive(self, directive_uid: str) -> list[Task]:
        rows = [t for t in self.world.tasks.values() if t.directive_uid == directive_uid]
        return sorted(rows, key=lambda t: (t.created_at or T0, t.id))

    async def expired_tasks(self, now: datetime, heartbeat_timeout: float) -> list[Task]:
        limit = now - timedelta(seconds=heartbeat_timeout)
        return [
            t
            for t in self.world.tasks.values()
            if t.state.active
            and (
                (t.deadline_at is not None and t.deadline_at <= now)
                or (t.state is not TaskState.PENDING and (t.heartbeat_at or t.created_at or now) < limit)
            )
        ]


@dataclass(frozen=True)
class SimDaemon:
    id: str
    namespace: str
    labels: Mapping[str, str]
    capacity: int
    in_flight: Collection[str]


class SimDaemons:
    """Test double of `ports.DaemonRegistry`: the World's daemons, loaded by its active daemon
    tasks; a daemon accepts a task while it has a free slot."""

    def __init__(self, world: World) -> None:
        self.world = world

    def available(self, namespace: str) -> list[SimDaemon]:
        busy: dict[str, list[str]] = {d: [] for d, _ in self.world.daemons}
        for t in self.world.tasks.values():
            if t.state.active and t.executor == "daemon" and t.executor_ref in busy:
                busy[t.executor_ref].append(t.id)
        views = [SimDaemon(d, "team", {"pool": "a"}, cap, busy[d]) for d, cap in self.world.daemons]
        free = [v for v in views if len(v.in_flight) < v.capacity]
        return sorted(free, key=lambda v: (len(v.in_flight) / v.capacity, v.id))

    async def spawn(self, daemon_id: str, spec: TaskSpec, token: str) -> bool:
        return any(d.id == daemon_id for d in self.available("team"))

    async def cancel(self, daemon_id: str, task_id: str) -> bool:
        return any(d == daemon_id for d, _ in self.world.daemons)


_LOOP: asyncio.AbstractEventLoop | None = None


def _loop() -> asyncio.AbstractEventLoop:
    """One event loop for every World (the doubles never wait, so a run ends at once)."""
    global _LOOP
    if _LOOP is None:
        _LOOP = asyncio.new_event_loop()
        atexit.register(_LOOP.close)
    return _LOOP


__all__ = ["T0", "World", "directive", "step", "subs_wire", "task"]
