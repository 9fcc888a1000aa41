"""Findings 6 and 7 (issue 14): what the controller does with an ExpireTask action.

- A task it marks lost triggers its directive again at once (the seed left the step
  Running until the next 15 s tick).
- A task that finished between the snapshot and the expiry is not lost, and gets no
  `TaskExpired` warning (the seed emitted one for attempts that had succeeded).

The controller runs with the real store and dispatcher; Kubernetes is a recording test
double, since these actions touch no Kubernetes object but the Event.
"""

from __future__ import annotations

from typing import Any

from makima.control.controller import Controller, _KeyState
from makima.control.dispatch import AgentDefaults, TaskDispatcher
from makima.control.store import TaskStore
from makima.core.reconcile import EmitEvent, ExpireTask, Reason, ReconcileConfig
from makima.core.tasks import TaskState
from tests.store.factory import make_task


class RecordingKube:
    """Test double of `Kube`: records Events; a Job or Secret deletion is a no-op."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, str]] = []

    async def emit_event(self, obj: dict[str, Any], type_: str, reason: str, message: str) -> None:
        self.events.append((type_, reason, message))

    async def delete_job(self, namespace: str, name: str) -> None:
        return None

    async def delete_secret(self, namespace: str, name: str) -> None:
        return None


class NoJobs:
    """Test double of `JobExecutor`: cancelling a Job of these tests does nothing."""

    def __init__(self, kube: RecordingKube) -> None:
        self.kube = kube

    async def cancel(self, task: Any) -> None:
        return None


def controller(store: TaskStore, kube: RecordingKube) -> Controller:
    dispatcher = TaskDispatcher(store, NoJobs(kube), None, AgentDefaults(command=["true"]), kube)  # type: ignore[arg-type]
    return Controller(kube, store, dispatcher, ReconcileConfig(), steps_source=lambda key: [])  # type: ignore[arg-type]


BODY: dict[str, Any] = {"metadata": {"name": "demo", "namespace": "default", "uid": "d-uid-1"}}
KEY = ("default", "demo")


async def running(store: TaskStore) -> str:
    task, _ = await store.create_task(make_task())
    task = await store.transition(task.id, task.version, TaskState.DISPATCHED, executor="job", executor_ref="j")
    task = await store.transition(task.id, task.version, TaskState.RUNNING)
    return task.id


def expiry(task_id: str, reason: str) -> list[Any]:
    return [ExpireTask(task_id, reason), EmitEvent("Warning", Reason.TASK_EXPIRED, f"step 'a' attempt 1: {reason}")]


async def test_a_task_marked_lost_triggers_its_directive_at_once(store: TaskStore) -> None:
    kube = RecordingKube()
    ctl = controller(store, kube)
    task_id = await running(store)
    state = ctl._keys.setdefault(KEY, _KeyState())
    reason = "no heartbeat from job j since 2026-01-01T00:00:00Z"
    await ctl.apply(KEY, BODY, [], expiry(task_id, reason))
    task = await store.get_task(task_id)
    assert task is not None and task.state is TaskState.LOST
    assert state.again  # the running trigger loop reconciles once more, now
    assert kube.events == [("Warning", Reason.TASK_EXPIRED, f"step 'a' attempt 1: {reason}")]


async def test_no_task_expired_warning_for_an_attempt_that_succeeded_meanwhile(store: TaskStore) -> None:
    kube = RecordingKube()
    ctl = controller(store, kube)
    task_id = await running(store)
    task = await store.get_task(task_id)
    assert task is not None
    # Its result arrives after the snapshot that decided to expire it.
    await store.transition(task.id, task.version, TaskState.SUCCEEDED, result={"outcome": "succeeded"})
    await ctl.apply(KEY, BODY, [], expiry(task_id, "no heartbeat from job j since 2026-01-01T00:00:00Z"))
    after = await store.get_task(task_id)
    assert after is not None and after.state is TaskState.SUCCEEDED
    assert kube.events == []
    assert not ctl._keys.setdefault(KEY, _KeyState()).again
