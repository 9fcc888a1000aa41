"""Daemon registrations: stable ids, load, release, staleness."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from makima.control.store import TaskStore

T0 = datetime(2025, 1, 1, tzinfo=UTC)


async def test_register_heartbeat_release(store: TaskStore) -> None:
    d1 = await store.register_daemon("ns", "alpha", {"gpu": "yes"}, 4, "h", now=T0)
    d2 = await store.register_daemon("ns", "beta", {}, 2, None, now=T0)
    await store.register_daemon("other", "alpha", {}, 1, None, now=T0)
    assert d1 != d2
    assert await store.daemon_heartbeat(d1, 3, T0 + timedelta(seconds=5))
    daemons = await store.connected_daemons("ns")
    assert [(d.name, d.in_flight, d.free, d.labels) for d in daemons] == [
        ("alpha", 3, 1, {"gpu": "yes"}),
        ("beta", 0, 2, {}),
    ]
    assert daemons[0].last_seen == T0 + timedelta(seconds=5)

    await store.release_daemon(d2)
    assert [d.name for d in await store.connected_daemons("ns")] == ["alpha"]
    assert not await store.daemon_heartbeat(d2, 0, T0 + timedelta(seconds=6))  # must re-register
    # Re-registering keeps the id, so tasks recorded against it still match.
    assert await store.register_daemon("ns", "beta", {}, 5, None, now=T0) == d2
    beta = await store.get_daemon(d2)
    assert beta is not None and beta.connected and beta.capacity == 5


async def test_stale_daemons_are_disconnected(store: TaskStore) -> None:
    old = await store.register_daemon("ns", "old", {}, 1, None, now=T0)
    new = await store.register_daemon("ns", "new", {}, 1, None, now=T0 + timedelta(seconds=50))
    assert await store.disconnect_stale_daemons(T0 + timedelta(seconds=60), 30) == [old]
    assert [d.id for d in await store.connected_daemons("ns")] == [new]
    assert await store.disconnect_stale_daemons(T0 + timedelta(seconds=60), 30) == []
