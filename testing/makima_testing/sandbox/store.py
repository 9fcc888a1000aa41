"""Object storage, the global resourceVersion, and watch fan-out (sandbox cluster, a test double).

Everything here is synchronous and runs on the sandbox's event loop, so each write is atomic
with respect to watchers: a watcher that subscribes and reads the history in one step can
neither miss nor duplicate an event.
"""

from __future__ import annotations

import asyncio
import collections
import copy
import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

Key = tuple[str, str]  # (group, plural)
ObjKey = tuple[str, str]  # (namespace or "", name)


@dataclasses.dataclass(frozen=True)
class Event:
    rv: int
    type: str  # ADDED, MODIFIED, DELETED
    key: Key
    obj: dict[str, Any]
    old: dict[str, Any] | None  # the previous state, for selector transitions


class Store:
    def __init__(self, history: int = 2000, first_rv: int = 1000) -> None:
        self._objects: dict[Key, dict[ObjKey, dict[str, Any]]] = collections.defaultdict(dict)
        self._history: collections.deque[Event] = collections.deque(maxlen=history)
        self._rv = first_rv
        self._compacted = first_rv  # watches from before this version get 410 Gone
        self._queues: dict[Key, set[asyncio.Queue[Event | None]]] = collections.defaultdict(set)
        self._listeners: list[Callable[[Event], None]] = []

    @property
    def resource_version(self) -> int:
        return self._rv

    @property
    def compacted_rv(self) -> int:
        return self._compacted

    def next_rv(self) -> int:
        self._rv += 1
        return self._rv

    def get(self, key: Key, namespace: str, name: str) -> dict[str, Any] | None:
        obj = self._objects[key].get((namespace, name))
        return copy.deepcopy(obj) if obj is not None else None

    def items(self, key: Key, namespace: str | None = None) -> Iterator[dict[str, Any]]:
        for (ns, _), obj in sorted(self._objects[key].items()):
            if namespace is None or ns == namespace:
                yield copy.deepcopy(obj)

    def keys(self) -> list[Key]:
        return [k for k, objs in self._objects.items() if objs]

    def all_objects(self) -> Iterator[tuple[Key, dict[str, Any]]]:
        for key, objs in list(self._objects.items()):
            for obj in list(objs.values()):
                yield key, copy.deepcopy(obj)

    def put(self, key: Key, obj: dict[str, Any], event: str) -> dict[str, Any]:
        """Store `obj` under a fresh resourceVersion and publish the event; returns a copy."""
        meta = obj["metadata"]
        old = self._objects[key].get((meta.get("namespace", ""), meta["name"]))
        meta["resourceVersion"] = str(self.next_rv())
        stored = copy.deepcopy(obj)
        self._objects[key][(meta.get("namespace", ""), meta["name"])] = stored
        self._publish(Event(self._rv, event, key, stored, old))
        return copy.deepcopy(stored)

    def remove(self, key: Key, namespace: str, name: str) -> dict[str, Any] | None:
        old = self._objects[key].pop((namespace, name), None)
        if old is None:
            return None
        gone = copy.deepcopy(old)
        gone["metadata"]["resourceVersion"] = str(self.next_rv())
        self._publish(Event(self._rv, "DELETED", key, gone, old))
        return copy.deepcopy(gone)

    def drop_resource(self, key: Key) -> None:
        """Forget every object of a resource (its CRD was deleted), with DELETED events."""
        for ns, name in list(self._objects[key]):
            self.remove(key, ns, name)

    def _publish(self, event: Event) -> None:
        if len(self._history) == self._history.maxlen:
            self._compacted = self._history[0].rv
        self._history.append(event)
        for queue in self._queues[event.key]:
            queue.put_nowait(event)
        for listener in self._listeners:
            listener(event)

    def subscribe(self, key: Key) -> asyncio.Queue[Event | None]:
        queue: asyncio.Queue[Event | None] = asyncio.Queue()
        self._queues[key].add(queue)
        return queue

    def unsubscribe(self, key: Key, queue: asyncio.Queue[Event | None]) -> None:
        self._queues[key].discard(queue)

    def close_watches(self) -> None:
        for queues in self._queues.values():
            for queue in queues:
                queue.put_nowait(None)

    def history_since(self, key: Key, rv: int) -> list[Event]:
        return [e for e in self._history if e.rv > rv and e.key == key]

    def add_listener(self, listener: Callable[[Event], None]) -> None:
        """Controllers (GC, Jobs) hear every event synchronously; they must not block."""
        self._listeners.append(listener)
