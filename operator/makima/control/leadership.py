"""Which replica acts: `Leadership` (the answer every part asks) and `LeaseElector` (who sets it).

One replica (the default) is always active. With more (`MAKIMA_LEASE_NAME` set, as the
chart does when `replicas > 1`), the replica holding the Lease is active, by the rule in
`makima.core.lease`. What each part does with the answer:

- the controller and kopf start only on the active replica (`runtime.run_operator` waits
  for `Leadership.wait_active()`); a standby keeps its store pool, Kubernetes client and
  API up, so taking over costs kopf's first listing and nothing else;
- `/readyz` is 503 on a standby, so the Service sends task reports and daemon sockets only
  to the active replica; `/healthz` stays 200 (a standby is healthy);
- task reports and daemon connections that reach a standby anyway (before the endpoints
  follow readiness) get 503 with `Retry-After`: runners and daemons retry and get there;
- a holder that cannot renew the Lease for `renew_deadline` stops acting at once: the
  Kubernetes gateway refuses its writes, the API refuses reports, its daemons are
  disconnected (they reconnect to the new holder) and `run_operator` raises
  `LeadershipLost`, so the process ends and starts again as a standby. That happens
  `duration - renew_deadline` seconds before a standby may take the Lease;
- a replica that stops cleanly (SIGTERM, a rolling update) releases the Lease, so a
  standby takes it at its next look instead of waiting for it to expire.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from makima.control import metrics
from makima.core.lease import (
    LeaseTimings,
    LeaseView,
    Move,
    lease_spec,
    may_act,
    micro_time,
    next_move,
    released_spec,
)

if TYPE_CHECKING:  # not at run time: `makima operator` imports this module before the Kubernetes client
    from makima.control.kube import Kube

log = logging.getLogger(__name__)


class LeadershipLost(RuntimeError):
    """This replica was active and could not renew its Lease in time: it must stop."""


class Leadership:
    """Whether this replica may act now. Starts standing by unless `active`."""

    def __init__(self, identity: str, *, active: bool = False) -> None:
        self.identity = identity
        self._active = asyncio.Event()
        self.lost = asyncio.Event()  # set once: was active, could not renew (never cleared)
        self._on_lost: list[Callable[[], Any]] = []
        if active:
            self._active.set()
        metrics.ACTIVE_REPLICA.set(1 if active else 0)

    @property
    def active(self) -> bool:
        return self._active.is_set()

    async def wait_active(self) -> None:
        await self._active.wait()

    def on_lost(self, callback: Callable[[], Any]) -> None:
        """`callback()` runs when this replica stops being active without releasing cleanly."""
        self._on_lost.append(callback)

    def acquired(self) -> None:
        if not self.active:
            self._active.set()
            metrics.ACTIVE_REPLICA.set(1)

    def released(self) -> None:
        """Stopped cleanly: no longer active, nothing lost."""
        self._active.clear()
        metrics.ACTIVE_REPLICA.set(0)

    def lose(self, why: str) -> None:
        if self.lost.is_set():
            return
        was_active = self.active
        self.released()
        self.lost.set()
        if was_active:
            log.error("this replica is no longer the active one (%s): it stops acting now", why)
        for callback in self._on_lost:
            try:
                callback()
            except Exception:  # one part failing to stop must not keep the others going
                log.exception("a part did not stop cleanly on losing leadership")


def _now() -> str:
    return micro_time(datetime.now(UTC))


class LeaseElector:
    """Takes and renews the Lease `namespace/name` for `leadership` (see `makima.core.lease`)."""

    def __init__(
        self,
        kube: Kube,
        leadership: Leadership,
        namespace: str,
        name: str,
        timings: LeaseTimings,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.kube = kube
        self.leadership = leadership
        self.namespace = namespace
        self.name = name
        self.timings = timings
        self.clock = clock
        self._seen: tuple[str | None, str] | None = None  # (holder, resourceVersion) last seen
        self._seen_at = 0.0
        self._renewed_at: float | None = None  # our last successful write while holding it
        self._logged_holder: str | None = None
        self.looks = 0  # Lease reads answered (for logs and tests)

    @property
    def call_timeout(self) -> float:
        """Each API call is bounded so that a hung one cannot outlive the renew deadline."""
        return max(0.5, min(5.0, self.timings.renew_deadline / 2))

    async def run(self) -> None:
        """Look at the Lease every retry period until cancelled or until leadership is lost."""
        while not self.leadership.lost.is_set():
            started = self.clock()
            try:
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation
                # that lands as the step ends, and then stopping the operator waits forever.
                async with asyncio.timeout(self._step_budget()):
                    await self.step()
            except Exception as exc:  # KubeError, a timeout, the client's own connection errors: look again
                log.warning("leader lease %s/%s: %s", self.namespace, self.name, str(exc) or type(exc).__name__)
            self._check_deadline()
            if self.leadership.lost.is_set():
                return
            await asyncio.sleep(max(0.0, self.timings.retry_period - (self.clock() - started)))

    def _step_budget(self) -> float:
        """A holder's step must end by its renew deadline, a standby's within a few periods."""
        if self._renewed_at is None:
            return self.call_timeout * 2 + 1
        left = self.timings.renew_deadline - (self.clock() - self._renewed_at)
        return max(0.01, left)

    def _check_deadline(self) -> None:
        if self._renewed_at is not None and not may_act(self.clock() - self._renewed_at, self.timings):
            deadline = self.timings.renew_deadline
            self.leadership.lose(f"no renewal of lease {self.namespace}/{self.name} for {deadline:.0f}s")

    async def step(self) -> None:
        """One look: read the Lease, then create, renew or take it, or wait."""
        raw = await self.kube.get_lease(self.namespace, self.name, self.call_timeout)
        lease = LeaseView.of(raw) if raw is not None else None
        self.looks += 1
        now = self.clock()
        key = (lease.holder, lease.version) if lease is not None else None
        if key != self._seen:
            self._seen, self._seen_at = key, now
        move = next_move(lease, self.leadership.identity, now - self._seen_at)
        if move is Move.WAIT:
            if self._renewed_at is not None:  # someone else holds what we held: stop at once
                self.leadership.lose(f"lease {self.namespace}/{self.name} is held by {lease.holder if lease else '?'}")
            elif lease is not None and lease.holder != self._logged_holder:
                self._logged_holder = lease.holder
                log.info("standing by: replica %s is active (lease %s/%s)", lease.holder, self.namespace, self.name)
            return
        if move is Move.TAKE and self._renewed_at is not None:
            self.leadership.lose(f"lease {self.namespace}/{self.name} was taken over or released meanwhile")
            return
        before_write = self.clock()  # the renewal counts from before it was sent: the conservative side
        written = await self._write(move, lease)
        if written is None:
            return  # another replica wrote first: look again next period
        mine = LeaseView.of(written)
        self._seen, self._seen_at = (mine.holder, mine.version), self.clock()
        self._renewed_at = before_write
        if not self.leadership.active:
            log.info(
                "this replica (%s) is now the active one (lease %s/%s, %s)",
                self.leadership.identity,
                self.namespace,
                self.name,
                "new" if move is Move.CREATE else "taken over" if lease and lease.holder else "free",
            )
            self.leadership.acquired()

    def _body(self, spec: dict[str, Any], version: str | None) -> dict[str, Any]:
        """The whole Lease; with the resourceVersion it was decided on, a write is a compare-and-set."""
        meta: dict[str, Any] = {"name": self.name, "namespace": self.namespace}
        if version:
            meta["resourceVersion"] = version
        return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta, "spec": spec}

    async def _write(self, move: Move, lease: LeaseView | None) -> dict[str, Any] | None:
        body = self._body(lease_spec(move, self.leadership.identity, lease, self.timings.duration, _now()), None)
        if lease is None:
            return await self.kube.create_lease(self.namespace, body, self.call_timeout)
        body["metadata"]["resourceVersion"] = lease.version
        return await self.kube.replace_lease(self.namespace, self.name, body, self.call_timeout)

    async def release(self) -> None:
        """Stopping cleanly: give the Lease up so a standby takes it at once."""
        held = self._renewed_at is not None and not self.leadership.lost.is_set()
        self.leadership.released()
        if not held:
            return
        self._renewed_at = None
        with contextlib.suppress(Exception):
            raw = await self.kube.get_lease(self.namespace, self.name, self.call_timeout)
            lease = LeaseView.of(raw) if raw is not None else None
            if lease is None or lease.holder != self.leadership.identity:
                return
            body = self._body(released_spec(lease, _now()), lease.version)
            if await self.kube.replace_lease(self.namespace, self.name, body, self.call_timeout) is not None:
                log.info("released lease %s/%s", self.namespace, self.name)
