"""Fixtures for the kind suite: a cluster with the image loaded and the chart installed.

Everything skips with the reason when no container engine or kind is reachable; nothing
here tries to start a container engine."""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from .cluster import (
    GIT_PORT,
    GIT_SERVER,
    IMAGE,
    OPERATOR_NAMESPACE,
    RELEASE,
    ROOT,
    Cluster,
    Engine,
    Kubectl,
    Unavailable,
    find_engine,
    find_tool,
    run,
)

E2E_NAMESPACE = "makima-e2e"  # where test_kind.py applies its directive and git server


@pytest.fixture(scope="session")
def engine() -> Engine:
    try:
        return find_engine()
    except Unavailable as exc:
        pytest.skip(f"kind e2e suite needs a container engine: {exc}")


@pytest.fixture(scope="session")
def cluster(engine: Engine) -> Iterator[Cluster]:
    try:
        kind = find_tool("kind")
        kubectl_bin = find_tool("kubectl")
    except Unavailable as exc:
        pytest.skip(f"kind e2e suite: {exc}")
    env = engine.kind_env
    reuse = os.environ.get("MAKIMA_E2E_CLUSTER")
    name = reuse or f"makima-e2e-{uuid.uuid4().hex[:6]}"
    workdir = Path(tempfile.mkdtemp(prefix="makima-e2e-"))
    kubeconfig = workdir / "kubeconfig"
    created = False
    try:
        if not reuse:
            run([kind, "create", "cluster", "--name", name, "--wait", "180s", "--kubeconfig", str(kubeconfig)], env=env)
            created = True
        else:
            run([kind, "export", "kubeconfig", "--name", name, "--kubeconfig", str(kubeconfig)], env=env)

        image = os.environ.get("MAKIMA_E2E_IMAGE") or IMAGE
        if not os.environ.get("MAKIMA_E2E_IMAGE"):
            run([engine.binary, "build", "--target", "testing", "-t", image, str(ROOT)], timeout=1800)
        if engine.name == "docker":
            run([kind, "load", "docker-image", image, "--name", name], env=env)
        else:
            archive = workdir / "image.tar"
            run([engine.binary, "save", "-o", str(archive), image])
            run([kind, "load", "image-archive", str(archive), "--name", name], env=env)

        yield Cluster(name, kubeconfig, Kubectl(kubectl_bin, kubeconfig), engine, image)
    finally:
        if created and not os.environ.get("MAKIMA_E2E_KEEP"):
            run([kind, "delete", "cluster", "--name", name], env=env, check=False)


@pytest.fixture(scope="session")
def installed(cluster: Cluster) -> Iterator[Cluster]:
    """`helm install` of charts/makima with the bundled PostgreSQL (Helm's SDK, no helm binary)."""
    import helm_python as helm

    values = {
        "image": {
            "repository": cluster.image.rsplit(":", 1)[0],
            "tag": cluster.image.rsplit(":", 1)[1],
            "pullPolicy": "IfNotPresent",
        },
        "postgresql": {"bundled": {"enabled": True}},
        "operator": {"logJson": False, "tickSeconds": 5},
        # Least privilege by default: the operator watches only the namespaces it is given.
        "watchNamespaces": [E2E_NAMESPACE],
        # Default-deny egress for task pods: let them reach the suite's in-cluster git server.
        "networkPolicy": {
            "extraEgress": [
                {
                    "to": [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": GIT_SERVER}}}],
                    "ports": [{"protocol": "TCP", "port": GIT_PORT}],
                }
            ]
        },
    }
    with (
        helm.Config(kubeconfig_path=cluster.kubeconfig, namespace=OPERATOR_NAMESPACE) as config,
        helm.Chart.load(ROOT / "charts" / "makima") as chart,
    ):
        config.install(
            chart,
            RELEASE,
            values,
            namespace=OPERATOR_NAMESPACE,
            create_namespace=True,
            wait="watcher",
            timeout=600,
        )
        try:
            yield cluster
        finally:
            config.uninstall(RELEASE, ignore_not_found=True, wait="watcher", timeout=300)
