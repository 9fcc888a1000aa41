"""The task record (a row of the `tasks` table) as a pure, typed value.

The store returns these; `decide()` reads them in its snapshot. No I/O here.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class TaskKind(StrEnum):
    PLANNING = "planning"
    STEP = "step"
    COMPLETION = "completion"


class TaskState(StrEnum):
    PENDING = "pending"  # row exists, not yet handed to an executor
    DISPATCHED = "dispatched"  # Job created / daemon sent SpawnTask
    RUNNING = "running"  # the runner said hello (first event or heartbeat)
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    LOST = "lost"  # executor vanished (Job deleted, daemon gone) or deadline passed

    @property
    def active(self) -> bool:
        return self in ACTIVE_STATES

    @property
    def terminal(self) -> bool:
        return not self.active


ACTIVE_STATES = frozenset({TaskState.PENDING, TaskState.DISPATCHED, TaskState.RUNNING})

# Allowed transitions; anything else is a bug or a late report and is refused.
TRANSITIONS: dict[TaskState, frozenset[TaskState]] = {
    TaskState.PENDING: frozenset(
        {TaskState.DISPATCHED, TaskState.RUNNING, TaskState.FAILED, TaskState.CANCELLED, TaskState.LOST}
    ),
    TaskState.DISPATCHED: frozenset(
        {TaskState.RUNNING, TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELLED, TaskState.LOST}
    ),
    TaskState.RUNNING: frozenset({TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELLED, TaskState.LOST}),
    TaskState.SUCCEEDED: frozenset(),
    TaskState.FAILED: frozenset(),
    TaskState.CANCELLED: frozenset(),
    TaskState.LOST: frozenset(),
}


class Task(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str
    kind: TaskKind
    namespace: str
    directive_uid: str
    directive_name: str
    step_uid: str | None = None
    step_name: str | None = None
    attempt: int = 1
    generation: int = 1
    state: TaskState = TaskState.PENDING
    executor: str | None = None  # "job" | "daemon"
    executor_ref: str | None = None  # Job name or daemon id
    branch: str | None = None
    base_branch: str | None = None
    continue_from: str | None = None
    merge_branches: list[str] = Field(default_factory=list)
    commit: str | None = None
    result: dict[str, Any] | None = None
    error: str | None = None
    token_hash: str | None = None
    heartbeat_at: datetime | None = None
    deadline_at: datetime | None = None
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    version: int = 1
    spec: dict[str, Any] | None = None  # the protocol.TaskSpec it was dispatched with (wire form)
