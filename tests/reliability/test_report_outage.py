"""Findings 1, 2 and 3 (issue 14) end to end: a step's runner finishes while the operator
cannot be reached (every connection refused, as during a restart) for longer than the seed
kept trying (4 tries in about 3 s). Its result and events arrive once the operator is back:
the step succeeds on its first attempt, with its real outcome, not `Job failed:
BackoffLimitExceeded` and a second attempt redoing the work.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from makima.cli.demo.stack import free_port
from makima.control.store import TaskStore
from tests.integration.conftest import Api, OperatorFactory, scripted
from tests.support.wait import eventually

from .proxy import CutProxy

pytestmark = pytest.mark.slow

GATE = """\
if [ "$MAKIMA_TASK_KIND" = step ]; then
  touch '{started}'
  while [ ! -e '{go}' ]; do sleep 0.05; done
fi
exec makima agent scripted
"""


async def test_a_result_outlives_an_unreachable_operator(
    api: Api, start_operator: OperatorFactory, origin: Path, tmp_path: Path, pg_dsn: str
) -> None:
    started, go = tmp_path / "started", tmp_path / "go"
    port = free_port()
    with CutProxy("127.0.0.1", port) as path:
        await start_operator(api_listen=f"127.0.0.1:{port}", api_url=f"http://127.0.0.1:{path.port}")
        script = {"plan": [{"name": "a", "title": "A"}], "steps": {"a": {"files": {"a.txt": "a\n"}}}}
        body = scripted("outage", origin, script)
        body["spec"]["agent"]["command"] = ["sh", "-c", GATE.format(started=started, go=go)]
        await api.apply_directive(body)
        await eventually(started.exists, "the step's agent started", 120)
        path.refuse()
        go.touch()
        # The runner pushes, then reports: keep refusing well past the seed's four tries.
        await eventually(lambda: path.refused >= 12, "the runner trying again and again", 120)
        path.heal()
        done = await api.wait_for("outage", lambda d: d.get("status", {}).get("phase") == "Completed", timeout=120)
    step = (await api.steps("outage"))["a"]["status"]
    assert step["phase"] == "Succeeded" and step["attempts"] == 1, step
    assert "BackoffLimitExceeded" not in str(step)
    store = await TaskStore.connect(pg_dsn)
    try:
        tasks = await store.tasks_for_directive(done["metadata"]["uid"])
        [task] = [t for t in tasks if t.step_name == "a"]
        events = await store.events(task.id, 0, 1000)
    finally:
        await store.close()
    assert [e.type for e in events if e.type == "result"] == ["result"]  # the spooled events arrived, once
    assert any(e.type == "output" for e in events)
