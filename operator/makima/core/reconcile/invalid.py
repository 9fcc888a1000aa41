"""A spec the API server accepted but the models refuse: the directive fails, naming every problem."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from makima.core.models import DirectivePhase, DirectiveStatus
from makima.core.reconcile.actions import Action, EmitEvent, SetDirectiveStatus
from makima.core.reconcile.conditions import condition
from makima.core.reconcile.reasons import CondType, Reason


def reject_invalid(current: DirectiveStatus, generation: int, error: Any, now: datetime) -> list[Action]:
    """Failed, with every problem named. `error` is the pydantic ValidationError. Nothing else
    happens until the spec is fixed (a new generation is reconciled from scratch). No actions
    when already said."""
    problems = [f"spec.{'.'.join(str(p) for p in e['loc'][1:])}: {e['msg']}" for e in error.errors()]
    message = "invalid spec: " + "; ".join(problems)
    if (
        current.phase is DirectivePhase.FAILED
        and current.message == message
        and current.observed_generation == generation
    ):
        return []
    ready = condition(current.conditions, CondType.READY, False, Reason.INVALID_SPEC, message, generation, now)
    others = [c for c in current.conditions if c.type != CondType.READY]
    status = current.model_copy(
        update={
            "phase": DirectivePhase.FAILED,
            "message": message[:4096],
            "observed_generation": generation,
            "conditions": [ready, *others],
        }
    )
    return [SetDirectiveStatus(status), EmitEvent("Warning", Reason.INVALID_SPEC, message[:1024])]
