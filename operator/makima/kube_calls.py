"""Every Kubernetes API call the operator makes, as RBAC rules.

Kept beside `kube.py` (the only module that calls the API). The chart's Role is
compared with this list by a test, so a new call without a rule fails CI.
Each entry: (apiGroup, resource, verbs).
"""

from __future__ import annotations

OPERATOR_RULES: list[tuple[str, str, tuple[str, ...]]] = [
    # kopf lists and watches our resources; the operator patches directives (kopf's finalizer,
    # and spec.paused when planning fails), deletes finished ones past spec.ttlSecondsAfterFinished,
    # creates steps, and patches both status subresources
    ("makima.dev", "directives", ("list", "watch", "patch", "delete")),
    ("makima.dev", "directives/status", ("patch",)),
    ("makima.dev", "directivesteps", ("list", "watch", "create")),
    ("makima.dev", "directivesteps/status", ("patch",)),
    # Job executor: one Job and one token Secret per task; kopf watches the Jobs; a daemon's
    # token and a directive's repository credentials are read from Secrets
    ("batch", "jobs", ("list", "watch", "create", "delete")),
    ("", "secrets", ("get", "create", "delete")),
    # Events a person reads in `kubectl describe` (ours and kopf's, both core/v1)
    ("", "events", ("create",)),
    # kopf: resource discovery and namespace scanning
    ("apiextensions.k8s.io", "customresourcedefinitions", ("list", "watch")),
    ("", "namespaces", ("list", "watch")),
    # kopf peering (only used with replicas > 1)
    ("kopf.dev", "kopfpeerings", ("get", "list", "watch", "patch")),
    ("kopf.dev", "clusterkopfpeerings", ("get", "list", "watch", "patch")),
]
