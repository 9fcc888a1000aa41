"""A spec that passes the CRD schema but not the models fails clearly, and recovers when fixed."""

from __future__ import annotations

from pathlib import Path

from tests.support.wait import eventually

from .conftest import LOADED, Api, OperatorFactory, scripted

SCRIPT = {"plan": [{"name": "only", "title": "The only step"}], "steps": {"only": {"files": {"o.txt": "o\n"}}}}


async def test_blank_goal_is_reported_then_fixed(api: Api, start_operator: OperatorFactory, origin: Path) -> None:
    await start_operator()
    body = scripted("blank", origin, SCRIPT)
    body["spec"]["goal"] = "   "  # minLength 1 lets it through the API server; the models refuse it
    await api.apply_directive(body)
    failed = await api.wait_for("blank", lambda d: d.get("status", {}).get("phase") == "Failed", timeout=30)
    status = failed["status"]
    assert status["message"].startswith("invalid spec: spec.goal:"), status["message"]
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "False" and ready["reason"] == "InvalidSpec"
    assert await api.steps("blank") == {}

    async def invalid_spec_event() -> bool:
        return any(e["reason"] == "InvalidSpec" for e in await api.events())

    await eventually(invalid_spec_event, "an InvalidSpec event", LOADED)

    await api.patch_directive("blank", {"spec": {"goal": "Write o.txt"}})
    done = await api.wait_for("blank", lambda d: d.get("status", {}).get("phase") == "Completed", timeout=60)
    assert done["status"]["progress"] == "1/1"
    assert not any(c["reason"] == "InvalidSpec" for c in done["status"]["conditions"])
