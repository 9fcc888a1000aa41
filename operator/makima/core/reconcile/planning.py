"""Stage 2: planning. The first plan, a re-plan when the goal changed, the steps a plan submitted,
and a failed planning attempt retried once after backoff, then paused.

The effective plan generation is the higher of the status's and the planning tasks'; a
planning task the status never heard of (the shell died before writing it) is adopted, and a
status naming a planning task whose row is missing makes this stage create that row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from makima.core import validation
from makima.core.protocol import StepSubmission
from makima.core.reconcile.actions import CreatePlanningTask, CreateSteps, EmitEvent, PauseDirective
from makima.core.reconcile.attempts import backoff, failure_text, iso, no_more_attempts
from makima.core.reconcile.facts import Facts, Stage, node
from makima.core.reconcile.reasons import Reason
from makima.core.reconcile.workspace import planning_task
from makima.core.tasks import Task, TaskState


@dataclass(frozen=True)
class Planning:
    """Where planning stands after this stage; the directive status carries it."""

    generation: int = 0  # effective plan generation
    goal_hash: str | None = None  # the goal hash that generation's plan is (being) made for
    task_id: str | None = None  # status.planningTask
    active: bool = False  # a planning task is running or was created in this call
    created: CreatePlanningTask | None = None
    planned: bool = False  # this generation's plan is in (all its steps exist)
    failed_message: str | None = None  # planning failed and the directive is (being) paused
    retry_at: datetime | None = None  # automatic retry scheduled
    retry_message: str | None = None
    waiting_for_daemon: bool = False
    new_steps: tuple[StepSubmission, ...] = ()  # submitted steps being created in this call
    held_by_budget: bool = False  # a planning task is due but the budget is reached

    @property
    def underway(self) -> bool:
        """The directive is planning: a task runs, a retry is due, or one waits for a daemon."""
        return self.active or self.retry_at is not None or (self.waiting_for_daemon and not self.planned)


def plan(facts: Facts) -> Stage[Planning]:
    state, latest = _current(facts)
    generation = state.generation
    if generation == 0:
        if not facts.steps and not facts.paused:
            return _create(facts, state, 1, 1)
        return Stage(replace(state, planned=bool(facts.steps)))
    if _row_missing(facts, state):
        # the shell died between writing the status and inserting the task: create it now
        attempt = latest.attempt + 1 if latest is not None else 1
        return Stage(state) if facts.paused else _create(facts, state, generation, attempt)
    if latest is None:
        if any(s.spec.generation == generation for s in facts.steps):
            return Stage(replace(state, planned=True))
        return Stage(state) if facts.paused else _create(facts, state, generation, 1)
    if latest.state.active:
        return Stage(replace(state, active=True, task_id=latest.id))
    submitted, problem = _outcome(facts, latest)
    earlier = _earlier_goal_hash(facts.planning_tasks, generation)
    if earlier is not None and earlier in (facts.goal_hash, state.goal_hash) and problem is not None:
        return _goal_reverted(facts, state, earlier)
    if problem is None:
        return _accept(facts, replace(state, task_id=latest.id), submitted)
    return _failed(facts, state, latest, problem)


def _current(facts: Facts) -> tuple[Planning, Task | None]:
    """Planning as the status has it, with a newer planning task adopted; and the latest
    attempt of the effective generation."""
    status = facts.directive.status
    tasks = facts.planning_tasks
    generation = max(status.plan_generation, max((t.generation for t in tasks), default=0))
    latest = max((t for t in tasks if t.generation == generation), key=lambda t: t.attempt, default=None)
    if generation != status.plan_generation:  # a planning task the status never mentioned
        return Planning(generation, facts.goal_hash, latest.id if latest is not None else None), latest
    task_id = status.planning_task
    if latest is not None and task_id is not None and task_id != latest.id:
        task_id = latest.id  # a newer attempt exists than the status says
    return Planning(generation, status.planned_goal_hash, task_id), latest


def _row_missing(facts: Facts, state: Planning) -> bool:
    """The status names a planning task of this generation that has no row."""
    status = facts.directive.status
    promised = status.planning_task
    if state.generation != status.plan_generation or promised is None:
        return False
    return all(t.id != promised for t in facts.planning_tasks)


def _outcome(facts: Facts, task: Task) -> tuple[list[StepSubmission], str | None]:
    """The steps a finished planning attempt submitted, or why they cannot be used."""
    if task.state is not TaskState.SUCCEEDED:
        return [], failure_text(task)
    submitted, problem = _submission(task)
    if problem is not None or not submitted:
        return submitted, problem
    others = [node(s, s.status.phase) for s in facts.steps if s.spec.generation != task.generation]
    problems = validation.validate_submission(others, submitted, generation=task.generation)
    if problems:
        return [], "the submission conflicts with the existing steps: " + "; ".join(p.message for p in problems)
    return submitted, None


def _submission(task: Task) -> tuple[list[StepSubmission], str | None]:
    """The steps a succeeded planning task submitted, or why they are unusable."""
    result = task.result or {}
    raw = result.get("steps")
    if not raw:
        if result.get("final") and task.generation >= 2:
            return [], None  # a re-plan that says, explicitly, there is nothing new to do
        return [], "the planner finished without submitting any steps"
    submitted, problems = validation.parse_submission(raw)
    if problems:
        return [], "the stored submission is invalid: " + "; ".join(p.message for p in problems)
    return submitted, None


def _earlier_goal_hash(planning_tasks: Sequence[Task], generation: int) -> str | None:
    """The goal hash the latest succeeded planning before `generation` was made for."""
    done = [t for t in planning_tasks if t.generation < generation and t.state is TaskState.SUCCEEDED]
    if not done:
        return None
    last = max(done, key=lambda t: (t.generation, t.attempt))
    value = (last.spec or {}).get("goal_hash")
    return value if isinstance(value, str) else None


def _goal_reverted(facts: Facts, state: Planning, earlier: str) -> Stage[Planning]:
    """The goal is back to the one the previous generation planned (or was, and changed again):
    this generation's failed or pending re-plan is moot; its plan is the old one."""
    state = replace(state, planned=True, goal_hash=earlier, task_id=None)
    if facts.goal_hash == earlier or facts.paused:
        return Stage(state)
    return _create(facts, state, state.generation + 1, 1)


