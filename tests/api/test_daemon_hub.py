"""The operator side of the daemon socket, driven by a raw WebSocket client (the wire protocol)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
from pydantic import TypeAdapter

from makima.control import metrics
from makima.control.executors.daemons import CLOSE_FORBIDDEN, CLOSE_LOST
from makima.core.protocol import (
    CancelTask,
    DaemonHeartbeat,
    DaemonHello,
    DaemonWelcome,
    OperatorToDaemon,
    SpawnAck,
    SpawnTask,
)
from makima.core.tasks import TaskState
from tests.support.wait import eventually

from .conftest import DAEMON_TOKEN, NAMESPACE, Api, bearer, make_task, spec_of

FROM_OPERATOR: TypeAdapter[Any] = TypeAdapter(OperatorToDaemon)


@asynccontextmanager
async def raw_daemon(
    api: Api, name: str = "d1", token: str = DAEMON_TOKEN, **hello: Any
) -> AsyncIterator[tuple[aiohttp.ClientWebSocketResponse, DaemonWelcome]]:
    async with api.client.ws_connect("/v1/daemons/connect", headers=bearer(token)) as ws:
        await ws.send_str(DaemonHello(name=name, namespace=NAMESPACE, **hello).model_dump_json())
        welcome = FROM_OPERATOR.validate_json(await ws.receive_str(timeout=5))
        assert isinstance(welcome, DaemonWelcome)
        yield ws, welcome


async def receive(ws: aiohttp.ClientWebSocketResponse) -> Any:
    return FROM_OPERATOR.validate_json(await ws.receive_str(timeout=5))


async def test_daemon_registers_and_is_offered_to_the_router(api: Api) -> None:
    async with raw_daemon(api, labels={"gpu": "yes"}, capacity=3) as (_ws, welcome):
        assert welcome.heartbeat_seconds == pytest.approx(0.2)
        [row] = await api.store.connected_daemons(NAMESPACE)
        assert (row.id, row.name, row.capacity, row.labels) == (welcome.daemon_id, "d1", 3, {"gpu": "yes"})
        [view] = api.hub.available(NAMESPACE)
        assert (view.id, view.free, view.labels) == (welcome.daemon_id, 3, {"gpu": "yes"})
        assert api.hub.is_connected(welcome.daemon_id)
        assert api.hub.available("other-namespace") == []
        assert metrics.REGISTRY.get_sample_value("makima_daemons_connected") == 1


async def test_bad_daemon_token_is_refused_and_nothing_registered(api: Api) -> None:
    async with api.client.ws_connect("/v1/daemons/connect", headers=bearer("not-the-daemon-token")) as ws:
        await ws.send_str(DaemonHello(name="d1", namespace=NAMESPACE).model_dump_json())
        msg = await ws.receive(timeout=5)
        assert msg.type is aiohttp.WSMsgType.CLOSE
        assert ws.close_code == CLOSE_FORBIDDEN
    # A token good for another namespace does not open this one.
    async with api.client.ws_connect("/v1/daemons/connect", headers=bearer(DAEMON_TOKEN)) as ws:
        await ws.send_str(DaemonHello(name="d1", namespace="team-b").model_dump_json())
        await ws.receive(timeout=5)
        assert ws.close_code == CLOSE_FORBIDDEN
    assert await api.store.connected_daemons(NAMESPACE) == []
    assert api.hub.connected() == []


async def test_missing_daemon_token_is_401_before_the_upgrade(api: Api) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as err:
        await api.client.ws_connect("/v1/daemons/connect")
    assert err.value.status == 401


async def test_spawn_ack_heartbeat_and_cancel(api: Api) -> None:
    async with raw_daemon(api, capacity=1) as (ws, welcome):
        task, token = await make_task(api.store, executor_ref=welcome.daemon_id)
        spawn = asyncio.create_task(api.hub.spawn(welcome.daemon_id, spec_of(task), token))
        msg = await receive(ws)
        assert isinstance(msg, SpawnTask) and msg.spec.task_id == task.id and msg.token == token
        assert api.hub.available(NAMESPACE) == []  # the slot is reserved while the ack is awaited
        await ws.send_str(SpawnAck(task_id=task.id).model_dump_json())
        assert await spawn is True
        view = api.hub.get(welcome.daemon_id)
        assert view is not None and view.in_flight == {task.id}

        # Full: a second spawn is refused without asking the daemon.
        other, other_token = await make_task(api.store)
        assert await api.hub.spawn(welcome.daemon_id, spec_of(other), other_token) is False

        # A heartbeat refreshes the daemon row and the heartbeat of the task it runs.
        before = (await api.store.get_task(task.id)).heartbeat_at  # type: ignore[union-attr]
        await ws.send_str(DaemonHeartbeat(running=[task.id]).model_dump_json())

        async def refreshed() -> bool:
            row = await api.store.get_daemon(welcome.daemon_id)
            t = await api.store.get_task(task.id)
            return bool(row and row.in_flight == 1 and t and before and t.heartbeat_at and t.heartbeat_at > before)

        await eventually(refreshed, "the heartbeat refreshed")

        assert await api.hub.cancel(welcome.daemon_id, task.id) is True
        msg = await receive(ws)
        assert isinstance(msg, CancelTask) and msg.task_id == task.id


async def test_refused_and_unanswered_spawns(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    async with raw_daemon(api, capacity=2) as (ws, welcome):
        task, token = await make_task(api.store)
        spawn = asyncio.create_task(api.hub.spawn(welcome.daemon_id, spec_of(task), token))
        await receive(ws)
        await ws.send_str(SpawnAck(task_id=task.id, accepted=False, reason="disk full").model_dump_json())
        assert await spawn is False

        silent, silent_token = await make_task(api.store)
        assert await api.hub.spawn(welcome.daemon_id, spec_of(silent), silent_token, timeout=0.3) is False
        assert isinstance(await receive(ws), SpawnTask)
        cancel = await receive(ws)  # a late acceptance must not run: the hub cancels it
        assert isinstance(cancel, CancelTask) and cancel.task_id == silent.id
        view = api.hub.get(welcome.daemon_id)
        assert view is not None and view.in_flight == frozenset()
    assert await api.hub.spawn(welcome.daemon_id, spec_of(task), token) is False  # gone


async def test_disconnect_releases_the_daemon_but_keeps_its_tasks(api: Api) -> None:
    async with raw_daemon(api) as (ws, welcome):
        task, token = await make_task(api.store, state=TaskState.RUNNING, executor_ref=welcome.daemon_id)
        spawn = asyncio.create_task(api.hub.spawn(welcome.daemon_id, spec_of(task), token))
        await receive(ws)
        await ws.send_str(SpawnAck(task_id=task.id).model_dump_json())
        assert await spawn
    daemon_id = welcome.daemon_id

    async def released() -> bool:
        row = await api.store.get_daemon(daemon_id)
        return row is not None and not row.connected

    await eventually(released, "the daemon released")
    assert not api.hub.is_connected(daemon_id)
    assert metrics.REGISTRY.get_sample_value("makima_daemons_connected") == 0
    stored = await api.store.get_task(task.id)
    assert stored is not None and stored.state is TaskState.RUNNING  # the controller decides, after lost-after


async def test_reconnect_with_running_ids_keeps_them_and_cancels_stale_ones(api: Api) -> None:
    async with raw_daemon(api, capacity=3) as (_ws, welcome):
        daemon_id = welcome.daemon_id
    kept, _ = await make_task(api.store, state=TaskState.RUNNING, executor_ref=daemon_id)
    lost, _ = await make_task(api.store, state=TaskState.LOST, executor_ref=daemon_id)
    elsewhere, _ = await make_task(api.store, state=TaskState.RUNNING, executor_ref="another-daemon")

    async with raw_daemon(api, capacity=3, running=[kept.id, lost.id, elsewhere.id]) as (ws, again):
        assert again.daemon_id == daemon_id  # stable per namespace/name
        cancelled = {(await receive(ws)).task_id, (await receive(ws)).task_id}
        assert cancelled == {lost.id, elsewhere.id}
        view = api.hub.get(daemon_id)
        assert view is not None and view.in_flight == {kept.id}
        row = await api.store.get_daemon(daemon_id)
        assert row is not None and row.connected


async def test_a_silent_daemon_is_closed_after_lost_after(api: Api) -> None:
    async with raw_daemon(api) as (ws, welcome):
        msg = await ws.receive(timeout=5)  # no heartbeats from us
        assert msg.type is aiohttp.WSMsgType.CLOSE and ws.close_code == CLOSE_LOST

    async def released() -> bool:
        row = await api.store.get_daemon(welcome.daemon_id)
        return row is not None and not row.connected

    await eventually(released, "the daemon released")


async def test_a_second_connection_of_the_same_daemon_replaces_the_first(api: Api) -> None:
    async with raw_daemon(api) as (old, first), raw_daemon(api) as (_new, second):
        assert first.daemon_id == second.daemon_id
        msg = await old.receive(timeout=5)
        assert msg.type is aiohttp.WSMsgType.CLOSE
        await asyncio.sleep(0.1)
        assert api.hub.is_connected(second.daemon_id)
        row = await api.store.get_daemon(second.daemon_id)
        assert row is not None and row.connected  # the old socket's end did not release the new one


@pytest.mark.parametrize("first", [b"not json", b'{"type": "heartbeat"}', b'{"type": "hello", "name": "Bad Name"}'])
async def test_a_bad_first_message_closes_the_socket(api: Api, first: bytes) -> None:
    async with api.client.ws_connect("/v1/daemons/connect", headers=bearer(DAEMON_TOKEN)) as ws:
        await ws.send_str(first.decode())
        msg = await ws.receive(timeout=5)
        assert msg.type is aiohttp.WSMsgType.CLOSE and ws.close_code == 4400
