"""Planner step submissions and completion pull-request reports."""

from __future__ import annotations

from typing import Any

from makima.core.tasks import TaskKind, TaskState

from .conftest import Api, bearer, make_task


def step(name: str, **kw: Any) -> dict[str, Any]:
    return {"name": name, "title": f"Step {name}", **kw}


async def _steps(api: Api, task_id: str) -> list[dict[str, Any]] | None:
    stored = await api.store.get_task(task_id)
    assert stored is not None
    return (stored.result or {}).get("steps")


async def test_valid_submissions_accumulate_on_the_planning_task(api: Api) -> None:
    task, token = await make_task(api.store, kind=TaskKind.PLANNING, state=TaskState.RUNNING)
    first = {"steps": [step("schema", orderIndex=0), step("api", dependsOn=["schema"], taskPlan="add routes")]}
    resp = await api.client.post(f"/v1/tasks/{task.id}/steps", json=first, headers=bearer(token))
    assert resp.status == 200, await resp.text()
    assert await resp.json() == {"accepted": 2, "total": 2}

    # A later call may depend on a step of an earlier call.
    second = {"steps": [step("docs", dependsOn=["api"], orderIndex=1)]}
    resp = await api.client.post(f"/v1/tasks/{task.id}/steps", json=second, headers=bearer(token))
    assert await resp.json() == {"accepted": 1, "total": 3}

    steps = await _steps(api, task.id)
    assert steps is not None
    assert [s["name"] for s in steps] == ["schema", "api", "docs"]
    assert steps[1] == {
        "name": "api",
        "title": "Step api",
        "description": "",
        "taskPlan": "add routes",
        "dependsOn": ["schema"],
        "orderIndex": 0,
    }
    # The controller validated the whole set each time, earlier steps included.
    assert api.rules.seen == [["schema", "api"], ["schema", "api", "docs"]]
    assert len(api.reports.calls) == 2


async def test_a_submission_sent_again_is_accepted_and_stored_once(api: Api) -> None:
    """Issue 14: a planner's client retries a submission whose reply was lost; the very same
    steps are accepted again (the seed answered 422 "already submitted earlier")."""
    task, token = await make_task(api.store, kind=TaskKind.PLANNING, state=TaskState.RUNNING)
    batch = {"steps": [step("schema"), step("api", dependsOn=["schema"])]}
    first = await api.client.post(f"/v1/tasks/{task.id}/steps", json=batch, headers=bearer(token))
    assert first.status == 200, await first.text()
    again = await api.client.post(f"/v1/tasks/{task.id}/steps", json=batch, headers=bearer(token))
    assert again.status == 200, await again.text()
    assert await again.json() == {"accepted": 2, "total": 2}
    assert [s["name"] for s in await _steps(api, task.id) or []] == ["schema", "api"]
    assert len(api.reports.calls) == 1  # nothing new, no reconcile triggered again


async def test_invalid_submission_lists_every_problem_and_stores_nothing(api: Api) -> None:
    task, token = await make_task(api.store, kind=TaskKind.PLANNING, state=TaskState.RUNNING)
    await api.client.post(f"/v1/tasks/{task.id}/steps", json={"steps": [step("base")]}, headers=bearer(token))
    api.rules.forbidden = {"admin"}
    bad = {
        "steps": [
            step("Bad_Name"),  # not a DNS label (pydantic)
            {"name": "no-title"},  # missing title (pydantic)
            step("neg", orderIndex=-1, colour="red"),  # range + unknown field (pydantic)
            step("base", title="Another base"),  # a different step under a name submitted earlier
            step("twice"),
            step("twice"),  # twice in this call
            step("orphan", dependsOn=["ghost"]),  # unknown dependency (validate_steps)
            step("admin"),  # refused by the controller (validate_steps)
        ]
    }
    resp = await api.client.post(f"/v1/tasks/{task.id}/steps", json=bad, headers=bearer(token))
    assert resp.status == 422
    body = await resp.json()
    assert "nothing was stored" in body["error"]
    problems = {(p.get("step"), p.get("field"), p["message"]) for p in body["problems"]}
    by_step: dict[str | None, list[str]] = {}
    for s, f, _m in problems:
        by_step.setdefault(s, []).append(f or "")
    assert "steps.0.name" in by_step["Bad_Name"]
    assert "steps.1.title" in by_step["no-title"]
    assert {"steps.2.orderIndex", "steps.2.colour"} <= set(by_step["neg"])
    assert any("already submitted earlier" in m for s, _f, m in problems if s == "base")
    assert any("already submitted in this submission" in m for s, _f, m in problems if s == "twice")
    assert any("unknown step 'ghost'" in m for s, _f, m in problems if s == "orphan")
    assert any("reserved" in m for s, _f, m in problems if s == "admin")
    assert len(body["problems"]) == 8

    assert [s["name"] for s in await _steps(api, task.id) or []] == ["base"]
    assert len(api.reports.calls) == 1  # only the first, valid submission


