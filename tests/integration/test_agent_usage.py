"""Usage and the budget end to end on the sandbox, with a STAND-IN Codex CLI
(tests/integration/usage_standin.py: the scripted agent's work, then the usage lines
`codex exec --json` prints): every agent run reports 300 tokens in and 50 out.

A chain one → two → three with a budget of 1000 tokens: planning (350) and one (700) run,
two takes the directive to 1050, so three is never dispatched; the directive pauses with
BudgetExceeded (condition and Event), usage on every finished step and summed on the
directive. Raising the budget resumes it to Completed, and the pull request body says
what the agents used."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from makima.core.tasks import TaskKind
from tests.support.wait import eventually

from .conftest import LOADED, Api, OperatorFactory, scripted

pytestmark = pytest.mark.parametrize("cluster", ["sandbox"], indirect=True)

STANDIN = Path(__file__).with_name("usage_standin.py")


def phase(d: dict[str, Any]) -> str | None:
    return (d.get("status") or {}).get("phase")


async def test_budget_pauses_before_the_third_step_and_raising_it_resumes(
    api: Api, start_operator: OperatorFactory, origin: Path
) -> None:
    op = await start_operator()
    script = {
        "plan": [
            {"name": "one", "title": "One"},
            {"name": "two", "title": "Two", "dependsOn": ["one"]},
            {"name": "three", "title": "Three", "dependsOn": ["two"]},
        ],
        "steps": {n: {"files": {f"{n}.txt": f"{n}\n"}} for n in ("one", "two", "three")},
    }
    env = [
        {"name": "MAKIMA_AGENT_SCRIPT", "value": yaml.safe_dump(script)},
        {"name": "OPENAI_API_KEY", "value": "sk-stand-in-not-a-key"},
        {"name": "STANDIN_INPUT_TOKENS", "value": "300"},
        {"name": "STANDIN_OUTPUT_TOKENS", "value": "50"},
    ]
    body = scripted("budget", origin, script, budget={"maxTokens": 1000})
    body["spec"]["agent"] = {"profile": "codex", "command": [sys.executable, str(STANDIN)], "env": env}
    await api.apply_directive(body)

    paused = await api.wait_for("budget", lambda d: phase(d) == "Paused", timeout=90, what="Paused at the budget")
    status = paused["status"]
    cond = next(c for c in status["conditions"] if c["type"] == "BudgetExceeded")
    assert cond["status"] == "True" and "1050 agent tokens reached the budget of 1000" in cond["message"]
    assert status["usage"]["totalTokens"] == 1050 and status["usage"]["tasks"] == 3
    steps = await api.steps("budget")
    assert steps["three"]["status"]["phase"] in ("Pending", "Ready") and not steps["three"]["status"].get("task")
    for name in ("one", "two"):
        assert steps[name]["status"]["usage"] == {
            "inputTokens": 300,
            "outputTokens": 50,
            "totalTokens": 350,
            "tasks": 1,
        }
    tasks = list(await op.store.tasks_for_directive(paused["metadata"]["uid"]))
    assert not [t for t in tasks if t.step_name == "three"], "no task for the step past the budget"
    assert all((t.result or {}).get("usage", {}).get("agent") == "codex" for t in tasks)

    async def budget_events() -> list[dict[str, Any]]:
        return [e for e in await api.events() if e.get("reason") == "BudgetExceeded"]

    # The event follows the status patch that paused the directive (events come last).
    events = await eventually(budget_events, "a BudgetExceeded event", LOADED)
    assert len(events) == 1 and events[0]["type"] == "Warning"

    await api.patch_directive("budget", {"spec": {"budget": {"maxTokens": 5000}}})
    done = await api.wait_for("budget", lambda d: phase(d) in ("Completed", "Failed"), timeout=90)
    assert phase(done) == "Completed", done["status"]
    assert done["status"]["usage"]["totalTokens"] == 350 * 4  # planning, three steps (completion: no agent)
    cond = next(c for c in done["status"]["conditions"] if c["type"] == "BudgetExceeded")
    assert cond["status"] == "False"
    completion = next(
        t for t in await op.store.tasks_for_directive(done["metadata"]["uid"]) if t.kind is TaskKind.COMPLETION
    )
    assert completion.spec is not None and "## Agent usage" in completion.spec["completion"]["body"]
