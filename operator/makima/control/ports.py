"""The controller's seams, typed: what it and the dispatcher need from the task store, from
Kubernetes and from the daemon registry.

The operator plugs in `store.TaskStore`, `kube.Kube` and `executors.daemons.DaemonHub`
(`runtime.build`). Each Protocol lists only the calls made through it, so a test double
implements what is used and nothing else (the property tests run the real controller and
dispatcher over in-memory doubles of these ports).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol

from makima.core.protocol import TaskSpec
from makima.core.tasks import Task, TaskState


class TaskRecords(Protocol):
    """Task rows. Every state change is a compare-and-set on `version`: a lost race raises
    `store.VersionConflict` (or `IllegalTransition`) and never overwrites."""

    async def create_task(self, task: Task) -> tuple[Task, bool]:
        """Insert unless the id exists; (stored row, created?)."""
        ...

    async def get_task(self, task_id: str) -> Task | None: ...

    async def transition(
        self, task_id: str, expected_version: int, new_state: TaskState, *, now: datetime | None = None, **fields: Any
    ) -> Task: ...

    async def update_fields(
        self, task_id: str, expected_version: int, *, now: datetime | None = None, **fields: Any
    ) -> Task: ...

    async def tasks_for_directive(self, directive_uid: str) -> list[Task]:
        """Every task of one directive, oldest first."""
        ...

    async def expired_tasks(self, now: datetime, heartbeat_timeout: float) -> list[Task]:
        """Active tasks past their deadline or without a heartbeat for `heartbeat_timeout` seconds."""
        ...


class KubeGateway(Protocol):
    """The Kubernetes calls of the operator (the RBAC rules in `kube_calls.py`). A failed call
    raises `kube.KubeError`; creates are create-if-absent (None: it existed), deletes
    delete-if-present."""

    async def create_step(self, namespace: str, body: dict[str, Any]) -> dict[str, Any] | None: ...

    async def patch_status(self, plural: str, namespace: str, name: str, status: dict[str, Any]) -> dict[str, Any]:
        """Merge-patch the status subresource; returns the object as written."""
        ...

    async def patch_directive(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]: ...

    async def delete_directive(self, namespace: str, name: str) -> None: ...

    async def emit_event(self, obj: dict[str, Any], type_: str, reason: str, message: str) -> None:
        """An Event on `obj`; never fails the caller."""
        ...

    async def get_secret_data(self, namespace: str, name: str) -> dict[str, str] | None: ...

    async def create_secret(self, namespace: str, body: dict[str, Any]) -> None: ...

    async def delete_secret(self, namespace: str, name: str) -> None: ...

    async def create_job(self, namespace: str, body: dict[str, Any]) -> dict[str, Any] | None: ...

    async def delete_job(self, namespace: str, name: str) -> None: ...


class ConnectedDaemon(Protocol):
    """A connected daemon as routing sees it; `in_flight` are the ids of the tasks it runs."""

    @property
    def id(self) -> str: ...

    @property
    def namespace(self) -> str: ...

    @property
    def labels(self) -> Mapping[str, str]: ...

    @property
    def capacity(self) -> int: ...

    @property
    def in_flight(self) -> Collection[str]: ...


class DaemonRegistry(Protocol):
    """The daemons connected to this operator process."""

    def available(self, namespace: str) -> Sequence[ConnectedDaemon]:
        """Daemons of `namespace` with a free slot, least loaded first."""
        ...

    async def spawn(self, daemon_id: str, spec: TaskSpec, token: str) -> bool:
        """Hand a task to a daemon; True iff it accepted."""
        ...

    async def cancel(self, daemon_id: str, task_id: str) -> bool:
        """Ask a daemon to stop a task; False if it is not connected."""
        ...
