"""The `makima` CLI's calls with exactly the people's role the chart renders, on the real API server.

A person is a ServiceAccount here (its token in a kubeconfig), bound in one namespace to the
chart's `-user` ClusterRole, as `edit` would aggregate it. Everything the CLI does must be
allowed; what the role does not grant must be refused by the real RBAC authorizer.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from makima.control.kube import KubeError, UserKube
from tests.ship.chart import chart
from tests.support.realcluster import RealCluster
from tests.support.wait import eventually_sync

from .conftest import example_directive
from .realenv import install_crds, path_of

GROUP = "/apis/makima.dev/v1alpha1"


def user_role(release: str) -> dict[str, Any]:
    import yaml

    files = chart().render({}, name=release, namespace="makima-system", is_install=True)
    docs = [d for p, t in files.items() if not p.endswith("NOTES.txt") for d in yaml.safe_load_all(t) if d]
    return next(d for d in docs if d.get("kind") == "ClusterRole" and d["metadata"]["name"].endswith("-user"))


@pytest.fixture
def person(real_cluster: RealCluster, tmp_path: Path) -> Iterator[tuple[UserKube, str]]:
    install_crds(real_cluster)
    suffix = uuid.uuid4().hex[:8]
    ns, release = f"people-{suffix}", f"mk{suffix}"
    real_cluster.ok("POST", "/api/v1/namespaces", {"metadata": {"name": ns}})
    role = user_role(release)
    real_cluster.ok("POST", path_of(role), role)
    real_cluster.ok("POST", f"/api/v1/namespaces/{ns}/serviceaccounts", {"metadata": {"name": "alice"}})
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": "alice", "namespace": ns},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role["metadata"]["name"]},
        "subjects": [{"kind": "ServiceAccount", "name": "alice", "namespace": ns}],
    }
    real_cluster.ok("POST", path_of(binding), binding)
    kube = UserKube.from_kubeconfig(str(real_cluster.kubeconfig_for(tmp_path / "alice.kubeconfig", ns, "alice")))
    try:
        yield kube, ns
    finally:
        kube.close()
        real_cluster.call("DELETE", f"{path_of(role)}/{role['metadata']['name']}")
        real_cluster.call("DELETE", f"/api/v1/namespaces/{ns}")


def test_the_cli_works_with_the_peoples_role_and_nothing_more(
    real_cluster: RealCluster, person: tuple[UserKube, str], tmp_path: Path
) -> None:
    kube, ns = person
    created = kube.create_directive(ns, example_directive(tmp_path / "origin.git"))
    name = created["metadata"]["name"]
    assert [d["metadata"]["name"] for d in kube.list_directives(ns)] == [name]
    assert kube.get_directive(ns, name) is not None
    # A step the operator would have made (admin), Failed, so that a retry has something to do.
    step = {
        "apiVersion": "makima.dev/v1alpha1",
        "kind": "DirectiveStep",
        "metadata": {"name": f"{name}-core", "labels": {"makima.dev/directive": name, "makima.dev/step": "core"}},
        "spec": {"directive": name, "title": "core", "orderIndex": 0, "generation": 1},
    }
    real_cluster.ok("POST", f"{GROUP}/namespaces/{ns}/directivesteps", step)
    real_cluster.ok(
        "PATCH",
        f"{GROUP}/namespaces/{ns}/directivesteps/{name}-core/status",
        {"status": {"phase": "Failed", "attempts": 3, "message": "boom"}},
        "application/merge-patch+json",
    )
    assert [s["metadata"]["name"] for s in kube.list_steps(ns, name)] == [f"{name}-core"]
    kube.list_events(ns, name)
    paused = kube.set_paused(ns, name, True)
    assert paused is not None and paused["spec"]["paused"] is True
    assert kube.set_paused(ns, name, False) is not None
    # Status is the operator's record: an editor may not write it; `makima retry` asks the
    # operator through an annotation on the Directive, which an editor may set.
    asked = kube.request_retry(ns, name, "r1")
    assert asked is not None and asked["metadata"]["annotations"]["makima.dev/retry"] == "r1"
    forged = {"status": {"phase": "Succeeded"}}
    for plural, obj in (("directivesteps", f"{name}-core"), ("directives", name)):
        with pytest.raises(ApiException) as denied:
            kube.custom.patch_namespaced_custom_object_status("makima.dev", "v1alpha1", ns, plural, obj, forged)
        assert denied.value.status == 403, plural

    # Agents: an editor reads them (which one a directive may name) but defining one is the
    # platform team's (the chart's agent-admin role, aggregated into nothing).
    assert kube.custom.list_namespaced_custom_object("makima.dev", "v1alpha1", ns, "agents")["items"] == []
    agent = {"apiVersion": "makima.dev/v1alpha1", "kind": "Agent", "metadata": {"name": "mine"}, "spec": {}}
    with pytest.raises(ApiException) as denied:
        kube.custom.create_namespaced_custom_object("makima.dev", "v1alpha1", ns, "agents", agent)
    assert denied.value.status == 403

    # Outside the role: Secrets, Jobs, step status forged by hand, anything in another namespace.
    for forbidden in (
        lambda: kube.core.list_namespaced_secret(ns),
        lambda: client.BatchV1Api(kube.api).list_namespaced_job(ns),
    ):
        with pytest.raises(ApiException) as denied:
            forbidden()
        assert denied.value.status == 403
    with pytest.raises(KubeError) as elsewhere:
        kube.list_directives("default")
    assert elsewhere.value.status == 403
    assert kube.delete_directive(ns, name) is True
    eventually_sync(lambda: kube.get_directive(ns, name) is None, "directive deleted")
