"""Carrying out decide()'s actions for one directive, in the order given.

One `match` over the action types, ending in `assert_never`: a new action type in
`core.reconcile` fails the type check here until the shell knows how to apply it.

The order is decide()'s (docs/architecture.md, "Life of a directive"), chosen so that a crash
between any two actions leaves a state the next decide() repairs; every write is idempotent.
Two kinds of action run side by side, bounded: the steps of one CreateSteps, and a wave of
consecutive DispatchSteps (each step is its own object, so their launches are independent).

What the applier writes to Kubernetes it reports through `Written`, so that the controller's
next snapshot is never older than its own writes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import Any, Protocol, TypeVar, assert_never

from makima.control.dispatch import TaskDispatcher
from makima.control.kube import DIRECTIVES, STEPS
from makima.control.ports import KubeGateway, TaskRecords
from makima.control.resources import NEW_STEP_STATUS, running_status, status_diff, step_object
from makima.core import naming
from makima.core.models import Directive
from makima.core.reconcile import (
    Action,
    CreatePlanningTask,
    CreateSteps,
    DispatchStep,
    EmitEvent,
    ExpireTask,
    MarkStep,
    PauseDirective,
    Reason,
    SetDirectiveStatus,
    StartCompletion,
)
from makima.core.tasks import TaskState

R = TypeVar("R")

Key = tuple[str, str]  # (namespace, directive name)
CREATE_CONCURRENCY = 16  # a plan's DirectiveSteps created at the same time
DISPATCH_CONCURRENCY = 16  # a wave's steps launched at the same time (rows, Secrets, Jobs)


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


class Written(Protocol):
    """Where the applier reports its writes (the controller keeps them until the watch shows them)."""

    def observe_directive(self, body: dict[str, Any]) -> object: ...

    def remember_step(self, obj: dict[str, Any]) -> None: ...

    def step_started(self, key: Key) -> None:
        """A step of `key` was marked Running (the end of a hand-off)."""
        ...


@dataclass
class Applied:
    """What applying one list of actions found out."""

    lost: bool = False  # a task was marked lost: its step's retry can be decided at once


@dataclass
class _Run:
    """One apply call: the directive as last written, its steps by name, what happened so far."""

    key: Key
    body: dict[str, Any]
    steps: dict[str | None, dict[str, Any]]
    directive: Directive | None
    applied: Applied = field(default_factory=Applied)
    not_expired: list[str] = field(default_factory=list)  # ExpireTask reasons whose task had finished

    def parsed(self) -> Directive:
        assert self.directive is not None, "task-starting actions need the parsed directive"
        return self.directive


class ActionApplier:
    def __init__(
        self,
        kube: KubeGateway,
        store: TaskRecords,
        dispatcher: TaskDispatcher,
        written: Written,
        clock: Callable[[], datetime],
    ) -> None:
        self.kube = kube
        self.store = store
        self.dispatcher = dispatcher
        self.written = written
        self.clock = clock
        self.create_concurrency = CREATE_CONCURRENCY
        self.dispatch_concurrency = DISPATCH_CONCURRENCY

    async def apply(
        self,
        key: Key,
        body: dict[str, Any],
        steps: list[dict[str, Any]],
        actions: Sequence[Action],
        directive: Directive | None = None,
    ) -> Applied:
        """Apply `actions` in order. `body` and `steps` are the objects decide() saw; `directive`
        (the parsed body) is needed only by task-starting actions."""
        run = _Run(key, body, {s["metadata"].get("labels", {}).get(naming.LABEL_STEP): s for s in steps}, directive)
        wave: list[DispatchStep] = []
        for action in actions:
            if wave and not isinstance(action, DispatchStep):
                await self._launch(run, wave)
                wave = []
            match action:
                case DispatchStep():
                    wave.append(action)  # launched together with the DispatchSteps right after it
                case CreatePlanningTask():
                    await self.dispatcher.start_planning(run.parsed(), action)
                case CreateSteps():
                    await self._create_steps(run, action)
                case PauseDirective():
                    paused = await self.kube.patch_directive(*key, {"spec": {"paused": True}})
                    self.written.observe_directive(paused)
                case MarkStep():
                    await self._patch_step(run, action.name, action.status_patch())
                case ExpireTask():
                    await self._expire(run, action)
                case StartCompletion():
                    await self.dispatcher.start_completion(run.parsed(), action)
                case SetDirectiveStatus():
                    await self._set_status(run, action)
                case EmitEvent():
                    await self._emit(run, action)
                case _:
                    assert_never(action)
        if wave:
            await self._launch(run, wave)
        return run.applied

    async def _create_steps(self, run: _Run, action: CreateSteps) -> None:
        namespace = run.key[0]
        bodies = [step_object(run.body, step, action.generation) for step in action.steps]
        created = await bounded(self.create_concurrency, [partial(self.kube.create_step, namespace, b) for b in bodies])
        fresh = [obj for obj in created if obj is not None]  # None: it existed (a re-applied plan)
        with_status = await bounded(
            self.create_concurrency,
            [
                partial(self.kube.patch_status, STEPS, namespace, o["metadata"]["name"], NEW_STEP_STATUS)
                for o in fresh
                if not o.get("status")
            ],
        )
        for obj in [*(o for o in fresh if o.get("status")), *with_status]:
            self.written.remember_step(obj)

    async def _launch(self, run: _Run, wave: list[DispatchStep]) -> None:
        """Each step's task is inserted and launched, then the step marked Running with the task
        actually launched (a refusing daemon falls back to a Job)."""
        directive = run.parsed()

        async def one(action: DispatchStep) -> None:
            step = run.steps.get(action.name)
            if step is None:
                return
            task = await self.dispatcher.dispatch_step(directive, step, action)
            await self._patch_step(run, action.name, running_status(action, task, self.clock()))
            self.written.step_started(run.key)

        await bounded(self.dispatch_concurrency, [partial(one, a) for a in wave])

    async def _patch_step(self, run: _Run, name: str, patch: dict[str, Any]) -> None:
        obj = run.steps.get(name)
        if obj is None or not patch:
            return
        meta = obj["metadata"]
        updated = await self.kube.patch_status(STEPS, meta["namespace"], meta["name"], patch)
        self.written.remember_step(updated)
        run.steps[name] = updated

    async def _expire(self, run: _Run, action: ExpireTask) -> None:
        await self.dispatcher.expire(action.task_id, action.reason)
        after = await self.store.get_task(action.task_id)
        if after is not None and after.state is TaskState.LOST and after.error == action.reason:
            run.applied.lost = True
        else:
            run.not_expired.append(action.reason)  # it finished meanwhile: no TaskExpired warning

    async def _set_status(self, run: _Run, action: SetDirectiveStatus) -> None:
        patch = status_diff(run.body.get("status") or {}, action.status.wire())
        if patch:
            run.body = await self.kube.patch_status(DIRECTIVES, *run.key, patch)
            self.written.observe_directive(run.body)

    async def _emit(self, run: _Run, action: EmitEvent) -> None:
        if action.reason == Reason.TASK_EXPIRED and any(action.message.endswith(r) for r in run.not_expired):
            return
        await self.kube.emit_event(run.body, action.type, action.reason, action.message)
