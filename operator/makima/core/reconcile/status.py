"""Stage 7: the directive status, recomputed from what the stages before found.

Phase and message come from the first of: planning (paused, planning, planning failed), no
plan yet, completion (completed, failed, completing), the steps (failed, executing). The
conditions Ready/Planning/Progressing/Completed/Failed follow from them, BudgetExceeded from
the budget. Nothing time-relative goes in, so a steady state gives an equal status and no action.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from makima.core import agent_ref, naming, usage
from makima.core.models import (
    Condition,
    ConditionStatus,
    DirectivePhase,
    DirectiveStatus,
    PullRequestStatus,
    StepCounts,
    StepPhase,
)
from makima.core.reconcile.actions import EmitEvent, SetDirectiveStatus
from makima.core.reconcile.completion import Completion, pull_request_reason
from makima.core.reconcile.conditions import condition
from makima.core.reconcile.events import outcome_events
from makima.core.reconcile.facts import Facts, Stage
from makima.core.reconcile.planning import Planning
from makima.core.reconcile.reasons import CondType, Reason
from makima.core.reconcile.steps import Steps, StepState

Verdict = tuple[str, bool, str, str]  # a condition's type, whether it holds, reason, message


@dataclass(frozen=True)
class Headline:
    """The directive's phase and message, and the reason when it failed."""

    phase: DirectivePhase
    message: str
    failure_reason: str | None = None


def directive_status(
    facts: Facts, steps: Steps, planning: Planning, completion: Completion, waiting_for: str | None
) -> Stage[DirectiveStatus]:
    """The new status (SetDirectiveStatus only when it differs), the BudgetExceeded event when
    the budget is newly reached, and one event when the directive completes or fails."""
    current = facts.directive.status
    counts = step_counts([s.phase for s in steps.values()] + [StepPhase.PENDING] * len(planning.new_steps))
    note = f"; waiting for {waiting_for}" if waiting_for else ""
    head = (
        _planning_headline(facts.paused, planning, facts.waiting_for)
        or _no_plan_headline(counts, note)
        or _completion_headline(completion, facts.pull_request, counts, note)
        or _steps_headline(steps, counts, note)
    )
    pr_reason = pull_request_reason(facts.completion_tasks, completion.done)
    status = DirectiveStatus(
        phase=head.phase,
        conditions=_conditions(facts, head, planning, counts, pr_reason),
        observed_generation=facts.directive.metadata.generation,
        plan_generation=planning.generation,
        planned_goal_hash=planning.goal_hash,
        planning_task=planning.task_id,
        completion_task=completion.task_id,
        steps=counts,
        progress=progress_text(counts),
        pull_request=facts.pull_request,
        started_at=_started_at(facts, planning),
        completed_at=_completed_at(current, head.phase, facts.now),
        message=head.message[:4096],
        retry_handled=facts.directive.metadata.annotations.get(naming.RETRY_ANNOTATION) or current.retry_handled,
    )
    status = _with_budget(facts, status, completion.running)
    generation = facts.directive.metadata.generation
    status, agent_said = agent_ref.with_condition(status, current, facts.agent, generation, facts.now)
    agent_events = tuple(EmitEvent(*said) for said in agent_said)
    events = (*_budget_events(facts), *agent_events, *outcome_events(current, status, pr_reason))
    return Stage(status, (SetDirectiveStatus(status),) if status != current else (), events)


def step_counts(phases: Iterable[StepPhase]) -> StepCounts:
    counts = dict.fromkeys(StepPhase, 0)
    for phase in phases:
        counts[phase] += 1
    return StepCounts(
        total=sum(counts.values()),
        pending=counts[StepPhase.PENDING],
        ready=counts[StepPhase.READY],
        running=counts[StepPhase.RUNNING],
        succeeded=counts[StepPhase.SUCCEEDED],
        failed=counts[StepPhase.FAILED],
        skipped=counts[StepPhase.SKIPPED],
    )


def progress_text(counts: StepCounts) -> str:
    """ "succeeded/total", e.g. "3/7"."""
    return f"{counts.succeeded}/{counts.total}"


# ---- phase and message ----------------------------------------------------------------------------


def _planning_headline(paused: bool, planning: Planning, waiting_for: str) -> Headline | None:
    failed = planning.failed_message
    if paused:
        return Headline(DirectivePhase.PAUSED, "paused" + (f": {failed}" if failed else ""))
    if planning.underway:
        if planning.retry_message:
            message = planning.retry_message
        elif planning.waiting_for_daemon and not planning.active:
            message = f"waiting for {waiting_for} to run the planning task (generation {planning.generation or 1})"
        else:
            message = f"planning generation {planning.generation}"
        return Headline(DirectivePhase.PLANNING, message)
    if failed:  # the pause is being set in this very call
        return Headline(DirectivePhase.PAUSED, f"paused: {failed}")
    return None


def _no_plan_headline(counts: StepCounts, note: str) -> Headline | None:
    return Headline(DirectivePhase.PENDING, "waiting for a plan" + note) if counts.total == 0 else None


def _completion_headline(
    completion: Completion, pr: PullRequestStatus | None, counts: StepCounts, note: str
) -> Headline | None:
    if not completion.relevant:
        return None
    if completion.done is not None:
        if pr and pr.url:
            return Headline(DirectivePhase.COMPLETED, f"pull request {pr.url}")
        return Headline(DirectivePhase.COMPLETED, f"all steps merged into {pr.branch if pr else '?'}")
    if completion.failed_message:
        return Headline(DirectivePhase.FAILED, completion.failed_message, Reason.COMPLETION_FAILED)
    return Headline(
        DirectivePhase.COMPLETING, completion.retry_message or f"merging {counts.total} step branches" + note
    )


