"""Every Kubernetes API call the operator makes, as RBAC rules.

Kept beside `kube.py` (the only module that calls the API). The chart's Role is
compared with these lists by a test (tests/ship/test_rbac.py), so a new call without a rule
fails CI, and so does a rule no call needs.
Each entry: (apiGroup, resource, verbs); `NAMED_RULES` entries also carry resourceNames.
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
    # kopf indexes the Agents (the platform team's; the operator only reads them)
    ("makima.dev", "agents", ("list", "watch")),
    # Job executor: one Job and one token Secret per task (created, deleted when the task ends);
    # kopf watches the Jobs. No `get`/`list` on Secrets here: see NAMED_RULES and
    # DAEMON_CREDENTIALS_RULES.
    ("batch", "jobs", ("list", "watch", "create", "delete")),
    ("", "secrets", ("create", "delete")),
    # Events a person reads in `kubectl describe` (ours and kopf's, both core/v1)
    ("", "events", ("create",)),
    # kopf: resource discovery and namespace scanning
    ("apiextensions.k8s.io", "customresourcedefinitions", ("list", "watch")),
    ("", "namespaces", ("list", "watch")),
]

# The leader Lease (control/leadership.py), only with replicas > 1, only in the namespace the
# operator runs in: read it, create it once, renew or take it over (a compare-and-set PUT).
LEASE_RULES: list[tuple[str, str, tuple[str, ...]]] = [
    ("coordination.k8s.io", "leases", ("get", "create", "update")),
]

# Rules limited to named objects: the daemon token Secret a connecting daemon is checked against
# (kube.DAEMON_TOKEN_SECRET), in each watched namespace.
NAMED_RULES: list[tuple[str, str, tuple[str, ...], tuple[str, ...]]] = [
    ("", "secrets", ("get",), ("makima-daemon-token",)),
]

# Opt-in (chart value rbac.daemonRepositoryCredentials): read any Secret in a watched namespace,
# to push a directive's `repository.credentialsSecret` to the daemon that runs its task. Jobs
# never need it (their pod references the Secret; the operator does not read it).
DAEMON_CREDENTIALS_RULES: list[tuple[str, str, tuple[str, ...]]] = [
    ("", "secrets", ("get",)),
]
