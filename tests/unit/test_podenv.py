"""How a pod's env and volumes are resolved for a local process (sandbox and node agent)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from makima_testing.sandbox import podenv


def pod(**container: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "p", "namespace": "ns", "uid": "u-1"},
        "spec": {
            "containers": [{"name": "c", **container}],
            "volumes": [{"name": "creds-vol", "secret": {"secretName": "vol"}}, {"name": "work", "emptyDir": {}}],
        },
    }


ENV = [
    {"name": "A", "value": "a"},
    {"name": "B", "value": "$(A)-b $$(A)"},
    {"name": "T", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
    {"name": "U", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "user", "optional": True}}},
    {"name": "C", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "k"}}},
    {"name": "N", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
    {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
]


def test_references_name_every_secret_and_config_map() -> None:
    p = pod(env=ENV, envFrom=[{"configMapRef": {"name": "all"}}])
    assert podenv.references(p) == {
        ("secrets", "creds"),
        ("configmaps", "cfg"),
        ("configmaps", "all"),
        ("secrets", "vol"),
    }


def test_environment_resolves_values_refs_fields_and_volumes(tmp_path: Path) -> None:
    p = pod(env=ENV, envFrom=[{"configMapRef": {"name": "all"}, "prefix": "X_"}])
    data = {
        ("secrets", "creds"): {"token": "s3cret"},
        ("configmaps", "cfg"): {"k": "v"},
        ("configmaps", "all"): {"one": "1"},
        ("secrets", "vol"): {"file": "content"},
    }
    volumes = podenv.write_volumes(p, data, tmp_path)
    env = podenv.environment(p, data, {"PATH": "/bin"}, "node-1", volumes)
    assert env["B"] == "a-b $(A)" and env["T"] == "s3cret" and "U" not in env and env["C"] == "v"
    assert env["N"] == "p" and env["NODE"] == "node-1" and env["X_one"] == "1" and env["PATH"] == "/bin"
    assert (Path(env["MAKIMA_SANDBOX_MOUNT_CREDS_VOL"]) / "file").read_text() == "content"
    assert Path(env["MAKIMA_SANDBOX_MOUNT_WORK"]).is_dir()


def test_a_missing_secret_or_key_is_a_config_error(tmp_path: Path) -> None:
    p = pod(env=ENV)
    with pytest.raises(podenv.ConfigError, match='secret "creds" not found'):
        podenv.environment(p, {("configmaps", "cfg"): {"k": "v"}}, {}, "n", {})
    with pytest.raises(podenv.ConfigError, match="couldn't find key token in secret ns/creds"):
        podenv.environment(p, {("secrets", "creds"): {}, ("configmaps", "cfg"): {"k": "v"}}, {}, "n", {})
    with pytest.raises(podenv.ConfigError, match='secret "vol" not found'):
        podenv.write_volumes(p, {}, tmp_path)


def test_working_dir_is_the_volume_mounted_there(tmp_path: Path) -> None:
    p = pod(workingDir="/workspace", volumeMounts=[{"name": "work", "mountPath": "/workspace"}])
    volumes = {"work": tmp_path / "w"}
    assert podenv.working_dir(p, volumes, tmp_path / "fallback") == tmp_path / "w"
    assert podenv.working_dir(pod(), volumes, tmp_path / "fallback") == tmp_path / "fallback"
