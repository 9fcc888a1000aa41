"""Stages 3 and 4: each step's task outcome observed, what can never run skipped, Pending→Ready.

A step is one `StepState` record through every stage: its phase, attempts, branch and next
attempt as this decide() call has them so far, and the status patch (`mark`) it will send.
A stage returns new records; the marks are sent, in topological order, once dispatch is
decided (a dispatched step sends none: its DispatchStep says it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime

from makima.core import dag, naming, usage
from makima.core.models import StepPhase
from makima.core.reconcile.actions import EmitEvent, MarkStep
from makima.core.reconcile.attempts import backoff, failure_text, iso, no_more_attempts, task_ref
from makima.core.reconcile.facts import Facts, Stage, node
from makima.core.reconcile.inputs import StepView
from makima.core.reconcile.reasons import Reason
from makima.core.tasks import Task, TaskState


@dataclass(frozen=True)
class StepState:
    """One step as this decide() call sees it so far."""

    view: StepView
    tasks: tuple[Task, ...]  # its tasks, oldest attempt first
    phase: StepPhase
    attempts: int
    branch: str | None  # the branch its succeeded task reported
    next_attempt_at: datetime | None
    mark: MarkStep | None = None  # the status patch to send

    @property
    def name(self) -> str:
        return self.view.name

    @property
    def active(self) -> bool:
        """A task of the step runs (or waits to)."""
        return any(t.state.active for t in self.tasks)

    @property
    def git_branch(self) -> str:
        """Its branch: the one its task reported, else the one it is given."""
        return self.branch or naming.step_branch(self.view.name, self.view.uid)

    def node(self) -> dag.Node:
        return node(self.view, self.phase)


Steps = Mapping[str, StepState]  # by name, in topological order


def initial(facts: Facts) -> dict[str, StepState]:
    """Every step as its status says, in topological order."""
    out: dict[str, StepState] = {}
    for name in facts.order:
        view = facts.by_name[name]
        status = view.status
        tasks = facts.step_tasks.get(view.uid, ())
        out[name] = StepState(view, tasks, status.phase, status.attempts, status.branch, status.next_attempt_at)
    return out


def marks(steps: Steps) -> list[MarkStep]:
    return [s.mark for s in steps.values() if s.mark is not None]


# ---- stage 3: observe -------------------------------------------------------------------------------


def observe(facts: Facts, steps: Steps) -> Stage[Steps]:
    """The outcome of each running step's current attempt: Succeeded, a retry, or Failed. A task
    newer than the step's status.attempts (the shell died before marking it) is adopted."""
    out: dict[str, StepState] = {}
    events: list[EmitEvent] = []
    for name, step in steps.items():
        out[name], said = _observe(facts, step)
        events.extend(said)
    return Stage(out, events=tuple(events))


def _observe(facts: Facts, step: StepState) -> tuple[StepState, tuple[EmitEvent, ...]]:
    if step.phase.terminal:
        return step, ()
    latest = step.tasks[-1] if step.tasks else None
    adopted = latest is not None and latest.attempt > step.attempts
    if latest is not None and adopted:
        step = replace(step, phase=StepPhase.RUNNING, attempts=latest.attempt)
    if step.phase is not StepPhase.RUNNING:
        return step, ()
    task = next((t for t in step.tasks if t.attempt == step.attempts), None)
    if task is not None and task.state.active:
        return (_adopt(step, task, facts.now) if adopted else step), ()
    if task is not None and task.state is TaskState.SUCCEEDED:
        return _succeeded(step, task, facts.now)
    return _failed(facts, step, task)


def _adopt(step: StepState, task: Task, now: datetime) -> StepState:
    attempt = step.attempts
    mark = MarkStep(
        step.name,
        StepPhase.RUNNING,
        message=f"attempt {attempt} running",
        attempts=attempt,
        task=task_ref(task),
        started_at=task.started_at or task.created_at or now,
        clear=("next_attempt_at", "finished_at"),
    )
    return replace(step, mark=mark)


