"""Task and daemon tokens: hashed at rest, constant-time compare, valid while active."""

from __future__ import annotations

from makima.control.store import TaskStore, hash_token, new_token, token_matches
from makima.core.tasks import TaskState

from .factory import make_task


def test_token_helpers() -> None:
    a, b = new_token(), new_token()
    assert a != b and len(a) >= 40
    assert hash_token(a) == hash_token(a) != hash_token(b)
    assert a not in hash_token(a) and len(hash_token(a)) == 64
    assert token_matches(a, hash_token(a))
    assert not token_matches(b, hash_token(a))
    assert not token_matches(a, None)
    assert not token_matches("", None)


async def test_token_valid_only_while_task_active(store: TaskStore) -> None:
    token = new_token()
    t, _ = await store.create_task(make_task(), hash_token(token))
    assert t.token_hash == hash_token(token) and token not in t.model_dump_json()
    assert await store.verify_token(t.id, token)
    assert not await store.verify_token(t.id, new_token())
    t = await store.transition(t.id, t.version, TaskState.RUNNING)
    assert await store.verify_token(t.id, token)
    await store.transition(t.id, t.version, TaskState.SUCCEEDED)
    assert not await store.verify_token(t.id, token)


async def test_token_on_unknown_or_tokenless_task(store: TaskStore) -> None:
    token = new_token()
    assert not await store.verify_token(make_task().id, token)
    assert not await store.verify_token("not-a-uuid", token)
    t, _ = await store.create_task(make_task(), None)
    assert not await store.verify_token(t.id, token)
    assert not await store.verify_token(t.id, "")


async def test_daemon_namespace_token(store: TaskStore) -> None:
    token = new_token()
    assert not await store.verify_daemon_token("ns", token)
    await store.set_daemon_token("ns", hash_token(token))
    assert await store.verify_daemon_token("ns", token)
    assert not await store.verify_daemon_token("other", token)
    rotated = new_token()
    await store.set_daemon_token("ns", hash_token(rotated))
    assert not await store.verify_daemon_token("ns", token)
    assert await store.verify_daemon_token("ns", rotated)
