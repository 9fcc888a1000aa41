"""A crash between inserting a task row and launching it leaves the row `pending` with only
the hash of a token nobody holds. The operator declares it lost after the heartbeat timeout
and runs the next attempt; the stale token Secret goes with the lost attempt."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from pathlib import Path

from makima.control.store import TaskStore
from makima.control.store.tokens import hash_token
from makima.core import naming
from makima.core.tasks import Task, TaskKind, TaskState

from .conftest import Api, OperatorFactory, scripted

GOAL = "goal of crashed"  # what `scripted()` writes
HEARTBEAT_TIMEOUT = 120.0  # the default: a loaded machine's runner never comes close
SCRIPT = {"plan": [{"name": "only", "title": "The only step"}], "steps": {"only": {"files": {"o.txt": "o\n"}}}}


async def test_task_left_pending_by_a_crash_is_lost_then_retried(
    api: Api, start_operator: OperatorFactory, origin: Path, pg_dsn: str
) -> None:
    created = await api.apply_directive(scripted("crashed", origin, SCRIPT))  # no operator yet
    uid = created["metadata"]["uid"]
    first = naming.planning_task_id(uid, 1, 1)
    stale = "token-of-the-crashed-operator"
    store = await TaskStore.connect(pg_dsn)
    try:
        # Left by the crashed operator longer ago than the heartbeat timeout (its deadline is
        # still ahead): no wall-clock wait, and the relaunched attempt keeps the normal timeout.
        row = Task(
            id=first,
            kind=TaskKind.PLANNING,
            namespace="default",
            directive_uid=uid,
            directive_name="crashed",
            created_at=datetime.now(UTC) - timedelta(seconds=2 * HEARTBEAT_TIMEOUT),
            deadline_at=datetime.now(UTC) + timedelta(hours=1),
        )
        await store.create_task(row, hash_token(stale))
    finally:
        await store.close()
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": naming.token_secret_name(first), "labels": {naming.LABEL_TASK: first}},
        "data": {"token": base64.b64encode(stale.encode()).decode()},
    }
    await api.request("POST", "/api/v1/namespaces/default/secrets", secret)
    # The crashed operator had already named the task in the status (decide() writes it first).
    await api.request(
        "PATCH",
        "/apis/makima.dev/v1alpha1/namespaces/default/directives/crashed/status",
        {
            "status": {
                "planningTask": first,
                "planGeneration": 1,
                "plannedGoalHash": naming.goal_hash("goal of crashed"),
            }
        },
        "application/merge-patch+json",
    )

    op = await start_operator(heartbeat_timeout_seconds=HEARTBEAT_TIMEOUT)
    done = await api.wait_for("crashed", lambda d: d.get("status", {}).get("phase") == "Completed", timeout=60)
    assert done["status"]["progress"] == "1/1"
    planning = sorted(
        (t for t in await op.store.tasks_for_directive(uid) if t.kind is TaskKind.PLANNING), key=lambda t: t.attempt
    )
    assert [(t.attempt, t.state) for t in planning] == [(1, TaskState.LOST), (2, TaskState.SUCCEEDED)]
    assert "never handed to an executor" in (planning[0].error or "")
    secrets = await api.request("GET", "/api/v1/namespaces/default/secrets")
    assert naming.token_secret_name(first) not in {s["metadata"]["name"] for s in secrets["items"]}
