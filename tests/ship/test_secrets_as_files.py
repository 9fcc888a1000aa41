"""Issue 15 item 6 (checkov CKV_K8S_35): the chart hands Secrets to its pods as files, and the
operator reads its DSN from that file (it wins over MAKIMA_DATABASE_URL; a file that gives
nothing stops the operator at start, naming the file, never the DSN)."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from makima.control.config import OperatorSettings

from .chart import SCENARIOS, env_of, of_kind, one, render, secret_file

FULLNAME = "demo-makima"
# The one Secret still passed in the environment, on purpose: the daemon runs agents as its own
# user in its own container, so a mounted file would stay readable to them, while its environment
# is hidden once it is non-dumpable (docs/operations.md, "The git token and the agent").
ENV_SECRETS_ALLOWED = {("Deployment", f"{FULLNAME}-daemon", "MAKIMA_DAEMON_TOKEN")}


def _containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    pod = doc.get("spec", {}).get("template", {}).get("spec", {})
    return [*pod.get("initContainers", []), *pod.get("containers", [])]


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_no_secret_reaches_a_pod_through_its_environment(name: str) -> None:
    found = set()
    for doc in render(SCENARIOS[name]):
        for container in _containers(doc):
            for var in container.get("env", []):
                if "secretKeyRef" in var.get("valueFrom", {}):
                    found.add((doc["kind"], doc["metadata"]["name"], var["name"]))
            assert not [e for e in container.get("envFrom", []) if "secretRef" in e], (name, doc["metadata"]["name"])
    assert found <= ENV_SECRETS_ALLOWED, found - ENV_SECRETS_ALLOWED


def test_the_operator_reads_the_dsn_from_the_mounted_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    docs = render({"postgresql": {"bundled": {"enabled": True}}})
    deploy = one(docs, "Deployment", FULLNAME)
    path = env_of(deploy["spec"]["template"]["spec"]["containers"][0])["MAKIMA_DATABASE_URL_FILE"]
    secret_name, key = secret_file(deploy, path)
    (secret,) = [s for s in of_kind(docs, "Secret") if s["metadata"]["name"] == secret_name]
    dsn = base64.b64decode(secret["data"][key]).decode()
    # What the kubelet writes at the mount: the key's bytes (a trailing newline is tolerated).
    mounted = tmp_path / "database-url"
    mounted.write_text(dsn + "\n")
    monkeypatch.setenv("MAKIMA_DATABASE_URL_FILE", str(mounted))
    monkeypatch.setenv("MAKIMA_DATABASE_URL", "postgresql://the-env-var-loses@elsewhere/db")
    settings = OperatorSettings()
    assert settings.database_url == dsn
    assert dsn not in repr(settings) and dsn.split("@")[0] not in str(settings)
    # Without the file, the plain variable still works (local use).
    monkeypatch.delenv("MAKIMA_DATABASE_URL_FILE")
    assert OperatorSettings().database_url == "postgresql://the-env-var-loses@elsewhere/db"


def test_the_postgresql_password_is_a_mounted_file_too() -> None:
    docs = render({"postgresql": {"bundled": {"enabled": True}}})
    sts = one(docs, "StatefulSet")
    env = env_of(sts["spec"]["template"]["spec"]["containers"][0])
    assert "POSTGRES_PASSWORD" not in env
    assert secret_file(sts, env["POSTGRES_PASSWORD_FILE"]) == (f"{FULLNAME}-postgresql", "password")


@pytest.mark.parametrize("problem", ["missing", "empty", "directory"])
def test_a_dsn_file_that_gives_nothing_stops_the_operator_at_start(problem: str, tmp_path: Path) -> None:
    from makima.cli.main import app

    path = tmp_path / "database-url"
    if problem == "empty":
        path.write_text("")
    elif problem == "directory":
        path.mkdir()
    env = {"MAKIMA_DATABASE_URL_FILE": str(path), "MAKIMA_DATABASE_URL": "postgresql://u:s3cret@db/makima"}
    result = CliRunner().invoke(app, ["operator"], env=env)
    assert result.exit_code == 2, result.output
    assert "MAKIMA_DATABASE_URL_FILE" in result.output and str(path) in result.output
    assert "s3cret" not in result.output
