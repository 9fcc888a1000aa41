"""The `Agent` resource end to end, on the sandbox and on the real control plane with the chart's
RBAC: kopf in-process, real PostgreSQL, Jobs running the real runner with the scripted agent
(whose script comes from the Agent's env).

- Two directives share the namespace's `default` Agent (one names it in spec.agentRef, one names
  nothing): both complete with the Agent's settings (its script, its Secret as the key variable,
  its timeout as the Jobs' deadline), and never more of their tasks run at once than the Agent's
  maxConcurrentTasks.
- A directive naming an Agent that does not exist starts nothing: condition AgentResolved=False
  and a Warning Event; creating the Agent lets it run to completion.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from makima.core.tasks import Task
from tests.support.wait import eventually

from .conftest import GROUP_PATH, LOADED, Api, OperatorFactory

pytestmark = pytest.mark.parametrize("cluster", ["sandbox", "real"], indirect=True)

SCRIPT = {
    "plan": [{"name": n, "title": f"Step {n}"} for n in ("one", "two", "three")],
    "steps": {n: {"files": {f"{n}.txt": f"{n}\n"}, "sleep": 0.3} for n in ("one", "two", "three")},
}


@pytest.fixture(autouse=True)
def kopf_quiet(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """A kopf warning or error (a failed handler, the Agent index) is a bug of ours."""
    caplog.set_level(logging.INFO, logger="kopf")
    yield
    noisy = [f"{r.name}: {r.getMessage()}" for r in caplog.get_records("call") if r.levelno >= logging.WARNING]
    assert not [n for n in noisy if n.startswith("kopf")], noisy


def phase(d: dict[str, Any]) -> str | None:
    return (d.get("status") or {}).get("phase")


def condition(d: dict[str, Any], type_: str) -> dict[str, Any] | None:
    return next((c for c in (d.get("status") or {}).get("conditions", []) if c["type"] == type_), None)


def agent(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "makima.dev/v1alpha1",
        "kind": "Agent",
        "metadata": {"name": name},
        "spec": {
            "profile": "scripted",
            "env": [{"name": "MAKIMA_AGENT_SCRIPT", "value": yaml.safe_dump(SCRIPT)}],
            **spec,
        },
    }


def directive(name: str, repo: Path, **spec: Any) -> dict[str, Any]:
    """No spec.agent: the agent comes from an Agent (named in `spec`, or the default one)."""
    return {
        "apiVersion": "makima.dev/v1alpha1",
        "kind": "Directive",
        "metadata": {"name": name},
        "spec": {
            "title": f"test {name}",
            "goal": f"goal of {name}",
            "repository": {"url": f"file://{repo}"},
            "execution": {"mode": "Job", "retries": 1, "stepTimeout": "10m"},
            **spec,
        },
    }


async def create_agent(api: Api, body: dict[str, Any]) -> None:
    await api.request("POST", f"{GROUP_PATH}/namespaces/{api.namespace}/agents", body)


def most_at_once(tasks: list[Task]) -> int:
    """The most tasks active at one instant: each holds its Agent's slot from its row's
    creation to its end (ends sort before starts at the same instant)."""
    edges: list[tuple[datetime, int]] = []
    for t in tasks:
        assert t.created_at is not None and t.finished_at is not None, t
        edges += [(t.created_at, 1), (t.finished_at, -1)]
    running = most = 0
    for _, change in sorted(edges):
        running += change
        most = max(most, running)
    return most


async def test_directives_run_with_the_default_agents_settings_and_share_its_slots(
    api: Api, start_operator: OperatorFactory, origin: Path
) -> None:
    op = await start_operator()
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "agent-key"},
        "data": {"token": base64.b64encode(b"not-a-real-key").decode()},
    }
    await api.request("POST", f"/api/v1/namespaces/{api.namespace}/secrets", secret)
    limit, ns = 2, api.namespace
    await create_agent(
        api,
        agent(
            "default",
            secretRef={"name": "agent-key", "keys": [{"key": "token", "env": "AGENT_TOKEN"}]},
            maxConcurrentTasks=limit,
            timeout="5m",
        ),
    )
    await api.apply_directive(directive("named", origin, agentRef={"name": "default"}))
    await api.apply_directive(directive("implicit", origin))

    tasks: list[Task] = []
    for name in ("named", "implicit"):
        done = await api.wait_for(name, lambda d: phase(d) in ("Completed", "Failed"), what=f"{name} finished")
        assert phase(done) == "Completed", done["status"]
        resolved = condition(done, "AgentResolved")
        assert resolved is not None and resolved["status"] == "True", done["status"]
        assert resolved["reason"] == "AgentFound" and resolved["message"] == f"uses Agent {ns}/default"
        assert sorted(await api.steps(name)) == ["one", "three", "two"], "the plan of the Agent's script"
        mine = list(await op.store.tasks_for_directive(done["metadata"]["uid"]))
        for t in mine:
            assert t.spec is not None
            assert (t.spec["agent"]["agent_ref"], t.spec["agent"]["profile"]) == (f"{ns}/default", "scripted")
            assert t.spec["agent"]["timeout_seconds"] == 300, "the Agent's 5m caps the directive's 10m"
        tasks += mine

    jobs = await api.jobs()
    assert jobs
    for job in jobs:
        assert job["spec"]["activeDeadlineSeconds"] == 300
        env = {e["name"]: e for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
        key = env["AGENT_TOKEN"]["valueFrom"]["secretKeyRef"]
        assert key == {"name": "agent-key", "key": "token", "optional": True}
        assert "value" in env["MAKIMA_AGENT_SCRIPT"]
    assert len(tasks) == 2 * 5  # planning, three steps, completion: each directive
    assert most_at_once(tasks) <= limit, "the Agent's maxConcurrentTasks, over both directives"


async def test_a_missing_agent_is_waited_for_then_used(api: Api, start_operator: OperatorFactory, origin: Path) -> None:
    op = await start_operator()
    await api.apply_directive(directive("waits", origin, agentRef={"name": "later"}))

    def not_found(d: dict[str, Any]) -> bool:
        cond = condition(d, "AgentResolved")
        return cond is not None and cond["status"] == "False"

    waiting = await api.wait_for("waits", not_found, what="AgentResolved=False")
    cond = condition(waiting, "AgentResolved")
    assert cond is not None and cond["reason"] == "AgentNotFound"
    assert cond["message"].startswith(f"Agent {api.namespace}/later: not found")
    assert f"waiting for Agent {api.namespace}/later (not found" in waiting["status"]["message"]
    assert not list(await op.store.tasks_for_directive(waiting["metadata"]["uid"])), "no task without its Agent"
    assert not await api.jobs()

    # Events are posted after the status patch the wait above saw.
    async def warned() -> list[dict[str, Any]]:
        return [e for e in await api.events() if e.get("reason") == "AgentNotFound"]

    warnings = await eventually(warned, "the AgentNotFound event posted", timeout=LOADED)
    assert [e["type"] for e in warnings] == ["Warning"]
    assert warnings[0]["involvedObject"]["name"] == "waits"

    await create_agent(api, agent("later"))
    done = await api.wait_for("waits", lambda d: phase(d) in ("Completed", "Failed"), what="finished with its Agent")
    assert phase(done) == "Completed", done["status"]
    cond = condition(done, "AgentResolved")
    assert cond is not None and (cond["status"], cond["reason"]) == ("True", "AgentFound")
    found = [e for e in await api.events() if e.get("reason") == "AgentFound"]
    assert [e["type"] for e in found] == ["Normal"]
