"""The Job executor: a task becomes a Kubernetes Job running `makima task run`.

`build_job` and `job_outcome` are pure (tested, and validated with kubernetes-validate);
`JobExecutor` applies them through the Kubernetes port (`kube.py` in the operator).

The pod holds no cluster or database credentials: `automountServiceAccountToken` is
off and the only secret it gets is its own task token (a per-task Secret, referenced,
never inlined) and the repository credentials the directive names.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from makima.control.ports import KubeGateway
from makima.control.resources import owner_reference
from makima.core import naming
from makima.core.agents import DEFAULT_PROFILE
from makima.core.models import Agent, Directive, parse_duration
from makima.core.tasks import Task

WORKSPACE = "/workspace"
RUNNER_UID = 10001
DEFAULT_RESOURCES = {"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"memory": "2Gi"}}


@dataclass(frozen=True)
class JobDefaults:
    image: str
    api_url: str
    ttl_seconds: int = 3600
    service_account: str | None = None
    image_pull_policy: str = "IfNotPresent"
    profile: str = DEFAULT_PROFILE  # the operator's default agent profile
    images: Mapping[str, str] = field(default_factory=dict)  # image per profile; `image` otherwise


def agent_image(agent: Agent, defaults: JobDefaults) -> str:
    """The image of a task's pod: spec.agent.image, else the image of its profile, else the default."""
    if agent.image:
        return agent.image
    name = agent.profile.value if agent.profile is not None else defaults.profile
    return defaults.images.get(name) or defaults.image


def token_secret(task: Task, token: str, owner: dict[str, Any]) -> dict[str, Any]:
    """The per-task token Secret; created before the Job so the pod never waits for it."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": naming.token_secret_name(task.id),
            "namespace": task.namespace,
            "labels": naming.task_labels(task.directive_name, task.id, task.kind.value, task.attempt, task.step_name),
            "ownerReferences": [owner_reference(owner)],
        },
        "data": {"token": base64.b64encode(token.encode()).decode()},
    }


def _env(task: Task, directive: Directive, defaults: JobDefaults) -> list[dict[str, Any]]:
    secret = naming.token_secret_name(task.id)
    env: list[dict[str, Any]] = [
        {"name": "MAKIMA_API_URL", "value": defaults.api_url},
        {"name": "MAKIMA_TASK_ID", "value": task.id},
        {"name": "MAKIMA_TASK_TOKEN", "valueFrom": {"secretKeyRef": {"name": secret, "key": "token"}}},
    ]
    creds = directive.spec.repository.credentials_secret
    if creds:
        for var, key in (("MAKIMA_GIT_TOKEN", "token"), ("MAKIMA_GIT_USERNAME", "username")):
            ref = {"name": creds, "key": key, "optional": key == "username"}
            env.append({"name": var, "valueFrom": {"secretKeyRef": ref}})
    for item in directive.spec.agent.env:
        if item.secret_key_ref is not None:
            sref: dict[str, Any] = {"name": item.secret_key_ref.name, "key": item.secret_key_ref.key}
            if item.secret_key_ref.optional is not None:
                sref["optional"] = item.secret_key_ref.optional
            env.append({"name": item.name, "valueFrom": {"secretKeyRef": sref}})
        else:
            env.append({"name": item.name, "value": item.value or ""})
    return env


def build_job(task: Task, directive: Directive, owner: dict[str, Any], defaults: JobDefaults) -> dict[str, Any]:
    """The Job manifest for one task attempt. Pure: same inputs, same manifest."""
    agent = directive.spec.agent
    resources = agent.resources.wire() if agent.resources else DEFAULT_RESOURCES
    labels = naming.task_labels(task.directive_name, task.id, task.kind.value, task.attempt, task.step_name)
    deadline = int(parse_duration(directive.spec.execution.step_timeout).total_seconds())
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUNNER_UID,
            "runAsGroup": RUNNER_UID,
            "fsGroup": RUNNER_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [
            {
                "name": "runner",
                "image": agent_image(agent, defaults),
                "imagePullPolicy": defaults.image_pull_policy,
                # Relative to workingDir (the workspace emptyDir); HOME=/tmp comes from the image.
                "command": ["makima", "task", "run", "--workdir", "repo"],
                "env": _env(task, directive, defaults),
                "resources": resources,
                "workingDir": WORKSPACE,
                "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "readOnlyRootFilesystem": True,
                    "runAsNonRoot": True,
                    "capabilities": {"drop": ["ALL"]},
                    "seccompProfile": {"type": "RuntimeDefault"},
                },
                "volumeMounts": [
                    {"name": "workspace", "mountPath": WORKSPACE},
                    {"name": "tmp", "mountPath": "/tmp"},
                ],
            }
        ],
        "volumes": [{"name": "workspace", "emptyDir": {}}, {"name": "tmp", "emptyDir": {}}],
    }
    if defaults.service_account:
        pod_spec["serviceAccountName"] = defaults.service_account
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": naming.job_name(task.id),
            "namespace": task.namespace,
            "labels": labels,
            "ownerReferences": [owner_reference(owner)],
        },
        "spec": {
            "backoffLimit": 0,  # retries are the operator's (with backoff), not the Job controller's
            "activeDeadlineSeconds": deadline,
            "ttlSecondsAfterFinished": defaults.ttl_seconds,
            "template": {"metadata": {"labels": labels}, "spec": pod_spec},
        },
    }


def job_outcome(job: dict[str, Any]) -> tuple[str, str] | None:
    """("succeeded"|"failed", reason) once the Job is finished, else None."""
    status = job.get("status") or {}
    for cond in status.get("conditions") or []:
        if cond.get("status") != "True":
            continue
        if cond.get("type") == "Complete":
            return "succeeded", "Job completed"
        if cond.get("type") == "Failed":
            reason = cond.get("reason") or "Failed"
            message = cond.get("message") or ""
            return "failed", f"Job failed: {reason}{': ' + message if message else ''}"
    if status.get("succeeded"):
        return "succeeded", "Job completed"
    if status.get("failed"):
        return "failed", "Job failed: pod failed"
    return None


class JobExecutor:
    def __init__(self, kube: KubeGateway, defaults: JobDefaults) -> None:
        self.kube = kube
        self.defaults = defaults

    async def spawn(self, task: Task, token: str, directive: Directive, owner: dict[str, Any]) -> str:
        """Create the token Secret and the Job (both create-if-absent). Returns the Job name."""
        await self.kube.create_secret(task.namespace, token_secret(task, token, owner))
        job = build_job(task, directive, owner, self.defaults)
        await self.kube.create_job(task.namespace, job)
        return str(job["metadata"]["name"])

    async def cancel(self, task: Task) -> None:
        await self.kube.delete_job(task.namespace, naming.job_name(task.id))
        await self.kube.delete_secret(task.namespace, naming.token_secret_name(task.id))

    async def release(self, task: Task) -> None:
        """After a task finished: its token is useless now; drop the Secret early."""
        await self.kube.delete_secret(task.namespace, naming.token_secret_name(task.id))
