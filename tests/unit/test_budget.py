"""Usage and spec.budget in decide(): usage on each finished step and summed on the directive;
at the budget no new task starts, running ones finish, and the directive pauses with a
BudgetExceeded condition and Event; raising the budget resumes it."""

from __future__ import annotations

from typing import Any

from makima.core.models import Budget, DirectivePhase
from makima.core.reconcile import (
    CreatePlanningTask,
    DispatchStep,
    EmitEvent,
    ReconcileConfig,
    StartCompletion,
    decide,
)
from makima.core.tasks import TaskKind, TaskState
from tests.unit.sim import T0, World, step
from tests.unit.test_reconcile import planned

CFG = ReconcileConfig()


def usage(inp: int, out: int, cost: float | None, agent: str = "claude-code") -> dict[str, Any]:
    """A task result's usage record, as the runner stores it (snake_case, TaskResult dump)."""
    record: dict[str, Any] = {"agent": agent, "input_tokens": inp, "output_tokens": out}
    if cost is not None:
        record["cost_usd"] = cost
    return record


def run(world: World) -> list[Any]:
    actions = decide(world.snapshot(), world.now, CFG)
    world.apply(actions)
    return actions


def step_task(world: World, name: str) -> str:
    return next(t.id for t in world.tasks.values() if t.step_name == name and t.state.active)


def chain_world(**budget: Any) -> World:
    a, b, c = step("a"), step("b", ["a"]), step("c", ["b"])
    snap = planned([a, b, c], **({"budget": budget} if budget else {}))
    world = World(snap.directive)
    world.steps = {s.name: s for s in snap.steps}
    world.tasks = {t.id: t for t in snap.tasks}
    return world


def test_the_third_step_waits_at_the_budget_and_resumes_when_it_is_raised() -> None:
    world = chain_world(maxCostUsd=0.5)
    first = run(world)
    assert [d.name for d in first if isinstance(d, DispatchStep)] == ["a"]

    world.finish(step_task(world, "a"), TaskState.SUCCEEDED, commit="c1", result={"usage": usage(1000, 200, 0.2)})
    second = run(world)
    assert [d.name for d in second if isinstance(d, DispatchStep)] == ["b"], "under budget: b starts"
    assert world.steps["a"].status.usage is not None and world.steps["a"].status.usage.cost_usd == 0.2

    # b fails once (its attempt costs too), then its retry succeeds: 0.2 + 0.1 + 0.25 >= 0.5
    world.finish(step_task(world, "b"), TaskState.FAILED, error="boom", result={"usage": usage(500, 50, 0.1)})
    world.now = T0.replace(hour=T0.hour + 1)
    run(world)
    world.finish(step_task(world, "b"), TaskState.SUCCEEDED, commit="c2", result={"usage": usage(700, 90, 0.25)})
    third = run(world)

    assert not [d for d in third if isinstance(d, DispatchStep)], "c would go over the budget: not dispatched"
    b_usage = world.steps["b"].status.usage
    assert b_usage is not None and (b_usage.input_tokens, b_usage.tasks) == (1200, 2)
    status = world.directive.status
    assert status.phase is DirectivePhase.PAUSED
    assert status.usage is not None
    assert status.usage.cost_usd == 0.55 and status.usage.total_tokens == 1000 + 200 + 500 + 50 + 700 + 90
    cond = {c.type: c for c in status.conditions}["BudgetExceeded"]
    assert cond.status.value == "True" and "$0.5500 reached the budget of $0.5000" in cond.message
    warned = [e for e in third if isinstance(e, EmitEvent) and e.reason == "BudgetExceeded"]
    assert len(warned) == 1 and warned[0].type == "Warning"
    assert not [a for a in run(world) if isinstance(a, EmitEvent | DispatchStep)], "said once; still waiting"
    assert world.steps["c"].status.phase.value == "Ready"

    # raising the budget resumes: c starts, the condition turns False
    world.directive = world.directive.model_copy(
        update={"spec": world.directive.spec.model_copy(update={"budget": Budget(max_cost_usd=2.0)})}
    )
    fourth = run(world)
    assert [d.name for d in fourth if isinstance(d, DispatchStep)] == ["c"]
    status = world.directive.status
    assert status.phase is DirectivePhase.EXECUTING
    assert {c.type: c for c in status.conditions}["BudgetExceeded"].status.value == "False"


def test_at_the_budget_a_changed_goal_is_not_planned_until_the_budget_is_raised() -> None:
    """A planner spends tokens too: over the budget, the re-plan a goal edit asks for waits."""
    world = chain_world(maxTokens=1000)
    run(world)
    world.finish(step_task(world, "a"), TaskState.SUCCEEDED, commit="c1", result={"usage": usage(900, 200, None)})
    run(world)  # a's usage (1,100 tokens) reaches the budget: b is not dispatched
    spec = world.directive.spec.model_copy(update={"goal": "Build the thing, and document it"})
    world.directive = world.directive.model_copy(update={"spec": spec})
    held = run(world)
    assert not [a for a in held if isinstance(a, CreatePlanningTask | DispatchStep)], "nothing new starts"
    assert world.directive.status.phase is DirectivePhase.PAUSED
    raised = spec.model_copy(update={"budget": Budget(max_tokens=100_000)})
    world.directive = world.directive.model_copy(update={"spec": raised})
    (replan,) = [a for a in run(world) if isinstance(a, CreatePlanningTask)]
    assert replan.generation == 2


def test_a_token_budget_stops_the_completion_task_too() -> None:
    world = chain_world(maxTokens=100)
    for name in ("a", "b", "c"):
        run(world)
        inp = 10 if name != "c" else 200
        world.finish(step_task(world, name), TaskState.SUCCEEDED, commit="c", result={"usage": usage(inp, 5, None)})
    actions = run(world)
    assert not [a for a in actions if isinstance(a, StartCompletion)], "the completion would be a new task"
    assert world.directive.status.phase is DirectivePhase.PAUSED
    assert world.directive.status.usage is not None and world.directive.status.usage.cost_usd is None
    assert not [t for t in world.tasks.values() if t.kind is TaskKind.COMPLETION]


def test_without_a_budget_usage_is_summed_and_nothing_pauses() -> None:
    world = chain_world()
    run(world)
    world.finish(step_task(world, "a"), TaskState.SUCCEEDED, commit="c1", result={"usage": usage(10**9, 1, 99.0)})
    actions = run(world)
    assert [d.name for d in actions if isinstance(d, DispatchStep)] == ["b"]
    status = world.directive.status
    assert status.usage is not None and status.usage.total_tokens == 10**9 + 1
    assert "BudgetExceeded" not in {c.type for c in status.conditions}


def test_the_pull_request_body_tells_what_the_agents_used() -> None:
    world = chain_world()
    spent = {"a": (1000, 100, 0.1), "b": (2000, 200, 0.2), "c": (3000, 300, None)}
    for name in ("a", "b", "c"):
        run(world)
        i, o, cost = spent[name]
        world.finish(step_task(world, name), TaskState.SUCCEEDED, commit="c", result={"usage": usage(i, o, cost)})
    start = next(a for a in run(world) if isinstance(a, StartCompletion))
    body = start.plan.body
    assert "## Agent usage" in body and "Build the thing" in body, "the usage follows the usual body"
    assert "| a | 1 | 1,000 | 100 | $0.1000 |" in body
    assert "| c | 1 | 3,000 | 300 | - |" in body
    assert "| **total** | 3 | 6,000 | 600 | $0.3000 |" in body
