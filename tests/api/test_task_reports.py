"""Task reports over real HTTP against a real store: events, results, auth and fencing."""

from __future__ import annotations

import asyncio

import pytest

from makima.core.tasks import TaskKind, TaskState

from .conftest import READER_TOKEN, Api, bearer, make_task


async def test_spec_is_served_to_the_task_token(api: Api) -> None:
    task, token = await make_task(api.store)
    resp = await api.client.get(f"/v1/tasks/{task.id}", headers=bearer(token))
    assert resp.status == 200
    body = await resp.json()
    assert body["task_id"] == task.id
    assert body["agent"]["command"] == ["sh", "-c", "echo hi"]


async def test_events_are_appended_and_first_contact_moves_dispatched_to_running(api: Api) -> None:
    task, token = await make_task(api.store)
    events = {
        "events": [{"type": "progress", "payload": {"message": "hello"}}, {"type": "output", "payload": {"line": "x"}}]
    }
    resp = await api.client.post(f"/v1/tasks/{task.id}/events", json=events, headers=bearer(token))
    assert resp.status == 200, await resp.text()
    assert await resp.json() == {"lastSeq": 2}

    stored = await api.store.get_task(task.id)
    assert stored is not None
    assert stored.state is TaskState.RUNNING
    assert stored.started_at is not None and stored.heartbeat_at is not None
    assert [e.type for e in await api.store.events(task.id)] == ["progress", "output"]
    assert [t.state for t in api.reports.calls] == [TaskState.RUNNING]  # first contact is reported once

    resp = await api.client.post(f"/v1/tasks/{task.id}/events", json=events, headers=bearer(token))
    assert await resp.json() == {"lastSeq": 4}
    assert len(api.reports.calls) == 1


async def test_heartbeat_events_refresh_liveness_without_filling_the_log(api: Api) -> None:
    task, token = await make_task(api.store, state=TaskState.RUNNING)
    before = task.heartbeat_at
    resp = await api.client.post(
        f"/v1/tasks/{task.id}/events", json={"events": [{"type": "heartbeat"}]}, headers=bearer(token)
    )
    assert await resp.json() == {"lastSeq": 0}
    stored = await api.store.get_task(task.id)
    assert stored is not None and stored.heartbeat_at is not None and before is not None
    assert stored.heartbeat_at >= before
    assert await api.store.events(task.id) == []


async def test_result_transitions_the_task_and_calls_the_fast_path(api: Api) -> None:
    task, token = await make_task(api.store, state=TaskState.RUNNING)
    result = {"outcome": "succeeded", "branch": task.branch, "commit": "abc123" + "0" * 34, "changed_files": 3}
    resp = await api.client.post(f"/v1/tasks/{task.id}/result", json=result, headers=bearer(token))
    assert resp.status == 200, await resp.text()

    stored = await api.store.get_task(task.id)
    assert stored is not None
    assert stored.state is TaskState.SUCCEEDED
    assert (stored.branch, stored.commit) == (task.branch, "abc123" + "0" * 34)
    assert stored.result is not None and stored.result["changed_files"] == 3 and stored.finished_at is not None
    assert [(t.id, t.state) for t in api.reports.calls] == [(task.id, TaskState.SUCCEEDED)]


async def test_failed_result_records_the_error(api: Api) -> None:
    task, token = await make_task(api.store)  # dispatched: a runner may fail before any event
    resp = await api.client.post(
        f"/v1/tasks/{task.id}/result", json={"outcome": "failed", "message": "agent exited 2"}, headers=bearer(token)
    )
    assert resp.status == 200
    stored = await api.store.get_task(task.id)
    assert stored is not None and stored.state is TaskState.FAILED and stored.error == "agent exited 2"


async def test_result_of_a_pending_task_passes_through_running(api: Api) -> None:
    task, token = await make_task(api.store, state=TaskState.PENDING)
    resp = await api.client.post(f"/v1/tasks/{task.id}/result", json={"outcome": "succeeded"}, headers=bearer(token))
    assert resp.status == 200
    stored = await api.store.get_task(task.id)
    assert stored is not None and stored.state is TaskState.SUCCEEDED and stored.started_at is not None


