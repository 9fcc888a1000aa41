"""The Job executor's manifests: valid Kubernetes (strict), least privilege, no inline secrets."""

from __future__ import annotations

import base64
from typing import Any

import kubernetes_validate
import pytest

from makima.control.executors.jobs import JobDefaults, build_job, job_outcome, token_secret
from makima.core import agent_ref, naming
from makima.core.models import Directive
from makima.core.tasks import Task, TaskKind

KUBE_VERSION = "1.33"
TOKEN = "t0k3n-never-inline"


def _directive(**spec: Any) -> Directive:
    body: dict[str, Any] = {
        "metadata": {"name": "greeter", "namespace": "team-a", "uid": "d-uid"},
        "spec": {
            "title": "Greeter",
            "goal": "Add a greeter",
            "repository": {"url": "https://github.com/acme/app.git", "credentialsSecret": "acme-git"},
            "execution": {"stepTimeout": "30m"},
            "agent": {
                "env": [
                    {"name": "MODEL", "value": "big"},
                    {"name": "ANTHROPIC_API_KEY", "secretKeyRef": {"name": "llm", "key": "key"}},
                ],
                "resources": {"limits": {"memory": "1Gi", "cpu": "1"}},
            },
        },
    }
    body["spec"].update(spec)
    return Directive.model_validate(body)


STEP_OWNER = {
    "apiVersion": "makima.dev/v1alpha1",
    "kind": "DirectiveStep",
    "metadata": {"name": "greeter-core", "uid": "s-uid"},
}


def _task(attempt: int = 2) -> Task:
    return Task(
        id=naming.step_task_id("s-uid", attempt),
        kind=TaskKind.STEP,
        namespace="team-a",
        directive_uid="d-uid",
        directive_name="greeter",
        step_uid="s-uid",
        step_name="core",
        attempt=attempt,
    )


DEFAULTS = JobDefaults(image="ghcr.io/makima-dev/makima:0.1.0", api_url="http://makima.makima-system:8080")


def test_job_and_token_secret_are_valid_kubernetes() -> None:
    job = build_job(_task(), _directive(), STEP_OWNER, DEFAULTS)
    secret = token_secret(_task(), TOKEN, STEP_OWNER)
    for manifest in (job, secret):
        kubernetes_validate.validate(manifest, KUBE_VERSION, strict=True)


def test_job_shape_names_labels_owner_and_retries() -> None:
    task = _task()
    job = build_job(task, _directive(), STEP_OWNER, DEFAULTS)
    assert job["metadata"]["name"] == naming.job_name(task.id)
    assert len(job["metadata"]["name"]) <= 63
    labels = job["metadata"]["labels"]
    assert labels[naming.LABEL_TASK] == task.id and labels[naming.LABEL_ATTEMPT] == "2"
    assert labels[naming.LABEL_STEP] == "core" and labels[naming.LABEL_DIRECTIVE] == "greeter"
    assert job["metadata"]["ownerReferences"][0]["uid"] == "s-uid"
    spec = job["spec"]
    assert spec["backoffLimit"] == 0  # retries are the operator's
    assert spec["activeDeadlineSeconds"] == 30 * 60
    assert spec["ttlSecondsAfterFinished"] == DEFAULTS.ttl_seconds
    container = spec["template"]["spec"]["containers"][0]
    assert container["command"][:3] == ["makima", "task", "run"]
    assert container["resources"] == {"limits": {"memory": "1Gi", "cpu": "1"}}


