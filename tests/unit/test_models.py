"""makima.core.models validation: names, durations, bounds, goal."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from makima.core.models import (
    MAX_GOAL,
    Directive,
    DirectiveSpec,
    DirectiveStepSpec,
    Execution,
    check_dns_label,
    parse_duration,
)


def spec(**over: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"title": "T", "goal": "G", "repository": {"url": "https://git.example/r.git"}}
    body.update(over)
    return body


def error_text(exc: pytest.ExceptionInfo[ValidationError]) -> str:
    return str(exc.value)


@pytest.mark.parametrize(
    ("text", "seconds"), [("30m", 1800), ("2h", 7200), ("1h30m", 5400), ("45s", 45), ("500ms", 0.5)]
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "30", "m", "1.5h", "-1h", "0s", "2 h"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_step_timeout_is_validated() -> None:
    with pytest.raises(ValidationError, match=r"stepTimeout|step_timeout"):
        Execution.model_validate({"stepTimeout": "forever"})
    assert Execution.model_validate({"stepTimeout": "2h"}).step_timeout == "2h"


@pytest.mark.parametrize("name", ["a", "add-parser", "x1", "a" * 63])
def test_dns_names_ok(name: str) -> None:
    assert check_dns_label(name) == name


@pytest.mark.parametrize("name", ["", "Add", "-a", "a-", "a_b", "a.b", "a" * 64])
def test_dns_names_rejected(name: str) -> None:
    with pytest.raises(ValueError):
        check_dns_label(name)


@pytest.mark.parametrize(("value", "ok"), [(0, False), (1, True), (64, True), (65, False)])
def test_max_parallel_steps_bounds(value: int, ok: bool) -> None:
    if ok:
        assert Execution(max_parallel_steps=value).max_parallel_steps == value
    else:
        with pytest.raises(ValidationError, match=r"maxParallelSteps|max_parallel_steps"):
            Execution.model_validate({"maxParallelSteps": value})


@pytest.mark.parametrize(("value", "ok"), [(-1, False), (0, True), (10, True), (11, False)])
def test_retries_bounds(value: int, ok: bool) -> None:
    if ok:
        assert Execution(retries=value).retries == value
    else:
        with pytest.raises(ValidationError, match="retries"):
            Execution.model_validate({"retries": value})


@pytest.mark.parametrize("goal", ["", "   \n "])
def test_goal_must_not_be_empty(goal: str) -> None:
    with pytest.raises(ValidationError, match="goal"):
        DirectiveSpec.model_validate(spec(goal=goal))


def test_oversize_goal_is_rejected_naming_the_field() -> None:
    with pytest.raises(ValidationError) as exc:
        DirectiveSpec.model_validate(spec(goal="x" * (MAX_GOAL + 1)))
    assert "goal" in error_text(exc) and str(MAX_GOAL) in error_text(exc)


def test_negative_order_index_on_a_step_is_rejected() -> None:
    with pytest.raises(ValidationError) as exc:
        DirectiveStepSpec.model_validate({"directive": "d", "title": "T", "orderIndex": -1})
    assert "orderIndex" in error_text(exc) or "order_index" in error_text(exc)


def test_bad_dependency_name_is_rejected() -> None:
    with pytest.raises(ValidationError, match=r"Not_A_Name|DNS"):
        DirectiveStepSpec.model_validate({"directive": "d", "title": "T", "dependsOn": ["Not_A_Name"]})


def test_defaults_and_camel_case_round_trip() -> None:
    d = Directive.model_validate({"metadata": {"name": "demo"}, "spec": spec()})
    assert d.spec.execution.max_parallel_steps == 4 and d.spec.execution.retries == 2
    assert d.spec.repository.base_branch == "main" and d.spec.pull_request.enabled
    wire = d.spec.wire()
    assert wire["execution"]["maxParallelSteps"] == 4 and wire["pullRequest"] == {"enabled": True, "draft": False}
    assert DirectiveSpec.model_validate(wire) == d.spec


def test_unknown_spec_fields_are_rejected() -> None:
    with pytest.raises(ValidationError, match="extra"):
        DirectiveSpec.model_validate(spec(colour="blue"))


def test_a_reader_token_the_api_would_refuse_is_refused_at_start() -> None:
    """A token the API's Bearer pattern refuses (e.g. too short) fails the settings, without echoing it."""
    import pydantic

    from makima.control.config import OperatorSettings

    with pytest.raises(pydantic.ValidationError) as exc:
        OperatorSettings(reader_token="s3cret")
    assert "reader_token" in str(exc.value) and "s3cret" not in str(exc.value)
    with pytest.raises(pydantic.ValidationError):
        OperatorSettings(reader_token="has space in it")
    assert OperatorSettings(reader_token="a-long-enough.token_0123").reader_token == "a-long-enough.token_0123"


def test_the_operator_command_refuses_a_bad_reader_token_before_starting(monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from makima.cli.main import app

    result = CliRunner().invoke(app, ["operator"], env={"MAKIMA_READER_TOKEN": "s3cret"})
    assert result.exit_code == 2
    assert "invalid setting MAKIMA_READER_TOKEN" in result.output and "s3cret" not in result.output
