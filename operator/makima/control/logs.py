"""The ids a log line is about, as `extra=` fields.

`cli/logs.py`'s JSON formatter keeps them as fields of the line (`namespace`, `directive`,
`step`, `task`, `attempt`), so a log pipeline can select one directive's or one task's lines.
The text format shows only the message, which names the same things for a person.
"""

from __future__ import annotations

from makima.core.tasks import Task


def directive_ids(namespace: str, directive: str) -> dict[str, object]:
    return {"namespace": namespace, "directive": directive}


def task_ids(task: Task) -> dict[str, object]:
    ids: dict[str, object] = {
        "namespace": task.namespace,
        "directive": task.directive_name,
        "task": task.id,
        "attempt": task.attempt,
    }
    if task.step_name:
        ids["step"] = task.step_name
    return ids