async def test_batch_shape_problems(api: Api) -> None:
    task, token = await make_task(api.store, kind=TaskKind.PLANNING, state=TaskState.RUNNING)
    for body, field in [({"steps": []}, "steps"), ({"steps": [step("a")], "extra": 1}, "extra"), ([1, 2], None)]:
        resp = await api.client.post(f"/v1/tasks/{task.id}/steps", json=body, headers=bearer(token))
        assert resp.status == 422, body
        fields = [p.get("field") for p in (await resp.json())["problems"]]
        assert field in fields
    assert await _steps(api, task.id) is None


async def test_only_planning_tasks_submit_steps(api: Api) -> None:
    task, token = await make_task(api.store, kind=TaskKind.STEP)
    resp = await api.client.post(f"/v1/tasks/{task.id}/steps", json={"steps": [step("a")]}, headers=bearer(token))
    assert resp.status == 409
    assert "only planning tasks" in (await resp.json())["error"]


async def test_pull_request_report_is_stored_on_the_completion_task(api: Api) -> None:
    task, token = await make_task(api.store, kind=TaskKind.COMPLETION, state=TaskState.RUNNING)
    report = {"url": "https://github.com/o/r/pull/7", "branch": "makima/demo"}
    resp = await api.client.post(f"/v1/tasks/{task.id}/pull-request", json=report, headers=bearer(token))
    assert resp.status == 200, await resp.text()
    resp = await api.client.post(
        f"/v1/tasks/{task.id}/result", json={"outcome": "succeeded", "branch": "makima/demo"}, headers=bearer(token)
    )
    assert resp.status == 200
    stored = await api.store.get_task(task.id)
    assert stored is not None and stored.result is not None
    # The result did not carry the URL again; the earlier report survives.
    assert stored.result["pull_request_url"] == "https://github.com/o/r/pull/7"
    assert stored.result["pull_request"] == report
    assert stored.result["outcome"] == "succeeded"


async def test_only_completion_tasks_report_pull_requests(api: Api) -> None:
    task, token = await make_task(api.store, kind=TaskKind.STEP)
    resp = await api.client.post(
        f"/v1/tasks/{task.id}/pull-request", json={"url": "https://x/pr/1"}, headers=bearer(token)
    )
    assert resp.status == 409


async def test_a_replan_may_say_it_adds_nothing_with_an_empty_final_batch(api: Api) -> None:
    task, token = await make_task(api.store, kind=TaskKind.PLANNING, state=TaskState.RUNNING, generation=2)
    url = f"/v1/tasks/{task.id}/steps"
    resp = await api.client.post(url, json={"steps": []}, headers=bearer(token))
    assert resp.status == 422, await resp.text()  # empty and not final: a mistake
    assert "final=true" in str((await resp.json())["problems"])
    resp = await api.client.post(url, json={"steps": [], "final": True}, headers=bearer(token))
    assert resp.status == 200, await resp.text()
    assert await resp.json() == {"accepted": 0, "total": 0}
    stored = await api.store.get_task(task.id)
    assert stored is not None and stored.result == {"steps": [], "final": True}
    # the plan is closed: nothing more is accepted
    resp = await api.client.post(url, json={"steps": [step("late")]}, headers=bearer(token))
    assert resp.status == 409 and "final" in (await resp.json())["error"]


async def test_the_first_plan_cannot_be_empty_even_when_final(api: Api) -> None:
    task, token = await make_task(api.store, kind=TaskKind.PLANNING, state=TaskState.RUNNING, generation=1)
    resp = await api.client.post(f"/v1/tasks/{task.id}/steps", json={"steps": [], "final": True}, headers=bearer(token))
    assert resp.status == 422
    assert "generation 1" in str((await resp.json())["problems"])
    assert await _steps(api, task.id) is None
