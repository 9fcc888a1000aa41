"""The reconciler: `decide(snapshot, now, config) -> actions`.

It applies the rules listed in docs/architecture.md, "Life of a directive".

Pure and deterministic: the same snapshot, `now` and config give the same actions in the
same order. No clock, no I/O; the shell (handlers, kube.py, store/, executors/) reads a
Snapshot, calls decide(), and applies the actions *in the order given*. Every action is
idempotent when re-applied (ids are derived from uids, attempts and generations), and
the order is chosen so that a crash between two actions leaves a state the next decide()
repairs without losing or doubling work:

    ExpireTask*  →  planning (CreateSteps | PauseDirective | SetDirectiveStatus + CreatePlanningTask)
    →  MarkStep* (observed outcomes, skips, Pending→Ready)
    →  (DispatchStep, MarkStep Running)*  →  StartCompletion  →  SetDirectiveStatus  →  EmitEvent*

A step's status never points at a task row that does not exist: DispatchStep inserts the
row before the shell marks the step Running, and a step status that lags behind the store
(status.attempts < task.attempt) is adopted from the store instead of being redone.
Planning is the other way round: when decide() creates a planning task, the directive
status (planningTask, planGeneration, plannedGoalHash) comes *before* CreatePlanningTask,
because the goal hash a plan was made for is stored nowhere else; a status naming a
planning task whose row is missing makes the next decide() create that row.

A steady state yields no actions at all: status is emitted only when it differs from the
current one, and nothing time-relative goes into it.

decide() is a pipeline of stages over facts gathered once from the snapshot (`facts`), each
a function returning its state, the actions it asks for and the events it tells (`Stage`),
with one record per step (`steps.StepState`) carried from stage to stage:

    expiry → planning → steps (observe, skip, ready) → dispatch → completion → status

`pipeline` puts them together; `workspace` builds each task's git workspace and prompt;
`routing` chooses a Job or a daemon; `reasons` names conditions and events.
"""

from __future__ import annotations

from makima.core.reconcile.actions import (
    Action,
    CreatePlanningTask,
    CreateSteps,
    DispatchStep,
    EmitEvent,
    ExpireTask,
    MarkStep,
    PauseDirective,
    Route,
    SetDirectiveStatus,
    StartCompletion,
)
from makima.core.reconcile.attempts import USER_CANCELLED, backoff
from makima.core.reconcile.events import one_line
from makima.core.reconcile.inputs import DaemonView, ReconcileConfig, Snapshot, StepView
from makima.core.reconcile.invalid import reject_invalid
from makima.core.reconcile.pipeline import decide
from makima.core.reconcile.reasons import CondType, Reason
from makima.core.reconcile.routing import choose_route

__all__ = [
    "USER_CANCELLED",
    "Action",
    "CondType",
    "CreatePlanningTask",
    "CreateSteps",
    "DaemonView",
    "DispatchStep",
    "EmitEvent",
    "ExpireTask",
    "MarkStep",
    "PauseDirective",
    "Reason",
    "ReconcileConfig",
    "Route",
    "SetDirectiveStatus",
    "Snapshot",
    "StartCompletion",
    "StepView",
    "backoff",
    "choose_route",
    "decide",
    "one_line",
    "reject_invalid",
]
