"""What decide() is given: the snapshot of one directive, and the knobs of its rules."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from makima.core.agent_ref import AgentGate
from makima.core.models import Directive, DirectiveStepSpec, DirectiveStepStatus
from makima.core.tasks import Task


@dataclass(frozen=True)
class StepView:
    """One DirectiveStep: `name` is its `makima.dev/step` label (what dependsOn refers to)."""

    name: str
    uid: str
    spec: DirectiveStepSpec
    status: DirectiveStepStatus


@dataclass(frozen=True)
class DaemonView:
    """A connected daemon. `in_flight` counts tasks it runs now (any directive)."""

    id: str
    namespace: str
    labels: Mapping[str, str]
    capacity: int
    in_flight: int


@dataclass(frozen=True)
class ReconcileConfig:
    retry_base_seconds: float = 10  # backoff after attempt n: min(base * 2**(n-1), max)
    retry_max_seconds: float = 600
    daemon_lost_after_seconds: float = 30  # a daemon task without heartbeat this long is lost
    heartbeat_timeout_seconds: float = 120  # a running Job task without heartbeat this long is lost
    max_planning_attempts: int = 2  # automatic planning attempts per generation before pausing


@dataclass(frozen=True)
class Snapshot:
    """What decide() sees. `tasks`: every task of this directive (all kinds, attempts);
    `agent`: how many tasks its Agent lets it start now (agent_ref.gate)."""

    directive: Directive
    steps: Sequence[StepView]
    tasks: Sequence[Task]
    daemons: Sequence[DaemonView] = ()
    agent: AgentGate = field(default_factory=AgentGate)
