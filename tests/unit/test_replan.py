"""A re-plan seen from the reconciler: the completion gate, an explicit "nothing new" plan,
restoring the goal, and what the updated pull request says (issue 17, items 1, 2, 11)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from makima.core import naming
from makima.core.models import DirectivePhase, StepPhase
from makima.core.protocol import StepSubmission
from makima.core.reconcile import (
    CreatePlanningTask,
    EmitEvent,
    PauseDirective,
    ReconcileConfig,
    StartCompletion,
    decide,
)
from makima.core.tasks import TaskKind, TaskState
from tests.unit.sim import World, directive, subs_wire

CFG = ReconcileConfig()
GOAL = "Greet by name."
NEW_GOAL = "Greet by name, and greet loudly too."
PR = "https://git.example/demo/pull/1"


def _of(actions: list[Any], kind: type) -> list[Any]:
    return [a for a in actions if isinstance(a, kind)]


def _run(world: World, seconds: float = 1) -> list[Any]:
    """One reconcile at now+seconds, applied."""
    world.now = world.now + timedelta(seconds=seconds)
    actions = decide(world.snapshot(), world.now, CFG)
    world.apply(actions)
    return actions


def _active(world: World, kind: TaskKind) -> list[str]:
    return [t.id for t in world.tasks.values() if t.kind is kind and t.state.active]


def _finish_all(world: World, kind: TaskKind, **fields: Any) -> None:
    for tid in _active(world, kind):
        extra = dict(fields)
        if kind is TaskKind.STEP:
            extra.setdefault("result", {"branch": world.tasks[tid].branch})
        world.finish(tid, TaskState.SUCCEEDED, **extra)


def completed_world() -> World:
    """Generation 1 planned two steps, ran them and opened the pull request."""
    world = World(directive(GOAL))
    _run(world)
    subs = [StepSubmission(name="core", title="Core"), StepSubmission(name="cli", title="CLI", orderIndex=1)]
    _finish_all(world, TaskKind.PLANNING, result={"steps": subs_wire(subs)})
    for _ in range(8):
        _run(world)
        _finish_all(world, TaskKind.STEP)
        _finish_all(world, TaskKind.COMPLETION, result={"pull_request_url": PR, "branch": "makima/demo"})
    _run(world)
    assert world.directive.status.phase is DirectivePhase.COMPLETED, world.directive.status.message
    return world


def _replan_that_submits(world: World, result: dict[str, Any] | None) -> None:
    _finish_all(world, TaskKind.PLANNING, result=result)


def test_completion_waits_while_the_next_generations_planning_waits_for_its_retry() -> None:
    world = completed_world()
    world.set_goal(NEW_GOAL)
    (create,) = _of(_run(world), CreatePlanningTask)
    assert create.generation == 2
    _replan_that_submits(world, {"steps": []})  # attempt 1: nothing submitted, not final
    # between the failure and the retry (backoff 10 s): no completion may rewrite the PR
    for _ in range(3):
        actions = _run(world, 2)
        assert _of(actions, StartCompletion) == [], "completed a goal that was never planned"
        assert world.directive.status.phase is DirectivePhase.PLANNING
    (retry,) = _of(_run(world, 10), CreatePlanningTask)
    assert (retry.generation, retry.attempt) == (2, 2)
    _replan_that_submits(world, {"steps": []})
    actions = _run(world)
    assert _of(actions, PauseDirective) and _of(actions, StartCompletion) == []
    assert not [t for t in world.tasks.values() if t.kind is TaskKind.COMPLETION and t.generation == 2]


def test_a_replan_that_says_nothing_new_completes_and_updates_the_pull_request() -> None:
    world = completed_world()
    world.set_goal(NEW_GOAL)
    _run(world)
    _replan_that_submits(world, {"steps": [], "final": True})
    actions = _run(world)
    (start,) = _of(actions, StartCompletion)
    assert start.generation == 2 and NEW_GOAL in start.plan.body
    assert _of(actions, PauseDirective) == []
    _finish_all(world, TaskKind.COMPLETION, result={"pull_request_url": PR, "branch": "makima/demo"})
    actions = _run(world)
    st = world.directive.status
    assert st.phase is DirectivePhase.COMPLETED and st.plan_generation == 2
    assert st.planned_goal_hash == naming.goal_hash(NEW_GOAL)
    reasons = [e.reason for e in _of(actions, EmitEvent)]
    assert "PullRequestUpdated" in reasons and "PullRequestOpened" not in reasons
    assert {c.type: c.reason for c in st.conditions}["Ready"] == "PullRequestUpdated"
    assert _run(world, 3600) == []  # steady


def test_a_final_empty_first_plan_is_still_a_failure() -> None:
    world = World(directive(GOAL))
    _run(world)
    _replan_that_submits(world, {"steps": [], "final": True})
    _run(world)
    assert "without submitting any steps" in (world.directive.status.message or "")


def test_restoring_the_goal_recovers_a_directive_paused_by_a_failed_replan() -> None:
    world = completed_world()
    world.set_goal(NEW_GOAL)
    _run(world)
    _replan_that_submits(world, {"steps": []})
    _run(world, 10)
    _replan_that_submits(world, {"steps": []})
    _run(world)
    assert world.directive.spec.paused and world.directive.status.phase is DirectivePhase.PAUSED
    planning_before = len([t for t in world.tasks.values() if t.kind is TaskKind.PLANNING])

    world.set_goal(GOAL)  # the person puts the original goal back, then resumes
    _run(world)
    assert "failed" not in (world.directive.status.message or "")
    world.set_paused(False)
    actions = _run(world)
    assert _of(actions, CreatePlanningTask) == [], "re-planned a goal that is already planned"
    (start,) = _of(actions, StartCompletion)
    assert GOAL in start.plan.body and NEW_GOAL not in start.plan.body
    _finish_all(world, TaskKind.COMPLETION, result={"pull_request_url": PR, "branch": "makima/demo"})
    _run(world)
    assert world.directive.status.phase is DirectivePhase.COMPLETED
    assert len([t for t in world.tasks.values() if t.kind is TaskKind.PLANNING]) == planning_before

    # and a later goal change plans the next generation as usual
    world.set_goal("Greet in French.")
    (create,) = _of(_run(world), CreatePlanningTask)
    assert (create.generation, create.attempt) == (3, 1)


def test_restoring_the_goal_during_a_pending_retry_cancels_the_retry() -> None:
    world = completed_world()
    world.set_goal(NEW_GOAL)
    _run(world)
    _replan_that_submits(world, {"steps": []})
    _run(world)
    world.set_goal(GOAL)
    actions = _run(world, 30)
    assert _of(actions, CreatePlanningTask) == []
    assert _of(actions, StartCompletion)


def test_the_updated_pull_request_lists_older_generations_first() -> None:
    world = completed_world()
    world.set_goal(NEW_GOAL)
    _run(world)
    # a generation-2 root step with orderIndex 0 and a name sorting before generation 1's
    _replan_that_submits(world, {"steps": subs_wire([StepSubmission(name="aaa-loud", title="Loud")])})
    for _ in range(6):
        actions = _run(world)
        _finish_all(world, TaskKind.STEP)
        if _of(actions, StartCompletion):
            break
    (start,) = _of(actions, StartCompletion)
    lines = [line for line in start.plan.body.splitlines() if line.startswith("- `")]
    assert [line.split("`")[1] for line in lines] == ["core", "cli", "aaa-loud"]
    assert [t.step_name for t in world.tasks.values() if t.kind is TaskKind.STEP][-1] == "aaa-loud"
    assert world.steps["aaa-loud"].status.phase is StepPhase.SUCCEEDED


def test_event_messages_are_one_line_each() -> None:
    world = World(directive(GOAL))
    _run(world)
    for tid in _active(world, TaskKind.PLANNING):
        world.finish(
            tid, TaskState.FAILED, error="agent exited with status 1\nTraceback (most recent call last):\n  boom"
        )
    events = _of(_run(world, 60), EmitEvent)
    assert events, "a failed planning attempt emits an event"
    for e in events:
        assert "\n" not in e.message, e
    (retry,) = [e for e in events if e.reason == "Retrying"]
    assert "agent exited with status 1" in retry.message and "2 more lines in the task log" in retry.message
