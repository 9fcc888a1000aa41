"""What decide() asks the shell to do: the actions, each idempotent when applied again."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from makima.core.models import DirectiveStatus, DirectiveStepStatus, StepPhase, TaskRef, UsageSummary
from makima.core.protocol import CompletionPlan, StepSubmission, WorkspacePlan


@dataclass(frozen=True)
class Route:
    """Where a task runs: a Job, or the daemon `daemon_id`."""

    kind: Literal["job", "daemon"]
    daemon_id: str | None = None


@dataclass(frozen=True)
class CreatePlanningTask:
    """Insert the planning task row (ON CONFLICT DO NOTHING) and dispatch it on `route`.

    The directive status fields planningTask/planGeneration/plannedGoalHash are NOT the
    shell's business: the SetDirectiveStatus placed just before this action carries them.
    """

    task_id: str
    generation: int
    attempt: int
    goal_hash: str
    prompt: str
    title: str
    workspace: WorkspacePlan  # read-only (branch None); starts from the PR branch if any
    route: Route
    deadline_at: datetime


@dataclass(frozen=True)
class CreateSteps:
    """Create these DirectiveSteps (spec.generation = generation), named
    naming.step_object_name(directive, step.name), labelled naming.step_labels(...), owned
    by the Directive. Only steps that do not exist yet are listed; creating one that
    exists already (409) is fine."""

    generation: int
    steps: list[StepSubmission]


@dataclass(frozen=True)
class PauseDirective:
    """Set spec.paused=true. The matching condition and message come with the
    SetDirectiveStatus of the same decide() call."""

    reason: str
    message: str


@dataclass(frozen=True)
class MarkStep:
    """Merge-patch the status of step `name`: only the given fields, plus `clear`ed ones
    (snake_case field names set to null). `status_patch()` gives the camelCase body."""

    name: str
    phase: StepPhase
    message: str | None = None
    attempts: int | None = None
    task: TaskRef | None = None
    branch: str | None = None
    commit: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    next_attempt_at: datetime | None = None
    clear: tuple[str, ...] = ()
    usage: UsageSummary | None = None  # of every attempt so far, when a task finished

    def status_patch(self) -> dict[str, Any]:
        fields: dict[str, Any] = {"phase": self.phase}
        for key in ("message", "attempts", "task", "branch", "commit", "started_at", "finished_at", "usage"):
            value = getattr(self, key)
            if value is not None:
                fields[key] = value
        if self.next_attempt_at is not None:
            fields["next_attempt_at"] = self.next_attempt_at
        body = DirectiveStepStatus.model_validate(fields).model_dump(mode="json", by_alias=True, include=set(fields))
        aliases = DirectiveStepStatus.model_fields
        for key in self.clear:
            alias = aliases[key].alias or key
            body[alias] = None
        return body


@dataclass(frozen=True)
class DispatchStep:
    """Insert the step task row (id task_id; ON CONFLICT DO NOTHING), start it on `route`
    (a refusing daemon may fall back to a Job), then patch the step's status from the task
    actually launched: phase Running, attempts=attempt, task {id, executor, name},
    branch=workspace.branch, startedAt=now, nextAttemptAt=null, finishedAt=null, message.
    decide() emits no separate MarkStep for this: only the shell knows where the task went.
    Should the shell die before that patch, the next decide() adopts the task."""

    name: str
    uid: str
    attempt: int
    task_id: str
    route: Route
    workspace: WorkspacePlan
    prompt: str
    deadline_at: datetime
    title: str = ""


@dataclass(frozen=True)
class ExpireTask:
    """Mark an active task lost (compare-and-set) and delete its Job / cancel it on its daemon."""

    task_id: str
    reason: str


@dataclass(frozen=True)
class StartCompletion:
    """Insert the completion task row (ON CONFLICT DO NOTHING) and start it on `route`."""

    task_id: str
    generation: int
    attempt: int
    plan: CompletionPlan
    workspace: WorkspacePlan
    route: Route
    deadline_at: datetime


@dataclass(frozen=True)
class SetDirectiveStatus:
    """Replace the directive's status with this one (the shell may send only the diff)."""

    status: DirectiveStatus


@dataclass(frozen=True)
class EmitEvent:
    type: Literal["Normal", "Warning"]
    reason: str
    message: str


Action = (
    CreatePlanningTask
    | CreateSteps
    | PauseDirective
    | MarkStep
    | DispatchStep
    | ExpireTask
    | StartCompletion
    | SetDirectiveStatus
    | EmitEvent
)
