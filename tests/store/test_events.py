"""Task events: per-task monotonic seqs, paging, bounded payloads."""

from __future__ import annotations

import asyncio
import json

import pytest

from makima.control.store import MAX_PAYLOAD_BYTES, TaskNotFound, TaskStore

from .factory import make_task


async def test_append_and_page(store: TaskStore) -> None:
    t, _ = await store.create_task(make_task(), None)
    assert await store.append_events(t.id, []) == 0
    assert await store.append_events(t.id, [("progress", {"i": i}) for i in range(1, 6)]) == 5
    assert await store.append_events(t.id, [("output", {"line": "x"})]) == 6
    assert await store.append_events(t.id, []) == 6

    page1 = await store.events(t.id, since_seq=0, limit=4)
    assert [e.seq for e in page1] == [1, 2, 3, 4]
    assert page1[0].type == "progress" and page1[0].payload == {"i": 1} and page1[0].task_id == t.id
    page2 = await store.events(t.id, since_seq=page1[-1].seq, limit=4)
    assert [e.seq for e in page2] == [5, 6]
    assert await store.events(t.id, since_seq=6) == []
    assert [e.seq for e in await store.last_events(t.id, 3)] == [4, 5, 6]
    assert [e.seq for e in await store.last_events(t.id, 100)] == [1, 2, 3, 4, 5, 6]


async def test_seqs_are_per_task(store: TaskStore) -> None:
    a, _ = await store.create_task(make_task(), None)
    b, _ = await store.create_task(make_task(), None)
    await store.append_events(a.id, [("x", {})] * 3)
    assert await store.append_events(b.id, [("x", {})]) == 1


async def test_concurrent_appenders_get_gap_free_unique_seqs(pg_dsn: str) -> None:
    store = await TaskStore.connect(pg_dsn, min_size=10, max_size=10)
    try:
        t, _ = await store.create_task(make_task(), None)

        async def appender(w: int) -> list[int]:
            lasts = []
            for i in range(10):
                lasts.append(await store.append_events(t.id, [("w", {"w": w, "i": i}), ("w", {"w": w})]))
            return lasts

        results = await asyncio.gather(*(appender(w) for w in range(10)))
        events = await store.events(t.id, limit=1000)
        assert [e.seq for e in events] == list(range(1, 201))
        # Each batch got two consecutive seqs, and each writer's seqs increase.
        for lasts in results:
            assert lasts == sorted(lasts)
        by_seq = {e.seq: e for e in events}
        for lasts in results:
            for last in lasts:
                first = by_seq[last - 1]
                assert "i" in first.payload and by_seq[last].payload == {"w": first.payload["w"]}
    finally:
        await store.close()


async def test_oversized_payload_is_truncated_with_a_marker(store: TaskStore) -> None:
    t, _ = await store.create_task(make_task(), None)
    big = {"stream": "stdout", "text": "é" * 20_000}
    original = len(json.dumps(big, ensure_ascii=False, separators=(",", ":")).encode())
    last = await store.append_events(t.id, [("output", big), ("output", {"text": "small"})])
    assert last == 2
    stored, small = await store.events(t.id)
    assert stored.payload["truncated"] is True
    assert stored.payload["original_bytes"] == original
    assert stored.payload["fields"] == {"stream": "stdout"}
    assert stored.payload["preview"].startswith('{"stream":"stdout","text":"éé')
    assert len(json.dumps(stored.payload).encode()) <= MAX_PAYLOAD_BYTES
    assert small.payload == {"text": "small"}
    # Right at the bound: kept whole.
    edge = {"t": "a" * (MAX_PAYLOAD_BYTES - len('{"t":""}'))}
    await store.append_events(t.id, [("edge", edge)])
    assert (await store.last_events(t.id, 1))[0].payload == edge


async def test_awkward_payloads_are_stored_not_rejected(store: TaskStore) -> None:
    t, _ = await store.create_task(make_task(), None)
    await store.append_events(t.id, [("nul", {"text": "a\x00b"}), ("nan", {"x": float("nan")})])
    nul, nan = await store.events(t.id)
    assert nul.payload == {"text": "a\ufffdb"}
    assert nan.payload["unencodable"] is True


async def test_events_for_unknown_task(store: TaskStore) -> None:
    with pytest.raises(TaskNotFound):
        await store.append_events(make_task().id, [("x", {})])
    assert await store.events("nope") == []
