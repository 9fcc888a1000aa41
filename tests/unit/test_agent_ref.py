"""spec.agentRef resolved against the Agents (core/agent_ref.py, pure), and decide() with an
Agent's gate: a missing Agent starts nothing and says so once; an Agent's concurrency limit
caps the tasks started over every directive using it."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from makima.core import agent_ref
from makima.core.agent_ref import AgentGate, Reason
from makima.core.models import ConditionStatus, DirectivePhase
from makima.core.reconcile import CreatePlanningTask, DispatchStep, EmitEvent, ReconcileConfig, Snapshot, decide
from makima.core.tasks import TaskKind, TaskState
from tests.unit.sim import T0, directive, step, task
from tests.unit.test_reconcile import planned

CFG = ReconcileConfig()


def agent_body(name: str = "claude", namespace: str = "team", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "makima.dev/v1alpha1",
        "kind": "Agent",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def agents(*bodies: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(b["metadata"]["namespace"], b["metadata"]["name"]): b for b in bodies}


# ---- resolution --------------------------------------------------------------------------------


def test_a_named_agent_is_used_with_its_settings() -> None:
    d = directive(agentRef={"name": "claude"})
    body = agent_body(
        profile="claude-code",
        image="registry.example/agent-claude:1",
        resources={"limits": {"memory": "4Gi"}},
        secretRef={"name": "anthropic", "keys": [{"key": "api-key", "env": "ANTHROPIC_API_KEY"}]},
        env=[{"name": "DISABLE_TELEMETRY", "value": "1"}],
        maxConcurrentTasks=3,
        timeout="20m",
    )
    res = agent_ref.resolve(d, agents(body))
    assert (res.reason, res.name, res.problem) == (Reason.FOUND, "team/claude", None)
    eff = agent_ref.effective(d, res, "claude-code")
    agent = eff.spec.agent
    assert agent.profile is not None and agent.profile.value == "claude-code"
    assert agent.image == "registry.example/agent-claude:1"
    assert agent.resources is not None and agent.resources.limits == {"memory": "4Gi"}
    key, extra = agent.env
    assert key.name == "ANTHROPIC_API_KEY" and key.secret_key_ref is not None
    assert (key.secret_key_ref.name, key.secret_key_ref.key, key.secret_key_ref.optional) == (
        "anthropic",
        "api-key",
        True,
    )
    assert (extra.name, extra.value) == ("DISABLE_TELEMETRY", "1")
    assert eff.spec.execution.step_timeout == "20m", "the Agent's timeout caps the directive's 1h"
    assert agent_ref.in_use(eff) == "team/claude"
    assert agent_ref.limit(res) == 3
    assert d.spec.agent.is_set is False, "the directive itself is not changed"


def test_without_keys_the_profiles_key_variables_come_from_keys_of_the_same_name() -> None:
    d = directive(agentRef={"name": "codex"})
    res = agent_ref.resolve(d, agents(agent_body("codex", profile="codex", secretRef={"name": "openai"})))
    env = agent_ref.effective(d, res, "claude-code").spec.agent.env
    assert [(e.name, e.secret_key_ref.key if e.secret_key_ref else None) for e in env] == [
        ("OPENAI_API_KEY", "OPENAI_API_KEY"),
        ("CODEX_API_KEY", "CODEX_API_KEY"),
    ]
    # no profile: the operator's default profile's variables
    res = agent_ref.resolve(d, agents(agent_body("codex", secretRef={"name": "llm"})))
    names = [e.name for e in agent_ref.effective(d, res, "claude-code").spec.agent.env]
    assert names == ["ANTHROPIC_API_KEY", "CLAUDE_CODE_OAUTH_TOKEN"]


def test_a_longer_agent_timeout_leaves_the_directives_step_timeout() -> None:
    d = directive(agentRef={"name": "claude"}, execution={"stepTimeout": "10m"})
    res = agent_ref.resolve(d, agents(agent_body(timeout="2h")))
    assert agent_ref.effective(d, res, "claude-code").spec.execution.step_timeout == "10m"


def test_no_ref_uses_the_namespaces_default_agent_else_the_operators_defaults() -> None:
    d = directive()
    assert agent_ref.wanted(d) == ("team", "default")
    res = agent_ref.resolve(d, agents(agent_body("default", profile="gemini")))
    assert (res.reason, res.name) == (Reason.FOUND, "team/default")
    eff = agent_ref.effective(d, res, "claude-code")
    assert eff.spec.agent_ref is not None and (eff.spec.agent_ref.namespace, eff.spec.agent_ref.name) == (
        "team",
        "default",
    )
    assert agent_ref.in_use(eff) == "team/default"

    none = agent_ref.resolve(d, {})
    assert (none.reason, none.key, none.problem) == (Reason.OPERATOR_DEFAULTS, None, None)
    assert agent_ref.effective(d, none, "claude-code") is d
    assert agent_ref.in_use(d) is None
    # another namespace's `default` is not this namespace's default
    assert agent_ref.resolve(d, agents(agent_body("default", namespace="other"))).reason == Reason.OPERATOR_DEFAULTS


def test_an_inline_agent_wins_over_the_default_agent() -> None:
    d = directive(agent={"command": ["makima", "agent", "scripted"]})
    assert agent_ref.wanted(d) is None
    res = agent_ref.resolve(d, agents(agent_body("default", profile="gemini")))
    assert (res.reason, res.key) == (Reason.INLINE, None)
    assert agent_ref.effective(d, res, "claude-code") is d


def test_a_missing_named_agent_is_a_problem_not_a_fallback() -> None:
    d = directive(agentRef={"name": "claude"})
    res = agent_ref.resolve(d, agents(agent_body("default")))
    assert res.reason == Reason.NOT_FOUND and res.name == "team/claude"
    assert res.problem is not None and "not found" in res.problem
    gate = agent_ref.gate(res)
    assert gate.slots == 0 and gate.waiting_for.startswith("Agent team/claude (not found")


def test_another_namespaces_agent_must_allow_the_directives_namespace() -> None:
    d = directive(agentRef={"name": "shared", "namespace": "platform"})
    assert agent_ref.wanted(d) == ("platform", "shared")
    refused = agent_ref.resolve(d, agents(agent_body("shared", "platform", allowedNamespaces=["team-b"])))
    assert refused.reason == Reason.NOT_ALLOWED
    assert refused.problem == "its spec.allowedNamespaces does not include namespace team"
    for allowed in (["team-b", "team"], ["*"]):
        ok = agent_ref.resolve(d, agents(agent_body("shared", "platform", allowedNamespaces=allowed)))
        assert (ok.reason, ok.name) == (Reason.FOUND, "platform/shared"), allowed
    # its own namespace needs no allowance
    own = directive(agentRef={"name": "shared", "namespace": "team"})
    assert agent_ref.resolve(own, agents(agent_body("shared", "team"))).reason == Reason.FOUND


def test_an_invalid_agent_is_named_with_its_first_error() -> None:
    d = directive(agentRef={"name": "claude"})
    res = agent_ref.resolve(d, agents(agent_body(maxConcurrentTasks=0)))
    assert res.reason == Reason.INVALID
    assert res.problem is not None and res.problem.startswith("invalid: spec.maxConcurrentTasks:")


@pytest.mark.parametrize(("limit", "active", "slots"), [(None, 7, None), (3, 0, 3), (3, 2, 1), (3, 3, 0), (3, 5, 0)])
def test_gate_slots_are_the_limit_minus_the_active_tasks(limit: int | None, active: int, slots: int | None) -> None:
    d = directive(agentRef={"name": "claude"})
    spec = {"maxConcurrentTasks": limit} if limit else {}
    gate = agent_ref.gate(agent_ref.resolve(d, agents(agent_body(**spec))), active)
    assert (gate.slots, gate.limit, gate.agent) == (slots, limit, "team/claude")


# ---- decide() with the gate --------------------------------------------------------------------


def _missing() -> AgentGate:
    return agent_ref.gate(agent_ref.resolve(directive(agentRef={"name": "claude"}), {}))


def test_a_missing_agent_starts_no_planning_and_says_so_once() -> None:
    d = directive(agentRef={"name": "claude"})
    actions = decide(Snapshot(d, [], [], agent=_missing()), T0, CFG)
    assert not [a for a in actions if isinstance(a, CreatePlanningTask)]
    (status_action,) = [a for a in actions if type(a).__name__ == "SetDirectiveStatus"]
    status = status_action.status  # type: ignore[attr-defined]
    cond = {c.type: c for c in status.conditions}[agent_ref.CONDITION]
    assert (cond.status, cond.reason) == (ConditionStatus.FALSE, Reason.NOT_FOUND)
    assert "Agent team/claude: not found" in cond.message
    assert "waiting for Agent team/claude (not found" in (status.message or "")
    (warning,) = [a for a in actions if isinstance(a, EmitEvent) and a.reason == Reason.NOT_FOUND]
    assert warning.type == "Warning"

    # the next reconcile, Agent still missing: no new Event, no change
    again = decide(Snapshot(d.model_copy(update={"status": status}), [], [], agent=_missing()), T0, CFG)
    assert not again

    # the Agent appears: planning starts, the condition turns True with a Normal Event
    found = agent_ref.gate(agent_ref.resolve(d, agents(agent_body())))
    later = decide(Snapshot(d.model_copy(update={"status": status}), [], [], agent=found), T0, CFG)
    assert [a for a in later if isinstance(a, CreatePlanningTask)]
    events = [a for a in later if isinstance(a, EmitEvent) and a.reason == Reason.FOUND]
    assert [e.type for e in events] == ["Normal"]


def test_the_agents_free_slots_cap_dispatch_and_the_status_says_why() -> None:
    steps = [step(n) for n in "abcd"]
    snap = planned(steps)
    gate = AgentGate(Reason.FOUND, "team/claude", slots=1, limit=2)
    actions = decide(dataclasses.replace(snap, agent=gate), T0, CFG)
    assert [a.name for a in actions if isinstance(a, DispatchStep)] == ["a"]
    (status_action,) = [a for a in actions if type(a).__name__ == "SetDirectiveStatus"]
    message = status_action.status.message  # type: ignore[attr-defined]
    assert "waiting for a free slot of Agent team/claude (at most 2 tasks at once)" in message

    unlimited = decide(dataclasses.replace(snap, agent=AgentGate(Reason.FOUND, "team/claude")), T0, CFG)
    assert len([a for a in unlimited if isinstance(a, DispatchStep)]) == 4


def test_a_full_agent_holds_back_planning_too() -> None:
    d = directive(agentRef={"name": "claude"})
    full = AgentGate(Reason.FOUND, "team/claude", slots=0, limit=1)
    actions = decide(Snapshot(d, [], [], agent=full), T0, CFG)
    assert not [a for a in actions if isinstance(a, CreatePlanningTask)]
    assert not [a for a in actions if isinstance(a, EmitEvent) and a.type == "Warning"], "a full Agent is no problem"


def test_a_finished_directive_keeps_its_condition_when_the_agent_goes() -> None:
    a = step("a")
    snap = planned([a], [task(TaskKind.STEP, TaskState.SUCCEEDED, step=a, commit="c1")])
    found = AgentGate(Reason.FOUND, "team/claude")
    world_actions = decide(dataclasses.replace(snap, agent=found), T0, CFG)
    status = next(a.status for a in world_actions if type(a).__name__ == "SetDirectiveStatus")  # type: ignore[attr-defined]
    assert {c.type: c.status for c in status.conditions}[agent_ref.CONDITION] is ConditionStatus.TRUE
    done = dataclasses.replace(
        snap,
        directive=snap.directive.model_copy(
            update={"status": status.model_copy(update={"phase": DirectivePhase.COMPLETED})}
        ),
    )
    status2, events = agent_ref.with_condition(done.directive.status, done.directive.status, _missing(), 1, T0)
    assert status2 == done.directive.status and events == []
