"""Planning tasks: the scripted agent submits its plan through the task API (test double)."""

from __future__ import annotations

from pathlib import Path

from makima.core.protocol import ErrorBody, Outcome, TaskSpec, WorkspacePlan
from makima.core.tasks import TaskKind
from makima.dataplane.runner.run import run_task

from .conftest import scripted_agent
from .doubles import FakeOperatorApi, RecordingReporter

SCRIPT = {
    "plan": [
        {"name": "api", "title": "API", "taskPlan": "build it"},
        {"name": "docs", "title": "Docs", "dependsOn": ["api"], "orderIndex": 1},
    ],
    "replan": {2: [{"name": "tests", "title": "Tests", "depends_on": ["api"]}], 3: []},
}


def planning_spec(remote: Path, generation: int) -> TaskSpec:
    return TaskSpec(
        task_id=f"plan-{generation}",
        kind=TaskKind.PLANNING,
        generation=generation,
        namespace="default",
        directive="demo",
        prompt="plan the goal",
        workspace=WorkspacePlan(repo_url=remote.as_uri()),
        agent=scripted_agent(SCRIPT),
    )


async def _plan(api: FakeOperatorApi, remote: Path, tmp_path: Path, generation: int, reporter: RecordingReporter):  # type: ignore[no-untyped-def]
    spec = planning_spec(remote, generation)
    return await run_task(spec, reporter, tmp_path / f"plan-{generation}", api_url=api.url, task_token=api.token)


async def test_planning_submits_steps_per_generation(
    fake_api: FakeOperatorApi, remote: Path, tmp_path: Path, reporter: RecordingReporter
) -> None:
    result = await _plan(fake_api, remote, tmp_path, 1, reporter)
    assert result.outcome == Outcome.SUCCEEDED, result.message
    assert result.branch is None
    assert [(s["name"], s["dependsOn"], s["orderIndex"]) for s in fake_api.steps["plan-1"]] == [
        ("api", [], 0),
        ("docs", ["api"], 1),
    ]
    result = await _plan(fake_api, remote, tmp_path, 2, RecordingReporter())
    assert result.outcome == Outcome.SUCCEEDED, result.message
    assert [s["name"] for s in fake_api.steps["plan-2"]] == ["tests"]


async def test_rejected_plan_fails_the_task_with_problems(
    fake_api: FakeOperatorApi, remote: Path, tmp_path: Path, reporter: RecordingReporter
) -> None:
    fake_api.reject_steps = ErrorBody.model_validate(
        {"error": "invalid plan", "problems": [{"step": "docs", "field": "dependsOn", "message": "cycle"}]}
    )
    result = await _plan(fake_api, remote, tmp_path, 1, reporter)
    assert result.outcome == Outcome.FAILED
    assert "step docs dependsOn: cycle" in result.message


async def test_an_empty_replan_in_the_script_says_nothing_new(
    fake_api: FakeOperatorApi, remote: Path, tmp_path: Path, reporter: RecordingReporter
) -> None:
    result = await _plan(fake_api, remote, tmp_path, 3, reporter)
    assert result.outcome == Outcome.SUCCEEDED, result.message
    assert fake_api.final == {"plan-3"} and fake_api.steps["plan-3"] == []
    # a generation the script does not list submits nothing (and the operator says so)
    result = await _plan(fake_api, remote, tmp_path, 4, RecordingReporter())
    assert result.outcome == Outcome.SUCCEEDED and "plan-4" not in fake_api.steps
