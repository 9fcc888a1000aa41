"""Property tests: random DAGs and random task outcomes, driven through decide() by the
small world in sim.py (the operator's own apply code carries the actions out over in-memory
test doubles of its ports, crashing at random points; then tasks finish)."""

from __future__ import annotations

import random
from datetime import timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from makima.core import naming
from makima.core.models import DirectivePhase, StepPhase
from makima.core.protocol import StepSubmission
from makima.core.reconcile import DispatchStep, MarkStep, ReconcileConfig, decide
from tests.unit.sim import World, directive

CFG = ReconcileConfig()
P = StepPhase


@st.composite
def plans(draw: st.DrawFn, prefix: str, max_steps: int = 5) -> list[StepSubmission]:
    n = draw(st.integers(1, max_steps))
    orders = sorted(draw(st.lists(st.integers(0, 2), min_size=n, max_size=n)))
    out = []
    for i in range(n):
        deps = draw(st.lists(st.sampled_from(range(i)), unique=True, max_size=2)) if i else []
        out.append(
            StepSubmission(
                name=f"{prefix}-s{i}",
                title=f"Step {i}",
                dependsOn=[f"{prefix}-s{j}" for j in deps],
                orderIndex=orders[i],
            )
        )
    return out


@st.composite
def scenarios(draw: st.DrawFn) -> dict:
    mode = draw(st.sampled_from(["Job", "Auto", "Daemon"]))
    n_daemons = draw(st.integers(1 if mode == "Daemon" else 0, 2))
    return {
        "mode": mode,
        "daemons": [(f"d{i}", draw(st.integers(1, 2))) for i in range(n_daemons)],
        "max_parallel": draw(st.integers(1, 3)),
        "retries": draw(st.integers(0, 2)),
        "plan1": draw(plans("a")),
        "plan2": draw(plans("b", 3)),
        "replan_at": draw(st.none() | st.integers(1, 12)),
        "p_fail": draw(st.sampled_from([0.0, 0.15, 0.4])),
        "crashes": draw(st.booleans()),
        "seed": draw(st.integers(0, 2**32 - 1)),
    }


def _planner(sc: dict):
    def plan(generation: int, world: World) -> list[StepSubmission]:
        if generation == 1:
            return sc["plan1"]
        # gen 2: its first step continues from the first gen-1 step
        first = sc["plan1"][0].name
        out = []
        for s in sc["plan2"]:
            deps = list(s.depends_on) or ([first] if s.name.endswith("-s0") else [])
            out.append(s.model_copy(update={"depends_on": deps}))
        return out

    return plan


def _check_dispatch(world: World, d: DispatchStep, done: set[str]) -> None:
    """The step may start: dependencies and lower phases of its generation succeeded
    (`done`: succeeded in the snapshot, or marked Succeeded earlier in the same action list)."""
    s = world.steps[d.name]
    for dep in s.spec.depends_on:
        assert dep in done, f"{d.name} dispatched before {dep} succeeded"
    for other in world.steps.values():
        if other.spec.generation == s.spec.generation and other.spec.order_index < s.spec.order_index:
            assert other.name in done, f"{d.name} dispatched before {other.name} (lower phase)"
    assert d.task_id not in world.tasks, f"{d.name} attempt {d.attempt} dispatched although its task exists"
    assert (d.uid, d.attempt) not in world.applied_dispatches


