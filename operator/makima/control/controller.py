"""The reconciler shell: triggers, one run at a time per directive, and the safety-net timer.

A reconcile, top-down (`Controller.reconcile`): take the directive's snapshot (its body, its
steps, its task rows, the daemons of its namespace), skip it if the timer alone asked and
nothing changed, call the pure `decide()`, hand the actions to `apply.ActionApplier`, then
record what the next timer run may skip and when to wake up without any event.

One reconcile runs at a time per directive; triggers that arrive meanwhile coalesce into a
single follow-up run. The snapshot costs no Kubernetes API calls: steps come from the kopf
index (overlaid with the objects this process itself just wrote, so a follow-up run never
acts on a view older than its own writes) and tasks from one SQL query.

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
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from pydantic import ValidationError

from makima.control import metrics
from makima.control.agents import AgentDirectory
from makima.control.apply import ActionApplier, Applied
from makima.control.dispatch import TaskDispatcher
from makima.control.gauges import PhaseGauge
from makima.control.logs import directive_ids
from makima.control.ports import DaemonRegistry, KubeGateway, TaskRecords
from makima.control.resources import newest, phase_of, resource_version, step_view
from makima.control.store.errors import IllegalTransition, StoreError, VersionConflict
from makima.core.agents import DEFAULT_PROFILE
from makima.core.models import Directive, DirectivePhase, DirectiveStatus, ExecutorKind, StepPhase
from makima.core.reconcile import (
    Action,
    CreatePlanningTask,
    DaemonView,
    DispatchStep,
    ReconcileConfig,
    Snapshot,
    StartCompletion,
    backoff,
    decide,
    reject_invalid,
)
from makima.core.tasks import Task, TaskKind, TaskState

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, directive name)
QUIET_TICKS = 20  # idle timer runs skipped before one full check (5 min at the 15 s default)
TIMER_CONCURRENCY = 32  # timer-driven reconciles running at the same time (store pool, API)

__all__ = ["QUIET_TICKS", "Controller", "Key", "finished_at", "newest", "step_view", "ttl_expiry"]


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


def _status_of(body: dict[str, Any]) -> DirectiveStatus:
    try:
        return DirectiveStatus.model_validate(body.get("status") or {})
    except ValidationError:
        return DirectiveStatus()


@dataclass
class _KeyState:
    """What the controller keeps about one directive between its reconciles."""

    running: bool = False
    again: bool = False  # a trigger arrived during the run: one more run follows
    triggers: set[str] = field(default_factory=set)
    digest: tuple[Any, ...] | None = None  # objects and task versions of the last run that did nothing
    report_at: float | None = None  # when a task report arrived (hand-off latency)
    quiet: tuple[Any, ...] | None = None  # the objects of an unchanged directive (timer skips the store)
    quiet_ticks: int = 0
    quiet_limit: int = QUIET_TICKS  # full check after this many skipped ticks (spread per directive)
    wakeup: asyncio.TimerHandle | None = None  # a reconcile due at a known time (retry backoff)
    expires_at: datetime | None = None  # a finished directive's TTL deadline


class Controller:
    def __init__(
        self,
        kube: KubeGateway,
        store: TaskRecords,
        dispatcher: TaskDispatcher,
        config: ReconcileConfig,
        steps_source: Callable[[Key], Iterable[dict[str, Any]]],
        daemons: DaemonRegistry | None = None,
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
        self.applier = ActionApplier(kube, store, dispatcher, self, clock)
        # The whole kopf index (all directives); bound by handlers (kept for callers that list).
        self.steps_index: Mapping[Key, Iterable[dict[str, Any]]] | None = None
        self.directives: dict[Key, dict[str, Any]] = {}
        # Per directive: step object name -> our last write, until the watch shows it.
        self._written: dict[Key, dict[str, dict[str, Any]]] = {}
        self._keys: dict[Key, _KeyState] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._directive_gauge = PhaseGauge(metrics.DIRECTIVES_BY_PHASE, (p.value for p in DirectivePhase))
        self._step_gauge = PhaseGauge(metrics.STEPS_BY_PHASE, (p.value for p in StepPhase))
        self._timer_slots: asyncio.Semaphore | None = None
        # The Agents (kopf index, bound by handlers.py) and each Agent's free slots.
        defaults = getattr(dispatcher, "agent", None)  # test doubles of the dispatcher may have none
        self.agents = AgentDirectory(store, defaults.profile if defaults is not None else DEFAULT_PROFILE)

    # ---- inputs: what kopf and the API tell the controller -----------------------------------

    def observe_directive(self, body: dict[str, Any]) -> Key:
        """A directive as the watch delivered it, or as this process just wrote it."""
        key = (body["metadata"]["namespace"], body["metadata"]["name"])
        current = newest(self.directives.get(key), dict(body)) or dict(body)
        self.directives[key] = current
        self._directive_gauge.count(key, [phase_of(current, DirectivePhase.PENDING.value)])
        return key

    def forget_directive(self, key: Key) -> None:
        self.directives.pop(key, None)
        state = self._keys.pop(key, None)
        if state is not None and state.wakeup is not None:
            state.wakeup.cancel()
        self._written.pop(key, None)
        self._directive_gauge.count(key, [])
        self._step_gauge.count(key, [])
        self.agents.forget(key)

    def step_seen(self, obj: Mapping[str, Any], deleted: bool = False) -> None:
        """The watch delivered a step: our own write of it is no longer needed once the watch
        has caught up with it (or the step is gone)."""
        meta = obj.get("metadata") or {}
        key = (meta.get("namespace") or "", (obj.get("spec") or {}).get("directive") or "")
        written = self._written.get(key)
        if not written or meta.get("name") not in written:
            return
        if deleted or resource_version(obj) >= resource_version(written[meta["name"]]):
            del written[meta["name"]]
            if not written:
                del self._written[key]

    def task_reported(self, task: Task) -> None:
        """Fast path from the API: reconcile the owning directive now, off the request."""
        key = (task.namespace, task.directive_name)
        state = self._keys.setdefault(key, _KeyState())
        state.quiet = None  # its tasks changed: look at the store again
        if task.state.terminal:
            # Hand-off latency runs from a final report to the next dispatch (in both modes).
            state.report_at = time.monotonic()
        if not self.fast_path:
            return  # poll-only: the next timer run sees the report
        self.trigger_soon(key, "report")
        for waiting in self.agents.freed_by(task):  # a slot of their Agent is free now
            self.trigger_soon(waiting, "agent")

    async def job_finished(self, task_id: str, outcome: str, reason: str) -> None:
        """A Job ended or vanished: its token Secret goes now (the token is dead anyway), and the
        task fails or is lost if its runner could not report (OOMKilled, deleted)."""
        task = await self.store.get_task(task_id)
        if task is None:
            return
        if outcome != "lost":
            await self.dispatcher.jobs.release(task)
        if not task.state.active or task.executor != ExecutorKind.JOB.value:
            return
        state = TaskState.LOST if outcome == "lost" else TaskState.FAILED
        if outcome == "succeeded":
            reason = "the runner exited without reporting a result"
        try:
            await self.store.transition(task.id, task.version, state, error=reason)
        except (VersionConflict, IllegalTransition):
            return  # the runner's own report won the race
        self.task_reported(task)

    async def cancel_all(self, namespace: str, uid: str) -> int:
        """Finalizer: cancel every active task of a directive before it goes."""
        tasks = await self.store.tasks_for_directive(uid)
        active = [t for t in tasks if t.state.active]
        for task in active:
            await self.dispatcher.cancel(task, "directive deleted")
        return len(active)

    # ---- triggers: one run at a time per directive --------------------------------------------

    def trigger_soon(self, key: Key, trigger: str) -> None:
        job = asyncio.get_running_loop().create_task(self.trigger(key, trigger))
        self._background.add(job)
        job.add_done_callback(self._background.discard)

    async def trigger(self, key: Key, trigger: str) -> None:
        """Reconcile `key`; a trigger arriving while it runs makes one more run follow."""
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
                    log.exception(
                        "reconcile of %s/%s failed; the next trigger retries", *key, extra=directive_ids(*key)
                    )
                finally:
                    metrics.RECONCILE_SECONDS.observe(time.perf_counter() - started)
                if not state.again:
                    break
        finally:
            state.running = False

    # ---- one reconcile --------------------------------------------------------------------------

    async def reconcile(self, key: Key, only_if_changed: bool = False) -> list[Action]:
        """Snapshot, decide, apply; `only_if_changed` (the timer alone asked) skips a directive
        that did not change since its last run found nothing to do."""
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
        self._step_gauge.count(key, (phase_of(s, StepPhase.PENDING.value) for s in steps))
        if await self._delete_if_expired(key, state, directive):
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
                log.info("%s/%s: %s", *key, ", ".join(type(a).__name__ for a in actions), extra=directive_ids(*key))
            await self.apply(key, body, steps, actions, directive)
        started = sum(isinstance(a, DispatchStep | CreatePlanningTask | StartCompletion) for a in actions)
        self.agents.settle(key, agent, started, phase_of(self.directives.get(key) or body, ""))
        if not actions and state.report_at == report_seen:
            state.report_at = None  # nothing follows from that report: a later dispatch is no hand-off
        state.digest = digest if not actions else None
        if actions:
            state.quiet, state.quiet_ticks = None, 0
            self._step_gauge.count(key, (phase_of(s, StepPhase.PENDING.value) for s in self.steps_of(key)))
        else:
            self._settle(key, state, kube_view, active)
        self._schedule_wakeup(key, state, tasks)
        return actions

    async def apply(
        self,
        key: Key,
        body: dict[str, Any],
        steps: list[dict[str, Any]],
        actions: Sequence[Action],
        directive: Directive | None = None,
    ) -> Applied:
        """Apply `actions` (see `apply.ActionApplier`); a task found lost makes the running
        trigger loop reconcile once more at once, so its step's retry does not wait for a tick."""
        applied = await self.applier.apply(key, body, steps, actions, directive)
        if applied.lost:
            self._keys.setdefault(key, _KeyState()).again = True
        return applied

    async def _delete_if_expired(self, key: Key, state: _KeyState, directive: Directive) -> bool:
        """A finished directive past its `ttlSecondsAfterFinished` is deleted, without a decision."""
        state.expires_at = ttl_expiry(directive)
        if state.expires_at is None or self.clock() < state.expires_at:
            return False
        log.info("%s/%s: finished and past its ttlSecondsAfterFinished; deleting it", *key, extra=directive_ids(*key))
        await self.kube.delete_directive(*key)
        state.quiet, state.expires_at = None, None
        return True

    # ---- the snapshot's sources -----------------------------------------------------------------

    def steps_of(self, key: Key) -> list[dict[str, Any]]:
        """This directive's index copies overlaid with our own newer writes (only its own)."""
        merged: dict[str, dict[str, Any]] = {obj["metadata"]["name"]: obj for obj in self.steps_source(key)}
        written = self._written.get(key)
        if written:
            for name, obj in list(written.items()):
                seen = merged.get(name)
                if seen is not None and resource_version(seen) >= resource_version(obj):
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

    # ---- what the applier wrote (apply.Written) -------------------------------------------------

    def remember_step(self, obj: dict[str, Any]) -> None:
        """A step object as this process wrote it, held until the watch shows it."""
        key = (obj["metadata"]["namespace"], obj["spec"]["directive"])
        self._written.setdefault(key, {})[obj["metadata"]["name"]] = obj

    def step_started(self, key: Key) -> None:
        """The hand-off latency: from the directive's last task report to this dispatch."""
        state = self._keys.get(key)
        if state and state.report_at is not None:
            metrics.HANDOFF_SECONDS.observe(time.monotonic() - state.report_at)
            state.report_at = None

    def step_counts(self) -> dict[str, int]:
        """Steps by phase across every directive held (what the gauge shows)."""
        return self._step_gauge.totals()

    # ---- the idle check: what lets the timer skip a directive ---------------------------------

    def _kube_view(self, key: Key, body: dict[str, Any], steps: list[dict[str, Any]]) -> tuple[Any, ...]:
        """What the timer compares: the directive's and its steps' resourceVersions, and the
        daemons that could take its work. Cheap: no parsing, no hashing."""
        finished = phase_of(body, "") in (DirectivePhase.COMPLETED, DirectivePhase.FAILED, DirectivePhase.PAUSED)
        daemons = (
            tuple(sorted((d.id, len(d.in_flight), d.capacity) for d in self.daemons.available(key[0])))
            if self.daemons is not None and not finished
            else ()
        )
        return (resource_version(body), frozenset((s["metadata"]["name"], resource_version(s)) for s in steps), daemons)

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

    # ---- the safety-net timer -------------------------------------------------------------------

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

    # ---- wake-ups at known times ----------------------------------------------------------------

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
