"""Stage 1: an active task past its deadline, silent too long, or never handed out is lost."""

from __future__ import annotations

from datetime import datetime, timedelta

from makima.core.models import ExecutorKind
from makima.core.reconcile.actions import EmitEvent, ExpireTask
from makima.core.reconcile.attempts import iso
from makima.core.reconcile.facts import Facts, Stage
from makima.core.reconcile.inputs import ReconcileConfig
from makima.core.reconcile.reasons import Reason
from makima.core.tasks import Task, TaskState


def expire(facts: Facts) -> Stage[None]:
    """ExpireTask (and a TaskExpired event) for every active task that is lost, by task id."""
    actions: list[ExpireTask] = []
    events: list[EmitEvent] = []
    for task in sorted((t for t in facts.tasks if t.state.active), key=lambda t: t.id):
        reason = expiry_reason(task, facts.now, facts.timeout, facts.config)
        if reason is not None:
            actions.append(ExpireTask(task.id, reason))
            what = f"step {task.step_name!r} attempt {task.attempt}" if task.step_name else f"{task.kind.value} task"
            events.append(EmitEvent("Warning", Reason.TASK_EXPIRED, f"{what}: {reason}"))
    return Stage(None, tuple(actions), tuple(events))


def expiry_reason(task: Task, now: datetime, timeout: timedelta, config: ReconcileConfig) -> str | None:
    """Why an active task counts as lost now, or None."""
    return _past_deadline(task, now, timeout) or _silent(task, now, config) or _never_handed_out(task, now, config)


def _past_deadline(task: Task, now: datetime, timeout: timedelta) -> str | None:
    start = task.started_at or task.created_at
    deadline = task.deadline_at or (start + timeout if start is not None else None)
    if deadline is not None and now >= deadline:
        return f"deadline {iso(deadline)} passed without a result"
    return None


def _silent(task: Task, now: datetime, config: ReconcileConfig) -> str | None:
    """A running task (or a daemon's, once dispatched) whose heartbeat stopped."""
    daemon = task.executor == ExecutorKind.DAEMON.value
    if not (task.state is TaskState.RUNNING or (task.state is TaskState.DISPATCHED and daemon)):
        return None
    last = task.heartbeat_at or task.started_at or task.created_at
    limit = config.daemon_lost_after_seconds if daemon else config.heartbeat_timeout_seconds
    if last is None or (now - last).total_seconds() <= limit:
        return None
    who = f"daemon {task.executor_ref}" if daemon else f"job {task.executor_ref or ''}".rstrip()
    return f"no heartbeat from {who} since {iso(last)}"


def _never_handed_out(task: Task, now: datetime, config: ReconcileConfig) -> str | None:
    created = task.created_at
    if task.state is not TaskState.PENDING or created is None:
        return None
    if (now - created).total_seconds() <= config.heartbeat_timeout_seconds:
        return None
    return f"never handed to an executor since {iso(created)}"
