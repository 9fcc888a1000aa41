"""Re-plans through the real operator (kopf, store, runner) on the sandbox: a planner that
says "nothing new", one that submits nothing, and a person who restores the goal (issue 17)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from makima.core.tasks import TaskKind, TaskState

from .conftest import Api, OperatorFactory, scripted
from .test_scenarios import finished, phase, tasks_of

SCRIPT: dict[str, Any] = {
    "plan": [{"name": "base", "title": "Base"}],
    "steps": {"base": {"files": {"base.txt": "b\n"}}},
}


def _gen2_done(d: dict[str, Any]) -> bool:
    return d["status"].get("planGeneration") == 2 and finished(d)


async def test_a_replan_with_nothing_new_completes_and_updates_the_pull_request(
    api: Api, start_operator: OperatorFactory, origin: Path
) -> None:
    op = await start_operator()
    await api.apply_directive(scripted("same", origin, {**SCRIPT, "replan": {2: []}}))
    first = await api.wait_for("same", finished, timeout=60)
    assert phase(first) == "Completed", first["status"]
    url = first["status"]["pullRequest"]["url"]
    assert url

    await api.patch_directive("same", {"spec": {"goal": "goal of same, said differently"}})
    done = await api.wait_for("same", _gen2_done, timeout=60)
    assert phase(done) == "Completed", done["status"]
    assert done["status"]["pullRequest"]["url"] == url
    ready = next(c for c in done["status"]["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "PullRequestUpdated", ready
    reasons = [e["reason"] for e in await api.events() if e["involvedObject"]["name"] == "same"]
    assert reasons.count("PullRequestOpened") == 1 and reasons.count("PullRequestUpdated") == 1, reasons
    tasks = await tasks_of(op, done)
    assert [(t.generation, t.state) for t in tasks if t.kind is TaskKind.COMPLETION] == [
        (1, TaskState.SUCCEEDED),
        (2, TaskState.SUCCEEDED),
    ]
    assert len([t for t in tasks if t.kind is TaskKind.STEP]) == 1  # the finished step is kept


async def test_a_replan_that_submits_nothing_pauses_without_completing_and_the_old_goal_recovers(
    api: Api, start_operator: OperatorFactory, origin: Path
) -> None:
    op = await start_operator()
    await api.apply_directive(scripted("stuck", origin, SCRIPT))  # no replan: the planner submits nothing
    first = await api.wait_for("stuck", finished, timeout=60)
    assert phase(first) == "Completed", first["status"]
    goal = first["spec"]["goal"]

    await api.patch_directive("stuck", {"spec": {"goal": "a goal nobody plans"}})
    paused = await api.wait_for("stuck", lambda d: d["status"].get("phase") == "Paused", timeout=60)
    assert "without submitting any steps" in paused["status"]["message"]
    tasks = await tasks_of(op, paused)
    assert [t.generation for t in tasks if t.kind is TaskKind.COMPLETION] == [1], "completed an unplanned goal"

    await api.patch_directive("stuck", {"spec": {"goal": goal, "paused": False}})
    done = await api.wait_for("stuck", lambda d: _gen2_done(d) and phase(d) == "Completed", timeout=60)
    assert done["status"]["progress"] == "1/1"
    tasks = await tasks_of(op, done)
    plannings = [(t.generation, t.attempt) for t in tasks if t.kind is TaskKind.PLANNING]
    assert sorted(plannings) == [(1, 1), (2, 1), (2, 2)], "re-planned a goal that was already planned"
