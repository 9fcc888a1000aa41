"""The shell around `core.agent_ref`: the Agents the operator sees, and each Agent's free slots.

The Agents come from a kopf index (registered in handlers.py, so no API call of ours); the
rules are `agent_ref`'s. For an Agent with `maxConcurrentTasks`, the reconciles of the
directives using it run one at a time (a lock per Agent, held from counting its active tasks
in the store to the last task launched), so two directives cannot both take the last slot.

It also remembers which directive uses (or waits for) which Agent: a change of an Agent
reconciles its directives, and a task of a limited Agent that ends wakes the directives
waiting for one of its slots. A waiting directive is never quiet for the timer, so a slot
freed some other way (an expiry, a cancel) is seen within a tick.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from makima.core import agent_ref
from makima.core.agent_ref import AgentGate, AgentKey
from makima.core.agents import DEFAULT_PROFILE
from makima.core.models import Directive, DirectivePhase
from makima.core.tasks import Task

Key = tuple[str, str]  # (namespace, directive name)
AgentLookup = Callable[[AgentKey], Mapping[str, Any] | None]


def _nothing(_key: AgentKey) -> Mapping[str, Any] | None:
    return None


class AgentDirectory:
    def __init__(self, store: Any, default_profile: str = DEFAULT_PROFILE) -> None:
        self.store = store
        self.default_profile = default_profile
        self.lookup: AgentLookup = _nothing  # bound to the kopf index by handlers.py
        self._uses: dict[Key, AgentKey] = {}  # directive -> the Agent it uses or waits for
        self._waiting: dict[Key, str] = {}  # directive -> "namespace/name" of the Agent it waits for
        self._locks: dict[str, asyncio.Lock] = {}

    @contextlib.asynccontextmanager
    async def resolved(self, key: Key, directive: Directive) -> AsyncIterator[tuple[Directive, AgentGate]]:
        """The effective directive (its Agent's settings in spec.agent) and its gate, with the
        Agent's lock held for the body when the Agent limits its tasks."""
        wanted = agent_ref.wanted(directive)
        if wanted is None:
            self._uses.pop(key, None)
        else:
            self._uses[key] = wanted
        found = self.lookup(wanted) if wanted is not None else None
        resolution = agent_ref.resolve(directive, {wanted: found} if wanted is not None and found else {})
        effective = agent_ref.effective(directive, resolution, self.default_profile)
        name = resolution.name
        if agent_ref.limit(resolution) is None or name is None:
            yield effective, agent_ref.gate(resolution)
            return
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            active = await self.store.active_tasks_of_agent(name)
            yield effective, agent_ref.gate(resolution, active)

    def settle(self, key: Key, gate: AgentGate, started: int, phase: str | None) -> None:
        """After a reconcile: does the directive wait for its Agent (missing, refused, or all its
        slots taken while this run started `started` tasks)?"""
        finished = phase in (DirectivePhase.COMPLETED, DirectivePhase.FAILED)
        full = gate.slots is not None and started >= gate.slots
        if gate.agent is not None and not finished and (gate.problem is not None or full):
            self._waiting[key] = gate.agent
        else:
            self._waiting.pop(key, None)

    def waiting(self, key: Key) -> bool:
        return key in self._waiting

    def users_of(self, agent: AgentKey) -> list[Key]:
        """The directives that last resolved to (or looked for) this Agent."""
        return [k for k, a in self._uses.items() if a == agent]

    def freed_by(self, task: Task) -> list[Key]:
        """The directives waiting for a slot of the Agent a finished task ran with."""
        if not task.state.terminal or not self._waiting:
            return []
        name = ((task.spec or {}).get("agent") or {}).get("agent_ref")
        return [k for k, a in self._waiting.items() if a == name] if name else []

    def forget(self, key: Key) -> None:
        self._uses.pop(key, None)
        self._waiting.pop(key, None)
