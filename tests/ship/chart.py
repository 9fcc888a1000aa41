"""Render charts/makima with Helm's own engine (helm-python-sdk, offline) for the tests.

`helm_python.Chart.load(path).render(values, name=, namespace=, is_install=)` runs Helm's
template engine in-process (libhelm_c, Helm v4 SDK) and validates the values against
values.schema.json first, exactly like `helm template`/`helm install`. No cluster, no
network: `lookup` returns nothing.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = ROOT / "charts" / "makima"
RELEASE = "demo"
NAMESPACE = "makima-system"
KUBE_VERSION = "1.33"  # strict schemas of kubernetes-validate (it ships 1.25 ... 1.37)

AGENT_PROFILES = ("claude-code", "codex", "gemini", "opencode", "aider", "scripted")
BUNDLED_PG: dict[str, Any] = {"postgresql": {"bundled": {"enabled": True}}}

# One values set per optional feature (plus the defaults and everything at once).
SCENARIOS: dict[str, dict[str, Any]] = {
    "default": {},
    "bundled-postgresql": BUNDLED_PG,
    "namespaced-rbac": {"watchNamespaces": ["team-a", "team-b"]},
    "cluster-wide": {"clusterWide": True},
    "daemon-credentials": {"rbac": {"daemonRepositoryCredentials": True}},
    "network-policy-off": {"networkPolicy": {"enabled": False}},
    "network-policy-own-hosts": {
        "watchNamespaces": ["team-a"],
        "daemon": {"enabled": True, "namespace": "team-a"},
        "networkPolicy": {
            "gitHost": {"cidrs": [{"cidr": "10.20.0.0/16"}, {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8"]}]},
            "dns": {"namespace": "dns", "podLabels": {"app": "coredns"}},
            "extraEgress": [
                {
                    "to": [{"podSelector": {"matchLabels": {"app": "gitea"}}}],
                    "ports": [{"protocol": "TCP", "port": 3000}],
                }
            ],
        },
    },
    "service-monitor": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}},
    "daemon": {"daemon": {"enabled": True, "namespace": "team-a"}},
    "replicas": {"replicas": 3},
    # one per agent profile the chart can default to (each picks its own agent image)
    **{f"agent-{p}": {"agent": {"profile": p}, "daemon": {"enabled": True}} for p in AGENT_PROFILES},
    "agent-own-image": {"agent": {"profile": "codex", "images": {"codex": "registry.example/codex:7"}}},
    "replicas-namespaced": {"replicas": 2, "watchNamespaces": ["team-a", "team-b"]},
    "everything": {
        **BUNDLED_PG,
        "watchNamespaces": ["team-a", "team-b"],
        "replicas": 2,
        "serviceMonitor": {"enabled": True},
        "daemon": {"enabled": True},
        "agent": {"image": "example.org/agent:1", "command": ["makima", "agent", "scripted"]},
        "imagePullSecrets": [{"name": "regcred"}],
        "operator": {"extraEnv": [{"name": "EXTRA", "value": "1"}], "nodeSelector": {"a": "b"}},
    },
}


@functools.cache
def chart() -> helm.Chart:
    return helm.Chart.load(CHART_DIR)


def render_files(values: dict[str, Any] | None = None) -> dict[str, str]:
    """Template path -> rendered text (NOTES.txt included)."""
    return chart().render(values or {}, name=RELEASE, namespace=NAMESPACE, is_install=True)


def render(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every rendered manifest, as dicts (NOTES.txt excluded)."""
    docs: list[dict[str, Any]] = []
    for path, text in sorted(render_files(values).items()):
        if path.endswith("NOTES.txt"):
            continue
        docs.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return docs


def notes(values: dict[str, Any] | None = None) -> str:
    return render_files(values)[f"{CHART_DIR.name}/templates/NOTES.txt"]


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in of_kind(docs, kind) if name is None or d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    """name -> value (or the valueFrom dict)."""
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def secret_file(workload: dict[str, Any], path: str, container: int = 0) -> tuple[str, str]:
    """(Secret name, key) of the Secret volume item mounted at `path` in a workload's container;
    fails if `path` is not such a file."""
    pod = workload["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for mount in pod["containers"][container].get("volumeMounts", []):
        secret = volumes.get(mount["name"], {}).get("secret")  # (volumeClaimTemplates are not here)
        if secret is None or not path.startswith(mount["mountPath"].rstrip("/") + "/"):
            continue
        relative = path[len(mount["mountPath"].rstrip("/")) + 1 :]
        for item in secret.get("items", []):
            if item["path"] == relative:
                assert mount.get("readOnly") is True, mount
                return secret["secretName"], item["key"]
    raise AssertionError(f"{path} is not a file of a mounted Secret")