def run(sc: dict) -> World:
    rng = random.Random(sc["seed"])
    world = World(
        directive(
            execution={
                "mode": sc["mode"],
                "maxParallelSteps": sc["max_parallel"],
                "retries": sc["retries"],
                "daemonSelector": {"pool": "a"},
            }
        ),
        daemons=sc["daemons"],
    )
    planner = _planner(sc)
    succeeded: set[str] = set()
    replanned = False
    for rnd in range(300):
        settle = rnd >= 40
        if sc["replan_at"] is not None and not replanned and rnd == sc["replan_at"]:
            world.notes["goal_changed_after_planning"] = any(t.kind.value == "planning" for t in world.tasks.values())
            world.set_goal("Build the thing, and document it")
            replanned = True
        snap = world.snapshot()
        actions = decide(snap, world.now, CFG)
        assert actions == decide(snap, world.now, CFG), "decide is not deterministic"
        done = {n for n, s in world.steps.items() if s.status.phase is P.SUCCEEDED}
        for a in actions:
            if isinstance(a, MarkStep) and a.phase is P.SUCCEEDED:
                done.add(a.name)
            if isinstance(a, DispatchStep):
                _check_dispatch(world, a, done)
            if isinstance(a, MarkStep) and a.name in succeeded:
                raise AssertionError(f"succeeded step {a.name} was changed to {a.phase}")
        crash = None
        if sc["crashes"] and not settle and actions and rng.random() < 0.3:
            crash = rng.randrange(len(actions))
        world.apply(actions, crash_after=crash, rng=rng)
        assert world.step_running() <= sc["max_parallel"]
        assert world.active_step_tasks() <= sc["max_parallel"]
        succeeded |= {n for n, s in world.steps.items() if s.status.phase is P.SUCCEEDED}
        # a person resumes a directive paused by a planning failure
        if world.directive.spec.paused and rng.random() < 0.5:
            world.set_paused(False)
        quiet = not actions and not any(t.state.active for t in world.tasks.values())
        if (
            quiet
            and (replanned or sc["replan_at"] is None)
            and world.directive.status.phase in (DirectivePhase.COMPLETED, DirectivePhase.FAILED)
        ):
            break
        world.progress(rng, planner, 0.0 if rnd >= 80 else sc["p_fail"], settle or sc.get("calm", False))
        world.now += timedelta(seconds=rng.choice([1, 20, 90, 400, 700]))
    return world


@settings(max_examples=500, deadline=None)
@given(scenarios())
def test_random_dags_and_outcomes_end_completed_or_failed(sc: dict) -> None:
    world = run(sc)
    status = world.directive.status
    assert status.phase in (DirectivePhase.COMPLETED, DirectivePhase.FAILED), status.message
    # steady state: nothing to do, now or much later
    assert decide(world.snapshot(), world.now, CFG) == []
    assert decide(world.snapshot(), world.now + timedelta(days=1), CFG) == []
    phases = [s.status.phase for s in world.steps.values()]
    if status.phase is DirectivePhase.COMPLETED:
        assert all(p is P.SUCCEEDED for p in phases)
        assert status.pull_request is not None and status.pull_request.url
        assert status.progress == f"{len(phases)}/{len(phases)}"
    else:
        assert any(p in (P.FAILED, P.SKIPPED) for p in phases) or "completion" in (status.message or "")
    if sc["replan_at"] is not None and status.plan_generation >= 2:
        assert all(f"{s.name}" in world.steps for s in sc["plan2"])
    assert status.steps.total == len(phases)


@settings(max_examples=500, deadline=None)
@given(scenarios())
def test_replan_keeps_every_succeeded_step(sc: dict) -> None:
    sc = {**sc, "replan_at": sc["replan_at"] or 3, "p_fail": 0.0, "calm": True}
    world = run(sc)
    status = world.directive.status
    assert status.phase is DirectivePhase.COMPLETED
    if not world.notes["goal_changed_after_planning"]:
        # the goal changed before the first plan was asked for: that plan has the new goal
        assert status.plan_generation == 1
        return
    assert status.plan_generation == 2
    for s in sc["plan1"]:
        assert world.steps[s.name].status.phase is P.SUCCEEDED
        assert world.steps[s.name].spec.generation == 1
    for s in sc["plan2"]:
        assert world.steps[s.name].spec.generation == 2
    assert status.planned_goal_hash == naming.goal_hash(world.directive.spec.goal)
