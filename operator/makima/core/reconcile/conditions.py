"""One directive condition, its lastTransitionTime kept while its status holds (one place for it)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from makima.core.models import Condition, ConditionStatus


def condition(
    previous: Sequence[Condition],
    type_: str,
    holds: bool,
    reason: str,
    message: str,
    generation: int,
    now: datetime,
) -> Condition:
    """The condition `type_`; lastTransitionTime is `now` only when its status changes."""
    status = ConditionStatus.TRUE if holds else ConditionStatus.FALSE
    before = next((c for c in previous if c.type == type_), None)
    since = before.last_transition_time if before is not None and before.status == status else now
    return Condition(
        type=type_,
        status=status,
        reason=reason,
        message=message[:32768],
        last_transition_time=since,
        observed_generation=generation,
    )
