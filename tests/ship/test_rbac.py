"""The chart's RBAC grants exactly the API calls the operator makes
(operator/makima/kube_calls.py: OPERATOR_RULES, NAMED_RULES, and DAEMON_CREDENTIALS_RULES when
rbac.daemonRepositoryCredentials is on): a missing rule fails, so does an extra one, in each
install mode (the release namespace by default, listed namespaces, cluster-wide).

The leader Lease's rules (LEASE_RULES) are granted only when replicas > 1, and only in the
release namespace (a Role `<fullname>-leader`), whatever the watch mode.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import pytest

from makima.control.kube import AGENT_ADMIN_RULES, USER_RULES
from makima.control.kube_calls import DAEMON_CREDENTIALS_RULES, LEASE_RULES, NAMED_RULES, OPERATOR_RULES

from .chart import NAMESPACE, RELEASE, of_kind, render

# (apiGroup, resource, resourceNames or ()) -> verbs
Rules = dict[tuple[str, str, tuple[str, ...]], set[str]]
CLUSTER_SCOPED = {
    ("apiextensions.k8s.io", "customresourcedefinitions", ()),
    ("", "namespaces", ()),
}
LEADER_ROLE = f"{RELEASE}-makima-leader"


def _flatten(rules: list[dict[str, Any]]) -> Rules:
    flat: Rules = defaultdict(set)
    for rule in rules:
        assert "nonResourceURLs" not in rule
        names = tuple(rule.get("resourceNames") or ())
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                assert "*" not in (group, resource) and "*" not in rule["verbs"], rule
                flat[(group, resource, names)].update(rule["verbs"])
    return dict(flat)


def _expected(*, daemon_credentials: bool = False) -> Rules:
    """The code's rules for the watched namespaces (and cluster-scoped reads)."""
    expected: Rules = {}
    for group, resource, verbs in OPERATOR_RULES:
        expected[(group, resource, ())] = set(verbs)
    for group, resource, verbs, names in NAMED_RULES:
        expected[(group, resource, names)] = set(verbs)
    if daemon_credentials:
        for group, resource, verbs in DAEMON_CREDENTIALS_RULES:
            expected.setdefault((group, resource, ()), set()).update(verbs)
    return expected


def _user_role(doc: dict[str, Any]) -> bool:
    return doc["metadata"].get("labels", {}).get("makima.dev/role") in ("user", "user-admin", "agent-admin")


def _leader(doc: dict[str, Any]) -> bool:
    return bool(doc["metadata"]["name"] == LEADER_ROLE)


def _bound_to_operator(docs: list[dict[str, Any]], binding_kind: str, role_kind: str) -> list[dict[str, Any]]:
    roles = {
        (r["metadata"]["name"], r["metadata"].get("namespace")): r
        for r in of_kind(docs, role_kind)
        if not _user_role(r) and not _leader(r)  # people's roles and the Lease's: tested below
    }
    bound = []
    for binding in of_kind(docs, binding_kind):
        if _leader(binding):
            continue
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": f"{RELEASE}-makima", "namespace": NAMESPACE}]
        assert binding["roleRef"]["kind"] == role_kind
        key = (binding["roleRef"]["name"], binding["metadata"].get("namespace"))
        assert key in roles, f"{binding_kind} refers to a missing {role_kind} {key}"
        bound.append(roles[key])
    assert len(bound) == len(roles), f"every {role_kind} is bound"
    return bound


def _assert_lease_role(docs: list[dict[str, Any]], replicas: int) -> None:
    """With replicas > 1: the Lease rules, in the release namespace only, bound to the operator."""
    roles = [r for r in of_kind(docs, "Role") if _leader(r)]
    bindings = [b for b in of_kind(docs, "RoleBinding") if _leader(b)]
    if replicas == 1:
        assert not roles and not bindings
        return
    (role,), (binding,) = roles, bindings
    assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == NAMESPACE
    assert _flatten(role["rules"]) == {(g, r, ()): set(v) for g, r, v in LEASE_RULES}
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": LEADER_ROLE}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": f"{RELEASE}-makima", "namespace": NAMESPACE}]


def test_rule_list_is_well_formed() -> None:
    seen = set()
    for group, resource, verbs in OPERATOR_RULES:
        assert (group, resource) not in seen, f"duplicate rule for {group}/{resource}"
        seen.add((group, resource))
        assert verbs and set(verbs) <= {"get", "list", "watch", "create", "update", "patch", "delete"}
    # Secrets: no list/watch ever; `get` only by name unless the daemon-credentials opt-in
    secret_verbs = {v for g, r, verbs in OPERATOR_RULES if (g, r) == ("", "secrets") for v in verbs}
    assert not secret_verbs & {"get", "list", "watch", "update", "patch"}


