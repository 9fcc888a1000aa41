"""Behaviour that keeps one operator cheap as it holds many directives, on the real operator:
a finished directive goes after `spec.ttlSecondsAfterFinished`, and a directive whose step is
running costs the safety-net timer no SQL query and no Kubernetes call."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from makima.control import metrics
from tests.support.wait import eventually

from .conftest import Api, OperatorFactory, scripted


def api_calls() -> float:
    total = 0.0
    for family in metrics.REGISTRY.collect():
        if family.name == "makima_kube_api_calls":
            total += sum(s.value for s in family.samples if s.name.endswith("_total"))
    return total


async def _gone(api: Api, name: str) -> bool:
    data = await api.request("GET", f"/apis/makima.dev/v1alpha1/namespaces/{api.namespace}/directives")
    return name not in {i["metadata"]["name"] for i in data["items"]}


async def test_a_finished_directive_is_deleted_after_its_ttl(
    api: Api, start_operator: OperatorFactory, origin: Path
) -> None:
    op = await start_operator()
    script = {"plan": [{"name": "a", "title": "A"}], "steps": {"a": {"files": {"a.txt": "a\n"}}}}
    kept = scripted("kept", origin, script)
    await api.apply_directive(scripted("short-lived", origin, script, ttlSecondsAfterFinished=2))
    await api.apply_directive(kept)
    done = await api.wait_for(
        "short-lived", lambda d: (d.get("status") or {}).get("phase") == "Completed", timeout=90, what="Completed"
    )
    assert done["spec"]["ttlSecondsAfterFinished"] == 2
    await api.wait_for("kept", lambda d: (d.get("status") or {}).get("phase") == "Completed", timeout=90)
    await eventually(lambda: _gone(api, "short-lived"), "the directive deleted after its TTL", 60)
    assert await api.steps("short-lived") == {}  # its steps went with it (owner references)
    # Without a TTL a finished directive stays; the operator forgot the deleted one.
    assert (await api.directive("kept"))["status"]["phase"] == "Completed"
    assert ("default", "short-lived") not in op.controller.directives


async def test_a_running_step_costs_the_timer_nothing(
    api: Api, start_operator: OperatorFactory, origin: Path, tmp_path: Path
) -> None:
    op = await start_operator()
    script = {"plan": [{"name": "slow", "title": "Slow"}], "steps": {"slow": {"files": {"slow.txt": "slow\n"}}}}
    # The step's agent waits for a gate file the test never creates: it runs for as long as
    # the test looks, however slow the machine (the operator stops it at the end).
    gate = tmp_path / "gate"
    directive = scripted("busy", origin, script)
    directive["spec"]["agent"]["command"] = [
        "sh",
        "-c",
        'if [ "$MAKIMA_STEP" = slow ]; then while [ ! -e "$GATE" ]; do sleep 0.05; done; fi\n'
        "exec makima agent scripted\n",
    ]
    directive["spec"]["agent"]["env"].append({"name": "GATE", "value": str(gate)})
    await api.apply_directive(directive)
    await api.wait_for(
        "busy",
        lambda d: (d.get("status") or {}).get("steps", {}).get("running") == 1,
        timeout=90,
        what="its step running",
    )
    key = ("default", "busy")
    # Let the step's own Running report (runner -> API -> reconcile) land first.
    uid = (await api.directive("busy"))["metadata"]["uid"]

    async def slow_task_running() -> bool:
        tasks = await op.store.tasks_for_directive(uid)
        return any(t.step_name == "slow" and t.state.value == "running" for t in tasks)

    await eventually(slow_task_running, "the slow step's task running", 30)
    await op.controller.trigger(key, "event")  # a full look: nothing to do while the step runs
    queries: list[str] = []
    real_query = op.store.tasks_for_directive

    async def counting_query(uid: str) -> Any:
        queries.append(uid)
        return await real_query(uid)

    before = api_calls()
    op.store.tasks_for_directive = counting_query  # type: ignore[method-assign]
    try:
        for _ in range(3):
            await op.controller.trigger(key, "timer")
    finally:
        op.store.tasks_for_directive = real_query  # type: ignore[method-assign]
    assert queries == []
    assert api_calls() == before
