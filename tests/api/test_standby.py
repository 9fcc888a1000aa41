"""A standby replica's API (finding 10 of issue 14): healthy, not ready, and refusing task
reports and daemon connections with 503 + Retry-After instead of taking them and leaving
them to the active replica's timer. Real HTTP, WebSocket and store; only `active()` is set
by the test, as the Lease election would.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import aiohttp
import pytest

from makima.core.protocol import TaskSpec
from makima.core.tasks import TaskState
from makima.dataplane.daemon import Daemon, DaemonConfig

from .conftest import DAEMON_TOKEN, NAMESPACE, READER_TOKEN, Api, bearer, make_task

LIMIT = 30.0


class Standing:
    """Test double of the Lease election's answer: standby until `activate()`."""

    def __init__(self) -> None:
        self.active = False

    def __call__(self) -> bool:
        return self.active


@pytest.fixture
def standing(api: Api) -> Standing:
    switch = Standing()
    api.deps.active = switch
    return switch


async def test_a_standby_is_healthy_but_not_ready(api: Api, standing: Standing) -> None:
    assert api.readiness.ready  # store and Kubernetes API fine: only the standby state says no
    assert (await api.client.get("/healthz")).status == 200
    resp = await api.client.get("/readyz")
    assert resp.status == 503
    assert "standing by" in (await resp.json())["error"]
    assert (await api.client.get("/metrics")).status == 200
    standing.active = True
    assert (await api.client.get("/readyz")).status == 200


async def test_a_standby_refuses_reports_with_retry_after_and_stores_nothing(api: Api, standing: Standing) -> None:
    task, token = await make_task(api.store, state=TaskState.RUNNING)
    result = {"outcome": "succeeded", "branch": task.branch, "commit": "c" * 40}
    calls = [
        ("GET", f"/v1/tasks/{task.id}", None),
        ("POST", f"/v1/tasks/{task.id}/events", {"events": [{"type": "progress", "payload": {"message": "x"}}]}),
        ("POST", f"/v1/tasks/{task.id}/result", result),
        ("POST", f"/v1/tasks/{task.id}/steps", {"steps": []}),
        ("POST", f"/v1/tasks/{task.id}/pull-request", {"url": "https://example.org/pr/1"}),
    ]
    for method, path, body in calls:
        resp = await api.client.request(method, path, json=body, headers=bearer(token))
        assert resp.status == 503, (method, path)
        assert resp.headers["Retry-After"] == "2", (method, path)
        assert resp.headers["Connection"] == "close", (method, path)  # the retry opens a new connection
        assert "standing by" in (await resp.json())["error"]
    stored = await api.store.get_task(task.id)
    assert stored is not None and stored.state is TaskState.RUNNING and stored.version == task.version
    assert await api.store.events(task.id) == []
    assert api.reports.calls == []
    # Reading a task's log is harmless and stays open.
    resp = await api.client.get(f"/v1/tasks/{task.id}/events", headers=bearer(READER_TOKEN))
    assert resp.status == 200

    # The same report, retried once this replica is the active one, is taken.
    standing.active = True
    resp = await api.client.post(f"/v1/tasks/{task.id}/result", json=result, headers=bearer(token))
    assert resp.status == 200, await resp.text()
    stored = await api.store.get_task(task.id)
    assert stored is not None and stored.state is TaskState.SUCCEEDED


async def test_a_standby_refuses_the_daemon_socket_before_the_upgrade(api: Api, standing: Standing) -> None:
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await session.ws_connect(api.url + "/v1/daemons/connect", headers=bearer(DAEMON_TOKEN))
    assert refused.value.status == 503
    assert refused.value.headers is not None and refused.value.headers["Retry-After"] == "2"
    assert api.hub.connected() == []


async def idle_runner(spec: TaskSpec, token: str, workdir: Path) -> None:
    """Test double of the task runner: no task runs here."""
    await asyncio.Event().wait()


async def test_a_daemon_refused_by_a_standby_keeps_reconnecting_and_gets_in_once_it_is_active(
    api: Api, standing: Standing, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="makima.dataplane.daemon")
    config = DaemonConfig(
        api_url=api.url,
        namespace=NAMESPACE,
        name="d1",
        token=DAEMON_TOKEN,
        work_dir=tmp_path,
        backoff_initial=0.05,
        backoff_max=0.2,
    )
    daemon = Daemon(config, runner=idle_runner)

    def refusals() -> int:
        return sum("answered 503" in r.getMessage() for r in caplog.records)

    run = asyncio.create_task(daemon.run())
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LIMIT
        while refusals() < 3:  # refused again and again: the daemon keeps trying
            assert loop.time() < deadline, "the daemon stopped retrying"
            await asyncio.sleep(0.05)
        assert not daemon.connected.is_set() and api.hub.connected() == []
        assert not [r for r in caplog.records if "refused this daemon" in r.getMessage()]  # not taken as a refusal
        standing.active = True
        await asyncio.wait_for(daemon.connected.wait(), LIMIT)
        assert [d.name for d in api.hub.connected(NAMESPACE)] == ["d1"]
    finally:
        daemon.stop()
        await asyncio.wait_for(run, LIMIT)
