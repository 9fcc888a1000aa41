"""Stage 5: Ready steps whose backoff has passed start their next attempt, lowest orderIndex
first, up to maxParallelSteps running; none while paused, planning or over budget."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace

from makima.core import naming
from makima.core.models import StepPhase
from makima.core.reconcile.actions import DispatchStep, EmitEvent
from makima.core.reconcile.facts import Facts, Stage
from makima.core.reconcile.planning import Planning
from makima.core.reconcile.reasons import Reason
from makima.core.reconcile.routing import route_text
from makima.core.reconcile.steps import Steps, StepState
from makima.core.reconcile.workspace import step_task


@dataclass(frozen=True)
class Dispatched:
    steps: Steps  # a dispatched step is Running with no mark: its DispatchStep says it
    waiting_for_daemon: bool = False  # a step could start but no daemon (or Agent slot) is free
    waiting_for: str = "a daemon"  # what it waits for, in words


def dispatch(facts: Facts, steps: Steps, planning: Planning) -> Stage[Dispatched]:
    if facts.paused or planning.active or facts.over_budget is not None:
        return Stage(Dispatched(steps))
    running = sum(1 for s in steps.values() if s.phase is StepPhase.RUNNING)
    router = facts.router()
    out = dict(steps)
    actions: list[DispatchStep] = []
    events: list[EmitEvent] = []
    for step, attempt in _startable(facts, steps):
        if running >= facts.spec.execution.max_parallel_steps:
            break
        route, router = router.pick()
        if route is None:
            waiting = Dispatched(out, waiting_for_daemon=True, waiting_for=router.waiting_for(facts.agent))
            return Stage(waiting, tuple(actions), tuple(events))
        actions.append(step_task(facts, step, steps, attempt, route))
        out[step.name] = replace(step, phase=StepPhase.RUNNING, attempts=attempt, mark=None)
        running += 1
        message = f"step {step.name!r} attempt {attempt} started on {route_text(route)}"
        events.append(EmitEvent("Normal", Reason.STEP_STARTED, message))
    return Stage(Dispatched(out), tuple(actions), tuple(events))


def _startable(facts: Facts, steps: Steps) -> Iterator[tuple[StepState, int]]:
    """Ready steps free to start now, by (orderIndex, name), with the attempt each would start."""
    ready = sorted(
        (s for s in steps.values() if s.phase is StepPhase.READY), key=lambda s: (s.view.spec.order_index, s.name)
    )
    for step in ready:
        due = step.next_attempt_at
        if step.active or (due is not None and facts.now < due):
            continue
        attempt = max(step.attempts, *(t.attempt for t in step.tasks), 0) + 1
        if naming.step_task_id(step.view.uid, attempt) not in facts.task_ids:
            yield step, attempt
