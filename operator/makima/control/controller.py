"""The reconciler shell: builds a snapshot, calls the pure `decide()`, applies its actions.

One reconcile runs at a time per directive; triggers that arrive meanwhile coalesce into
a single follow-up run. The snapshot costs no Kubernetes API calls: steps come from the
kopf index (overlaid with the objects this process itself just wrote, so a follow-up run
never acts on a view older than its own writes) and tasks from one SQL query.

Everything kept per directive is indexed by directive: a reconcile touches only its own
directive's objects, whatever the number of directives held. Our own writes are dropped
as soon as the watch shows them; the gauges are kept incrementally. One timer loop per
operator (not one per object) is the safety net: an unchanged directive costs it a digest
comparison, no SQL and no API call, whether or not its tasks are running (a task's
heartbeat running out is found by one query per tick for all directives).
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import asyncpg
from pydantic import ValidationError

from makima.control import metrics
from makima.control.agents import AgentDirectory
from makima.control.dispatch import TaskDispatcher
from makima.control.kube import DIRECTIVES, STEPS, Kube
from makima.control.store.errors import IllegalTransition, StoreError, VersionConflict
from makima.core import naming
from makima.core.agents import DEFAULT_PROFILE
from makima.core.models import Directive, DirectivePhase, DirectiveStatus, DirectiveStep, ExecutorKind, StepPhase
from makima.core.reconcile import (
    Action,
    CreatePlanningTask,
    CreateSteps,
    DaemonView,
    DispatchStep,
    EmitEvent,
    ExpireTask,
    MarkStep,
    PauseDirective,
    Reason,
    ReconcileConfig,
    SetDirectiveStatus,
    Snapshot,
    StartCompletion,
    StepView,
    backoff,
    decide,
    reject_invalid,
)
from makima.core.tasks import Task, TaskKind, TaskState

log = logging.getLogger(__name__)
R = TypeVar("R")

Key = tuple[str, str]  # (namespace, directive name)
QUIET_TICKS = 20  # idle timer runs skipped before one full check (5 min at the 15 s default)
CREATE_CONCURRENCY = 16  # a plan's DirectiveSteps created at the same time
DISPATCH_CONCURRENCY = 16  # a wave's steps launched at the same time (rows, Secrets, Jobs)
TIMER_CONCURRENCY = 32  # timer-driven reconciles running at the same time (store pool, API)


async def bounded(limit: int, calls: Sequence[Callable[[], Awaitable[R]]]) -> list[R]:
    """Run `calls` with at most `limit` in flight; all run to the end, then the first error
    (in call order) is raised."""
    slots = asyncio.Semaphore(limit)

    async def one(call: Callable[[], Awaitable[R]]) -> R:
        async with slots:
            return await call()

    results = await asyncio.gather(*(one(c) for c in calls), return_exceptions=True)
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return results  # type: ignore[return-value]


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


def finished_at(status: DirectiveStatus) -> datetime | None:
    """When a Completed or Failed directive finished (None while it is not finished)."""
    conds = {c.type: c for c in status.conditions}
    if status.phase is DirectivePhase.COMPLETED:
        done = conds.get("Completed")
        return status.completed_at or (done.last_transition_time if done is not None else None)
    if status.phase is DirectivePhase.FAILED:
        failed = conds.get("Failed")
        return failed.last_transition_time if failed is not None and failed.status == "True" else None
    return None


def ttl_expiry(directive: Directive) -> datetime | None:
    """When a finished directive is due for deletion under `spec.ttlSecondsAfterFinished`."""
    ttl = directive.spec.ttl_seconds_after_finished
    done = finished_at(directive.status) if ttl is not None else None
    if ttl is None or done is None:
        return None
    return done + timedelta(seconds=ttl)


def _phase_of(obj: Mapping[str, Any], default: str) -> str:
    return str((obj.get("status") or {}).get("phase") or default)


@dataclass
class _KeyState:
    running: bool = False
    again: bool = False
    digest: tuple[Any, ...] | None = None
    triggers: set[str] = field(default_factory=set)
    report_at: float | None = None  # when a task report arrived (hand-off latency)
    quiet: tuple[Any, ...] | None = None  # the objects of an unchanged directive (timer skips the store)
    quiet_ticks: int = 0
    quiet_limit: int = QUIET_TICKS  # full check after this many skipped ticks (spread per directive)
    wakeup: asyncio.TimerHandle | None = None  # a reconcile due at a known time (retry backoff)
    expires_at: datetime | None = None  # a finished directive's TTL deadline


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
        # The whole kopf index (all directives); bound by handlers (kept for callers that list).
        self.steps_index: Mapping[Key, Iterable[dict[str, Any]]] | None = None
        self.directives: dict[Key, dict[str, Any]] = {}
        # Per directive: step object name -> our last write, until the watch shows it.
        self._written: dict[Key, dict[str, dict[str, Any]]] = {}
        self._keys: dict[Key, _KeyState] = {}
        self._background: set[asyncio.Task[None]] = set()
        # Gauges kept incrementally: each directive's own contribution, and the totals.
        self._directive_phase: dict[Key, str] = {}
        self._directive_totals: Counter[str] = Counter()
        self._step_phases: dict[Key, Counter[str]] = {}
        self._step_totals: Counter[str] = Counter()
        self._timer_slots: asyncio.Semaphore | None = None
        self.create_concurrency = CREATE_CONCURRENCY
        self.dispatch_concurrency = DISPATCH_CONCURRENCY
        # The Agents (kopf index, bound by handlers.py) and each Agent's free slots.
        defaults = getattr(dispatcher, "agent", None)  # test doubles of the dispatcher may have none
        self.agents = AgentDirectory(store, defaults.profile if defaults is not None else DEFAULT_PROFILE)

    # ---- inputs ---------------------------------------------------------------------------

    def observe_directive(self, body: dict[str, Any]) -> Key:
        key = (body["metadata"]["namespace"], body["metadata"]["name"])
        current = newest(self.directives.get(key), dict(body)) or dict(body)
        self.directives[key] = current
        self._count_directive(key, _phase_of(current, DirectivePhase.PENDING.value))
        return key

    def forget_directive(self, key: Key) -> None:
        self.directives.pop(key, None)
        state = self._keys.pop(key, None)
        if state is not None and state.wakeup is not None:
            state.wakeup.cancel()
        self._written.pop(key, None)
        self._count_directive(key, None)
        self._count_steps_of(key, [])
        self.agents.forget(key)

    def step_seen(self, obj: Mapping[str, Any], deleted: bool = False) -> None:
        """The watch delivered a step: our own write of it is no longer needed once the watch
        has caught up with it (or the step is gone)."""
        meta = obj.get("metadata") or {}
        key = (meta.get("namespace") or "", (obj.get("spec") or {}).get("directive") or "")
        written = self._written.get(key)
        if not written or meta.get("name") not in written:
            return
        if deleted or _rv(dict(obj)) >= _rv(written[meta["name"]]):
            del written[meta["name"]]
            if not written:
                del self._written[key]

    def steps_of(self, key: Key) -> list[dict[str, Any]]:
        """This directive's index copies overlaid with our own newer writes (only its own)."""
        merged: dict[str, dict[str, Any]] = {obj["metadata"]["name"]: obj for obj in self.steps_source(key)}
        written = self._written.get(key)
        if written:
            for name, obj in list(written.items()):
                seen = merged.get(name)
                if seen is not None and _rv(seen) >= _rv(obj):
                    del written[name]  # the watch has caught up: drop our copy
                else:
                    merged[name] = obj
            if not written:
                self._written.pop(key, None)
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
        for waiting in self.agents.freed_by(task):  # a slot of their Agent is free now
            self.trigger_soon(waiting, "agent")

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

    def _kube_view(self, key: Key, body: dict[str, Any], steps: list[dict[str, Any]]) -> tuple[Any, ...]:
        """What the timer compares: the directive's and its steps' resourceVersions, and the
        daemons that could take its work. Cheap: no parsing, no hashing."""
        finished = _phase_of(body, "") in (DirectivePhase.COMPLETED, DirectivePhase.FAILED, DirectivePhase.PAUSED)
        daemons = (
            tuple(sorted((d.id, len(d.in_flight), d.capacity) for d in self.daemons.available(key[0])))
            if self.daemons is not None and not finished
            else ()
        )
        return (_rv(body), frozenset((s["metadata"]["name"], _rv(s)) for s in steps), daemons)

    def quiet(self, key: Key) -> bool:
        """True when a timer run of `key` would do nothing: the directive and its steps are
        as the last full run left them, its tasks did not report, no TTL is due, and the
        periodic full check is not due. Costs no SQL and no API call."""
        state = self._keys.get(key)
        body = self.directives.get(key)
        if state is None or state.quiet is None or body is None:
            return False
        if state.quiet_ticks >= state.quiet_limit or self.agents.waiting(key):
            return False
        if state.expires_at is not None and self.clock() >= state.expires_at:
            return False
        if state.quiet != self._kube_view(key, body, self.steps_of(key)):
            return False
        state.quiet_ticks += 1
        return True

    async def reconcile(self, key: Key, only_if_changed: bool = False) -> list[Action]:
        body = self.directives.get(key)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return []
        state = self._keys.setdefault(key, _KeyState())
        # The timer is a safety net: for a directive whose objects did not change it does
        # nothing at all, not even the SQL query (its tasks only change through this process,
        # which clears `quiet` when they do; a task's deadline is a wake-up; a lost heartbeat
        # is found by the timer's one sweep for all directives); a full check still runs every
        # `quiet_limit` ticks.
        if only_if_changed and self.quiet(key):
            return []
        try:
            directive = Directive.model_validate(body)
        except ValidationError as exc:
            # Past the CRD schema but not the models (e.g. a blank goal): say so in the status.
            actions = reject_invalid(_status_of(body), body["metadata"].get("generation", 0), exc, self.clock())
            await self.apply(key, body, [], actions)
            return actions
        steps = self.steps_of(key)
        self._count_steps_of(key, steps)
        state.expires_at = ttl_expiry(directive)
        if state.expires_at is not None and self.clock() >= state.expires_at:
            log.info("%s/%s: finished and past its ttlSecondsAfterFinished; deleting it", *key)
            await self.kube.delete_directive(*key)
            state.quiet, state.expires_at = None, None
            return []
        report_seen = state.report_at
        # Daemons are part of the snapshot: one connecting (or freeing a slot) may unblock routing.
        daemons = self.daemon_views(key[0])
        kube_view = self._kube_view(key, body, steps)
        tasks = await self.store.tasks_for_directive(directive.metadata.uid)
        digest = (kube_view, frozenset((t.id, t.version) for t in tasks))
        active = any(t.state.active for t in tasks) or any((s.get("status") or {}).get("nextAttemptAt") for s in steps)
        if only_if_changed and not active and digest == state.digest and not self.agents.waiting(key):
            self._settle(key, state, kube_view, active)
            return []
        # The Agent's settings go where spec.agent is read; a limited Agent's lock is held
        # from counting its active tasks to the last task launched.
        async with self.agents.resolved(key, directive) as (directive, agent):
            snapshot = Snapshot(
                directive=directive,
                steps=[step_view(s) for s in steps],
                tasks=list(tasks),
                daemons=daemons,
                agent=agent,
            )
            actions = decide(snapshot, self.clock(), self.config)
            if actions:
                log.info("%s/%s: %s", *key, ", ".join(type(a).__name__ for a in actions))
            await self.apply(key, body, steps, actions, directive)
        started = sum(isinstance(a, DispatchStep | CreatePlanningTask | StartCompletion) for a in actions)
        self.agents.settle(key, agent, started, _phase_of(self.directives.get(key) or body, ""))
        if not actions and state.report_at == report_seen:
            state.report_at = None  # nothing follows from that report: a later dispatch is no hand-off
        state.digest = digest if not actions else None
        if actions:
            state.quiet, state.quiet_ticks = None, 0
            self._count_steps_of(key, self.steps_of(key))
        else:
            self._settle(key, state, kube_view, active)
        self._schedule_wakeup(key, state, tasks)
        return actions

    def _settle(self, key: Key, state: _KeyState, kube_view: tuple[Any, ...], active: bool) -> None:
        """Nothing to do now: let the timer skip this directive until something changes. With
        the fast path on, a directive with running tasks or a pending retry may go quiet too
        (reports, wake-ups and the expiry sweep cover what time alone changes); in poll-only
        mode only the timer moves such a directive, so it stays loud."""
        if active and not self.fast_path:
            state.quiet, state.quiet_ticks = None, 0
            return
        state.quiet, state.quiet_ticks = kube_view, 0
        state.quiet_limit = QUIET_TICKS + zlib.crc32(f"{key[0]}/{key[1]}".encode()) % QUIET_TICKS

    # ---- the safety-net timer ---------------------------------------------------------------

    async def run_timer(self, tick: float, first_delay: float | None = None) -> None:
        """One loop for every directive (instead of one kopf timer per object)."""
        await asyncio.sleep(min(tick, 1.0) if first_delay is None else first_delay)
        while True:
            started = time.monotonic()
            try:
                await self.tick()
            except Exception:
                log.exception("timer tick failed; the next one retries")
            await asyncio.sleep(max(0.0, tick - (time.monotonic() - started)))

    async def tick(self) -> None:
        """One pass of the safety net: unchanged directives are skipped without a task being
        scheduled; the others reconcile with at most TIMER_CONCURRENCY at once."""
        await self.sweep_expired()
        if self._timer_slots is None:
            self._timer_slots = asyncio.Semaphore(TIMER_CONCURRENCY)
        for key in list(self.directives):
            state = self._keys.get(key)
            if state is not None and state.running:
                state.triggers.add("timer")  # coalesces into the run in progress
                state.again = True
                continue
            if self.quiet(key):
                metrics.RECONCILES.labels(trigger="timer").inc()
                continue
            job = asyncio.get_running_loop().create_task(self._timer_run(key))
            self._background.add(job)
            job.add_done_callback(self._background.discard)

    async def _timer_run(self, key: Key) -> None:
        assert self._timer_slots is not None
        async with self._timer_slots:
            await self.trigger(key, "timer")

    async def sweep_expired(self) -> list[Key]:
        """One query for all directives: tasks whose heartbeat ran out (or deadline passed)
        wake their directive. Returns the directives woken."""
        if self.store is None or not hasattr(self.store, "expired_tasks"):
            return []
        now = self.clock()
        limit = min(self.config.heartbeat_timeout_seconds, self.config.daemon_lost_after_seconds)
        try:
            candidates = await self.store.expired_tasks(now, limit)
        except Exception:
            metrics.STORE_ERRORS.labels(op="sweep").inc()
            log.warning("could not look for expired tasks; the next tick retries", exc_info=True)
            return []
        woken: list[Key] = []
        for task in candidates:
            daemon = task.executor == ExecutorKind.DAEMON.value
            timeout = self.config.daemon_lost_after_seconds if daemon else self.config.heartbeat_timeout_seconds
            last = task.heartbeat_at or task.started_at or task.created_at
            overdue = task.deadline_at is not None and now >= task.deadline_at
            if not overdue and (last is None or (now - last).total_seconds() <= timeout):
                continue
            key = (task.namespace, task.directive_name)
            if key in woken or key not in self.directives:
                continue
            self._keys.setdefault(key, _KeyState()).quiet = None
            woken.append(key)
            self.trigger_soon(key, "expired")
        return woken

    # ---- wake-ups at known times ------------------------------------------------------------

    def _due_times(self, key: Key, tasks: Iterable[Task]) -> list[datetime]:
        """Instants at which decide() may act without any new event: a step's retry backoff
        ending, a failed planning/completion attempt's retry, an active task's deadline, a
        pending task's hand-over limit; and a finished directive's TTL."""
        times: list[datetime] = []
        state = self._keys.get(key)
        if state is not None and state.expires_at is not None:
            times.append(state.expires_at)
        for obj in self.steps_of(key):
            at = step_view(obj).status.next_attempt_at
            if at is not None:
                times.append(at)
        for t in tasks:
            if t.state.active and t.deadline_at is not None:
                times.append(t.deadline_at)
            if t.state is TaskState.PENDING and t.created_at is not None:
                times.append(t.created_at + timedelta(seconds=self.config.heartbeat_timeout_seconds))
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

    # ---- applying actions -------------------------------------------------------------------

    async def apply(
        self,
        key: Key,
        body: dict[str, Any],
        steps: list[dict[str, Any]],
        actions: list[Action],
        directive: Directive | None = None,
    ) -> None:
        """Apply in order; a plan's steps are created, and a wave's consecutive DispatchSteps
        launched, concurrently (bounded). `directive` (the parsed body) is needed only by
        task-starting actions."""
        ns, name = key
        by_name = {s["metadata"].get("labels", {}).get(naming.LABEL_STEP): s for s in steps}
        not_expired: list[str] = []  # reasons of ExpireTask actions that found their task finished
        i = 0
        while i < len(actions):
            action = actions[i]
            i += 1
            if isinstance(action, DispatchStep):
                wave = [action]
                while i < len(actions) and isinstance(actions[i], DispatchStep):
                    wave.append(actions[i])  # type: ignore[arg-type]
                    i += 1
                assert directive is not None
                await self._dispatch_wave(key, directive, by_name, wave)
            elif isinstance(action, CreatePlanningTask):
                assert directive is not None
                await self.dispatcher.start_planning(directive, action)
            elif isinstance(action, CreateSteps):
                bodies = [self._step_body(body, sub, action.generation) for sub in action.steps]
                created = await bounded(
                    self.create_concurrency,
                    [lambda b=b: self.kube.create_step(ns, b) for b in bodies],  # type: ignore[misc]
                )
                # status is a subresource (ignored on create): write it so that `kubectl get dstep`
                # shows Pending and 0 before the step is dispatched
                fresh = [obj for obj in created if obj is not None]
                written = await bounded(
                    self.create_concurrency,
                    [
                        lambda o=o: self.kube.patch_status(STEPS, ns, o["metadata"]["name"], _NEW_STEP_STATUS)  # type: ignore[misc]
                        for o in fresh
                        if not o.get("status")
                    ],
                )
                for obj in [*(o for o in fresh if o.get("status")), *written]:
                    self._remember(obj)
            elif isinstance(action, PauseDirective):
                self.observe_directive(await self.kube.patch_directive(ns, name, {"spec": {"paused": True}}))
            elif isinstance(action, MarkStep):
                await self._patch_step(by_name, action.name, action.status_patch())
            elif isinstance(action, ExpireTask):
                await self.dispatcher.expire(action.task_id, action.reason)
                after = await self.store.get_task(action.task_id)
                if after is not None and after.state is TaskState.LOST and after.error == action.reason:
                    # Lost now: decide its step's retry at once, not at the next tick.
                    self._keys.setdefault(key, _KeyState()).again = True
                else:
                    not_expired.append(action.reason)  # it finished meanwhile: no TaskExpired warning
            elif isinstance(action, StartCompletion):
                assert directive is not None
                await self.dispatcher.start_completion(directive, action)
            elif isinstance(action, SetDirectiveStatus):
                desired = action.status.wire()
                patch = status_diff(body.get("status") or {}, desired)
                if patch:
                    body = await self.kube.patch_status(DIRECTIVES, ns, name, patch)
                    self.observe_directive(body)
            elif isinstance(action, EmitEvent):
                if action.reason == Reason.TASK_EXPIRED and any(action.message.endswith(r) for r in not_expired):
                    continue
                await self.kube.emit_event(body, action.type, action.reason, action.message)

    async def _dispatch_wave(
        self, key: Key, directive: Directive, by_name: dict[str | None, dict[str, Any]], wave: list[DispatchStep]
    ) -> None:
        """Launch each step's task and mark the step Running, up to DISPATCH_CONCURRENCY at once
        (each step is its own object, so the launches are independent)."""

        async def one(action: DispatchStep) -> None:
            step = by_name.get(action.name)
            if step is None:
                return
            task = await self.dispatcher.dispatch_step(directive, step, action)
            await self._patch_step(by_name, action.name, self.dispatcher.running_patch(action, task, self.clock()))
            self._observe_handoff(key)

        await bounded(self.dispatch_concurrency, [lambda a=a: one(a) for a in wave])  # type: ignore[misc]

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
        key = (obj["metadata"]["namespace"], obj["spec"]["directive"])
        self._written.setdefault(key, {})[obj["metadata"]["name"]] = obj

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

    def _count_directive(self, key: Key, phase: str | None) -> None:
        """The directives-by-phase gauge, moved by this one directive's change (None: gone)."""
        old = self._directive_phase.get(key)
        if old == phase:
            return
        if old is not None:
            self._directive_totals[old] -= 1
        if phase is None:
            self._directive_phase.pop(key, None)
        else:
            self._directive_phase[key] = phase
            self._directive_totals[phase] += 1
        for p in {*(p.value for p in DirectivePhase), *self._directive_totals}:
            metrics.DIRECTIVES_BY_PHASE.labels(phase=p).set(self._directive_totals[p])

    def _count_steps_of(self, key: Key, steps: Iterable[Mapping[str, Any]]) -> None:
        """The steps-by-phase gauge, moved by one directive's steps (O(its steps), not O(all))."""
        new = Counter(_phase_of(s, StepPhase.PENDING.value) for s in steps)
        old = self._step_phases.get(key) or Counter()
        if new == old:
            return
        for phase in {*old, *new}:
            self._step_totals[phase] += new[phase] - old[phase]
        if new:
            self._step_phases[key] = new
        else:
            self._step_phases.pop(key, None)
        for p in {*(p.value for p in StepPhase), *self._step_totals}:
            metrics.STEPS_BY_PHASE.labels(phase=p).set(self._step_totals[p])

    def step_counts(self) -> dict[str, int]:
        """Steps by phase across every directive held (what the gauge shows)."""
        return {p: n for p, n in self._step_totals.items() if n}

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
