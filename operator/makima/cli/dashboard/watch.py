"""Kubernetes watches for the dashboard: list, then watch from the list's resourceVersion, in a
thread of its own (the client is synchronous and a watch blocks), delivered to an asyncio queue.

Each watch gets a dedicated daemon thread rather than the loop's default executor: a few
long-blocking watches would otherwise starve the short `UserKube` calls made with
`asyncio.to_thread`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass, field
from typing import Any

from makima.control.kube import KubeError, UserKube

log = logging.getLogger(__name__)

RETRY_SECONDS = 2.0
REFUSED_RETRY_SECONDS = 10.0  # a 401/403 is unlikely to change soon: do not turn it into polling


@dataclass
class Change:
    """What a watch delivers: `snapshot` (items: the whole list, after a (re)list), `ADDED`,
    `MODIFIED`, `DELETED` (obj), or `problem` (status, message: the list or watch failed; it is
    retried every few seconds)."""

    tag: str
    kind: str
    obj: dict[str, Any] = field(default_factory=dict)
    items: list[dict[str, Any]] = field(default_factory=list)
    status: int = 0
    message: str = ""


class Watch:
    """list+watch of one plural in one namespace (optionally by selector) into `queue`."""

    def __init__(
        self,
        kube: UserKube,
        queue: asyncio.Queue[Change],
        tag: str,
        plural: str,
        namespace: str,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        timeout_seconds: int = 30,
    ) -> None:
        self.kube, self.queue, self.tag = kube, queue, tag
        self.plural, self.namespace = plural, namespace
        self.label_selector, self.field_selector = label_selector, field_selector
        self.timeout_seconds = timeout_seconds
        self._stop = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> Watch:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(
            target=self._run, name=f"dashboard-watch-{self.plural}-{self.namespace}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Ask the thread to end; it does at the next event, bookmark or watch timeout."""
        self._stop.set()

    def _put(self, change: Change) -> None:
        if self._stop.is_set() or self._loop is None:
            return
        try:
            self._loop.call_soon_threadsafe(self.queue.put_nowait, change)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            self._stop.set()

    def _run(self) -> None:
        selectors = {"label_selector": self.label_selector, "field_selector": self.field_selector}
        while not self._stop.is_set():
            try:
                items, rv = self.kube.list_versioned(self.plural, self.namespace, **selectors)
                self._put(Change(self.tag, "snapshot", items=items))
                while not self._stop.is_set():
                    for kind, obj in self.kube.watch(
                        self.plural, self.namespace, rv, timeout_seconds=self.timeout_seconds, **selectors
                    ):
                        if self._stop.is_set():
                            return
                        rv = str((obj.get("metadata") or {}).get("resourceVersion") or rv)
                        if kind in ("ADDED", "MODIFIED", "DELETED"):
                            self._put(Change(self.tag, kind, obj=obj))
            except KubeError as exc:
                if exc.status == 410:  # the resourceVersion expired: list again
                    continue
                self._put(Change(self.tag, "problem", status=exc.status, message=exc.reason))
                self._stop.wait(REFUSED_RETRY_SECONDS if exc.status in (401, 403) else RETRY_SECONDS)
            except Exception as exc:  # unreachable API server and the like: say so, retry
                log.debug("watch %s/%s failed: %r", self.namespace, self.plural, exc)
                self._put(Change(self.tag, "problem", status=0, message=f"cannot reach the Kubernetes API: {exc}"))
                self._stop.wait(RETRY_SECONDS)
