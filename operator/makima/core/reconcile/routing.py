"""Where a task runs: a Job, or a connected daemon with a free slot."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction

from makima.core.agent_ref import AgentGate
from makima.core.models import ExecutionMode
from makima.core.reconcile.actions import Route
from makima.core.reconcile.inputs import DaemonView


def choose_route(
    mode: ExecutionMode,
    selector: Mapping[str, str] | None,
    daemons: Sequence[DaemonView],
    extra_load: Mapping[str, int] | None = None,
) -> Route | None:
    """Where one task goes. Job mode: a Job. Auto: the least-loaded daemon (in_flight +
    extra_load over capacity, then id) that carries every selector label and has a free
    slot, else a Job. Daemon: that daemon, or None (wait). The caller passes only the
    daemons of the directive's namespace that are connected."""
    if mode is ExecutionMode.JOB:
        return Route("job")
    extra = extra_load or {}
    want = selector or {}
    free = [
        d
        for d in daemons
        if d.capacity > 0
        and d.in_flight + extra.get(d.id, 0) < d.capacity
        and all(d.labels.get(k) == v for k, v in want.items())
    ]
    if free:
        best = min(
            free,
            key=lambda d: (Fraction(d.in_flight + extra.get(d.id, 0), d.capacity), d.in_flight, d.id),
        )
        return Route("daemon", best.id)
    if mode is ExecutionMode.DAEMON:
        return None
    return Route("job")


@dataclass(frozen=True)
class Router:
    """choose_route() with the daemon slots already taken in this decide() call counted in.

    Planning, dispatch and completion never start tasks in the same call (a planning task
    holds the other two back; completion waits until every step succeeded, so nothing is
    dispatched beside it), so only dispatch, which starts several, carries a Router along.
    """

    mode: ExecutionMode
    selector: Mapping[str, str] | None
    daemons: tuple[DaemonView, ...]
    taken: Mapping[str, int] = field(default_factory=dict)
    slots: int | None = None  # tasks the directive's Agent still lets start (None: no limit)

    def pick(self) -> tuple[Route | None, Router]:
        """The route of the next task, and the router with its slots taken."""
        if self.slots is not None and self.slots <= 0:
            return None, self
        route = choose_route(self.mode, self.selector, self.daemons, self.taken)
        if route is None:
            return route, self
        slots = self.slots - 1 if self.slots is not None else None
        taken = dict(self.taken)
        if route.daemon_id is not None:
            taken[route.daemon_id] = taken.get(route.daemon_id, 0) + 1
        return route, Router(self.mode, self.selector, self.daemons, taken, slots)

    def waiting_for(self, agent: AgentGate) -> str:
        """Why pick() gave no route: the Agent's slots are used up, or no daemon is free."""
        return agent.waiting_for if self.slots is not None and self.slots <= 0 else "a daemon"


def route_text(route: Route) -> str:
    return f"daemon {route.daemon_id}" if route.kind == "daemon" else "a job"