def test_pod_holds_no_cluster_credentials_and_runs_restricted() -> None:
    pod = build_job(_task(), _directive(), STEP_OWNER, DEFAULTS)["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = pod["containers"][0]["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    mounts = {m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    assert {"/workspace", "/tmp"} <= mounts  # writable scratch despite the read-only root


def test_secrets_are_referenced_never_inlined() -> None:
    task = _task()
    job = build_job(task, _directive(), STEP_OWNER, DEFAULTS)
    env = {e["name"]: e for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["MAKIMA_TASK_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": naming.token_secret_name(task.id),
        "key": "token",
    }
    assert env["MAKIMA_GIT_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "acme-git"
    assert env["ANTHROPIC_API_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "llm", "key": "key"}
    assert env["MODEL"] == {"name": "MODEL", "value": "big"}
    assert env["MAKIMA_TASK_ID"]["value"] == task.id
    assert TOKEN not in repr(job)
    secret = token_secret(task, TOKEN, STEP_OWNER)
    assert base64.b64decode(secret["data"]["token"]).decode() == TOKEN


def test_no_credentials_secret_means_no_git_token_env() -> None:
    repo = {"url": "file:///tmp/origin.git"}
    job = build_job(_task(), _directive(repository=repo), STEP_OWNER, DEFAULTS)
    names = {e["name"] for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert "MAKIMA_GIT_TOKEN" not in names and "MAKIMA_GIT_USERNAME" not in names


def test_an_agents_settings_reach_the_job() -> None:
    """A directive naming an Agent: the Job has the Agent's image, resources and key (an optional
    Secret ref, so a missing key is the runner's clear message, not a pod stuck on its config),
    and its deadline is the Agent's timeout when shorter."""
    d = Directive.model_validate(
        {
            "metadata": {"name": "greeter", "namespace": "team-a", "uid": "d-uid"},
            "spec": {
                "title": "Greeter",
                "goal": "Add a greeter",
                "repository": {"url": "https://github.com/acme/app.git"},
                "agentRef": {"name": "claude"},
            },
        }
    )
    body = {
        "metadata": {"name": "claude", "namespace": "team-a"},
        "spec": {
            "profile": "claude-code",
            "image": "registry.example/agent-claude:2",
            "resources": {"limits": {"memory": "3Gi"}},
            "secretRef": {"name": "anthropic"},
            "timeout": "15m",
        },
    }
    eff = agent_ref.effective(d, agent_ref.resolve(d, {("team-a", "claude"): body}), "claude-code")
    job = build_job(_task(), eff, STEP_OWNER, DEFAULTS)
    kubernetes_validate.validate(job, KUBE_VERSION, strict=True)
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "registry.example/agent-claude:2"
    assert container["resources"] == {"limits": {"memory": "3Gi"}}
    env = {e["name"]: e for e in container["env"]}
    assert env["ANTHROPIC_API_KEY"]["valueFrom"]["secretKeyRef"] == {
        "name": "anthropic",
        "key": "ANTHROPIC_API_KEY",
        "optional": True,
    }
    assert job["spec"]["activeDeadlineSeconds"] == 15 * 60
    assert job["metadata"]["namespace"] == "team-a", "task pods run in the directive's namespace"


def test_same_inputs_same_manifest() -> None:
    assert build_job(_task(), _directive(), STEP_OWNER, DEFAULTS) == build_job(
        _task(), _directive(), STEP_OWNER, DEFAULTS
    )
    assert build_job(_task(1), _directive(), STEP_OWNER, DEFAULTS) != build_job(
        _task(2), _directive(), STEP_OWNER, DEFAULTS
    )


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ({}, None),
        ({"active": 1}, None),
        ({"conditions": [{"type": "Complete", "status": "True"}], "succeeded": 1}, "succeeded"),
        ({"conditions": [{"type": "Failed", "status": "True", "reason": "DeadlineExceeded"}]}, "failed"),
        ({"conditions": [{"type": "Failed", "status": "False"}], "active": 1}, None),
        ({"failed": 1}, "failed"),
    ],
)
def test_job_outcome(status: dict[str, Any], expected: str | None) -> None:
    outcome = job_outcome({"status": status})
    assert (outcome[0] if outcome else None) == expected
    if outcome and "DeadlineExceeded" in repr(status):
        assert "DeadlineExceeded" in outcome[1]
