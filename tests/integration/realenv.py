"""The operator's install on the real control plane, as `helm install` would make it.

Per test: a namespace where directives and task pods live (PodSecurity `restricted` enforced),
and a release namespace holding the operator's ServiceAccount, bound to exactly the Role and
ClusterRole that the chart renders with `watchNamespaces: [<that namespace>]`. The operator
then runs with that ServiceAccount's token: a call the chart's rules forget fails the test.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from makima.core.crds import all_crds
from tests.ship.chart import chart
from tests.support.realcluster import RealCluster
from tests.support.wait import eventually_sync

RBAC_KINDS = ("ServiceAccount", "ClusterRole", "Role", "ClusterRoleBinding", "RoleBinding")
_crds_installed: set[str] = set()


def path_of(doc: dict[str, Any]) -> str:
    kind, meta = doc["kind"], doc["metadata"]
    group = "/api/v1" if doc["apiVersion"] == "v1" else f"/apis/{doc['apiVersion']}"
    plural = {"ServiceAccount": "serviceaccounts", "Namespace": "namespaces"}.get(kind, kind.lower() + "s")
    if kind == "CustomResourceDefinition":
        plural = "customresourcedefinitions"
    namespace = meta.get("namespace")
    return f"{group}/namespaces/{namespace}/{plural}" if namespace else f"{group}/{plural}"


def install_crds(real: RealCluster) -> None:
    """Our CRDs, applied once per control plane, and served before anything uses them."""
    if real.url in _crds_installed:
        return
    for crd in all_crds().values():
        status, body = real.call("POST", path_of(crd), crd)
        if status == 409:
            current = real.ok("GET", f"{path_of(crd)}/{crd['metadata']['name']}")
            crd = {**crd, "metadata": {**crd["metadata"], "resourceVersion": current["metadata"]["resourceVersion"]}}
            real.ok("PUT", f"{path_of(crd)}/{crd['metadata']['name']}", crd)
        else:
            assert status == 201, body

        def established(name: str = crd["metadata"]["name"]) -> bool:
            got = real.ok("GET", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")
            return any(
                c["type"] == "Established" and c["status"] == "True"
                for c in (got.get("status") or {}).get("conditions") or []
            )

        eventually_sync(established, f"CRD {crd['metadata']['name']} established")
        # Established is not yet served: until the watch cache of a new kind is initialised,
        # lists answer 429 "storage is (re)initializing" (kopf retries, but logs an error).
        spec = crd["spec"]
        listing = f"/apis/{spec['group']}/{spec['versions'][0]['name']}/{spec['names']['plural']}"
        eventually_sync(lambda path=listing: real.call("GET", path)[0] == 200, f"{listing} served")
    _crds_installed.add(real.url)


def rbac_documents(release: str, release_ns: str, watch_ns: str, replicas: int = 1) -> list[dict[str, Any]]:
    """The chart's ServiceAccount and RBAC for a namespaced install, rendered by Helm's engine
    (with `replicas` > 1, the leader Lease's Role in the release namespace too)."""
    import yaml

    values = {"watchNamespaces": [watch_ns], "replicas": replicas}
    files = chart().render(values, name=release, namespace=release_ns, is_install=True)
    docs = [d for path, text in files.items() if not path.endswith("NOTES.txt") for d in yaml.safe_load_all(text) if d]
    chosen = [d for d in docs if d["kind"] in RBAC_KINDS and not d["metadata"]["name"].endswith("-user")]
    chosen.sort(key=lambda d: RBAC_KINDS.index(d["kind"]))
    return chosen


@contextlib.contextmanager
def operator_install(real: RealCluster, tmp_path: Path, replicas: int = 1) -> Iterator[tuple[str, Path]]:
    """Yield (namespace, operator kubeconfig) for one test; remove everything afterwards.

    The kubeconfig's namespace is the release namespace (where the operator would run)."""
    install_crds(real)
    suffix = uuid.uuid4().hex[:8]
    namespace, release_ns, release = f"it-{suffix}", f"mk-{suffix}", f"mk{suffix}"
    restricted = {
        "pod-security.kubernetes.io/enforce": "restricted",
        "pod-security.kubernetes.io/enforce-version": "latest",
    }
    real.ok("POST", "/api/v1/namespaces", {"metadata": {"name": namespace, "labels": restricted}})
    real.ok("POST", "/api/v1/namespaces", {"metadata": {"name": release_ns}})
    docs = rbac_documents(release, release_ns, namespace, replicas)
    cluster_scoped = [d for d in docs if d["kind"].startswith("Cluster")]
    try:
        for doc in docs:
            real.ok("POST", path_of(doc), doc)
        service_account = next(d for d in docs if d["kind"] == "ServiceAccount")["metadata"]["name"]
        # Pods are admitted once the namespace's `default` ServiceAccount exists (the controller makes it).
        eventually_sync(
            lambda: real.call("GET", f"/api/v1/namespaces/{namespace}/serviceaccounts/default")[0] == 200,
            "the namespace's default ServiceAccount",
        )
        yield namespace, real.kubeconfig_for(tmp_path / "operator.kubeconfig", release_ns, service_account)
    finally:
        for doc in cluster_scoped:
            real.call("DELETE", f"{path_of(doc)}/{doc['metadata']['name']}")
        for ns in (namespace, release_ns):
            real.call("DELETE", f"/api/v1/namespaces/{ns}")
