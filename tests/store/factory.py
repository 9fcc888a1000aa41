"""Task values for store tests."""

from __future__ import annotations

import itertools
import uuid
from typing import Any

from makima.core.naming import step_task_id
from makima.core.tasks import Task, TaskKind

_counter = itertools.count()


def make_task(**overrides: Any) -> Task:
    n = next(_counter)
    step_uid = overrides.pop("step_uid", str(uuid.uuid4()))
    values: dict[str, Any] = {
        "id": step_task_id(step_uid, overrides.get("attempt", 1)),
        "kind": TaskKind.STEP,
        "namespace": "default",
        "directive_uid": "d-uid-1",
        "directive_name": "demo",
        "step_uid": step_uid,
        "step_name": f"step-{n}",
        "branch": f"makima/demo/step-{n}",
        "base_branch": "main",
    }
    values.update(overrides)
    return Task(**values)
