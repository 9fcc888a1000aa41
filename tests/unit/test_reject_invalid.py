"""reject_invalid(): a spec the models refuse fails the directive once, naming every problem."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from makima.core.models import Directive, DirectivePhase, DirectiveSpec, DirectiveStatus
from makima.core.reconcile import EmitEvent, SetDirectiveStatus, reject_invalid

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def _error() -> ValidationError:
    with pytest.raises(ValidationError) as info:
        DirectiveSpec.model_validate(
            {"title": "t", "goal": "  ", "repository": {"url": "x"}, "execution": {"stepTimeout": "soon"}}
        )
    err = info.value
    # the controller validates the whole object: locations start with "spec"
    return ValidationError.from_exception_data(
        err.title,
        [{**e, "loc": ("spec", *e["loc"])} for e in err.errors()],  # type: ignore[misc]
    )


def test_fails_naming_every_problem_once() -> None:
    actions = reject_invalid(DirectiveStatus(), 3, _error(), NOW)
    assert [type(a) for a in actions] == [SetDirectiveStatus, EmitEvent]
    status = actions[0].status  # type: ignore[union-attr]
    assert status.phase is DirectivePhase.FAILED and status.observed_generation == 3
    assert "spec.goal" in status.message and "spec.execution.stepTimeout" in status.message
    assert status.conditions[0].reason == "InvalidSpec" and status.conditions[0].last_transition_time == NOW
    # said already: nothing more to do on the next run
    assert reject_invalid(status, 3, _error(), NOW) == []
    # a new generation with the same problem is reported again
    assert reject_invalid(status, 4, _error(), NOW) != []


def test_an_agent_ref_beside_an_inline_agent_fails_where_no_cel_rule_ran() -> None:
    """The API server refuses both at admission (a CEL rule); a server that checks no CEL (the
    sandbox, an old CRD) lets it through, and the model's twin of the rule says the same."""
    body = {
        "metadata": {"name": "both", "namespace": "team"},
        "spec": {
            "title": "t",
            "goal": "g",
            "repository": {"url": "file:///tmp/r.git"},
            "agentRef": {"name": "claude"},
            "agent": {"profile": "codex"},
        },
    }
    with pytest.raises(ValidationError) as info:
        Directive.model_validate(body)
    (status_action, event) = reject_invalid(DirectiveStatus(), 1, info.value, NOW)
    status = status_action.status  # type: ignore[union-attr]
    assert status.phase is DirectivePhase.FAILED
    assert "spec.agentRef and spec.agent exclude each other" in (status.message or "")
    assert isinstance(event, EmitEvent) and event.reason == "InvalidSpec"
