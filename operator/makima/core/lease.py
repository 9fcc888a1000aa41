"""Who is the active replica: the rule of leader election over a Kubernetes Lease. Pure.

With more than one operator replica exactly one acts (runs the controller, takes task
reports and daemons); the others stand by. The one that holds the Lease
(`coordination.k8s.io/v1`, `spec.holderIdentity`) is active. It renews the Lease every
`retry_period`; a replica that could not renew for `renew_deadline` stops acting at once.
A standby takes the Lease when it is free (released by a holder that stopped cleanly) or
when it has seen it unchanged for the `leaseDurationSeconds` it carries.

Standbys measure "unchanged for" with their own monotonic clock from the moment they saw
the Lease change (its resourceVersion), never by comparing `renewTime` with their wall
clock: clocks of different nodes need not agree. Since `renew_deadline` < `duration`, a
holder that cannot renew stops acting `duration - renew_deadline` seconds before anyone
may take over. Every write carries the resourceVersion it was decided on, so two standbys
racing for a free Lease cannot both win.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any


def micro_time(at: datetime) -> str:
    """A Lease MicroTime: RFC 3339 in UTC with exactly six fraction digits, as the API wants."""
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _as_micro_time(value: Any) -> str | None:
    """A time read back from the client (a datetime, or an ISO string) as a MicroTime."""
    if not value:
        return None
    at = value if isinstance(value, datetime) else datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return micro_time(at if at.tzinfo else at.replace(tzinfo=UTC))


@dataclass(frozen=True)
class LeaseTimings:
    duration: int  # leaseDurationSeconds (whole seconds in the API): how long a holder's last renewal counts
    renew_deadline: float  # a holder whose last renewal is this old stops acting
    retry_period: float  # how often each replica reads (and the holder renews) the Lease

    def __post_init__(self) -> None:
        if not 0 < self.retry_period < self.renew_deadline < self.duration:
            raise ValueError(f"need 0 < retry_period < renew_deadline < duration, got {self}")

    @classmethod
    def for_duration(cls, seconds: int) -> LeaseTimings:
        """The usual proportions (15 s → renew deadline 10 s, a look every 2 s)."""
        return cls(duration=seconds, renew_deadline=seconds * 2 / 3, retry_period=seconds * 2 / 15)

    @property
    def takeover_bound(self) -> float:
        """Worst case from the holder's last renewal to a standby holding the Lease: the
        standby may see that renewal up to a retry period late, and looks again every period."""
        return self.duration + 2 * self.retry_period


@dataclass(frozen=True)
class LeaseView:
    """What the decision needs of a Lease object."""

    holder: str | None
    duration: float
    version: str  # metadata.resourceVersion: every renewal changes it
    transitions: int = 0
    acquired: str | None = None  # acquireTime, kept by renewals

    @classmethod
    def of(cls, lease: dict[str, Any]) -> LeaseView:
        spec = lease.get("spec") or {}
        return cls(
            holder=spec.get("holderIdentity") or None,
            duration=float(spec.get("leaseDurationSeconds") or 0),
            version=str((lease.get("metadata") or {}).get("resourceVersion") or ""),
            transitions=int(spec.get("leaseTransitions") or 0),
            acquired=_as_micro_time(spec.get("acquireTime")),
        )


class Move(enum.Enum):
    CREATE = "create"  # no Lease yet: create it, holding it
    RENEW = "renew"  # ours: write a new renewTime
    TAKE = "take"  # free or expired: write ourselves as holder
    WAIT = "wait"  # someone else holds it and renews it


def next_move(lease: LeaseView | None, me: str, unchanged_for: float) -> Move:
    """What replica `me` does now, given the Lease and how long it has seen it unchanged."""
    if lease is None:
        return Move.CREATE
    if lease.holder == me:
        return Move.RENEW
    if lease.holder is None or unchanged_for >= lease.duration:
        return Move.TAKE
    return Move.WAIT


def may_act(since_renewal: float, timings: LeaseTimings) -> bool:
    """Whether a holder whose last successful renewal was `since_renewal` seconds ago still acts."""
    return since_renewal < timings.renew_deadline


def lease_spec(move: Move, me: str, lease: LeaseView | None, duration: int, now: str) -> dict[str, Any]:
    """The Lease `spec` that carries out `move` (CREATE, RENEW or TAKE); `now` is a MicroTime."""
    transitions = lease.transitions if lease is not None else 0
    if lease is not None and move is Move.TAKE:
        transitions += 1
    renewing = move is Move.RENEW and lease is not None and lease.acquired is not None
    return {
        "holderIdentity": me,
        "leaseDurationSeconds": duration,
        "acquireTime": lease.acquired if renewing and lease is not None else now,
        "renewTime": now,
        "leaseTransitions": transitions,
    }


def released_spec(lease: LeaseView, now: str) -> dict[str, Any]:
    """The Lease `spec` a holder that stops cleanly writes: no holder, so a standby takes it at once."""
    return {"leaseDurationSeconds": 1, "renewTime": now, "leaseTransitions": lease.transitions}
