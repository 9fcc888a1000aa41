"""Stage 6: once every step of the plan in place has succeeded, a completion task merges their
branches into the directive branch and opens or updates the pull request; retried as steps are.

Only a plan that is in place completes: not while a newer generation is being planned, waits
for its retry, or failed (the steps of an older plan do not reach the new goal).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from makima.core.models import StepPhase
from makima.core.reconcile.actions import EmitEvent
from makima.core.reconcile.attempts import backoff, failure_text, iso, no_more_attempts
from makima.core.reconcile.facts import Facts, Stage
from makima.core.reconcile.planning import Planning
from makima.core.reconcile.reasons import Reason
from makima.core.reconcile.steps import Steps
from makima.core.reconcile.workspace import completion_task
from makima.core.tasks import Task, TaskState


@dataclass(frozen=True)
class Completion:
    task_id: str | None = None  # status.completionTask
    running: bool = False  # a completion task runs, or was started in this call
    done: Task | None = None  # succeeded completion of the current generation
    failed_message: str | None = None  # retries exhausted
    retry_message: str | None = None
    waiting_for_daemon: bool = False
    relevant: bool = False  # every step succeeded: completion is what happens now


def complete(facts: Facts, steps: Steps, planning: Planning) -> Stage[Completion]:
    mine = [t for t in facts.completion_tasks if t.generation == planning.generation]
    latest = mine[-1] if mine else None
    task_id = latest.id if latest is not None else facts.directive.status.completion_task
    all_done = bool(steps) and all(s.phase is StepPhase.SUCCEEDED for s in steps.values())
    if not all_done or planning.new_steps or not planning.planned or planning.active:
        return Stage(Completion(task_id, running=latest is not None and latest.state.active))
    if planning.goal_hash is not None and planning.goal_hash != facts.goal_hash:
        return Stage(Completion(task_id))  # a re-plan is due (paused, or waiting for a daemon)
    state = Completion(task_id, relevant=True)
    if latest is not None:
        settled = _settled(facts, state, latest)
        if settled is not None:
            return Stage(settled)
    if facts.paused:
        return Stage(state)
    route = facts.route()
    if route is None:
        return Stage(replace(state, waiting_for_daemon=True))
    attempt = latest.attempt + 1 if latest is not None else 1
    start = completion_task(facts, steps, planning.generation, attempt, route)
    if facts.over_budget is not None:  # held back: it would be a new task
        return Stage(replace(state, task_id=start.task_id))
    plan = start.plan
    what = "pull request" if plan.open_pull_request else "branch"
    message = f"merging {len(plan.merge)} step branches into {plan.directive_branch} for the {what} (attempt {attempt})"
    event = EmitEvent("Normal", Reason.COMPLETION_STARTED, message)
    return Stage(replace(state, task_id=start.task_id, running=True), (start,), (event,))


def _settled(facts: Facts, state: Completion, latest: Task) -> Completion | None:
    """What the latest attempt decides (running, done, failed for good, a retry not yet due),
    or None: the next attempt starts now."""
    if latest.state.active:
        return replace(state, running=True)
    if latest.state is TaskState.SUCCEEDED:
        return replace(state, done=latest)
    why = f"completion attempt {latest.attempt} failed: {failure_text(latest)}"
    if no_more_attempts(latest) or latest.attempt >= 1 + facts.spec.execution.retries:
        return replace(state, failed_message=why)
    at = (latest.finished_at or facts.now) + backoff(latest.attempt, facts.config)
    if facts.now < at:
        return replace(state, retry_message=f"{why}; retrying at {iso(at)}")
    return None


def pull_request_reason(completion_tasks: Sequence[Task], done: Task | None) -> str:
    """PullRequestUpdated when an earlier generation's completion already gave a pull request."""
    if done is not None and any(
        t.state is TaskState.SUCCEEDED and t.generation < done.generation and (t.result or {}).get("pull_request_url")
        for t in completion_tasks
    ):
        return Reason.PULL_REQUEST_UPDATED
    return Reason.PULL_REQUEST_OPENED
