"""The controller's bookkeeping: state per directive (a reconcile never scans other directives),
own writes dropped once the watch shows them, gauges kept incrementally, an unchanged directive
costing the timer nothing (running tasks included), a finished directive deleted after its TTL,
and bounded concurrency for a plan's creates and a wave's dispatches.

The Kubernetes gateway, the task store and the dispatcher are test doubles (in memory, they
count their calls); the behaviour against the real ones is in tests/integration.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from makima.cli.logs import JsonFormatter
from makima.control.apply import bounded
from makima.control.controller import Controller, finished_at, ttl_expiry
from makima.control.resources import phase_of
from makima.core import naming
from makima.core.models import API_VERSION, Directive, DirectiveStatus
from makima.core.protocol import StepSubmission, WorkspacePlan
from makima.core.reconcile import CreateSteps, DispatchStep, ReconcileConfig, Route
from makima.core.tasks import Task, TaskKind, TaskState

NOW = datetime(2026, 1, 1, tzinfo=UTC)
NS = "ns"


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now


class FakeKube:
    """Test double of the Kubernetes port (`ports.KubeGateway`): objects in a dict, each write a new
    resourceVersion; calls counted."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.calls: list[str] = []
        self.rv = 1000
        self.deleted: list[tuple[str, str]] = []
        self.in_flight = 0
        self.most_in_flight = 0
        self.gate: asyncio.Event | None = None
        self.full = asyncio.Event()  # set when `in_flight` reaches `want`
        self.want = 0

    def _bump(self, obj: dict[str, Any]) -> dict[str, Any]:
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        return obj

    async def patch_status(self, plural: str, namespace: str, name: str, status: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(f"patch {plural}")
        obj = copy.deepcopy(self.objects[(plural, namespace, name)])
        obj.setdefault("status", {}).update({k: v for k, v in status.items() if v is not None})
        self.objects[(plural, namespace, name)] = self._bump(obj)
        return copy.deepcopy(obj)

    async def create_step(self, namespace: str, body: dict[str, Any]) -> dict[str, Any] | None:
        self.calls.append("create directivesteps")
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        if self.in_flight == self.want:
            self.full.set()
        try:
            if self.gate is not None:
                await self.gate.wait()
            else:
                await asyncio.sleep(0)
        finally:
            self.in_flight -= 1
        obj = self._bump(copy.deepcopy(body))
        obj["metadata"]["uid"] = f"uid-{obj['metadata']['name']}"
        self.objects[("directivesteps", namespace, obj["metadata"]["name"])] = obj
        return copy.deepcopy(obj)

    async def emit_event(self, obj: dict[str, Any], type_: str, reason: str, message: str) -> None:
        self.calls.append("create events")

    async def delete_directive(self, namespace: str, name: str) -> None:
        self.calls.append("delete directives")
        self.deleted.append((namespace, name))


class FakeStore:
    """Test double of the task-store port (`ports.TaskRecords`): tasks per directive uid in memory;
    queries counted."""

    def __init__(self) -> None:
        self.tasks: dict[str, list[Task]] = {}
        self.queries = 0
        self.asked: list[str] = []
        self.expired: list[Task] = []

    async def tasks_for_directive(self, uid: str) -> list[Task]:
        self.queries += 1
        self.asked.append(uid)
        return list(self.tasks.get(uid, []))

    async def expired_tasks(self, now: datetime, heartbeat_timeout: float) -> list[Task]:
        self.queries += 1
        return list(self.expired)


class FakeDispatcher:
    """Test double of `TaskDispatcher`: dispatching a step records it (bounded-concurrency check)."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.most_in_flight = 0
        self.full = asyncio.Event()  # set when `in_flight` reaches `want`
        self.want = 0
        self.dispatched: list[str] = []
        self.expired: list[str] = []
        self.gate = asyncio.Event()

    async def expire(self, task_id: str, reason: str) -> None:
        self.expired.append(task_id)

    async def dispatch_step(self, directive: Directive, step: dict[str, Any], action: DispatchStep) -> Task:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        if self.in_flight == self.want:
            self.full.set()
        try:
            await self.gate.wait()
        finally:
            self.in_flight -= 1
        self.dispatched.append(action.name)
        return Task(
            id=action.task_id,
            kind=TaskKind.STEP,
            namespace=NS,
            directive_uid=directive.metadata.uid,
            directive_name=directive.metadata.name,
            state=TaskState.DISPATCHED,
            executor="job",
            executor_ref=f"job-{action.name}",
        )


def directive_body(name: str, status: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "makima.dev/v1alpha1",
        "kind": "Directive",
        "metadata": {"name": name, "namespace": NS, "uid": f"uid-{name}", "generation": 1, "resourceVersion": "1"},
        "spec": {"title": "t", "goal": "g", "repository": {"url": "https://example.com/r.git"}, **spec},
        "status": status or {},
    }


def step_body(directive: str, step: str, rv: int, phase: str = "Succeeded", **status: Any) -> dict[str, Any]:
    return {
        "apiVersion": "makima.dev/v1alpha1",
        "kind": "DirectiveStep",
        "metadata": {
            "name": naming.step_object_name(directive, step),
            "namespace": NS,
            "uid": f"uid-{directive}-{step}",
            "resourceVersion": str(rv),
            "labels": naming.step_labels(directive, step),
        },
        "spec": {"directive": directive, "title": step, "generation": 1},
        "status": {"phase": phase, "attempts": 1, **status},
    }


class World:
    """A controller over the doubles, with a kopf-like index of steps per directive."""

    def __init__(self, fast_path: bool = True) -> None:
        self.kube = FakeKube()
        self.store = FakeStore()
        self.dispatcher = FakeDispatcher()
        self.index: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self.asked: list[tuple[str, str]] = []
        self.clock = Clock()

        def source(key: tuple[str, str]) -> list[dict[str, Any]]:
            self.asked.append(key)
            return self.index.get(key, [])

        self.c = Controller(
            self.kube,  # type: ignore[arg-type]
            self.store,
            self.dispatcher,  # type: ignore[arg-type]
            ReconcileConfig(),
            steps_source=source,
            clock=self.clock,
            fast_path=fast_path,
        )

    def add_directive(self, body: dict[str, Any]) -> tuple[str, str]:
        self.kube.objects[("directives", NS, body["metadata"]["name"])] = body
        return self.c.observe_directive(body)

    def add_step(self, obj: dict[str, Any]) -> None:
        self.index.setdefault((NS, obj["spec"]["directive"]), []).append(obj)
        self.kube.objects[("directivesteps", NS, obj["metadata"]["name"])] = obj

    def watch_catches_up(self) -> None:
        """The watch delivers every object the controller wrote."""
        for key, objs in self.index.items():
            self.index[key] = [self.kube.objects[("directivesteps", NS, o["metadata"]["name"])] for o in objs]
            for o in self.index[key]:
                self.c.step_seen(o)


def test_steps_of_reads_only_its_own_directive_and_overlays_only_its_own_writes() -> None:
    w = World()
    for d in ("a", "b", "c"):
        w.add_directive(directive_body(d))
        w.add_step(step_body(d, "s1", rv=10, phase="Pending"))
    newer = step_body("a", "s1", rv=20, phase="Running")
    w.c.remember_step(newer)  # our own write, not yet shown by the watch
    w.asked.clear()
    steps_a = w.c.steps_of((NS, "a"))
    assert w.asked == [(NS, "a")]  # no other directive's steps were looked at
    assert [s["status"]["phase"] for s in steps_a] == ["Running"]  # our newer write wins
    assert [s["status"]["phase"] for s in w.c.steps_of((NS, "b"))] == ["Pending"]  # a's write is a's only


def test_an_own_write_is_dropped_once_the_watch_shows_it() -> None:
    w = World()
    w.add_directive(directive_body("a"))
    w.add_step(step_body("a", "s1", rv=10, phase="Pending"))
    w.c.remember_step(step_body("a", "s1", rv=20, phase="Running"))
    assert w.c._written  # held until the watch catches up
    w.c.step_seen(step_body("a", "s1", rv=15, phase="Pending"))  # an older event: still held
    assert w.c._written
    w.c.step_seen(step_body("a", "s1", rv=20, phase="Running"))
    assert w.c._written == {}


def test_an_own_write_is_dropped_when_the_index_has_caught_up_even_without_the_event() -> None:
    w = World()
    w.add_directive(directive_body("a"))
    w.c.remember_step(step_body("a", "s1", rv=20, phase="Running"))
    w.add_step(step_body("a", "s1", rv=21, phase="Succeeded"))
    assert [s["status"]["phase"] for s in w.c.steps_of((NS, "a"))] == ["Succeeded"]
    assert w.c._written == {}


def test_forgetting_a_directive_forgets_its_writes_and_counts() -> None:
    w = World()
    for d in ("a", "b"):
        w.add_directive(directive_body(d))
    w.c.remember_step(step_body("a", "s1", rv=20, phase="Running"))
    w.c.remember_step(step_body("b", "s1", rv=21, phase="Running"))
    for d in ("a", "b"):
        w.c._step_gauge.count((NS, d), (phase_of(s, "Pending") for s in w.c.steps_of((NS, d))))
    assert w.c.step_counts() == {"Running": 2}
    w.c.forget_directive((NS, "a"))
    assert set(w.c._written) == {(NS, "b")}
    assert w.c.step_counts() == {"Running": 1}


async def test_step_counts_follow_each_reconcile_incrementally() -> None:
    w = World()
    a = w.add_directive(directive_body("a", paused=True))  # paused: no task to start here
    b = w.add_directive(directive_body("b", paused=True))
    w.add_step(step_body("a", "s1", rv=10, phase="Succeeded"))
    w.add_step(step_body("a", "s2", rv=11, phase="Failed"))
    w.add_step(step_body("b", "s1", rv=12, phase="Succeeded"))
    await w.c.reconcile(a)
    assert w.c.step_counts() == {"Succeeded": 1, "Failed": 1}
    await w.c.reconcile(b)
    assert w.c.step_counts() == {"Succeeded": 2, "Failed": 1}
    w.index[a][1] = step_body("a", "s2", rv=13, phase="Succeeded")  # a retry succeeded
    await w.c.reconcile(a)
    assert w.c.step_counts() == {"Succeeded": 3}


def _running(directive: str, step: str, **fields: Any) -> Task:
    return Task(
        id=naming.step_task_id(f"uid-{directive}-{step}", 1),
        kind=TaskKind.STEP,
        namespace=NS,
        directive_uid=f"uid-{directive}",
        directive_name=directive,
        step_uid=f"uid-{directive}-{step}",
        step_name=step,
        state=TaskState.RUNNING,
        version=3,
        executor="job",
        executor_ref=f"job-{step}",
        **{"created_at": NOW, "started_at": NOW, "heartbeat_at": NOW, **fields},
    )


def _executing(w: World, name: str) -> tuple[str, str]:
    """A directive with one step Running on a task that is running (and heartbeating)."""
    key = w.add_directive(directive_body(name))
    task = _running(name, "s1", deadline_at=NOW + timedelta(hours=1))
    w.add_step(step_body(name, "s1", rv=10, phase="Running", task={"id": task.id, "executor": "job"}))
    w.store.tasks[f"uid-{name}"] = [task]
    return key


async def test_an_unchanged_executing_directive_costs_the_timer_no_query_and_no_call() -> None:
    w = World()
    keys = [_executing(w, f"d{i}") for i in range(5)]
    for key in keys:  # the event-driven runs: write what is to be written
        await w.c.trigger(key, "event")
    w.watch_catches_up()
    for key in keys:
        await w.c.trigger(key, "event")  # nothing left to do
    queries, calls = w.store.queries, len(w.kube.calls)
    for _ in range(5):
        await w.c.tick()
        await asyncio.gather(*w.c._background)
    # One sweep query per tick for all directives, none per directive; no API call.
    assert w.store.queries - queries == 5
    assert len(w.kube.calls) == calls
    # A report from one of its tasks makes that directive (only) look at the store again.
    w.c.task_reported(w.store.tasks["uid-d0"][0])
    await asyncio.gather(*w.c._background)
    queries = w.store.queries
    await w.c.tick()
    await asyncio.gather(*w.c._background)
    assert w.store.queries - queries == 1  # the sweep; d0's report run already looked


async def test_poll_only_keeps_an_executing_directive_on_the_timer() -> None:
    w = World(fast_path=False)
    key = _executing(w, "d")
    await w.c.trigger(key, "event")
    w.watch_catches_up()
    await w.c.trigger(key, "timer")
    queries = w.store.queries
    await w.c.trigger(key, "timer")
    assert w.store.queries - queries == 1  # only the timer moves it in poll-only mode: it looks


async def test_a_task_whose_heartbeat_ran_out_wakes_its_directive_from_the_sweep() -> None:
    w = World()
    key = _executing(w, "d")
    other = _executing(w, "e")
    for k in (key, other):
        await w.c.trigger(k, "event")
    w.watch_catches_up()
    for k in (key, other):
        await w.c.trigger(k, "event")
    stale = w.store.tasks["uid-d"][0]
    w.clock.now = NOW + timedelta(seconds=ReconcileConfig().heartbeat_timeout_seconds + 1)
    fresh = _running("e", "s1", heartbeat_at=w.clock.now)
    w.store.tasks["uid-e"] = [fresh]
    w.store.expired = [stale, fresh]  # the query's candidates; the controller applies the limit
    w.store.asked.clear()
    woken = await w.c.sweep_expired()
    assert woken == [key]  # e's task heartbeats: its directive stays quiet
    await asyncio.gather(*w.c._background)
    assert w.store.asked == ["uid-d"]
    assert w.dispatcher.expired == [stale.id]  # decide() found it lost


def test_ttl_expiry_of_completed_and_failed_directives() -> None:
    done = NOW + timedelta(minutes=5)
    completed = Directive.model_validate(
        directive_body("a", {"phase": "Completed", "completedAt": done.isoformat()}, ttlSecondsAfterFinished=60)
    )
    assert ttl_expiry(completed) == done + timedelta(seconds=60)
    failed_cond = {
        "type": "Failed",
        "status": "True",
        "reason": "StepsFailed",
        "lastTransitionTime": done.isoformat(),
    }
    failed = Directive.model_validate(
        directive_body("b", {"phase": "Failed", "conditions": [failed_cond]}, ttlSecondsAfterFinished=0)
    )
    assert ttl_expiry(failed) == done
    running = Directive.model_validate(directive_body("c", {"phase": "Executing"}, ttlSecondsAfterFinished=60))
    assert ttl_expiry(running) is None
    kept = Directive.model_validate(directive_body("d", {"phase": "Completed", "completedAt": done.isoformat()}))
    assert ttl_expiry(kept) is None  # no TTL: kept for ever
    assert finished_at(DirectiveStatus.model_validate({"phase": "Paused"})) is None


def test_a_negative_ttl_is_refused_by_the_model() -> None:
    with pytest.raises(ValueError, match=r"ttl_?[sS]econds_?[aA]fter_?[fF]inished"):
        Directive.model_validate(directive_body("a", ttlSecondsAfterFinished=-1))


async def test_a_finished_directive_past_its_ttl_is_deleted_without_a_decision() -> None:
    w = World()
    key = w.add_directive(
        directive_body("a", {"phase": "Completed", "completedAt": NOW.isoformat()}, ttlSecondsAfterFinished=30)
    )
    other = w.add_directive(directive_body("b", {"phase": "Completed", "completedAt": NOW.isoformat()}))
    w.clock.now = NOW + timedelta(seconds=30)
    assert await w.c.reconcile(key) == []
    assert w.kube.deleted == [key]
    assert w.store.queries == 0  # deleted before looking at its tasks
    # The timer's quiet check: an unchanged directive is skipped until its TTL is due.
    state = w.c._keys.setdefault(other, type(w.c._keys[key])())
    state.quiet = w.c._kube_view(other, w.c.directives[other], w.c.steps_of(other))
    state.expires_at = NOW + timedelta(seconds=31)
    assert w.c.quiet(other)
    w.clock.now = NOW + timedelta(seconds=31)
    assert not w.c.quiet(other)


async def test_a_plans_steps_are_created_concurrently_within_the_bound() -> None:
    w = World()
    key = w.add_directive(directive_body("a"))
    w.c.applier.create_concurrency = 4
    w.kube.gate, w.kube.want = asyncio.Event(), 4
    subs = [StepSubmission(name=f"s{i}", title=f"s{i}") for i in range(10)]
    run = asyncio.create_task(w.c.apply(key, w.c.directives[key], [], [CreateSteps(steps=subs, generation=1)]))
    await asyncio.wait_for(w.kube.full.wait(), 30)
    await asyncio.sleep(0)  # were the bound not kept, more would be in flight by now
    assert w.kube.in_flight == 4  # side by side, and no more than the bound
    w.kube.gate.set()
    await run
    assert w.kube.most_in_flight == 4
    assert len(w.c.steps_of(key)) == 10  # every created step is held as our own write
    created = w.c.steps_of(key)[0]
    assert created["apiVersion"] == API_VERSION and created["status"] == {"phase": "Pending", "attempts": 0}
    [owner] = created["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == ("Directive", "a", "uid-a", True)


async def test_a_wave_is_dispatched_concurrently_within_the_bound() -> None:
    w = World()
    key = w.add_directive(directive_body("a"))
    steps = [step_body("a", f"s{i}", rv=10 + i, phase="Pending") for i in range(6)]
    for s in steps:
        w.add_step(s)
    w.c.applier.dispatch_concurrency = 3
    w.dispatcher.want = 3
    directive = Directive.model_validate(w.c.directives[key])
    wave = [
        DispatchStep(
            name=f"s{i}",
            uid=f"uid-a-s{i}",
            task_id=naming.step_task_id(f"uid-a-s{i}", 1),
            attempt=1,
            prompt="p",
            workspace=WorkspacePlan(repo_url="https://example.com/r.git", branch=f"makima/step-s{i}"),
            route=Route(kind="job", daemon_id=None),
            deadline_at=NOW + timedelta(hours=1),
        )
        for i in range(6)
    ]
    run = asyncio.create_task(w.c.apply(key, w.c.directives[key], w.c.steps_of(key), list(wave), directive))
    await asyncio.wait_for(w.dispatcher.full.wait(), 30)
    await asyncio.sleep(0)  # were the bound not kept, more would be in flight by now
    assert w.dispatcher.in_flight == 3
    w.dispatcher.gate.set()
    await run
    assert w.dispatcher.most_in_flight == 3
    assert sorted(w.dispatcher.dispatched) == [f"s{i}" for i in range(6)]
    assert {s["status"]["phase"] for s in w.c.steps_of(key)} == {"Running"}
    assert {s["status"]["branch"] for s in w.c.steps_of(key)} == {f"makima/step-s{i}" for i in range(6)}


async def test_bounded_runs_every_call_then_raises_the_first_error() -> None:
    done: list[int] = []

    async def ok(i: int) -> int:
        await asyncio.sleep(0)
        done.append(i)
        return i

    async def boom() -> int:
        raise RuntimeError("boom")

    assert await bounded(2, [lambda i=i: ok(i) for i in range(5)]) == [0, 1, 2, 3, 4]  # type: ignore[misc]
    done.clear()
    with pytest.raises(RuntimeError, match="boom"):
        await bounded(2, [lambda: ok(0), boom, lambda: ok(2)])
    assert sorted(done) == [0, 2]


async def test_a_reconciles_log_lines_carry_the_directive_ids(caplog: pytest.LogCaptureFixture) -> None:
    w = World()
    key = w.add_directive(directive_body("a", paused=True))  # its status is to be written: one action
    with caplog.at_level(logging.INFO, logger="makima.control.controller"):
        assert await w.c.reconcile(key)
    [line] = [r for r in caplog.records if r.getMessage().startswith("ns/a: ")]
    assert json.loads(JsonFormatter().format(line))["directive"] == "a"
    assert (line.namespace, line.directive) == (NS, "a")  # type: ignore[attr-defined]
