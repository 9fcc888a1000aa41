"""What a finished attempt says: why it failed, whether a person cancelled it, when to retry."""

from __future__ import annotations

from datetime import datetime, timedelta

from makima.core.models import ExecutorKind, TaskRef
from makima.core.reconcile.inputs import ReconcileConfig
from makima.core.tasks import Task, TaskState

# A task cancelled with an error starting with this is a person's decision: the step (or
# completion) fails at once instead of being retried. Any other cancellation is retried.
USER_CANCELLED = "cancelled by user"


def backoff(attempt: int, config: ReconcileConfig) -> timedelta:
    """Delay before the attempt after `attempt`: base * 2**(attempt-1), capped."""
    seconds = min(config.retry_base_seconds * 2 ** max(attempt - 1, 0), config.retry_max_seconds)
    return timedelta(seconds=seconds)


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def failure_text(task: Task) -> str:
    if task.state is TaskState.LOST:
        return f"lost ({task.error})" if task.error else "lost (executor gone)"
    if task.state is TaskState.CANCELLED:
        return task.error or "cancelled"
    return task.error or str((task.result or {}).get("message") or "failed")


def user_cancelled(task: Task) -> bool:
    return task.state is TaskState.CANCELLED and (task.error or "").startswith(USER_CANCELLED)


def no_more_attempts(task: Task) -> bool:
    """No further attempt: a person cancelled it, or its runner said another attempt cannot
    succeed (the agent's CLI or key is missing: the same pod would fail the same way)."""
    gave_up = task.state is TaskState.FAILED and (task.result or {}).get("retryable") is False
    return user_cancelled(task) or gave_up


def task_ref(task: Task) -> TaskRef:
    executor = ExecutorKind(task.executor) if task.executor in ("job", "daemon") else None
    return TaskRef(id=task.id, executor=executor, name=task.executor_ref)
