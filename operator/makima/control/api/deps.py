"""What the API needs from the rest of the operator, passed in as one dataclass."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from makima.core.protocol import Problem, StepSubmission, TaskSpec
from makima.core.tasks import Task

if TYPE_CHECKING:
    from makima.control.executors.daemons import DaemonHub
    from makima.control.store import TaskStore


def utcnow() -> datetime:
    return datetime.now(UTC)


async def always_ready() -> bool:
    return True


def always_active() -> bool:
    return True


@dataclass
class ApiDeps:
    """The store, the daemon hub and the controller's callables.

    - `spec_for(task)`: the TaskSpec of a task (None: the task can no longer run, 404).
    - `validate_steps(task, steps)`: DAG problems of the planner's steps for `task` — every
      step the planning task has submitted so far plus the new ones (so `dependsOn` may
      name a step of an earlier call). Shape is already validated by pydantic.
    - `on_task_report(task)`: the fast path, called after a report changed a task (first
      contact, result, accepted steps, pull-request report) with the updated task.
      Its failures are logged, never turned into an error for the reporter.
    - `verify_daemon_token(namespace, token)`: the namespace's daemon token check.
    - `ready()`: backs /readyz (on the active replica).
    - `active()`: whether this replica is the active one (control/leadership.py); a standby
      is not ready and answers task reports and daemon connections with 503 + Retry-After.
    - `reader_token`: operator-configured token that may read any task's event log.
    """

    store: TaskStore
    hub: DaemonHub
    spec_for: Callable[[Task], Awaitable[TaskSpec | None]]
    validate_steps: Callable[[Task, list[StepSubmission]], Awaitable[list[Problem]]]
    on_task_report: Callable[[Task], Awaitable[None]]
    verify_daemon_token: Callable[[str, str], Awaitable[bool]]
    ready: Callable[[], Awaitable[bool]] = always_ready
    active: Callable[[], bool] = always_active
    reader_token: str | None = None
    clock: Callable[[], datetime] = field(default=utcnow)
    cas_retries: int = 5
