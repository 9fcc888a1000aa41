"""pytest plugin: the upstream Kubernetes control plane (tests/realcluster) for the whole session.

`real_cluster` builds the binaries once per machine (or reuses them from the cache) and starts
etcd, kube-apiserver, kube-controller-manager and the node agent for the session. Set
MAKIMA_REAL_CLUSTER=0 to skip every real-cluster variant; where Go is missing they skip with
that reason.
"""

from __future__ import annotations

import json
import os
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.realcluster.launcher import ControlPlane, Unavailable, build, kubeconfig


class RealCluster:
    """The running control plane, with admin helpers for test set-up."""

    def __init__(self, plane: ControlPlane) -> None:
        self.plane = plane
        self.url = plane.url
        self.kubeconfig = plane.kubeconfig
        self.pod_dir = plane.pod_dir
        assert plane.pki is not None
        self.ca = plane.pki.ca.cert

    def ssl_context(self) -> ssl.SSLContext:
        return self.plane.ssl_context()

    def call(self, method: str, path: str, body: Any = None, ctype: str = "application/json") -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Accept": "application/json", "Content-Type": ctype}
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, context=self.ssl_context(), timeout=30) as rsp:
                return rsp.status, json.loads(rsp.read() or b"null")
        except urllib.error.HTTPError as exc:
            text = exc.read().decode(errors="replace")
            return exc.code, json.loads(text) if text.startswith("{") else text

    def ok(self, method: str, path: str, body: Any = None, ctype: str = "application/json") -> Any:
        status, answer = self.call(method, path, body, ctype)
        assert status < 300, f"{method} {path}: {status} {answer}"
        return answer

    def token(self, namespace: str, service_account: str, seconds: int = 3600) -> str:
        """A bound token for a ServiceAccount (the TokenRequest API, as a projected volume gets)."""
        request = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"expirationSeconds": seconds},
        }
        answer = self.ok("POST", f"/api/v1/namespaces/{namespace}/serviceaccounts/{service_account}/token", request)
        return str(answer["status"]["token"])

    def kubeconfig_for(self, path: Path, namespace: str, service_account: str) -> Path:
        """A kubeconfig that authenticates as the ServiceAccount (what an in-cluster pod would be)."""
        path.write_text(
            kubeconfig(self.url, self.ca, {"token": self.token(namespace, service_account)}, namespace, "sa")
        )
        return path


@pytest.fixture(scope="session")
def real_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealCluster]:
    if os.environ.get("MAKIMA_REAL_CLUSTER") == "0":
        pytest.skip("real control plane disabled (MAKIMA_REAL_CLUSTER=0)")
    try:
        bins = build(log=print)
    except Unavailable as exc:
        pytest.skip(f"no real control plane on this machine: {exc}")
    plane = ControlPlane(tmp_path_factory.mktemp("realcluster"), bins)
    try:
        plane.start()
    except Unavailable as exc:
        plane.stop()
        pytest.fail(f"the control plane did not start: {exc}")
    try:
        yield RealCluster(plane)
    finally:
        plane.stop()
