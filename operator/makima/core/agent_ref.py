"""Which agent a directive's tasks run with: `spec.agentRef` resolved against the Agents. Pure.

The rules (docs/agents.md says the same for people):

- `spec.agent` with any field set: those inline settings (tests, demos). Naming an Agent
  beside them is refused at admission (a CEL rule of the CRD; the models say it too).
- `spec.agentRef`: that Agent; its namespace defaults to the directive's. An Agent of another
  namespace must allow the directive's namespace (`spec.allowedNamespaces`, or `*`).
- neither: the Agent named `default` in the directive's namespace, else the operator's defaults.

A named Agent that is missing, refuses the namespace or is invalid starts no task: the
directive waits with the condition `AgentResolved=False` and a Warning Event, and goes on
when the Agent appears or is fixed (the operator reconciles the directives waiting for an
Agent when it changes). Task pods always run in the directive's namespace (ownerReferences,
the task token, the repository credentials and daemons are all namespace-local), so the
Secret an Agent's `secretRef` names is read there: for another namespace's Agent, that
Secret must exist in the directive's namespace too.

The shell looks the wanted Agent up (`wanted`), resolves (`resolve`), counts the Agent's
active tasks when it limits them, and hands `gate(...)` to decide() and `effective(...)`
(the directive with the Agent's settings in `spec.agent`) to the dispatcher.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from pydantic import ValidationError

from makima.core.agents import get_profile
from makima.core.models import (
    ANY_NAMESPACE,
    DEFAULT_AGENT,
    Agent,
    AgentRef,
    AgentResource,
    AgentResourceSpec,
    Condition,
    ConditionStatus,
    Directive,
    DirectivePhase,
    DirectiveStatus,
    EnvVar,
    SecretKeyRef,
    parse_duration,
)

AgentKey = tuple[str, str]  # (namespace, name) of an Agent
Event = tuple[Literal["Normal", "Warning"], str, str]  # type, reason, message
CONDITION = "AgentResolved"


class Reason:
    FOUND = "AgentFound"
    NOT_FOUND = "AgentNotFound"
    NOT_ALLOWED = "AgentNotAllowed"
    INVALID = "AgentInvalid"
    INLINE = "InlineAgent"
    OPERATOR_DEFAULTS = "OperatorDefaults"


@dataclass(frozen=True)
class Resolution:
    """What `resolve` found. `key`: the Agent used or waited for (None: spec.agent or the
    operator's defaults); `spec`: its settings when usable; `problem`: why not, for people."""

    reason: str
    key: AgentKey | None = None
    spec: AgentResourceSpec | None = None
    problem: str | None = None

    @property
    def name(self) -> str | None:
        return f"{self.key[0]}/{self.key[1]}" if self.key is not None else None


@dataclass(frozen=True)
class AgentGate:
    """What the directive's Agent allows now; decide() starts at most `slots` tasks (None: no
    limit). `agent` is "namespace/name" of the Agent resource, None for spec.agent or defaults."""

    reason: str = Reason.OPERATOR_DEFAULTS
    agent: str | None = None
    slots: int | None = None
    limit: int | None = None
    problem: str | None = None

    @property
    def waiting_for(self) -> str:
        """What a directive whose tasks cannot start waits for (ends "waiting for …")."""
        if self.problem is not None:
            return f"Agent {self.agent} ({self.problem})"
        return f"a free slot of Agent {self.agent} (at most {self.limit} tasks at once)"


def wanted(directive: Directive) -> AgentKey | None:
    """The Agent a directive would use (None: its inline spec.agent)."""
    ns = directive.metadata.namespace
    ref = directive.spec.agent_ref
    if ref is not None:
        return (ref.namespace or ns, ref.name)
    if directive.spec.agent.is_set:
        return None
    return (ns, DEFAULT_AGENT)


def resolve(directive: Directive, agents: Mapping[AgentKey, Mapping[str, Any]]) -> Resolution:
    """The agent of `directive`, given the Agent objects visible (raw bodies by key; only
    `wanted(directive)` is looked up)."""
    key = wanted(directive)
    if key is None:
        return Resolution(Reason.INLINE)
    named = directive.spec.agent_ref is not None
    body = agents.get(key)
    if body is None:
        if not named:  # a namespace need not have a default Agent
            return Resolution(Reason.OPERATOR_DEFAULTS)
        return Resolution(Reason.NOT_FOUND, key, problem="not found, or in a namespace the operator does not watch")
    try:
        spec = AgentResource.model_validate(body).spec
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        return Resolution(Reason.INVALID, key, problem=f"invalid: {where}: {first['msg']}")
    ns = directive.metadata.namespace
    allowed = key[0] == ns or ANY_NAMESPACE in spec.allowed_namespaces or ns in spec.allowed_namespaces
    if not allowed:
        return Resolution(
            Reason.NOT_ALLOWED, key, problem=f"its spec.allowedNamespaces does not include namespace {ns}"
        )
    return Resolution(Reason.FOUND, key, spec)


def key_env(spec: AgentResourceSpec, default_profile: str) -> list[EnvVar]:
    """The model key as environment: secretRef's keys, or each key variable of the profile
    from the key of the same name. Optional refs: a missing Secret or key leaves the variable
    unset, and the runner's check names the agent and the missing key at once (a required ref
    would hold the pod in CreateContainerConfigError until the task's heartbeat limit)."""
    ref = spec.secret_ref
    if ref is None:
        return []
    pairs = [(k.env, k.key) for k in ref.keys]
    if not pairs:
        custom = spec.profile is None and spec.command
        names = () if custom else get_profile(spec.profile.value if spec.profile else default_profile).key_env
        pairs = [(name, name) for name in names]
    return [EnvVar(name=env, secret_key_ref=SecretKeyRef(name=ref.name, key=key, optional=True)) for env, key in pairs]


def inline_settings(spec: AgentResourceSpec, default_profile: str) -> Agent:
    """An Agent's settings in the shape of spec.agent (what the dispatcher and Jobs read)."""
    return Agent(
        profile=spec.profile,
        image=spec.image,
        command=spec.command,
        env=[*key_env(spec, default_profile), *spec.env],
        resources=spec.resources,
    )


def effective(directive: Directive, resolution: Resolution, default_profile: str) -> Directive:
    """The directive as its tasks run it: with a usable Agent, `spec.agent` holds that Agent's
    settings, `spec.agentRef` names it (namespace filled in, also for the namespace's default)
    and `execution.stepTimeout` is capped by the Agent's timeout. Otherwise unchanged.
    An in-memory copy for the dispatcher, never written back (both fields set would be refused)."""
    spec = resolution.spec
    if spec is None or resolution.key is None:
        return directive
    execution = directive.spec.execution
    if spec.timeout is not None and parse_duration(spec.timeout) < parse_duration(execution.step_timeout):
        execution = execution.model_copy(update={"step_timeout": spec.timeout})
    new_spec = directive.spec.model_copy(
        update={
            "agent": inline_settings(spec, default_profile),
            "agent_ref": AgentRef(namespace=resolution.key[0], name=resolution.key[1]),
            "execution": execution,
        }
    )
    return directive.model_copy(update={"spec": new_spec})


def in_use(directive: Directive) -> str | None:
    """ "namespace/name" of the Agent an effective directive runs with (None: spec.agent or the
    operator's defaults); tasks record it, and per-Agent concurrency counts it."""
    ref = directive.spec.agent_ref
    return f"{ref.namespace or directive.metadata.namespace}/{ref.name}" if ref is not None else None


def limit(resolution: Resolution) -> int | None:
    """Tasks the Agent allows at once (None: no limit, so nothing to count)."""
    return resolution.spec.max_concurrent_tasks if resolution.spec is not None else None


def gate(resolution: Resolution, active: int = 0) -> AgentGate:
    """What decide() may start, given `active`: the tasks of this Agent active now, over every
    directive (counted by the shell only when the Agent has a limit)."""
    if resolution.problem is not None:
        return AgentGate(resolution.reason, resolution.name, slots=0, problem=resolution.problem)
    most = limit(resolution)
    slots = max(0, most - active) if most is not None else None
    return AgentGate(resolution.reason, resolution.name, slots=slots, limit=most)


def with_condition(
    status: DirectiveStatus, cur: DirectiveStatus, agent: AgentGate, generation: int, now: datetime
) -> tuple[DirectiveStatus, list[Event]]:
    """The condition AgentResolved (when an Agent resource is involved, or was) and the Events
    (type, reason, message) of its transitions. A finished directive keeps what it had."""
    prev = next((c for c in cur.conditions if c.type == CONDITION), None)
    if agent.agent is None and prev is None:
        return status, []
    if status.phase in (DirectivePhase.COMPLETED, DirectivePhase.FAILED):
        return status, []
    ok = agent.problem is None
    if agent.problem is not None:
        message = f"Agent {agent.agent}: {agent.problem}; no task starts until it is there and usable"
    elif agent.agent is not None:
        message = f"uses Agent {agent.agent}"
    elif agent.reason == Reason.INLINE:
        message = "uses the inline spec.agent"
    else:
        message = "uses the operator's defaults (no Agent named default in this namespace)"
    value = ConditionStatus.TRUE if ok else ConditionStatus.FALSE
    cond = Condition(
        type=CONDITION,
        status=value,
        reason=agent.reason,
        message=message,
        last_transition_time=prev.last_transition_time if prev is not None and prev.status == value else now,
        observed_generation=generation,
    )
    events: list[Event] = []
    if not ok and (prev is None or prev.status != value or prev.reason != agent.reason):
        events.append(("Warning", agent.reason, message))
    elif ok and prev is not None and prev.status is ConditionStatus.FALSE:
        events.append(("Normal", agent.reason, message))
    others = [c for c in status.conditions if c.type != CONDITION]
    return status.model_copy(update={"conditions": [*others, cond]}), events
