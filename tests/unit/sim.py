"""A small, pure world for driving decide(): it applies actions the way the shell does and
lets tasks finish. Used by the reconcile table tests and the property tests."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from makima.core import naming
from makima.core.models import Directive, DirectiveStepSpec, DirectiveStepStatus, StepPhase
from makima.core.protocol import StepSubmission
from makima.core.reconcile import (
    Action,
    CreatePlanningTask,
    CreateSteps,
    DaemonView,
    DispatchStep,
    EmitEvent,
    ExpireTask,
    MarkStep,
    PauseDirective,
    SetDirectiveStatus,
    Snapshot,
    StartCompletion,
    StepView,
)
from makima.core.tasks import Task, TaskKind, TaskState

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


@dataclass
class World:
    """Directive + steps + tasks + daemons, mutated only by `apply` and `progress`."""

    directive: Directive
    now: datetime = T0
    steps: dict[str, StepView] = field(default_factory=dict)
    tasks: dict[str, Task] = field(default_factory=dict)
    daemons: list[tuple[str, int]] = field(default_factory=list)  # (id, capacity)
    events: list[EmitEvent] = field(default_factory=list)
    applied_dispatches: set[tuple[str, int]] = field(default_factory=set)
    notes: dict[str, Any] = field(default_factory=dict)

    def snapshot(self) -> Snapshot:
        load = {d: 0 for d, _ in self.daemons}
        for t in self.tasks.values():
            if t.state.active and t.executor == "daemon" and t.executor_ref in load:
                load[t.executor_ref] += 1
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

    # ---- the shell, in miniature -------------------------------------------------------------

    def _new_task(self, tid: str, kind: TaskKind, attempt: int, generation: int, route: Any, **extra: Any) -> None:
        if tid in self.tasks:
            return  # ON CONFLICT DO NOTHING
        executor = route.kind
        ref = route.daemon_id if route.kind == "daemon" else naming.job_name(tid)
        self.tasks[tid] = Task(
            id=tid,
            kind=kind,
            namespace="team",
            directive_uid=DIRECTIVE_UID,
            directive_name=self.directive.metadata.name,
            attempt=attempt,
            generation=generation,
            state=TaskState.DISPATCHED,
            executor=executor,
            executor_ref=ref,
            created_at=self.now,
            heartbeat_at=self.now,
            **extra,
        )

    def apply(
        self, actions: Sequence[Action], crash_after: int | None = None, rng: random.Random | None = None
    ) -> None:
        for i, action in enumerate(actions):
            if crash_after is not None and i >= crash_after:
                return
            if isinstance(action, CreatePlanningTask):
                self._new_task(
                    action.task_id,
                    TaskKind.PLANNING,
                    action.attempt,
                    action.generation,
                    action.route,
                    deadline_at=action.deadline_at,
                    spec={"goal_hash": action.goal_hash},  # what the shell stores (TaskSpec.goal_hash)
                )
            elif isinstance(action, CreateSteps):
                for sub in action.steps:
                    if sub.name not in self.steps:
                        self.steps[sub.name] = StepView(
                            name=sub.name,
                            uid=f"uid-{sub.name}",
                            spec=DirectiveStepSpec(
                                directive=self.directive.metadata.name,
                                title=sub.title,
                                description=sub.description,
                                task_plan=sub.task_plan,
                                depends_on=list(sub.depends_on),
                                order_index=sub.order_index,
                                generation=action.generation,
                            ),
                            status=DirectiveStepStatus(),
                        )
            elif isinstance(action, PauseDirective):
                self.set_paused(True)
            elif isinstance(action, MarkStep):
                self.patch_step(action.name, action.status_patch())
            elif isinstance(action, DispatchStep):
                self._new_task(
                    action.task_id,
                    TaskKind.STEP,
                    action.attempt,
                    self.steps[action.name].spec.generation,
                    action.route,
                    step_uid=action.uid,
                    step_name=action.name,
                    branch=action.workspace.branch,
                    deadline_at=action.deadline_at,
                )
                self.applied_dispatches.add((action.uid, action.attempt))
                last = crash_after is not None and i == crash_after - 1
                if last and rng is not None and rng.random() < 0.5:
                    return  # died between launching the task and marking the step Running
                t = self.tasks[action.task_id]
                self.patch_step(
                    action.name,
                    {
                        "phase": "Running",
                        "attempts": action.attempt,
                        "task": {"id": t.id, "executor": t.executor, "name": t.executor_ref},
                        "branch": action.workspace.branch,
                        "startedAt": self.now.isoformat(),
                        "nextAttemptAt": None,
                        "finishedAt": None,
                        "message": f"attempt {action.attempt} running",
                    },
                )
            elif isinstance(action, ExpireTask):
                t = self.tasks[action.task_id]
                if t.state.active:
                    self.finish(t.id, TaskState.LOST, error=action.reason)
            elif isinstance(action, StartCompletion):
                self._new_task(
                    action.task_id,
                    TaskKind.COMPLETION,
                    action.attempt,
                    action.generation,
                    action.route,
                    branch=action.plan.directive_branch,
                    merge_branches=list(action.plan.merge),
                    deadline_at=action.deadline_at,
                )
            elif isinstance(action, SetDirectiveStatus):
                self.directive = self.directive.model_copy(update={"status": action.status})
            elif isinstance(action, EmitEvent):
                self.events.append(action)

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


__all__ = ["T0", "World", "directive", "step", "subs_wire", "task"]
