"""The chart's RBAC grants exactly the API calls the operator makes
(operator/makima/kube_calls.py OPERATOR_RULES): a missing rule fails, so does an extra one.

Decision on peering: kopf's peering rules are granted only when replicas > 1 (peering on),
and only the one kopf uses in that mode: ClusterKopfPeering when watching all namespaces,
KopfPeering (in each watched namespace) when watching listed namespaces.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import pytest

from makima.kube import USER_RULES
from makima.kube_calls import OPERATOR_RULES

from .chart import NAMESPACE, RELEASE, of_kind, render

Rules = dict[tuple[str, str], set[str]]
PEERING = {("kopf.dev", "kopfpeerings"), ("kopf.dev", "clusterkopfpeerings")}
CLUSTER_SCOPED = {
    ("apiextensions.k8s.io", "customresourcedefinitions"),
    ("", "namespaces"),
    ("kopf.dev", "clusterkopfpeerings"),
}


def _flatten(rules: list[dict[str, Any]]) -> Rules:
    flat: Rules = defaultdict(set)
    for rule in rules:
        assert "resourceNames" not in rule and "nonResourceURLs" not in rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                assert "*" not in (group, resource) and "*" not in rule["verbs"], rule
                flat[(group, resource)].update(rule["verbs"])
    return dict(flat)


def _expected(*, peering: str | None) -> Rules:
    """OPERATOR_RULES, minus the peering rules kopf does not use in this mode."""
    keep = {None: set(), "cluster": {("kopf.dev", "clusterkopfpeerings")}, "namespaced": {("kopf.dev", "kopfpeerings")}}
    expected: Rules = {}
    for group, resource, verbs in OPERATOR_RULES:
        if (group, resource) in PEERING and (group, resource) not in keep[peering]:
            continue
        expected[(group, resource)] = set(verbs)
    return expected


def _user_role(doc: dict[str, Any]) -> bool:
    return doc["metadata"].get("labels", {}).get("makima.dev/role") == "user"


def _bound_to_operator(docs: list[dict[str, Any]], binding_kind: str, role_kind: str) -> list[dict[str, Any]]:
    roles = {
        (r["metadata"]["name"], r["metadata"].get("namespace")): r
        for r in of_kind(docs, role_kind)
        if not _user_role(r)  # for people (aggregated into edit/admin), tested below
    }
    bound = []
    for binding in of_kind(docs, binding_kind):
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": f"{RELEASE}-makima", "namespace": NAMESPACE}]
        assert binding["roleRef"]["kind"] == role_kind
        key = (binding["roleRef"]["name"], binding["metadata"].get("namespace"))
        assert key in roles, f"{binding_kind} refers to a missing {role_kind} {key}"
        bound.append(roles[key])
    assert len(bound) == len(roles), f"every {role_kind} is bound"
    return bound


def test_rule_list_is_well_formed() -> None:
    seen = set()
    for group, resource, verbs in OPERATOR_RULES:
        assert (group, resource) not in seen, f"duplicate rule for {group}/{resource}"
        seen.add((group, resource))
        assert verbs and set(verbs) <= {"get", "list", "watch", "create", "update", "patch", "delete"}


@pytest.mark.parametrize("replicas", [1, 2])
def test_all_namespaces_cluster_role_equals_operator_rules(replicas: int) -> None:
    docs = render({"replicas": replicas})
    assert not of_kind(docs, "Role") and not of_kind(docs, "RoleBinding")
    (cluster_role,) = _bound_to_operator(docs, "ClusterRoleBinding", "ClusterRole")
    granted = _flatten(cluster_role["rules"])
    assert granted == _expected(peering="cluster" if replicas > 1 else None)


@pytest.mark.parametrize("replicas", [1, 2])
def test_watch_namespaces_roles_equal_operator_rules(replicas: int) -> None:
    namespaces = ["team-a", "team-b"]
    docs = render({"watchNamespaces": namespaces, "replicas": replicas})
    expected = _expected(peering="namespaced" if replicas > 1 else None)

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
    (role,) = [d for d in of_kind(docs, "ClusterRole") if _user_role(d)]
    labels = role["metadata"]["labels"]
    assert labels["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
    assert labels["rbac.authorization.k8s.io/aggregate-to-admin"] == "true"
    assert _flatten(role["rules"]) == {(g, r): set(v) for g, r, v in USER_RULES}
    # never bound to the operator's service account
    bindings = of_kind(docs, "ClusterRoleBinding") + of_kind(docs, "RoleBinding")
    assert all(b["roleRef"]["name"] != role["metadata"]["name"] for b in bindings)
    assert not [d for d in of_kind(render({"rbac": {"userRoles": False}}), "ClusterRole") if _user_role(d)]