def _accept(facts: Facts, state: Planning, submitted: list[StepSubmission]) -> Stage[Planning]:
    """Create the submitted steps that do not exist yet; once all do, the plan is in place,
    and a goal changed since asks for the next generation."""
    generation = state.generation
    missing = tuple(s for s in submitted if s.name not in facts.by_name)
    if missing:
        verb = "Planned" if len(missing) == len(submitted) else "Creating the remaining"
        event = EmitEvent("Normal", Reason.PLANNED, f"{verb} {len(missing)} steps (generation {generation})")
        return Stage(replace(state, new_steps=missing), (CreateSteps(generation, list(missing)),), (event,))
    state = replace(state, planned=True)
    if state.goal_hash == facts.goal_hash or facts.paused:
        return Stage(state)
    message = f"the goal changed: planning generation {generation + 1} on top of {len(facts.steps)} steps"
    return _create(facts, state, generation + 1, 1, EmitEvent("Normal", Reason.REPLANNING, message))


def _failed(facts: Facts, state: Planning, latest: Task, problem: str) -> Stage[Planning]:
    """The latest planning attempt failed or gave an unusable plan: retry after backoff while
    automatic attempts remain, else pause; resuming a paused directive tries again."""
    why = f"planning attempt {latest.attempt} (generation {state.generation}) failed: {problem}"
    status = facts.directive.status
    if state.generation == status.plan_generation and status.planning_task is None:  # handled: paused
        if facts.paused:
            return Stage(replace(state, failed_message=why))
        return _create(facts, state, state.generation, latest.attempt + 1)  # the person resumed
    if latest.attempt < facts.config.max_planning_attempts and not no_more_attempts(latest):
        return _retry(facts, state, latest, why)
    # task_id None marks the failure as handled: resuming starts the next attempt
    state = replace(state, failed_message=why, task_id=None)
    if facts.paused:
        return Stage(state)
    event = EmitEvent("Warning", Reason.PAUSED, f"paused: {why}; set spec.paused=false to retry")
    return Stage(state, (PauseDirective(Reason.PLANNING_FAILED, why),), (event,))


def _retry(facts: Facts, state: Planning, latest: Task, why: str) -> Stage[Planning]:
    at = (latest.finished_at or facts.now) + backoff(latest.attempt, facts.config)
    if facts.now >= at and not facts.paused:
        event = EmitEvent("Warning", Reason.RETRYING, f"{why}; retrying")
        return _create(facts, state, state.generation, latest.attempt + 1, event)
    return Stage(replace(state, retry_at=at, retry_message=f"{why}; retrying at {iso(at)}"))


def _create(
    facts: Facts, state: Planning, generation: int, attempt: int, announce: EmitEvent | None = None
) -> Stage[Planning]:
    """A planning task of `generation` (and the `announce` event), or waiting for a daemon, or
    held at the budget (a planner spends tokens too; raising spec.budget releases it)."""
    if facts.over_budget is not None:
        return Stage(replace(state, held_by_budget=True))
    route = facts.route()
    if route is None:
        return Stage(replace(state, waiting_for_daemon=True))
    task = planning_task(facts, generation, attempt, route)
    created = replace(
        state,
        generation=generation,
        goal_hash=facts.goal_hash,
        task_id=task.task_id,
        active=True,
        created=task,
        failed_message=None,
        retry_at=None,
        retry_message=None,
    )
    return Stage(created, (task,), (announce,) if announce is not None else ())
