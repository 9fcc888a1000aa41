"""Every Kubernetes API call the operator makes, as RBAC rules.

Kept beside `kube.py` (the only module that calls the API). The chart's Role is
compared with this list by a test, so a new call without a rule fails CI.
Each entry: (apiGroup, resource, verbs).
"""

from __future__ import annotations

OPERATOR_RULES: list[tuple[str, str, tuple[str, ...]]] = [
    # our resources: kopf watches them; kube.py creates steps and patches status
    ("makima.dev", "directives", ("get", "list", "watch", "patch")),
    ("makima.dev", "directives/status", ("get", "patch")),
    ("makima.dev", "directivesteps", ("get", "list", "watch", "create", "patch", "delete")),
    ("makima.dev", "directivesteps/status", ("get", "patch")),
    # Job executor: one Job and one token Secret per task
    ("batch", "jobs", ("get", "list", "watch", "create", "delete")),
    ("", "secrets", ("get", "create", "delete")),
    # Events a person reads in `kubectl describe`
    ("", "events", ("create", "patch")),
    ("events.k8s.io", "events", ("create", "patch")),
    # kopf: resource discovery and namespace scanning
    ("apiextensions.k8s.io", "customresourcedefinitions", ("list", "watch")),
    ("", "namespaces", ("list", "watch")),
    # kopf peering (only used with replicas > 1)
    ("kopf.dev", "kopfpeerings", ("get", "list", "watch", "patch")),
    ("kopf.dev", "clusterkopfpeerings", ("get", "list", "watch", "patch")),
]