async def test_the_same_result_sent_again_is_accepted_once(api: Api) -> None:
    task, token = await make_task(api.store, state=TaskState.RUNNING)
    result = {"outcome": "succeeded", "branch": task.branch, "commit": "c1" * 20}
    first = await api.client.post(f"/v1/tasks/{task.id}/result", json=result, headers=bearer(token))
    again = await api.client.post(f"/v1/tasks/{task.id}/result", json=result, headers=bearer(token))
    assert (first.status, again.status) == (200, 200)
    assert (await again.json())["duplicate"] is True
    assert len(api.reports.calls) == 1

    different = await api.client.post(
        f"/v1/tasks/{task.id}/result", json={"outcome": "failed", "message": "late"}, headers=bearer(token)
    )
    assert different.status == 403
    stored = await api.store.get_task(task.id)
    assert stored is not None and stored.state is TaskState.SUCCEEDED and stored.error is None


async def test_concurrent_results_one_wins_and_the_other_is_fenced(api: Api) -> None:
    task, token = await make_task(api.store, state=TaskState.RUNNING)

    async def report(outcome: str) -> int:
        resp = await api.client.post(
            f"/v1/tasks/{task.id}/result", json={"outcome": outcome, "message": outcome}, headers=bearer(token)
        )
        return resp.status

    statuses = await asyncio.gather(report("succeeded"), report("failed"))
    assert sorted(statuses) == [200, 403]
    assert len(api.reports.calls) == 1


# ---- authentication and fencing -----------------------------------------------------------


async def _unchanged(api: Api, task_id: str, version: int) -> None:
    stored = await api.store.get_task(task_id)
    assert stored is not None and stored.version == version
    assert await api.store.events(task_id) == []
    assert api.reports.calls == []


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"Authorization": "Basic dXNlcjpwdw=="}, 401),
        ({"Authorization": "Bearer"}, 401),
        ({"Authorization": "Bearer a b c"}, 401),
        ({"Authorization": "Bearer wrong-token-but-well-formed"}, 403),
    ],
)
async def test_missing_garbled_or_wrong_token_changes_nothing(api: Api, headers: dict[str, str], status: int) -> None:
    task, _ = await make_task(api.store)
    for path, body in [
        ("events", {"events": [{"type": "progress"}]}),
        ("result", {"outcome": "succeeded"}),
        ("steps", {"steps": [{"name": "a", "title": "A"}]}),
        ("pull-request", {"url": "https://example.com/pr/1"}),
    ]:
        resp = await api.client.post(f"/v1/tasks/{task.id}/{path}", json=body, headers=headers)
        assert resp.status == status, path
        body_json = await resp.json()
        assert body_json["error"]
        if status == 401:
            assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    resp = await api.client.get(f"/v1/tasks/{task.id}", headers=headers)
    assert resp.status == status
    await _unchanged(api, task.id, task.version)


@pytest.mark.parametrize("final", [TaskState.SUCCEEDED, TaskState.FAILED, TaskState.LOST, TaskState.CANCELLED])
async def test_token_of_a_finished_or_lost_task_is_fenced(api: Api, final: TaskState) -> None:
    task, token = await make_task(api.store, state=final)
    resp = await api.client.post(
        f"/v1/tasks/{task.id}/events", json={"events": [{"type": "progress"}]}, headers=bearer(token)
    )
    assert resp.status == 403
    assert f"is {final.value}" in (await resp.json())["error"]
    resp = await api.client.post(f"/v1/tasks/{task.id}/result", json={"outcome": "succeeded"}, headers=bearer(token))
    assert resp.status == 403
    assert "no longer accepted" in (await resp.json())["error"]
    await _unchanged(api, task.id, task.version)


