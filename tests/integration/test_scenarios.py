"""Scenarios of issue 6: kopf in-process, the API, real PostgreSQL and sandbox Jobs running
the real runner with the scripted agent. Each asserts on Kubernetes objects and the store.

Every test also checks that kopf logged nothing at WARNING or above (see `kopf_quiet`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from makima.control.runtime import Operator
from makima.core.tasks import Task, TaskKind, TaskState
from tests.support.wait import eventually

from .conftest import LOADED, Api, OperatorFactory, git, scripted

# Every scenario on the sandbox and on the real control plane (see conftest.cluster).
pytestmark = pytest.mark.parametrize("cluster", ["sandbox", "real"], indirect=True)


@pytest.fixture(autouse=True)
def kopf_quiet(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """A kopf warning or error during a scenario is a bug of ours (a failed handler, a bad patch)."""
    caplog.set_level(logging.INFO, logger="kopf")
    yield
    noisy = [
        f"{r.name}: {r.getMessage()}"
        for r in caplog.get_records("call")
        if r.name.startswith("kopf") and r.levelno >= logging.WARNING
    ]
    assert not noisy, noisy


def phase(d: dict[str, Any]) -> str | None:
    return (d.get("status") or {}).get("phase")


def finished(d: dict[str, Any]) -> bool:
    return phase(d) in ("Completed", "Failed", "Paused")


def condition(d: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in d["status"]["conditions"] if c["type"] == type_)


async def tasks_of(op: Operator, d: dict[str, Any]) -> list[Task]:
    return list(await op.store.tasks_for_directive(d["metadata"]["uid"]))


def step_tasks(tasks: list[Task], step: str) -> list[Task]:
    return sorted((t for t in tasks if t.kind is TaskKind.STEP and t.step_name == step), key=lambda t: t.attempt)


def only(tasks: list[Task], step: str) -> Task:
    mine = step_tasks(tasks, step)
    assert len(mine) == 1, [(t.id, t.attempt, t.state) for t in mine]
    return mine[0]


def show(origin: Path, ref: str, path: str) -> str:
    return git("-C", str(origin), "show", f"{ref}:{path}")


async def wait_step(api: Api, directive: str, step: str, want: str, timeout: float = LOADED) -> dict[str, Any]:
    async def reached() -> dict[str, Any] | None:
        got = (await api.steps(directive)).get(step)
        return got if got is not None and (got.get("status") or {}).get("phase") == want else None

    async def status() -> Any:
        return ((await api.steps(directive)).get(step) or {}).get("status")

    found = await eventually(reached, f"step {step} {want}", timeout, detail=status)
    assert found is not None
    return found


async def test_single_step(api: Api, start_operator: OperatorFactory, origin: Path) -> None:
    op = await start_operator()
    script = {"plan": [{"name": "only", "title": "The only step"}], "steps": {"only": {"files": {"a.txt": "a\n"}}}}
    await api.apply_directive(scripted("single", origin, script))
    done = await api.wait_for("single", finished)
    assert phase(done) == "Completed", done["status"]
    assert done["status"]["progress"] == "1/1"
    assert condition(done, "Ready")["status"] == "True"
    step = (await api.steps("single"))["only"]
    assert step["status"]["phase"] == "Succeeded" and step["status"]["attempts"] == 1
    assert step["metadata"]["ownerReferences"][0]["uid"] == done["metadata"]["uid"]

    tasks = await tasks_of(op, done)
    assert sorted(t.kind.value for t in tasks) == ["completion", "planning", "step"]
    assert {t.state for t in tasks} == {TaskState.SUCCEEDED}
    task = only(tasks, "only")
    assert step["status"]["task"]["id"] == task.id and step["status"]["commit"] == task.commit
    assert show(origin, task.branch or "", "a.txt") == "a"
    assert show(origin, done["status"]["pullRequest"]["branch"], "a.txt") == "a"


async def test_chain_second_step_sees_the_first(api: Api, start_operator: OperatorFactory, origin: Path) -> None:
    op = await start_operator()
    script = {
        "plan": [{"name": "one", "title": "One"}, {"name": "two", "title": "Two", "dependsOn": ["one"]}],
        "steps": {
            "one": {"files": {"one.txt": "1\n"}},
            "two": {"files": {"two.txt": "2\n"}, "expect_files": ["one.txt"]},
        },
    }
    await api.apply_directive(scripted("chain", origin, script))
    done = await api.wait_for("chain", finished)
    assert phase(done) == "Completed", done["status"]
    tasks = await tasks_of(op, done)
    one, two = only(tasks, "one"), only(tasks, "two")
    assert two.continue_from == one.branch and two.merge_branches == []
    assert one.finished_at and two.created_at and two.created_at >= one.finished_at
    # two's branch is one's commit plus two's own
    assert git("-C", str(origin), "rev-parse", f"{two.branch}~1") == one.commit
    pr = done["status"]["pullRequest"]["branch"]
    assert show(origin, pr, "one.txt") == "1" and show(origin, pr, "two.txt") == "2"


async def test_diamond_continues_from_first_dependency_and_merges_the_other(
    api: Api, start_operator: OperatorFactory, origin: Path
) -> None:
    op = await start_operator()
    script = {
        "plan": [
            {"name": "a", "title": "A"},
            {"name": "b", "title": "B", "dependsOn": ["a"]},
            {"name": "c", "title": "C", "dependsOn": ["a"]},
            {"name": "d", "title": "D", "dependsOn": ["b", "c"]},
        ],
        "steps": {
            "a": {"files": {"a.txt": "a\n"}},
            "b": {"files": {"b.txt": "b\n"}, "expect_files": ["a.txt"]},
            "c": {"files": {"c.txt": "c\n"}, "expect_files": ["a.txt"]},
            "d": {"files": {"d.txt": "d\n"}, "expect_files": ["a.txt", "b.txt", "c.txt"]},
        },
    }
    await api.apply_directive(scripted("diamond", origin, script))
    done = await api.wait_for("diamond", finished)
    assert phase(done) == "Completed", done["status"]
    assert done["status"]["progress"] == "4/4"
    tasks = await tasks_of(op, done)
    a, b, c, d = (only(tasks, n) for n in "abcd")
    assert b.continue_from == a.branch and c.continue_from == a.branch
    assert d.continue_from == b.branch and d.merge_branches == [c.branch]

    repo = str(origin)
    first_parents = git("-C", repo, "rev-list", "--first-parent", d.branch or "").split()
    assert b.commit in first_parents and a.commit in first_parents  # D continued from B's branch
    assert c.commit not in first_parents  # ... and C came in by a merge
    git("-C", repo, "merge-base", "--is-ancestor", c.commit or "", d.commit or "")
    merges = git("-C", repo, "rev-list", "--merges", f"{b.commit}..{d.commit}").split()
    assert len(merges) == 1
    assert git("-C", repo, "rev-parse", f"{merges[0]}^2") == c.commit
    tree = set(git("-C", repo, "ls-tree", "--name-only", d.commit or "").split())
    assert {"README.md", "a.txt", "b.txt", "c.txt", "d.txt"} <= tree


def overlapping(intervals: list[tuple[datetime, datetime]]) -> int:
    """The largest number of intervals open at one instant."""
    points = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals], key=lambda p: (p[0], p[1]))
    most = now = 0
    for _, delta in points:
        now += delta
        most = max(most, now)
    return most


def span(t: Task) -> tuple[datetime, datetime]:
    assert t.created_at is not None and t.finished_at is not None, t
    return t.created_at, t.finished_at


async def test_order_index_phases_run_in_order_with_parallel_steps(
    api: Api, start_operator: OperatorFactory, origin: Path
) -> None:
    op = await start_operator()
    script = {
        "plan": [
            {"name": "p1", "title": "P1", "orderIndex": 0},
            {"name": "p2", "title": "P2", "orderIndex": 0},
            {"name": "q", "title": "Q", "orderIndex": 1},
        ],
        "steps": {
            "p1": {"files": {"p1.txt": "1\n"}, "sleep": 0.5},
            "p2": {"files": {"p2.txt": "2\n"}, "sleep": 0.5},
            "q": {"files": {"q.txt": "q\n"}},
        },
    }
    await api.apply_directive(scripted("phases", origin, script))
    done = await api.wait_for("phases", finished)
    assert phase(done) == "Completed", done["status"]
    tasks = await tasks_of(op, done)
    p1, p2, q = only(tasks, "p1"), only(tasks, "p2"), only(tasks, "q")
    assert overlapping([span(p1), span(p2)]) == 2  # the phase-0 steps ran side by side
    assert span(q)[0] >= max(span(p1)[1], span(p2)[1])  # phase 1 waited for all of phase 0
    steps = await api.steps("phases")
    assert steps["q"]["spec"]["dependsOn"] == [] and steps["q"]["spec"]["orderIndex"] == 1


async def test_max_parallel_steps_caps_running_steps(api: Api, start_operator: OperatorFactory, origin: Path) -> None:
    op = await start_operator()
    names = ["s1", "s2", "s3", "s4"]
    script = {
        "plan": [{"name": n, "title": n} for n in names],
        "steps": {n: {"files": {f"{n}.txt": n}, "sleep": 0.6} for n in names},
    }
    await api.apply_directive(scripted("capped", origin, script, execution={"maxParallelSteps": 2}))
    most_running = 0
    while True:
        d = await api.directive("capped")
        if finished(d):
            break
        running = [s for s in (await api.steps("capped")).values() if (s.get("status") or {}).get("phase") == "Running"]
        most_running = max(most_running, len(running))
        await asyncio.sleep(0.05)
    assert phase(d) == "Completed", d["status"]
    tasks = [t for t in await tasks_of(op, d) if t.kind is TaskKind.STEP]
    spans = [(t.step_name, t.attempt, t.state.value, *span(t)) for t in tasks]
    assert most_running == 2, (most_running, spans)
    assert len(tasks) == 4 and {t.attempt for t in tasks} == {1}, spans
    assert overlapping([span(t) for t in tasks]) == 2, spans


async def test_failing_step_is_retried_then_fails_dependants_are_skipped_and_a_retry_request_completes_it(
    api: Api, start_operator: OperatorFactory, origin: Path
) -> None:
    op = await start_operator()
    script = {
        "plan": [
            {"name": "flaky", "title": "Flaky"},
            {"name": "bad", "title": "Bad"},
            {"name": "after", "title": "After", "dependsOn": ["bad"]},
        ],
        "steps": {
            "flaky": {"files": {"flaky.txt": "ok\n"}, "fail_attempts": [1]},
            "bad": {"fail_attempts": [1, 2]},
        },
    }
    await api.apply_directive(scripted("failing", origin, script, execution={"retries": 1}))
    done = await api.wait_for("failing", finished)
    assert phase(done) == "Failed", done["status"]
    assert condition(done, "Failed")["status"] == "True"
    steps = await api.steps("failing")
    assert steps["flaky"]["status"]["phase"] == "Succeeded" and steps["flaky"]["status"]["attempts"] == 2
    assert steps["bad"]["status"]["phase"] == "Failed" and steps["bad"]["status"]["attempts"] == 2
    assert steps["after"]["status"]["phase"] == "Skipped"
    assert "bad" in steps["after"]["status"]["message"]

    tasks = await tasks_of(op, done)
    assert [t.state for t in step_tasks(tasks, "flaky")] == [TaskState.FAILED, TaskState.SUCCEEDED]
    assert [t.state for t in step_tasks(tasks, "bad")] == [TaskState.FAILED, TaskState.FAILED]
    bad1, bad2 = step_tasks(tasks, "bad")
    assert bad2.created_at and bad1.finished_at and (bad2.created_at - bad1.finished_at).total_seconds() >= 0.2
    assert step_tasks(tasks, "after") == []
    assert not any(t.kind is TaskKind.COMPLETION for t in tasks)
    # Events are posted right after the status patches that the wait above saw.
    wanted = {"Retrying", "StepFailed", "StepSkipped"}

    async def posted() -> bool:
        return wanted <= {e["reason"] for e in await api.events()}

    await eventually(posted, f"events {sorted(wanted)} posted", LOADED)

    # `makima retry` as an editor does it: the retry annotation; the operator moves the Failed
    # and Skipped steps back to Pending, bad's third attempt succeeds and the directive completes.
    await api.patch_directive("failing", {"metadata": {"annotations": {"makima.dev/retry": "r1"}}})
    done = await api.wait_for("failing", lambda d: phase(d) == "Completed")
    assert done["status"]["retryHandled"] == "r1"
    steps = await api.steps("failing")
    assert steps["bad"]["status"]["attempts"] == 3 and steps["after"]["status"]["phase"] == "Succeeded"
    tasks = await tasks_of(op, done)
    assert [t.attempt for t in step_tasks(tasks, "bad")] == [1, 2, 3], "one more attempt, none twice"


async def test_pause_stops_dispatch_and_resume_completes(
    api: Api, start_operator: OperatorFactory, origin: Path
) -> None:
    op = await start_operator()
    script = {
        "plan": [{"name": "first", "title": "First"}, {"name": "second", "title": "Second", "dependsOn": ["first"]}],
        "steps": {"first": {"files": {"f.txt": "f\n"}, "sleep": 1.0}, "second": {"files": {"s.txt": "s\n"}}},
    }
    await api.apply_directive(scripted("pausing", origin, script))
    await wait_step(api, "pausing", "first", "Running")
    await api.patch_directive("pausing", {"spec": {"paused": True}})
    paused = await api.wait_for("pausing", lambda d: phase(d) == "Paused")
    assert condition(paused, "Progressing")["status"] == "False"
    # The running step finishes; nothing new starts while paused.
    await wait_step(api, "pausing", "first", "Succeeded")
    # The reconcile that counted the success (progress 1/2) is the one that would have dispatched.
    d = await api.wait_for("pausing", lambda d: (d.get("status") or {}).get("progress") == "1/2")
    assert phase(d) == "Paused"
    steps = await api.steps("pausing")
    assert steps["second"]["status"]["phase"] in ("Pending", "Ready")
    assert step_tasks(await tasks_of(op, d), "second") == []

    await api.patch_directive("pausing", {"spec": {"paused": False}})
    done = await api.wait_for("pausing", lambda d: phase(d) in ("Completed", "Failed"))
    assert phase(done) == "Completed", done["status"]
    tasks = await tasks_of(op, done)
    assert only(tasks, "first").attempt == 1 and only(tasks, "second").attempt == 1


async def test_goal_edit_replans_on_top_of_finished_steps(
    api: Api, start_operator: OperatorFactory, origin: Path
) -> None:
    op = await start_operator()
    script = {
        "plan": [{"name": "base", "title": "Base"}],
        "replan": {2: [{"name": "more", "title": "More", "dependsOn": ["base"]}]},
        "steps": {
            "base": {"files": {"base.txt": "b\n"}},
            "more": {"files": {"more.txt": "m\n"}, "expect_files": ["base.txt"]},
        },
    }
    await api.apply_directive(scripted("replan", origin, script))
    first = await api.wait_for("replan", finished)
    assert phase(first) == "Completed", first["status"]
    base_before = (await api.steps("replan"))["base"]["status"]

    await api.patch_directive("replan", {"spec": {"goal": "a bigger goal"}})
    done = await api.wait_for(
        "replan",
        lambda d: d["status"].get("planGeneration") == 2 and finished(d) and d["status"].get("progress") == "2/2",
    )
    assert phase(done) == "Completed", done["status"]
    steps = await api.steps("replan")
    assert steps["more"]["spec"]["generation"] == 2 and steps["base"]["spec"]["generation"] == 1
    base_after = steps["base"]["status"]
    for key in ("phase", "attempts", "commit", "branch", "task"):
        assert base_after[key] == base_before[key], key

    tasks = await tasks_of(op, done)
    assert len(step_tasks(tasks, "base")) == 1
    plannings = sorted((t for t in tasks if t.kind is TaskKind.PLANNING), key=lambda t: t.generation)
    assert [(t.generation, t.state) for t in plannings] == [(1, TaskState.SUCCEEDED), (2, TaskState.SUCCEEDED)]
    assert only(tasks, "more").continue_from == base_after["branch"]
    pr = done["status"]["pullRequest"]
    assert pr["branch"] == first["status"]["pullRequest"]["branch"]
    assert show(origin, pr["branch"], "base.txt") == "b" and show(origin, pr["branch"], "more.txt") == "m"
    reasons = [e["reason"] for e in await api.events()]
    assert "Replanning" in reasons, reasons


async def test_invalid_plan_pauses_with_the_error_and_creates_no_steps(
    api: Api, start_operator: OperatorFactory, origin: Path
) -> None:
    op = await start_operator()
    script = {"plan": [{"name": "a", "title": "A", "dependsOn": ["ghost"]}, {"name": "b", "title": "B"}]}
    await api.apply_directive(scripted("badplan", origin, script))
    paused = await api.wait_for("badplan", finished)
    assert phase(paused) == "Paused", paused["status"]
    assert paused["spec"]["paused"] is True
    planning = condition(paused, "Planning")
    assert planning["reason"] == "PlanningFailed" and "ghost" in planning["message"], planning
    assert "ghost" in paused["status"]["message"]
    assert await api.steps("badplan") == {}
    tasks = await tasks_of(op, paused)
    assert [(t.kind, t.attempt, t.state) for t in sorted(tasks, key=lambda t: t.attempt)] == [
        (TaskKind.PLANNING, 1, TaskState.FAILED),
        (TaskKind.PLANNING, 2, TaskState.FAILED),
    ]
    # It stays that way once the operator has seen its own pause: no third attempt, no steps.
    await api.wait_for("badplan", lambda d: d["status"].get("observedGeneration") == d["metadata"]["generation"])
    assert len(await tasks_of(op, paused)) == 2 and await api.steps("badplan") == {}


async def test_delete_while_running_cancels_tasks(api: Api, start_operator: OperatorFactory, origin: Path) -> None:
    op = await start_operator()
    script = {"plan": [{"name": "slow", "title": "Slow"}], "steps": {"slow": {"sleep": 60}}}
    created = await api.apply_directive(scripted("doomed", origin, script))
    await wait_step(api, "doomed", "slow", "Running")
    d = await api.directive("doomed")
    assert "makima.dev/cancel-tasks" in d["metadata"]["finalizers"]
    task = only(await tasks_of(op, d), "slow")
    assert any(j["metadata"]["name"] == task.executor_ref for j in await api.jobs())

    await api.delete_directive("doomed")

    async def deleted() -> bool:
        try:
            await api.directive("doomed")
        except AssertionError as exc:
            assert "404" in str(exc)
            return True
        return False

    await eventually(deleted, "the directive deleted", LOADED)
    stored = only(await op.store.tasks_for_directive(created["metadata"]["uid"]), "slow")
    assert stored.state is TaskState.CANCELLED

    async def cleaned_up() -> bool:
        jobs = [j["metadata"]["name"] for j in await api.jobs()]
        return task.executor_ref not in jobs and not await api.steps("doomed")

    await eventually(cleaned_up, "the Job and the steps of the deleted directive gone", LOADED)


async def test_operator_restarted_mid_run_runs_each_step_once(
    api: Api, start_operator: OperatorFactory, origin: Path
) -> None:
    first = await start_operator()
    # Same API address for the second operator: the running Job reports to it.
    listen = first.settings.api_listen
    script = {
        "plan": [{"name": "one", "title": "One"}, {"name": "two", "title": "Two", "dependsOn": ["one"]}],
        "steps": {"one": {"files": {"one.txt": "1\n"}, "sleep": 2.0}, "two": {"files": {"two.txt": "2\n"}}},
    }
    await api.apply_directive(scripted("restart", origin, script))
    await wait_step(api, "restart", "one", "Running")
    await start_operator.stop_all()  # type: ignore[attr-defined]
    second = await start_operator(api_listen=listen, api_url=f"http://{listen}")
    assert second.controller is not first.controller

    done = await api.wait_for("restart", finished)
    assert phase(done) == "Completed", done["status"]
    steps = await api.steps("restart")
    assert {s["status"]["attempts"] for s in steps.values()} == {1}
    tasks = await tasks_of(second, done)
    assert len(step_tasks(tasks, "one")) == 1 and len(step_tasks(tasks, "two")) == 1
    assert sorted(t.kind.value for t in tasks) == ["completion", "planning", "step", "step"]
    assert {t.state for t in tasks} == {TaskState.SUCCEEDED}
    jobs = await api.jobs()
    assert len(jobs) == 4, [j["metadata"]["name"] for j in jobs]
