"""Controller.trigger: one reconcile at a time per directive, triggers coalesced; the timer alone
asks for the digest check; reports trigger a reconcile unless poll-only."""

from __future__ import annotations

import asyncio
from typing import Any

from makima.control.controller import Controller, Key
from makima.core.reconcile import ReconcileConfig
from makima.core.tasks import Task, TaskKind


class Recording(Controller):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(None, None, None, ReconcileConfig(), steps_source=lambda key: [], **kwargs)  # type: ignore[arg-type]
        self.calls: list[tuple[Key, bool]] = []
        self.gate = asyncio.Event()
        self.running = 0
        self.most = 0

    async def reconcile(self, key: Key, only_if_changed: bool = False) -> list[Any]:
        self.calls.append((key, only_if_changed))
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            await self.gate.wait()
        finally:
            self.running -= 1
        return []


KEY = ("ns", "d")


async def test_triggers_during_a_run_coalesce_into_one_follow_up() -> None:
    c = Recording()
    first = asyncio.create_task(c.trigger(KEY, "event"))
    await asyncio.sleep(0)
    assert c.calls == [(KEY, False)]
    for trigger in ("event", "report", "timer", "event", "timer"):
        await c.trigger(KEY, trigger)  # returns at once: a run is in progress
    assert len(c.calls) == 1 and c.running == 1
    c.gate.set()
    await first
    assert c.calls == [(KEY, False), (KEY, False)]  # one follow-up, and not a timer-only one
    assert c.most == 1


async def test_the_timer_alone_asks_for_the_digest_check() -> None:
    c = Recording()
    c.gate.set()
    await c.trigger(KEY, "timer")
    await c.trigger(KEY, "wakeup")
    assert c.calls == [(KEY, True), (KEY, False)]


async def test_different_directives_run_side_by_side() -> None:
    c = Recording()
    a = asyncio.create_task(c.trigger(("ns", "a"), "event"))
    b = asyncio.create_task(c.trigger(("ns", "b"), "event"))
    await asyncio.sleep(0)
    assert c.running == 2
    c.gate.set()
    await asyncio.gather(a, b)


def _task() -> Task:
    return Task(id="t", kind=TaskKind.STEP, namespace="ns", directive_uid="u", directive_name="d")


async def test_a_task_report_triggers_a_reconcile_of_its_directive() -> None:
    c = Recording()
    c.gate.set()
    c.task_reported(_task())
    await asyncio.gather(*c._background)
    assert c.calls == [(KEY, False)]


async def test_poll_only_ignores_reports() -> None:
    c = Recording(fast_path=False)
    c.gate.set()
    c.task_reported(_task())
    assert not c._background, "nothing was scheduled"
    assert c.calls == []
