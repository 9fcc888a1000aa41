"""Tasks: idempotent create, compare-and-set transitions, queries, heartbeats."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from makima.control.store import IllegalTransition, TaskNotFound, TaskStore, VersionConflict
from makima.core.tasks import TRANSITIONS, Task, TaskKind, TaskState

from .factory import make_task

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)


async def test_create_is_idempotent_and_returns_the_stored_row(store: TaskStore) -> None:
    task = make_task(merge_branches=["a", "b"], result={"k": [1, 2]}, spec={"agent": {"image": "x"}})
    row, created = await store.create_task(task, token_hash="h1")
    assert created
    assert row.id == task.id and row.version == 1 and row.state is TaskState.PENDING
    assert row.merge_branches == ["a", "b"] and row.result == {"k": [1, 2]}
    assert row.spec == {"agent": {"image": "x"}}
    assert row.token_hash == "h1" and row.created_at is not None
    # A restarted operator re-creating the task (even with other values) gets the original.
    again, created = await store.create_task(task.model_copy(update={"branch": "other"}), token_hash="h2")
    assert not created
    assert again == row


async def test_concurrent_creates_create_once(store: TaskStore) -> None:
    task = make_task()
    results = await asyncio.gather(*(store.create_task(task, None) for _ in range(20)))
    assert sum(created for _, created in results) == 1
    assert len({row.model_dump_json() for row, _ in results}) == 1


async def test_get_task(store: TaskStore) -> None:
    task = make_task()
    assert await store.get_task(task.id) is None
    assert await store.get_task("not-a-uuid") is None
    await store.create_task(task, None)
    got = await store.get_task(task.id)
    assert got is not None and got.id == task.id and got.kind is TaskKind.STEP


async def test_lifecycle_sets_timestamps_and_bumps_version(store: TaskStore) -> None:
    t, _ = await store.create_task(make_task(), None)
    t = await store.transition(t.id, 1, TaskState.DISPATCHED, now=T0, executor="job", executor_ref="job-1")
    assert (t.state, t.version, t.executor_ref) == (TaskState.DISPATCHED, 2, "job-1")
    assert t.heartbeat_at == T0 and t.started_at is None
    t = await store.transition(t.id, 2, "running", now=T0 + timedelta(seconds=5))
    assert t.started_at == T0 + timedelta(seconds=5) and t.heartbeat_at == t.started_at
    t = await store.transition(
        t.id, 3, TaskState.SUCCEEDED, now=T0 + timedelta(minutes=1), commit="abc", result={"ok": True}
    )
    assert t.version == 4 and t.commit == "abc" and t.result == {"ok": True}
    assert t.finished_at == T0 + timedelta(minutes=1)
    assert t.started_at == T0 + timedelta(seconds=5)  # kept


async def test_stale_version_conflicts_and_does_not_overwrite(store: TaskStore) -> None:
    t, _ = await store.create_task(make_task(), None)
    await store.transition(t.id, 1, TaskState.DISPATCHED, executor_ref="winner")
    with pytest.raises(VersionConflict) as err:
        await store.transition(t.id, 1, TaskState.FAILED, error="stale")
    assert (err.value.expected, err.value.actual) == (1, 2)
    now = await store.get_task(t.id)
    assert now is not None
    assert (now.state, now.executor_ref, now.error, now.version) == (TaskState.DISPATCHED, "winner", None, 2)


@pytest.mark.parametrize(
    ("path", "bad"),
    [
        ([TaskState.RUNNING, TaskState.SUCCEEDED], TaskState.FAILED),  # late report on a finished task
        ([TaskState.RUNNING], TaskState.DISPATCHED),  # backwards
        ([], TaskState.SUCCEEDED),  # pending -> succeeded skips running
        ([TaskState.CANCELLED], TaskState.RUNNING),
    ],
)
async def test_illegal_transitions_are_refused(store: TaskStore, path: list[TaskState], bad: TaskState) -> None:
    t, _ = await store.create_task(make_task(), None)
    for state in path:
        t = await store.transition(t.id, t.version, state)
    assert bad not in TRANSITIONS[t.state]
    with pytest.raises(IllegalTransition):
        await store.transition(t.id, t.version, bad)
    assert await store.get_task(t.id) == t


async def test_every_allowed_transition_is_accepted(store: TaskStore) -> None:
    for source, targets in TRANSITIONS.items():
        for target in targets:
            t, _ = await store.create_task(make_task(), None)
            for step in {
                TaskState.PENDING: [],
                TaskState.DISPATCHED: [TaskState.DISPATCHED],
                TaskState.RUNNING: [TaskState.RUNNING],
            }.get(source, []):
                t = await store.transition(t.id, t.version, step)
            assert t.state is source
            t = await store.transition(t.id, t.version, target)
            assert t.state is target


async def test_unknown_task_and_bad_fields(store: TaskStore) -> None:
    missing = make_task()
    with pytest.raises(TaskNotFound):
        await store.transition(missing.id, 1, TaskState.RUNNING)
    t, _ = await store.create_task(make_task(), None)
    with pytest.raises(ValueError, match="cannot set"):
        await store.transition(t.id, 1, TaskState.RUNNING, namespace="elsewhere")
    with pytest.raises(ValueError, match="cannot set"):
        await store.update_fields(t.id, 1, version=7)


async def test_twenty_concurrent_writers_exactly_one_wins_each_round(pg_dsn: str) -> None:
    store = await TaskStore.connect(pg_dsn, min_size=20, max_size=20)
    try:
        t, _ = await store.create_task(make_task(), None)
        targets = [TaskState.DISPATCHED, TaskState.RUNNING]
        for round_, target in enumerate(targets):
            version = t.version

            async def writer(
                i: int, tid: str = t.id, version: int = version, target: TaskState = target
            ) -> Task | None:
                try:
                    return await store.transition(tid, version, target, executor_ref=f"w{i}")
                except VersionConflict:
                    return None

            results = await asyncio.gather(*(writer(i) for i in range(20)))
            winners = [r for r in results if r is not None]
            assert len(winners) == 1, f"round {round_}: {len(winners)} winners"
            stored = await store.get_task(t.id)
            assert stored == winners[0] and stored.version == version + 1
            t = stored
        # Field updates without a state change race the same way.
        results2 = await asyncio.gather(
            *(store.update_fields(t.id, t.version, error=f"w{i}") for i in range(20)), return_exceptions=True
        )
        assert sum(not isinstance(r, BaseException) for r in results2) == 1
        assert all(isinstance(r, VersionConflict) for r in results2 if isinstance(r, BaseException))
    finally:
        await store.close()


async def test_update_fields_keeps_state(store: TaskStore) -> None:
    t, _ = await store.create_task(make_task(), None)
    t2 = await store.update_fields(t.id, 1, deadline_at=T0, merge_branches=["x"])
    assert (t2.state, t2.version, t2.deadline_at, t2.merge_branches) == (TaskState.PENDING, 2, T0, ["x"])
    with pytest.raises(VersionConflict):
        await store.update_fields(t.id, 1, error="stale")


async def test_directive_queries(store: TaskStore) -> None:
    a1, _ = await store.create_task(make_task(directive_uid="A"), None)
    a2, _ = await store.create_task(make_task(directive_uid="A", namespace="other"), None)
    b1, _ = await store.create_task(make_task(directive_uid="B"), None)
    assert [t.id for t in await store.tasks_for_directive("A")] == [a1.id, a2.id]
    got = await store.tasks_for_directives(["A", "B", "C"])
    assert {k: [t.id for t in v] for k, v in got.items()} == {"A": [a1.id, a2.id], "B": [b1.id], "C": []}

    await store.transition(b1.id, 1, TaskState.CANCELLED)
    assert {t.id for t in await store.active_tasks()} == {a1.id, a2.id}
    assert [t.id for t in await store.active_tasks("other")] == [a2.id]


async def test_expired_tasks(store: TaskStore) -> None:
    timeout = timedelta(seconds=60)
    fresh, _ = await store.create_task(make_task(), None)
    await store.transition(fresh.id, 1, TaskState.RUNNING, now=T0)
    silent, _ = await store.create_task(make_task(), None)
    await store.transition(silent.id, 1, TaskState.DISPATCHED, now=T0 - timedelta(minutes=5))
    overdue, _ = await store.create_task(make_task(deadline_at=T0 - timedelta(seconds=1)), None)
    waiting, _ = await store.create_task(make_task(deadline_at=T0 + timedelta(hours=1)), None)
    done, _ = await store.create_task(make_task(deadline_at=T0 - timedelta(hours=1)), None)
    await store.transition(done.id, 1, TaskState.FAILED, now=T0 - timedelta(hours=2))

    expired = {t.id for t in await store.expired_tasks(T0, timeout)}
    assert expired == {silent.id, overdue.id}
    # A heartbeat keeps a task alive; later, silence expires it.
    assert await store.heartbeat(silent.id, T0 - timedelta(seconds=10))
    assert {t.id for t in await store.expired_tasks(T0, timeout)} == {overdue.id}
    later = T0 + timedelta(minutes=2)
    assert {t.id for t in await store.expired_tasks(later, 60.0)} == {fresh.id, silent.id, overdue.id}
    assert waiting.id not in {t.id for t in await store.expired_tasks(later, timeout)}


async def test_heartbeat_moves_forward_only_and_does_not_bump_version(store: TaskStore) -> None:
    t, _ = await store.create_task(make_task(), None)
    t = await store.transition(t.id, 1, TaskState.RUNNING, now=T0)
    assert await store.heartbeat(t.id, T0 + timedelta(seconds=30))
    assert await store.heartbeat(t.id, T0 + timedelta(seconds=10))  # late, out of order
    got = await store.get_task(t.id)
    assert got is not None and got.heartbeat_at == T0 + timedelta(seconds=30) and got.version == t.version
    await store.transition(t.id, t.version, TaskState.SUCCEEDED)
    assert not await store.heartbeat(t.id, T0 + timedelta(minutes=1))
    assert not await store.heartbeat(make_task().id, T0)


async def test_active_tasks_of_an_agent_count_every_directive_and_only_active_ones(store: TaskStore) -> None:
    """What an Agent's maxConcurrentTasks limits: its active tasks over every directive, by the
    Agent recorded in each task's spec; a pending row counts once its spec is written."""

    def spec(agent: str | None) -> dict[str, object]:
        return {"agent": {"command": ["claude"], "agent_ref": agent}}

    for directive_uid, agent in (("d-1", "team/claude"), ("d-2", "team/claude"), ("d-2", "team/codex")):
        await store.create_task(make_task(directive_uid=directive_uid, spec=spec(agent)), None)
    await store.create_task(make_task(spec=spec(None)), None)  # inline agent: counted for no Agent
    await store.create_task(make_task(), None)  # spec not written yet
    assert await store.active_tasks_of_agent("team/claude") == 2
    assert await store.active_tasks_of_agent("team/codex") == 1
    assert await store.active_tasks_of_agent("other/claude") == 0

    done, _ = await store.create_task(make_task(spec=spec("team/claude")), None)
    assert await store.active_tasks_of_agent("team/claude") == 3
    await store.transition(done.id, done.version, TaskState.FAILED, error="boom")
    assert await store.active_tasks_of_agent("team/claude") == 2