async def test_a_late_report_from_a_lost_attempt_is_refused_while_the_retry_reports(api: Api) -> None:
    lost, lost_token = await make_task(api.store, state=TaskState.RUNNING)
    lost = await api.store.transition(lost.id, lost.version, TaskState.LOST)
    retry, retry_token = await make_task(api.store, state=TaskState.RUNNING)

    late = await api.client.post(
        f"/v1/tasks/{lost.id}/result", json={"outcome": "succeeded"}, headers=bearer(lost_token)
    )
    assert late.status == 403
    # The old attempt's token does not open the new attempt either.
    cross = await api.client.post(
        f"/v1/tasks/{retry.id}/result", json={"outcome": "succeeded"}, headers=bearer(lost_token)
    )
    assert cross.status == 403
    ok = await api.client.post(
        f"/v1/tasks/{retry.id}/result", json={"outcome": "succeeded"}, headers=bearer(retry_token)
    )
    assert ok.status == 200
    stored = await api.store.get_task(lost.id)
    assert stored is not None and stored.state is TaskState.LOST


async def test_token_of_task_a_never_opens_task_b(api: Api) -> None:
    a, token_a = await make_task(api.store)
    b, _ = await make_task(api.store)
    for method, path, body in [
        ("GET", "", None),
        ("POST", "/events", {"events": [{"type": "progress"}]}),
        ("POST", "/result", {"outcome": "succeeded"}),
    ]:
        resp = await api.client.request(method, f"/v1/tasks/{b.id}{path}", json=body, headers=bearer(token_a))
        assert resp.status == 403, path
        assert "not valid" in (await resp.json())["error"]
    await _unchanged(api, b.id, b.version)
    stored_a = await api.store.get_task(a.id)
    assert stored_a is not None and stored_a.version == a.version


async def test_unknown_task_id_is_403_not_an_existence_oracle(api: Api) -> None:
    _, token = await make_task(api.store)
    for task_id in ["00000000-0000-0000-0000-000000000000", "not-a-uuid"]:
        resp = await api.client.post(
            f"/v1/tasks/{task_id}/events", json={"events": [{"type": "progress"}]}, headers=bearer(token)
        )
        assert resp.status == 403


# ---- readers -------------------------------------------------------------------------------


async def test_readers_page_through_events_with_the_reader_token_even_after_the_task_ended(api: Api) -> None:
    task, token = await make_task(api.store)
    batch = {"events": [{"type": "output", "payload": {"line": str(i)}} for i in range(5)]}
    await api.client.post(f"/v1/tasks/{task.id}/events", json=batch, headers=bearer(token))

    own = await api.client.get(f"/v1/tasks/{task.id}/events?limit=2", headers=bearer(token))
    page = await own.json()
    assert [e["payload"]["line"] for e in page["events"]] == ["0", "1"] and page["nextSince"] == 2

    await api.client.post(f"/v1/tasks/{task.id}/result", json={"outcome": "succeeded"}, headers=bearer(token))
    after = await api.client.get(f"/v1/tasks/{task.id}/events?since=2", headers=bearer(token))
    assert after.status == 403  # the task token died with the task
    reader = await api.client.get(f"/v1/tasks/{task.id}/events?since=2", headers=bearer(READER_TOKEN))
    page = await reader.json()
    assert [e["seq"] for e in page["events"]] == [3, 4, 5] and page["nextSince"] == 5

    _other, other_token = await make_task(api.store)
    cross = await api.client.get(f"/v1/tasks/{task.id}/events", headers=bearer(other_token))
    assert cross.status == 403
    bad = await api.client.get(f"/v1/tasks/{task.id}/events?since=-1", headers=bearer(READER_TOKEN))
    assert bad.status == 400
    missing = await api.client.get(
        "/v1/tasks/00000000-0000-0000-0000-000000000000/events", headers=bearer(READER_TOKEN)
    )
    assert missing.status == 404


async def test_spec_for_returning_none_is_404(api: Api) -> None:
    task, token = await make_task(api.store, kind=TaskKind.PLANNING)

    async def gone(_task: object) -> None:
        return None

    api.deps.spec_for = gone
    resp = await api.client.get(f"/v1/tasks/{task.id}", headers=bearer(token))
    assert resp.status == 404 and "no spec" in (await resp.json())["error"]


