"""Task-side CLI commands against `FakeOperatorApi` (a test double of the operator API)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from makima.cli.main import app
from makima.core.protocol import ErrorBody, Outcome, Problem

from .conftest import scripted_agent, step_spec
from .doubles import FakeOperatorApi

runner = CliRunner()


def invoke(api: FakeOperatorApi, *args: str, task: str = "t1"):  # type: ignore[no-untyped-def]
    return runner.invoke(app, list(args), env=api.env(task))


def test_add_step(fake_api: FakeOperatorApi) -> None:
    res = invoke(
        fake_api, "directive", "add-step", "docs", "--title", "Write docs", "--description", "d",
        "--task-plan", "do it", "--depends-on", "api, core", "--order-index", "2",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "accepted 1 step(s): docs" in res.output
    assert fake_api.steps["t1"] == [
        {
            "name": "docs",
            "title": "Write docs",
            "description": "d",
            "taskPlan": "do it",
            "dependsOn": ["api", "core"],
            "orderIndex": 2,
        }
    ]


def test_batch_add_steps_json_and_file(fake_api: FakeOperatorApi, tmp_path: Path) -> None:
    steps = [{"name": "a", "title": "A"}, {"name": "b", "title": "B", "dependsOn": ["a"], "orderIndex": 1}]
    res = invoke(fake_api, "directive", "batch-add-steps", "--json", json.dumps(steps))
    assert res.exit_code == 0, res.output
    file = tmp_path / "steps.json"
    file.write_text(json.dumps({"steps": [{"name": "c", "title": "C", "task_plan": "snake case works"}]}))
    res = invoke(fake_api, "directive", "batch-add-steps", "--file", str(file))
    assert res.exit_code == 0, res.output
    assert [s["name"] for s in fake_api.steps["t1"]] == ["a", "b", "c"]
    assert fake_api.steps["t1"][1]["dependsOn"] == ["a"]


def test_rejected_steps_print_every_problem(fake_api: FakeOperatorApi) -> None:
    fake_api.reject_steps = ErrorBody(
        error="invalid plan",
        problems=[
            Problem(step="b", field="dependsOn", message="unknown step 'x'"),
            Problem(message="cycle: a -> b -> a"),
        ],
    )
    res = invoke(fake_api, "directive", "batch-add-steps", "--json", '[{"name": "b", "title": "B"}]')
    assert res.exit_code == 1
    assert "invalid plan" in res.output and "(422)" in res.output
    assert "step b dependsOn: unknown step 'x'" in res.output
    assert "cycle: a -> b -> a" in res.output


def test_invalid_steps_are_refused_locally(fake_api: FakeOperatorApi) -> None:
    res = invoke(fake_api, "directive", "batch-add-steps", "--json", '[{"name": "Bad_Name", "title": ""}]')
    assert res.exit_code == 2
    assert "step Bad_Name name" in res.output and "step Bad_Name title" in res.output
    assert "t1" not in fake_api.steps
    res = invoke(fake_api, "directive", "batch-add-steps", "--json", "not json")
    assert res.exit_code == 2


def test_update_pr_url(fake_api: FakeOperatorApi) -> None:
    res = invoke(fake_api, "directive", "update", "--pr-url", "https://x/pull/1", "--branch", "makima/d")
    assert res.exit_code == 0, res.output
    assert [(r.url, r.branch) for r in fake_api.pull_requests["t1"]] == [("https://x/pull/1", "makima/d")]


def test_wrong_token_and_missing_environment(fake_api: FakeOperatorApi) -> None:
    env = {**fake_api.env("t1"), "MAKIMA_TASK_TOKEN": "wrong"}
    res = runner.invoke(app, ["directive", "update", "--pr-url", "u"], env=env)
    assert res.exit_code == 1 and "(401)" in res.output and "unauthorized" in res.output
    res = runner.invoke(app, ["directive", "update", "--pr-url", "u"], env={"MAKIMA_API_URL": ""})
    assert res.exit_code == 2 and "MAKIMA_API_URL" in res.output


@pytest.mark.parametrize("fail", [False, True])
def test_task_run(fake_api: FakeOperatorApi, remote: Path, tmp_path: Path, fail: bool) -> None:
    script = {"steps": {"a": {"files": {"a.txt": "a\n"}, "fail_attempts": [1] if fail else []}}}
    spec = step_spec(remote, "a", scripted_agent(script))
    fake_api.specs[spec.task_id] = spec
    res = invoke(fake_api, "task", "run", "--workdir", str(tmp_path / "w"), task=spec.task_id)
    result = fake_api.results[spec.task_id]
    types = [e["type"] for e in fake_api.events[spec.task_id]]
    assert "heartbeat" in types and "output" in types and types[-1] == "result"
    if fail:
        assert res.exit_code == 1
        assert result.outcome == Outcome.FAILED
    else:
        assert res.exit_code == 0, res.output
        assert result.outcome == Outcome.SUCCEEDED and result.branch == "makima/step-a"
    assert fake_api.token not in json.dumps(fake_api.events[spec.task_id])
