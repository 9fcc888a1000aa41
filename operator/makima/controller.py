"""The reconciler shell: builds a snapshot, calls the pure `decide()`, applies its actions.

One reconcile runs at a time per directive; triggers that arrive meanwhile coalesce into
a single follow-up run. The snapshot costs no Kubernetes API calls: steps come from the
kopf index (overlaid with the objects this process itself just wrote, so a follow-up run
never acts on a view older than its own writes) and tasks from one SQL query.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
from pydantic import ValidationError

from . import metrics, naming
from .dispatch import TaskDispatcher
from .kube import DIRECTIVES, STEPS, Kube
from .models import Directive, DirectivePhase, DirectiveStatus, DirectiveStep, StepPhase
from .reconcile import (
    Action,
    CreatePlanningTask,
    CreateSteps,
    DaemonView,
    DispatchStep,
    EmitEvent,
    ExpireTask,
    MarkStep,
    PauseDirective,
    ReconcileConfig,
    SetDirectiveStatus,
    Snapshot,
    StartCompletion,
    StepView,
    backoff,
    decide,
    reject_invalid,
)
from .store.errors import IllegalTransition, StoreError, VersionConflict
from .tasks import Task, TaskKind, TaskState

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, directive name)
QUIET_TICKS = 20  # idle timer runs skipped before one full check (5 min at the 15 s default)


_NEW_STEP_STATUS = {"phase": StepPhase.PENDING.value, "attempts": 0}


def _rv(obj: dict[str, Any]) -> int:
    try:
        return int(obj["metadata"].get("resourceVersion") or 0)
    except (TypeError, ValueError):
        return 0


def newest(a: dict[str, Any] | None, b: dict[str, Any] | None) -> dict[str, Any] | None:
    """Of two copies of one object, the one with the higher resourceVersion."""
    if a is None or b is None:
        return a or b
    return a if _rv(a) >= _rv(b) else b


def _status_of(body: dict[str, Any]) -> DirectiveStatus:
    try:
        return DirectiveStatus.model_validate(body.get("status") or {})
    except ValidationError:
        return DirectiveStatus()


def step_view(obj: dict[str, Any]) -> StepView:
    step = DirectiveStep.model_validate(obj)
    name = step.metadata.labels.get(naming.LABEL_STEP, step.metadata.name)
    return StepView(name=name, uid=step.metadata.uid, spec=step.spec, status=step.status)


def status_diff(current: dict[str, Any], desired: dict[str, Any]) -> dict[str, Any]:
    """A merge patch turning `current` into `desired` at the top level of status (None removes)."""
    patch: dict[str, Any] = {k: v for k, v in desired.items() if current.get(k) != v}
    for key in current.keys() - desired.keys():
        patch[key] = None
    return patch


@dataclass
class _KeyState:
    running: bool = False
    again: bool = False
    digest: str | None = None
    triggers: set[str] = field(default_factory=set)
    report_at: float | None = None  # when a task report arrived (hand-off latency)
    quiet: str | None = None  # digest of the objects of an idle directive (timer skips the store)
    quiet_ticks: int = 0
    wakeup: asyncio.TimerHandle | None = None  # a reconcile due at a known time (retry backoff)


class Controller:
    def __init__(
        self,
        kube: Kube,
        store: Any,
        dispatcher: TaskDispatcher,
        config: ReconcileConfig,
        steps_source: Callable[[Key], Iterable[dict[str, Any]]],
        daemons: Any = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        fast_path: bool = True,
    ) -> None:
        self.kube = kube
        self.store = store
        self.dispatcher = dispatcher
        self.config = config
        self.steps_source = steps_source  # the kopf index, keyed by (namespace, directive)
        self.daemons = daemons
        self.clock = clock
        # Off in poll-only mode: then only the timer reconciles (the seed's behaviour, a baseline).
        self.fast_path = fast_path
        # The whole kopf index (all directives), for the steps-by-phase gauge; bound by handlers.
        self.steps_index: Mapping[Key, Iterable[dict[str, Any]]] | None = None
        self.directives: dict[Key, dict[str, Any]] = {}
        self._written: dict[tuple[str, str], dict[str, Any]] = {}  # (ns, step object name) -> our last write
        self._keys: dict[Key, _KeyState] = {}
        self._background: set[asyncio.Task[None]] = set()

    # ---- inputs ---------------------------------------------------------------------------

    def observe_directive(self, body: dict[str, Any]) -> Key:
        key = (body["metadata"]["namespace"], body["metadata"]["name"])
        self.directives[key] = newest(self.directives.get(key), dict(body)) or dict(body)
        return key

    def forget_directive(self, key: Key) -> None:
        self.directives.pop(key, None)
        state = self._keys.pop(key, None)
        if state is not None and state.wakeup is not None:
            state.wakeup.cancel()
        for k in [k for k, v in self._written.items() if k[0] == key[0] and v["spec"]["directive"] == key[1]]:
            self._written.pop(k, None)
        self._count_phases()

    def steps_of(self, key: Key) -> list[dict[str, Any]]:
        """Index copies overlaid with our own newer writes."""
        merged: dict[str, dict[str, Any]] = {}
        for obj in self.steps_source(key):
            merged[obj["metadata"]["name"]] = dict(obj)
        for (ns, name), obj in self._written.items():
            if ns == key[0] and obj["spec"]["directive"] == key[1]:
                merged[name] = newest(merged.get(name), obj) or obj
        return list(merged.values())

    def daemon_views(self, namespace: str) -> list[DaemonView]:
        if self.daemons is None:
            return []
        return [
            DaemonView(
                id=d.id, namespace=d.namespace, labels=dict(d.labels), capacity=d.capacity, in_flight=len(d.in_flight)
            )
            for d in self.daemons.available(namespace)
        ]

    def task_reported(self, task: Task) -> None:
        """Fast path from the API: reconcile the owning directive now, off the request."""
        key = (task.namespace, task.directive_name)
        self._keys.setdefault(key, _KeyState()).quiet = None  # its tasks changed: look at the store again
        if task.state.terminal:
            # Hand-off latency runs from a final report to the next dispatch (in both modes).
            self._keys.setdefault(key, _KeyState()).report_at = time.monotonic()
        if not self.fast_path:
            return  # poll-only: the next timer run sees the report
        self.trigger_soon(key, "report")

    def trigger_soon(self, key: Key, trigger: str) -> None:
        job = asyncio.get_running_loop().create_task(self.trigger(key, trigger))
        self._background.add(job)
        job.add_done_callback(self._background.discard)

    # ---- one run at a time per directive ----------------------------------------------------

    async def trigger(self, key: Key, trigger: str) -> None:
        state = self._keys.setdefault(key, _KeyState())
        state.triggers.add(trigger)
        if state.running:
            state.again = True
            return
        state.running = True
        try:
            while True:
                state.again = False
                triggers, state.triggers = state.triggers, set()
                for t in triggers:
                    metrics.RECONCILES.labels(trigger=t).inc()
                started = time.perf_counter()
                try:
                    await self.reconcile(key, only_if_changed=triggers == {"timer"})
                except Exception as exc:
                    if isinstance(exc, StoreError | asyncpg.PostgresError | asyncpg.InterfaceError | OSError):
                        metrics.STORE_ERRORS.labels(op="reconcile").inc()
                    log.exception("reconcile of %s/%s failed; the next trigger retries", *key)
                finally:
                    metrics.RECONCILE_SECONDS.observe(time.perf_counter() - started)
                if not state.again:
                    break
        finally:
            state.running = False

    async def reconcile(self, key: Key, only_if_changed: bool = False) -> list[Action]:
        body = self.directives.get(key)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return []
        try:
            directive = Directive.model_validate(body)
        except ValidationError as exc:
            # Past the CRD schema but not the models (e.g. a blank goal): say so in the status.
            actions = reject_invalid(_status_of(body), body["metadata"].get("generation", 0), exc, self.clock())
            await self.apply(key, body, [], actions)
            return actions
        steps = self.steps_of(key)
        state = self._keys.setdefault(key, _KeyState())
        report_seen = state.report_at
        # Daemons are part of the snapshot: one connecting (or freeing a slot) may unblock routing.
        daemons = self.daemon_views(key[0])
        # The timer is a safety net: for an idle directive whose objects did not change it does
        # nothing at all, not even the SQL query (its tasks only change through this process,
        # which clears `quiet` when they do); a full check still runs every QUIET_TICKS ticks.
        kube_digest = self._digest(body, steps, (), daemons)
        if only_if_changed and state.quiet == kube_digest and state.quiet_ticks < QUIET_TICKS:
            state.quiet_ticks += 1
            return []
        tasks = await self.store.tasks_for_directive(directive.metadata.uid)
        digest = self._digest(body, steps, tasks, daemons)
        idle = not any(t.state.active for t in tasks) and not any(
            s.get("status", {}).get("nextAttemptAt") for s in steps
        )
        if only_if_changed and idle and digest == state.digest:
            state.quiet, state.quiet_ticks = kube_digest, 0
            return []
        snapshot = Snapshot(
            directive=directive,
            steps=[step_view(s) for s in steps],
            tasks=list(tasks),
            daemons=daemons,
        )
        actions = decide(snapshot, self.clock(), self.config)
        if actions:
            log.info("%s/%s: %s", *key, ", ".join(type(a).__name__ for a in actions))
        await self.apply(key, body, steps, actions, directive)
        if not actions and state.report_at == report_seen:
            state.report_at = None  # nothing follows from that report: a later dispatch is no hand-off
        state.digest = digest if not actions else None
        state.quiet, state.quiet_ticks = (kube_digest, 0) if idle and not actions else (None, 0)
        if actions:
            self._count_steps()
        self._schedule_wakeup(key, state, tasks)
        return actions

    # ---- wake-ups at known times ------------------------------------------------------------

    def _due_times(self, key: Key, tasks: Iterable[Task]) -> list[datetime]:
        """Instants at which decide() may act without any new event: a step's retry backoff
        ending, a failed planning/completion attempt's retry, an active task's deadline."""
        times: list[datetime] = []
        for obj in self.steps_of(key):
            at = step_view(obj).status.next_attempt_at
            if at is not None:
                times.append(at)
        for t in tasks:
            if t.state.active and t.deadline_at is not None:
                times.append(t.deadline_at)
            elif (
                t.kind in (TaskKind.PLANNING, TaskKind.COMPLETION)
                # a planning task that succeeded without a usable plan is retried too
                and (t.state in (TaskState.FAILED, TaskState.LOST) or t.kind is TaskKind.PLANNING)
                and t.finished_at is not None
            ):
                times.append(t.finished_at + backoff(t.attempt, self.config))
        return times

    def _schedule_wakeup(self, key: Key, state: _KeyState, tasks: Iterable[Task]) -> None:
        """Without this, a retry after a 10 s backoff would wait for the next 15 s tick."""
        if state.wakeup is not None:
            state.wakeup.cancel()
            state.wakeup = None
        if not self.fast_path:
            return
        now = self.clock()
        future = [t for t in self._due_times(key, tasks) if t > now]
        if not future:
            return
        delay = (min(future) - now).total_seconds() + 0.01
        state.wakeup = asyncio.get_running_loop().call_later(delay, self.trigger_soon, key, "wakeup")

    @staticmethod
    def _digest(
        body: dict[str, Any],
        steps: list[dict[str, Any]],
        tasks: Iterable[Task],
        daemons: Iterable[DaemonView] = (),
    ) -> str:
        parts = [str(_rv(body)), *sorted(f"{s['metadata']['name']}:{_rv(s)}" for s in steps)]
        parts += sorted(f"{t.id}:{t.version}" for t in tasks)
        parts += sorted(f"daemon:{d.id}:{d.in_flight}/{d.capacity}" for d in daemons)
        return hashlib.sha256(json.dumps(parts).encode()).hexdigest()

    # ---- applying actions -------------------------------------------------------------------

    async def apply(
        self,
        key: Key,
        body: dict[str, Any],
        steps: list[dict[str, Any]],
        actions: list[Action],
        directive: Directive | None = None,
    ) -> None:
        """Apply in order. `directive` (the parsed body) is needed only by task-starting actions."""
        ns, name = key
        by_name = {s["metadata"].get("labels", {}).get(naming.LABEL_STEP): s for s in steps}
        for action in actions:
            if isinstance(action, CreatePlanningTask):
                assert directive is not None
                await self.dispatcher.start_planning(directive, action)
            elif isinstance(action, CreateSteps):
                for sub in action.steps:
                    created = await self.kube.create_step(ns, self._step_body(body, sub, action.generation))
                    if created is not None:
                        # status is a subresource (ignored on create): write it so that
                        # `kubectl get dstep` shows Pending and 0 before the step is dispatched
                        if not created.get("status"):
                            meta = created["metadata"]
                            created = await self.kube.patch_status(STEPS, ns, meta["name"], _NEW_STEP_STATUS)
                        self._remember(created)
            elif isinstance(action, PauseDirective):
                self.observe_directive(await self.kube.patch_directive(ns, name, {"spec": {"paused": True}}))
            elif isinstance(action, MarkStep):
                await self._patch_step(by_name, action.name, action.status_patch())
            elif isinstance(action, DispatchStep):
                step = by_name.get(action.name)
                if step is None:
                    continue
                assert directive is not None
                task = await self.dispatcher.dispatch_step(directive, step, action)
                await self._patch_step(by_name, action.name, self.dispatcher.running_patch(action, task, self.clock()))
                self._observe_handoff(key)
            elif isinstance(action, ExpireTask):
                await self.dispatcher.expire(action.task_id, action.reason)
            elif isinstance(action, StartCompletion):
                assert directive is not None
                await self.dispatcher.start_completion(directive, action)
            elif isinstance(action, SetDirectiveStatus):
                desired = action.status.wire()
                patch = status_diff(body.get("status") or {}, desired)
                if patch:
                    body = await self.kube.patch_status(DIRECTIVES, ns, name, patch)
                    self.observe_directive(body)
                    self._count_phases()
            elif isinstance(action, EmitEvent):
                await self.kube.emit_event(body, action.type, action.reason, action.message)

    def _observe_handoff(self, key: Key) -> None:
        state = self._keys.get(key)
        if state and state.report_at is not None:
            metrics.HANDOFF_SECONDS.observe(time.monotonic() - state.report_at)
            state.report_at = None

    async def _patch_step(self, by_name: dict[str | None, dict[str, Any]], step: str, patch: dict[str, Any]) -> None:
        obj = by_name.get(step)
        if obj is None or not patch:
            return
        updated = await self.kube.patch_status(STEPS, obj["metadata"]["namespace"], obj["metadata"]["name"], patch)
        self._remember(updated)
        by_name[step] = updated

    def _remember(self, obj: dict[str, Any]) -> None:
        self._written[(obj["metadata"]["namespace"], obj["metadata"]["name"])] = obj

    @staticmethod
    def _step_body(directive: dict[str, Any], sub: Any, generation: int) -> dict[str, Any]:
        meta = directive["metadata"]
        return {
            "apiVersion": "makima.dev/v1alpha1",
            "kind": "DirectiveStep",
            "metadata": {
                "name": naming.step_object_name(meta["name"], sub.name),
                "namespace": meta["namespace"],
                "labels": naming.step_labels(meta["name"], sub.name),
                "ownerReferences": [
                    {
                        "apiVersion": directive.get("apiVersion", "makima.dev/v1alpha1"),
                        "kind": "Directive",
                        "name": meta["name"],
                        "uid": meta["uid"],
                        "controller": True,
                        "blockOwnerDeletion": True,
                    }
                ],
            },
            "spec": {
                "directive": meta["name"],
                "title": sub.title,
                "description": sub.description,
                "taskPlan": sub.task_plan,
                "dependsOn": list(sub.depends_on),
                "orderIndex": sub.order_index,
                "generation": generation,
            },
        }

    def _count_phases(self) -> None:
        counts: dict[str, int] = {p.value: 0 for p in DirectivePhase}
        for obj in self.directives.values():
            phase = (obj.get("status") or {}).get("phase") or DirectivePhase.PENDING.value
            counts[phase] = counts.get(phase, 0) + 1
        for phase, n in counts.items():
            metrics.DIRECTIVES_BY_PHASE.labels(phase=phase).set(n)

    def _count_steps(self) -> None:
        """Steps by phase across all directives, from the index (no API calls)."""
        if self.steps_index is None:
            return
        self.count_steps(obj for key in list(self.steps_index.keys()) for obj in self.steps_of(key))

    def count_steps(self, all_steps: Iterable[dict[str, Any]]) -> None:
        counts: dict[str, int] = {p.value: 0 for p in StepPhase}
        for obj in all_steps:
            phase = (obj.get("status") or {}).get("phase") or StepPhase.PENDING.value
            counts[phase] = counts.get(phase, 0) + 1
        for phase, n in counts.items():
            metrics.STEPS_BY_PHASE.labels(phase=phase).set(n)

    async def job_finished(self, task_id: str, outcome: str, reason: str) -> None:
        """A Job ended or vanished: its token Secret goes now (the token is dead anyway), and the
        task fails or is lost if its runner could not report (OOMKilled, deleted)."""
        task = await self.store.get_task(task_id)
        if task is None:
            return
        if outcome != "lost":
            await self.dispatcher.jobs.release(task)
        if not task.state.active or task.executor != "job":
            return
        state = TaskState.LOST if outcome == "lost" else TaskState.FAILED
        if outcome == "succeeded":
            reason = "the runner exited without reporting a result"
        try:
            await self.store.transition(task.id, task.version, state, error=reason)
        except (VersionConflict, IllegalTransition):
            return  # the runner's own report won the race
        self.task_reported(task)

    # ---- deletion ---------------------------------------------------------------------------

    async def cancel_all(self, namespace: str, uid: str) -> int:
        """Finalizer: cancel every active task of a directive before it goes."""
        tasks = await self.store.tasks_for_directive(uid)
        active = [t for t in tasks if t.state.active]
        for task in active:
            await self.dispatcher.cancel(task, "directive deleted")
        return len(active)