async def test_an_unexpected_error_is_a_json_500_and_the_log_holds_no_token(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    task, token = await make_task(api.store)

    async def broken(_task: object) -> None:
        raise RuntimeError("controller bug")

    api.deps.spec_for = broken
    resp = await api.client.get(f"/v1/tasks/{task.id}", headers=bearer(token))
    assert resp.status == 500
    assert (await resp.json())["error"].startswith("internal error")
    assert "RuntimeError" in caplog.text and token not in caplog.text


async def test_a_failing_fast_path_does_not_fail_the_report(api: Api) -> None:
    task, token = await make_task(api.store, state=TaskState.RUNNING)

    async def broken(_task: object) -> None:
        raise RuntimeError("reconcile queue full")

    api.deps.on_task_report = broken
    resp = await api.client.post(f"/v1/tasks/{task.id}/result", json={"outcome": "succeeded"}, headers=bearer(token))
    assert resp.status == 200
    stored = await api.store.get_task(task.id)
    assert stored is not None and stored.state is TaskState.SUCCEEDED


@pytest.mark.parametrize(
    ("report", "field"),
    [
        ({"branch": "--upload-pack=touch /tmp/pwned"}, "branch"),
        ({"branch": "makima/demo/other"}, "branch"),  # a valid name, but not this task's branch
        ({"commit": "$(touch /tmp/pwned)\nX"}, "commit"),
        ({"commit": "abc123"}, "commit"),  # abbreviated: not a full object name
    ],
)
async def test_a_forged_branch_or_commit_is_refused(api: Api, report: dict[str, str], field: str) -> None:
    """Issue 15 item 5: a task may report only the branch the operator gave it, and a full
    commit id; anything else is refused and the task stays as it was."""
    task, token = await make_task(api.store, state=TaskState.RUNNING, branch="makima/demo/build")
    body = {"outcome": "succeeded", "branch": "makima/demo/build", "commit": "a" * 40, **report}
    resp = await api.client.post(f"/v1/tasks/{task.id}/result", json=body, headers=bearer(token))
    assert resp.status == 422, await resp.text()
    problems = (await resp.json())["problems"]
    assert any(p.get("field") == field for p in problems), problems
    stored = await api.store.get_task(task.id)
    assert stored is not None and stored.state is TaskState.RUNNING and stored.commit is None
    assert api.reports.calls == []
    ok = await api.client.post(
        f"/v1/tasks/{task.id}/result",
        json={"outcome": "succeeded", "branch": "makima/demo/build", "commit": "a" * 40},
        headers=bearer(token),
    )
    assert ok.status == 200


async def test_a_results_usage_is_stored_and_counted_once(api: Api) -> None:
    from makima.control import metrics

    task, token = await make_task(api.store, state=TaskState.RUNNING)
    labels = {"agent": "codex", "namespace": task.namespace}

    def value(name: str, **extra: str) -> float:
        return metrics.REGISTRY.get_sample_value(name, {**labels, **extra}) or 0.0

    before = (value("makima_agent_tokens_total", direction="input"), value("makima_agent_cost_usd_total"))
    usage = {"agent": "codex", "inputTokens": 1200, "outputTokens": 80, "costUsd": 0.03, "turns": 2}
    result = {"outcome": "failed", "message": "agent exited with code 1", "usage": usage}
    for _ in range(2):  # the replay of the same report must not count again
        resp = await api.client.post(f"/v1/tasks/{task.id}/result", json=result, headers=bearer(token))
        assert resp.status == 200, await resp.text()
    stored = await api.store.get_task(task.id)
    assert stored is not None and stored.result is not None
    assert stored.result["usage"]["input_tokens"] == 1200 and stored.result["usage"]["cost_usd"] == 0.03
    assert value("makima_agent_tokens_total", direction="input") - before[0] == 1200
    assert value("makima_agent_tokens_total", direction="output") >= 80
    assert value("makima_agent_cost_usd_total") - before[1] == pytest.approx(0.03)

    bad = {"outcome": "succeeded", "usage": {"inputTokens": -1}}
    other, other_token = await make_task(api.store, state=TaskState.RUNNING)
    resp = await api.client.post(f"/v1/tasks/{other.id}/result", json=bad, headers=bearer(other_token))
    assert resp.status == 422, "a negative token count is refused at the API"