@pytest.mark.parametrize("replicas", [1, 2])
@pytest.mark.parametrize("daemon_credentials", [False, True])
def test_cluster_wide_cluster_role_equals_operator_rules(replicas: int, daemon_credentials: bool) -> None:
    docs = render(
        {"clusterWide": True, "replicas": replicas, "rbac": {"daemonRepositoryCredentials": daemon_credentials}}
    )
    # cluster-wide: no namespaced Role but the Lease's (replicas > 1)
    assert not [d for d in of_kind(docs, "Role") + of_kind(docs, "RoleBinding") if not _leader(d)]
    (cluster_role,) = _bound_to_operator(docs, "ClusterRoleBinding", "ClusterRole")
    granted = _flatten(cluster_role["rules"])
    assert granted == _expected(daemon_credentials=daemon_credentials)
    _assert_lease_role(docs, replicas)
    (deploy,) = of_kind(docs, "Deployment")
    env = {e["name"]: e.get("value") for e in deploy["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["MAKIMA_NAMESPACES"] == "[]"


def test_the_default_install_is_confined_to_the_release_namespace() -> None:
    """Least privilege is the easy install: no values at all gives one Role in the release's
    namespace, and the operator watches only that namespace."""
    docs = render({})
    (cluster_role,) = _bound_to_operator(docs, "ClusterRoleBinding", "ClusterRole")
    assert set(_flatten(cluster_role["rules"])) <= CLUSTER_SCOPED
    assert all(set(verbs) <= {"list", "watch"} for verbs in _flatten(cluster_role["rules"]).values())
    (role,) = _bound_to_operator(docs, "RoleBinding", "Role")
    assert role["metadata"]["namespace"] == NAMESPACE
    assert {**_flatten(role["rules"]), **_flatten(cluster_role["rules"])} == _expected()
    _assert_lease_role(docs, 1)
    (deploy,) = of_kind(docs, "Deployment")
    env = {e["name"]: e.get("value") for e in deploy["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["MAKIMA_NAMESPACES"] == f'["{NAMESPACE}"]'


def test_cluster_wide_with_listed_namespaces_is_refused() -> None:
    with pytest.raises(Exception, match="watchNamespaces"):
        render({"clusterWide": True, "watchNamespaces": ["team-a"]})


@pytest.mark.parametrize("replicas", [1, 2])
@pytest.mark.parametrize("daemon_credentials", [False, True])
def test_watch_namespaces_roles_equal_operator_rules(replicas: int, daemon_credentials: bool) -> None:
    namespaces = ["team-a", "team-b"]
    values = {"watchNamespaces": namespaces, "replicas": replicas}
    values["rbac"] = {"daemonRepositoryCredentials": daemon_credentials}
    docs = render(values)
    expected = _expected(daemon_credentials=daemon_credentials)
    _assert_lease_role(docs, replicas)

    # cluster-scoped reads (kopf discovery) stay in a ClusterRole; nothing namespaced does
    (cluster_role,) = _bound_to_operator(docs, "ClusterRoleBinding", "ClusterRole")
    cluster_granted = _flatten(cluster_role["rules"])
    assert set(cluster_granted) <= CLUSTER_SCOPED, set(cluster_granted) - CLUSTER_SCOPED

    roles = _bound_to_operator(docs, "RoleBinding", "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == namespaces
    for role in roles:
        granted = _flatten(role["rules"])
        assert not set(granted) & CLUSTER_SCOPED, "cluster-scoped resources cannot be granted by a Role"
        # each namespace gets every namespaced rule; together with the ClusterRole: exactly the list
        assert {**granted, **cluster_granted} == expected, role["metadata"]["namespace"]


def test_rbac_can_be_left_to_the_cluster_admin() -> None:
    docs = render({"rbac": {"create": False}, "serviceAccount": {"create": False, "name": "makima-op"}})
    assert not [d for d in docs if d["kind"] in {"ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}]
    assert not of_kind(docs, "ServiceAccount")
    (deploy,) = [d for d in of_kind(docs, "Deployment")]
    assert deploy["spec"]["template"]["spec"]["serviceAccountName"] == "makima-op"


def test_user_role_grants_exactly_what_the_cli_uses_and_aggregates_into_edit() -> None:
    docs = render({})
    roles = {d["metadata"]["labels"]["makima.dev/role"]: d for d in of_kind(docs, "ClusterRole") if _user_role(d)}
    role, agent_admin = roles["user"], roles["agent-admin"]
    assert "user-admin" not in roles, "retry is a request the operator performs: no role writes step status"
    labels = role["metadata"]["labels"]
    assert labels["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
    assert labels["rbac.authorization.k8s.io/aggregate-to-admin"] == "true"
    assert _flatten(role["rules"]) == {(g, r, ()): set(v) for g, r, v in USER_RULES}
    # Editors never write status (a forged step Succeeded); `makima retry` sets an annotation.
    assert not [key for key in _flatten(role["rules"]) if key[1].endswith("/status")]
    # Agents: editors read them; writing them is a role of its own, aggregated into nothing
    assert _flatten(role["rules"])[("makima.dev", "agents", ())] == {"get", "list", "watch"}
    assert _flatten(agent_admin["rules"]) == {(g, r, ()): set(v) for g, r, v in AGENT_ADMIN_RULES}
    assert not [k for k in agent_admin["metadata"]["labels"] if k.startswith("rbac.authorization.k8s.io/aggregate")]
    # never bound to the operator's service account
    bindings = of_kind(docs, "ClusterRoleBinding") + of_kind(docs, "RoleBinding")
    people = {r["metadata"]["name"] for r in (role, agent_admin)}
    assert all(b["roleRef"]["name"] not in people for b in bindings)
    assert not [d for d in of_kind(render({"rbac": {"userRoles": False}}), "ClusterRole") if _user_role(d)]