def _succeeded(step: StepState, task: Task, now: datetime) -> tuple[StepState, tuple[EmitEvent, ...]]:
    attempt = step.attempts
    result = task.result or {}
    branch = str(task.branch or result.get("branch") or naming.step_branch(step.name, step.view.uid))
    commit = task.commit or result.get("commit")
    mark = MarkStep(
        step.name,
        StepPhase.SUCCEEDED,
        message=f"succeeded on attempt {attempt}",
        attempts=attempt,
        task=task_ref(task),
        branch=branch,
        commit=str(commit) if commit else None,
        finished_at=task.finished_at or now,
        clear=("next_attempt_at",),
        usage=usage.summarize(step.tasks),
    )
    event = EmitEvent("Normal", Reason.STEP_SUCCEEDED, f"step {step.name!r} succeeded (attempt {attempt})")
    return replace(step, phase=StepPhase.SUCCEEDED, branch=branch, mark=mark), (event,)


def _failed(facts: Facts, step: StepState, task: Task | None) -> tuple[StepState, tuple[EmitEvent, ...]]:
    """The attempt failed, was lost or cancelled (or its row is missing): retry after backoff
    while attempts remain and no person cancelled it, else the step fails."""
    attempt, name = step.attempts, step.name
    retries = facts.spec.execution.retries
    why = failure_text(task) if task is not None else "its task record is missing"
    finished = (task.finished_at if task is not None else None) or facts.now
    ref = task_ref(task) if task is not None else None
    spent = usage.summarize(step.tasks)
    if (task is None or not no_more_attempts(task)) and attempt < 1 + retries:
        at = finished + backoff(max(attempt, 1), facts.config)
        message = f"attempt {attempt} failed: {why}; retry {attempt} of {retries} at {iso(at)}"
        mark = MarkStep(
            name,
            StepPhase.READY,
            message=message,
            attempts=attempt,
            task=ref,
            next_attempt_at=at,
            finished_at=finished,
            usage=spent,
        )
        event = EmitEvent("Warning", Reason.RETRYING, f"step {name!r} attempt {attempt} failed: {why}; retrying")
        return replace(step, phase=StepPhase.READY, next_attempt_at=at, mark=mark), (event,)
    message = f"failed after {attempt} attempt{'s' if attempt != 1 else ''}: {why}"
    mark = MarkStep(
        name,
        StepPhase.FAILED,
        message=message,
        attempts=attempt,
        task=ref,
        finished_at=finished,
        clear=("next_attempt_at",),
        usage=spent,
    )
    event = EmitEvent("Warning", Reason.STEP_FAILED, f"step {name!r} failed: {why}")
    return replace(step, phase=StepPhase.FAILED, mark=mark), (event,)


# ---- stage 4: skip, then Pending -> Ready ---------------------------------------------------------------


def skip(facts: Facts, steps: Steps) -> Stage[Steps]:
    """Skipped, with the reason, every step a failed or skipped step keeps from ever running."""
    reasons = dag.skip_propagation(s.node() for s in steps.values())
    out = dict(steps)
    events: list[EmitEvent] = []
    for name, step in steps.items():
        reason = reasons.get(name)
        if reason is not None:
            mark = MarkStep(name, StepPhase.SKIPPED, message=f"skipped: {reason}", finished_at=facts.now)
            out[name] = replace(step, phase=StepPhase.SKIPPED, mark=mark)
            events.append(EmitEvent("Warning", Reason.STEP_SKIPPED, f"step {name!r} skipped: {reason}"))
    return Stage(out, events=tuple(events))


def ready(steps: Steps) -> dict[str, StepState]:
    """Pending→Ready when every precondition holds; Ready→Pending when one no longer does (a
    dependency being retried)."""
    free = set(dag.ready_steps(s.node() for s in steps.values()))
    out = dict(steps)
    for name, step in steps.items():
        if step.phase is StepPhase.PENDING and name in free:
            clear = step.mark.clear if step.mark is not None else ()  # e.g. a retried step's old finish time
            mark = MarkStep(name, StepPhase.READY, message="ready", clear=clear)
            out[name] = replace(step, phase=StepPhase.READY, mark=mark)
        elif step.phase is StepPhase.READY and name not in free:
            mark = MarkStep(name, StepPhase.PENDING, message="waiting for its dependencies")
            out[name] = replace(step, phase=StepPhase.PENDING, mark=mark)
    return out
