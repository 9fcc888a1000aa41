"""The Kubernetes objects the controller writes, and the reading of the ones it keeps.

Pure functions over plain dicts (what kopf delivers and the API returns): the step object a
plan creates, the status patches of a new and of a started step, the merge patch between two
directive statuses, and the resourceVersion arithmetic that decides which of two copies of an
object is newer. The API group and version come from `models.API_VERSION`, nowhere else.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from makima.core import naming
from makima.core.models import API_VERSION, Directive, DirectiveStep, StepPhase
from makima.core.protocol import StepSubmission
from makima.core.reconcile import DispatchStep, StepView
from makima.core.tasks import Task

# Status is a subresource (ignored on create): a created step gets this status at once, so that
# `kubectl get dstep` shows Pending and 0 before the step is dispatched.
NEW_STEP_STATUS: dict[str, Any] = {"phase": StepPhase.PENDING.value, "attempts": 0}


def resource_version(obj: Mapping[str, Any]) -> int:
    """An object's resourceVersion as a number (0 when absent or not a number)."""
    try:
        return int(obj["metadata"].get("resourceVersion") or 0)
    except (TypeError, ValueError):
        return 0


def newest(a: dict[str, Any] | None, b: dict[str, Any] | None) -> dict[str, Any] | None:
    """Of two copies of one object, the one with the higher resourceVersion."""
    if a is None or b is None:
        return a or b
    return a if resource_version(a) >= resource_version(b) else b


def phase_of(obj: Mapping[str, Any], default: str) -> str:
    return str((obj.get("status") or {}).get("phase") or default)


def step_view(obj: dict[str, Any]) -> StepView:
    """A DirectiveStep object as decide() sees it: named by its `makima.dev/step` label."""
    step = DirectiveStep.model_validate(obj)
    name = step.metadata.labels.get(naming.LABEL_STEP, step.metadata.name)
    return StepView(name=name, uid=step.metadata.uid, spec=step.spec, status=step.status)


def owner_reference(obj: Mapping[str, Any]) -> dict[str, Any]:
    """A controlling ownerReference to `obj`: its dependents go when it goes."""
    return {
        "apiVersion": obj["apiVersion"],
        "kind": obj["kind"],
        "name": obj["metadata"]["name"],
        "uid": obj["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def directive_owner(directive: Directive) -> dict[str, Any]:
    """The least of a Directive that `owner_reference` needs."""
    return {
        "apiVersion": directive.api_version,
        "kind": "Directive",
        "metadata": {"name": directive.metadata.name, "uid": directive.metadata.uid},
    }


def step_object(directive: Mapping[str, Any], step: StepSubmission, generation: int) -> dict[str, Any]:
    """The DirectiveStep a plan creates for `step`, owned by the directive (`directive` is its body)."""
    meta = directive["metadata"]
    owner = {"apiVersion": directive.get("apiVersion", API_VERSION), "kind": "Directive", "metadata": meta}
    return {
        "apiVersion": API_VERSION,
        "kind": "DirectiveStep",
        "metadata": {
            "name": naming.step_object_name(meta["name"], step.name),
            "namespace": meta["namespace"],
            "labels": naming.step_labels(meta["name"], step.name),
            "ownerReferences": [owner_reference(owner)],
        },
        "spec": {
            "directive": meta["name"],
            "title": step.title,
            "description": step.description,
            "taskPlan": step.task_plan,
            "dependsOn": list(step.depends_on),
            "orderIndex": step.order_index,
            "generation": generation,
        },
    }


def running_status(action: DispatchStep, task: Task, now: datetime) -> dict[str, Any]:
    """The status patch of a step whose attempt was launched as `task` (where it actually went:
    a refusing daemon falls back to a Job, which only the shell knows)."""
    return {
        "phase": StepPhase.RUNNING.value,
        "attempts": action.attempt,
        "task": {"id": task.id, "executor": task.executor, "name": task.executor_ref},
        "branch": action.workspace.branch,
        "startedAt": now.isoformat().replace("+00:00", "Z"),
        "finishedAt": None,
        "nextAttemptAt": None,
        "message": f"attempt {action.attempt} running on {task.executor or 'job'}",
    }


def status_diff(current: Mapping[str, Any], desired: Mapping[str, Any]) -> dict[str, Any]:
    """A merge patch turning `current` into `desired` at the top level of status (None removes)."""
    patch: dict[str, Any] = {k: v for k, v in desired.items() if current.get(k) != v}
    for key in current.keys() - desired.keys():
        patch[key] = None
    return patch
