"""decide(): the stages in their order, and their actions put in the order the shell applies them."""

from __future__ import annotations

from datetime import datetime

from makima.core.reconcile.actions import Action, EmitEvent
from makima.core.reconcile.completion import complete
from makima.core.reconcile.dispatch import dispatch
from makima.core.reconcile.events import one_line
from makima.core.reconcile.expiry import expire
from makima.core.reconcile.facts import gather
from makima.core.reconcile.inputs import ReconcileConfig, Snapshot
from makima.core.reconcile.planning import plan
from makima.core.reconcile.retry_request import retry_requested
from makima.core.reconcile.status import directive_status
from makima.core.reconcile.steps import initial, marks, observe, ready, skip


def decide(snapshot: Snapshot, now: datetime, config: ReconcileConfig | None = None) -> list[Action]:
    """Everything the shell should do for this directive now, in the order to do it."""
    if snapshot.directive.metadata.deletion_timestamp is not None:
        return []  # the finalizer cancels tasks; ownerReferences remove the steps
    facts = gather(snapshot, now, config or ReconcileConfig())
    expired = expire(facts)
    planning = plan(facts)
    retried = retry_requested(facts, initial(facts))
    observed = observe(facts, retried.state)
    skipped = skip(facts, observed.state)
    dispatched = dispatch(facts, ready(skipped.state), planning.state)
    steps = dispatched.state.steps
    completion = complete(facts, steps, planning.state)
    waiting_for = (
        dispatched.state.waiting_for
        if dispatched.state.waiting_for_daemon
        else facts.waiting_for
        if planning.state.waiting_for_daemon or completion.state.waiting_for_daemon
        else None
    )
    status = directive_status(facts, steps, planning.state, completion.state, waiting_for)
    # A created planning task comes after the status naming it and the goal hash it plans
    # (stored nowhere else): should the shell die in between, the next decide() creates the row.
    status_first = planning.state.created is not None
    actions: list[Action] = [
        *expired.actions,
        *(status.actions if status_first else ()),
        *planning.actions,
        *marks(steps),
        *dispatched.actions,
        *completion.actions,
        *(() if status_first else status.actions),
    ]
    stages = (expired, planning, retried, observed, skipped, dispatched, completion, status)
    events = [EmitEvent(e.type, e.reason, one_line(e.message)) for stage in stages for e in stage.events]
    return [*actions, *events]
