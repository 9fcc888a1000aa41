"""The namespace the real-cluster scenarios run in enforces PodSecurity `restricted`: a pod that
breaks it is refused there, so the scenarios' Job pods passing proves makima's are admitted."""

from __future__ import annotations

from pathlib import Path

from tests.support.realcluster import RealCluster

from .realenv import operator_install


def test_restricted_namespace_refuses_a_privileged_pod(real_cluster: RealCluster, tmp_path: Path) -> None:
    with operator_install(real_cluster, tmp_path) as (namespace, _kubeconfig):
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "root"},
            "spec": {"containers": [{"name": "c", "image": "x", "command": ["true"]}]},
        }
        status, answer = real_cluster.call("POST", f"/api/v1/namespaces/{namespace}/pods", pod)
        assert status == 403, answer
        assert 'violates PodSecurity "restricted:latest"' in answer["message"], answer
