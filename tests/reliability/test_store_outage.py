"""Finding 8 and the store half of finding 4 (issue 14): a database that stops answering.

The path to PostgreSQL goes through `CutProxy`; a cut is silence, not a refusal, so only
timeouts end a waiting call. Every wait here has a deadline well above what the fixed
code needs; the seed's store waited for the whole cut (the deadline is what failed).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest
from aiohttp import web

from makima.control.api import ApiDeps, build_app
from makima.control.executors.daemons import DaemonHub
from makima.control.store import StoreUnavailable, TaskStore
from makima.core.tasks import TaskState
from tests.store.factory import make_task
from tests.support.wait import eventually

from .proxy import CutProxy

LIMIT = 30.0  # seconds: far above the bounded store timeouts, far below "the cut's length"


async def running_task(store: TaskStore, heartbeat: datetime) -> str:
    task, _ = await store.create_task(make_task())
    task = await store.transition(task.id, task.version, TaskState.DISPATCHED, executor="job", executor_ref="j")
    task = await store.transition(task.id, task.version, TaskState.RUNNING)
    await store.update_fields(task.id, task.version, heartbeat_at=heartbeat)
    return task.id


async def test_a_silent_database_fails_operations_in_bounded_time(cut_store: TaskStore, db_proxy: CutProxy) -> None:
    task_id = await running_task(cut_store, datetime.now(UTC))
    db_proxy.cut()
    try:
        with pytest.raises(StoreUnavailable):
            await asyncio.wait_for(cut_store.get_task(task_id), LIMIT)
        assert not cut_store.healthy
        assert await asyncio.wait_for(cut_store.ping(), LIMIT) is False
    finally:
        db_proxy.heal()
    # The pool recovers by itself once the path is back.
    task = await asyncio.wait_for(cut_store.get_task(task_id), LIMIT)
    assert task is not None and cut_store.healthy


async def test_outage_time_is_given_back_to_active_tasks(cut_store: TaskStore, db_proxy: CutProxy) -> None:
    before = datetime.now(UTC) - timedelta(seconds=50)
    task_id = await running_task(cut_store, before)
    db_proxy.cut()
    try:
        with pytest.raises(StoreUnavailable):
            await asyncio.wait_for(cut_store.get_task(task_id), LIMIT)
    finally:
        db_proxy.heal()
    task = await asyncio.wait_for(cut_store.get_task(task_id), LIMIT)
    assert task is not None and task.heartbeat_at is not None
    # Moved forward by (at least) the time the store could not be reached, never past now.
    assert before < task.heartbeat_at <= datetime.now(UTC)


async def test_a_restarted_operator_gives_running_tasks_a_full_window(store: TaskStore) -> None:
    old = datetime.now(UTC) - timedelta(hours=1)
    running = await running_task(store, old)
    finished, _ = await store.create_task(make_task())
    finished = await store.transition(finished.id, finished.version, TaskState.CANCELLED)
    now = datetime.now(UTC)
    assert await store.adopt_active_tasks(now) == 1
    task = await store.get_task(running)
    assert task is not None and task.heartbeat_at == now
    assert await store.expired_tasks(now, heartbeat_timeout=60) == []
    assert (await store.get_task(finished.id)).heartbeat_at is None  # type: ignore[union-attr]


async def test_readyz_answers_in_time_while_the_database_is_silent(cut_store: TaskStore, db_proxy: CutProxy) -> None:
    async def ready() -> bool:
        return await cut_store.ping()

    deps = ApiDeps(
        store=cut_store,
        hub=DaemonHub(cut_store),
        spec_for=None,  # type: ignore[arg-type]
        validate_steps=None,  # type: ignore[arg-type]
        on_task_report=None,  # type: ignore[arg-type]
        verify_daemon_token=None,  # type: ignore[arg-type]
        ready=ready,
    )
    runner = web.AppRunner(build_app(deps))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=LIMIT)) as http:
            async with http.get(f"http://127.0.0.1:{port}/readyz") as r:
                assert r.status == 200
            db_proxy.cut()
            try:
                for _ in range(3):  # probes keep answering, not only the first
                    async with http.get(f"http://127.0.0.1:{port}/readyz") as r:
                        assert r.status == 503
            finally:
                db_proxy.heal()

            async def ready() -> bool:
                async with http.get(f"http://127.0.0.1:{port}/readyz") as r:
                    return r.status == 200

            await eventually(ready, "/readyz 200 once the database is back", 30)
    finally:
        await runner.cleanup()


async def test_event_batches_are_stored_once(store: TaskStore) -> None:
    task, _ = await store.create_task(make_task())
    first = await store.append_events(task.id, [("output", {"line": "a"}), ("output", {"line": "b"})], batch_id="b1")
    again = await store.append_events(task.id, [("output", {"line": "a"}), ("output", {"line": "b"})], batch_id="b1")
    other = await store.append_events(task.id, [("output", {"line": "c"})], batch_id="b2")
    assert (first, again, other) == (2, 2, 3)
    assert [e.payload["line"] for e in await store.events(task.id)] == ["a", "b", "c"]