def _steps_headline(steps: Steps, counts: StepCounts, note: str) -> Headline:
    unfinished = any(not s.phase.terminal for s in steps.values())
    bad = [s for s in steps.values() if s.phase in (StepPhase.FAILED, StepPhase.SKIPPED)]
    if bad and not unfinished:
        message = f"step {bad[0].name!r} {_step_message(bad[0])}"
        if len(bad) > 1:
            message += f" (+{len(bad) - 1} more failed or skipped)"
        return Headline(DirectivePhase.FAILED, message, Reason.STEPS_FAILED)
    message = f"{progress_text(counts)} steps succeeded, {counts.running} running" + note
    if bad:
        message += f"; {len(bad)} failed or skipped"
    return Headline(DirectivePhase.EXECUTING, message)


def _step_message(step: StepState) -> str:
    said = step.mark.message if step.mark is not None else None
    return said or step.view.status.message or step.phase.value.lower()


# ---- conditions, times, budget -----------------------------------------------------------------------


def _conditions(
    facts: Facts, head: Headline, planning: Planning, counts: StepCounts, pr_reason: str
) -> list[Condition]:
    """Ours (Ready, Planning, Progressing, Completed, Failed), then any others already there."""
    completed = head.phase is DirectivePhase.COMPLETED
    failed = head.phase is DirectivePhase.FAILED or planning.failed_message is not None
    progressing = head.phase in (DirectivePhase.PLANNING, DirectivePhase.EXECUTING, DirectivePhase.COMPLETING)
    pr = facts.pull_request
    if completed:
        ready_reason = pr_reason if pr and pr.url else Reason.BRANCH_READY
    else:
        ready_reason = head.failure_reason or head.phase.value
    ours: list[Verdict] = [
        (CondType.READY, completed, ready_reason, head.message),
        _planning_verdict(planning, head.message),
        (CondType.PROGRESSING, progressing, head.failure_reason or head.phase.value, head.message),
        (
            CondType.COMPLETED,
            completed,
            Reason.COMPLETED if completed else Reason.IN_PROGRESS,
            head.message if completed else f"{progress_text(counts)} steps succeeded",
        ),
        (
            CondType.FAILED,
            failed,
            head.failure_reason or (Reason.PLANNING_FAILED if failed else Reason.NO_FAILURE),
            head.message if failed else "",
        ),
    ]
    current = facts.directive.status.conditions
    generation = facts.directive.metadata.generation
    managed = {verdict[0] for verdict in ours}
    return [
        *(condition(current, *verdict, generation, facts.now) for verdict in ours),
        *(c for c in current if c.type not in managed),
    ]


def _planning_verdict(planning: Planning, message: str) -> Verdict:
    if planning.underway:
        if planning.retry_at is not None:
            reason = Reason.PLANNING_RETRY
        else:
            reason = Reason.REPLANNING if planning.generation > 1 else Reason.PLANNING
        return (CondType.PLANNING, True, reason, message)
    if planning.failed_message:
        return (CondType.PLANNING, False, Reason.PLANNING_FAILED, planning.failed_message)
    if planning.planned or planning.new_steps:
        return (CondType.PLANNING, False, Reason.PLANNED, f"plan generation {planning.generation} in place")
    return (CondType.PLANNING, False, Reason.NOT_PLANNED, "no plan yet")


def _started_at(facts: Facts, planning: Planning) -> datetime | None:
    started = facts.directive.status.started_at
    if started is None and (planning.active or planning.generation > 0 or facts.steps):
        return facts.now
    return started


def _completed_at(current: DirectiveStatus, phase: DirectivePhase, now: datetime) -> datetime | None:
    if phase is DirectivePhase.COMPLETED:
        return current.completed_at if current.phase is DirectivePhase.COMPLETED and current.completed_at else now
    if phase is DirectivePhase.PAUSED:
        return current.completed_at
    return None


def _with_budget(facts: Facts, status: DirectiveStatus, completion_running: bool) -> DirectiveStatus:
    """status.usage, and the budget's say: Paused with BudgetExceeded=True while the usage has
    reached it (a completion already running goes on), BudgetExceeded=False once it is raised."""
    over, budget = facts.over_budget, facts.spec.budget
    current = facts.directive.status.conditions
    update: dict[str, Any] = {"usage": facts.spent}
    if budget is not None or any(c.type == CondType.BUDGET_EXCEEDED for c in current):
        text = over or (f"within budget: {usage.describe(facts.spent)}" if budget else "no budget")
        reason = Reason.BUDGET_EXCEEDED if over else Reason.WITHIN_BUDGET
        generation = facts.directive.metadata.generation
        verdict = condition(current, CondType.BUDGET_EXCEEDED, bool(over), reason, text, generation, facts.now)
        update["conditions"] = [*(c for c in status.conditions if c.type != CondType.BUDGET_EXCEEDED), verdict]
    settled = (DirectivePhase.COMPLETED, DirectivePhase.FAILED, DirectivePhase.PAUSED)
    finishing = status.phase is DirectivePhase.COMPLETING and completion_running
    if over and status.phase not in settled and not finishing:
        update["phase"] = DirectivePhase.PAUSED
        update["message"] = f"paused: {over}; raise spec.budget to resume"[:4096]
    return status.model_copy(update=update)


def _budget_events(facts: Facts) -> list[EmitEvent]:
    """BudgetExceeded once, when the usage reaches the budget."""
    over = facts.over_budget
    was_over = any(
        c.type == CondType.BUDGET_EXCEEDED and c.status is ConditionStatus.TRUE
        for c in facts.directive.status.conditions
    )
    if over is None or was_over:
        return []
    return [EmitEvent("Warning", Reason.BUDGET_EXCEEDED, f"paused: {over}; running tasks finish")]
