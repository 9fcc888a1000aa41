"""`makima daemon` sub-commands (typer), the token Secret written to the sandbox cluster."""

from __future__ import annotations

import base64

import pytest
import typer
from typer.testing import CliRunner

from makima.cli.daemon import DAEMON_TOKEN_SECRET, app, parse_labels

runner = CliRunner()


def test_token_create_prints_a_fresh_token() -> None:
    first = runner.invoke(app, ["token", "create", "--namespace", "team-a"])
    second = runner.invoke(app, ["token", "create", "--namespace", "team-a"])
    assert first.exit_code == 0 and second.exit_code == 0
    assert len(first.stdout.strip()) >= 40 and first.stdout != second.stdout


def test_token_create_writes_and_rotates_the_secret(sandbox: object, sandbox_namespace_in: str) -> None:
    kubeconfig = str(sandbox.kubeconfig)  # type: ignore[attr-defined]
    tokens = []
    for _ in range(2):  # create, then update in place
        result = runner.invoke(
            app, ["token", "create", "--namespace", sandbox_namespace_in, "--kubeconfig", kubeconfig]
        )
        assert result.exit_code == 0, result.output
        tokens.append(result.stdout.strip().splitlines()[-1])
    secret = sandbox.get("v1", "Secret", DAEMON_TOKEN_SECRET, sandbox_namespace_in)  # type: ignore[attr-defined]
    stored = secret.get("stringData", {}).get("token") or base64.b64decode(secret["data"]["token"]).decode()
    assert stored == tokens[1] != tokens[0]


@pytest.fixture
def sandbox_namespace_in(sandbox: object) -> str:
    name = "team-a"
    sandbox.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})  # type: ignore[attr-defined]
    return name


def test_labels_parse_and_bad_labels_are_usage_errors() -> None:
    assert parse_labels(["gpu=yes", "zone = eu ", "empty="]) == {"gpu": "yes", "zone": "eu", "empty": ""}
    with pytest.raises(typer.BadParameter):
        parse_labels(["novalue"])


def test_run_needs_the_daemon_token_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MAKIMA_DAEMON_TOKEN", raising=False)
    result = runner.invoke(app, ["run", "--api-url", "http://127.0.0.1:1", "--namespace", "team-a"])
    assert result.exit_code == 2
    assert "MAKIMA_DAEMON_TOKEN" in result.output
