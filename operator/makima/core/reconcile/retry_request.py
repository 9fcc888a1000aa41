"""Stage 1b: a person's retry request. `makima retry` (or the dashboard) sets the Directive's
`makima.dev/retry` annotation to a new value: `<request id>` for every Failed and Skipped step,
or `<request id>:<step>,<step>` for some. The operator moves those steps back to Pending
(attempts kept: a retried step gets one more attempt) and records the value in
`status.retryHandled`, so each request is acted on once; a crash before the status is written
repeats the request, which finds the steps Pending already and does nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from makima.core import naming
from makima.core.models import StepPhase
from makima.core.reconcile.actions import EmitEvent, MarkStep
from makima.core.reconcile.facts import Facts, Stage
from makima.core.reconcile.reasons import Reason
from makima.core.reconcile.steps import Steps, StepState

RETRYABLE = (StepPhase.FAILED, StepPhase.SKIPPED)


@dataclass(frozen=True)
class RetryRequest:
    value: str  # the annotation as set: what status.retryHandled records
    steps: frozenset[str]  # empty: every Failed and Skipped step


def parse(value: str) -> RetryRequest:
    """`<id>` or `<id>:<step>,<step>` (the id is opaque: a time, a counter)."""
    _, sep, names = value.partition(":")
    chosen = frozenset(n.strip() for n in names.split(",") if n.strip()) if sep else frozenset()
    return RetryRequest(value, chosen)


def pending_request(facts: Facts) -> RetryRequest | None:
    """The retry request not yet acted on, if any."""
    value = facts.directive.metadata.annotations.get(naming.RETRY_ANNOTATION)
    if not value or value == facts.directive.status.retry_handled:
        return None
    return parse(value)


def retry_requested(facts: Facts, steps: Steps) -> Stage[dict[str, StepState]]:
    """The requested Failed and Skipped steps, back to Pending."""
    request = pending_request(facts)
    out = dict(steps)
    if request is None:
        return Stage(out)
    moved = [
        name for name, step in steps.items() if step.phase in RETRYABLE and (not request.steps or name in request.steps)
    ]
    for name in moved:
        mark = MarkStep(name, StepPhase.PENDING, message="retry requested", clear=("next_attempt_at", "finished_at"))
        out[name] = replace(steps[name], phase=StepPhase.PENDING, next_attempt_at=None, mark=mark)
    unknown = sorted(request.steps - set(steps))
    said = f"retry requested: {len(moved)} step(s) back to Pending" + (f" ({', '.join(moved)})" if moved else "")
    if unknown:
        said += f"; no step named {', '.join(unknown)}"
    return Stage(out, events=(EmitEvent("Normal", Reason.RETRY_REQUESTED, said),))
