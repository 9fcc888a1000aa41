"""The daemon's probe files against the real API: the chart's exec probe commands (rendered by
Helm's engine) pass while the daemon is connected and fail once it is not; the token settings."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from makima.cli.daemon import take_daemon_token, write_health
from makima.dataplane.daemon import ENV_DAEMON_TOKEN, ENV_DAEMON_TOKEN_FILE, Daemon, DaemonConfig, task_env
from tests.ship.chart import one, render

from .conftest import DAEMON_TOKEN, NAMESPACE, Api, DaemonTokens


def _probes(health_dir: Path) -> dict[str, list[str]]:
    """The chart's liveness and readiness commands, pointed at `health_dir`."""
    docs = render({"daemon": {"enabled": True}})
    container = one(docs, "Deployment", "demo-makima-daemon")["spec"]["template"]["spec"]["containers"][0]
    (chart_dir,) = [a.split("=", 1)[1] for a in container["args"] if a.startswith("--health-dir=")]
    return {
        kind: [part.replace(chart_dir, str(health_dir)) for part in container[f"{kind}Probe"]["exec"]["command"]]
        for kind in ("liveness", "readiness")
    }


def _passes(command: list[str]) -> bool:
    return subprocess.run(command, capture_output=True, timeout=10).returncode == 0


async def _until(predicate: Callable[[], bool], timeout: float = 15.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await asyncio.to_thread(predicate):
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def test_the_probes_follow_the_daemon_connection(api: Api, tmp_path: Path) -> None:
    probes = _probes(tmp_path / "health")
    (tmp_path / "health").mkdir()
    assert not _passes(probes["liveness"]) and not _passes(probes["readiness"])  # nothing written yet
    config = DaemonConfig(
        api_url=api.url,
        namespace=NAMESPACE,
        name="probed",
        token=DAEMON_TOKEN,
        work_dir=tmp_path / "work",
        backoff_initial=0.05,
        backoff_max=0.2,
    )
    daemon = Daemon(config)
    job = asyncio.create_task(daemon.run())
    health = asyncio.create_task(write_health(daemon, tmp_path / "health", every=0.1))
    try:
        await _until(lambda: _passes(probes["readiness"]))
        assert _passes(probes["liveness"])
        # The operator refuses it from now on (its daemon token rotated): still live, not ready.
        tokens = api.deps.verify_daemon_token
        assert isinstance(tokens, DaemonTokens)
        tokens.tokens[NAMESPACE] = "rotated-daemon-token"
        assert daemon.daemon_id is not None and await api.hub.drop(daemon.daemon_id, "test: token rotated")
        await _until(lambda: not _passes(probes["readiness"]))
        assert _passes(probes["liveness"])
    finally:
        daemon.stop()
        await asyncio.wait_for(job, 10)
        health.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await health
    assert not (tmp_path / "health" / "connected").exists()


async def test_a_stale_alive_file_fails_the_liveness_probe(tmp_path: Path) -> None:
    probes = _probes(tmp_path)
    (tmp_path / "alive").touch()
    assert _passes(probes["liveness"])
    old = (tmp_path / "alive").stat().st_mtime - 61
    os.utime(tmp_path / "alive", (old, old))  # what a stuck event loop leaves behind
    assert not _passes(probes["liveness"])


def test_the_token_file_wins_and_both_variables_leave_the_environment(tmp_path: Path) -> None:
    secret = tmp_path / "token"
    secret.write_text("from-the-file-0123\n")
    environ = {ENV_DAEMON_TOKEN: "from-the-env", ENV_DAEMON_TOKEN_FILE: str(secret), "PATH": "/bin"}
    assert take_daemon_token(environ) == "from-the-file-0123"
    assert environ == {"PATH": "/bin"}
    environ = {ENV_DAEMON_TOKEN: "from-the-env"}
    assert take_daemon_token(environ) == "from-the-env" and environ == {}
    assert task_env({ENV_DAEMON_TOKEN_FILE: str(secret), "HOME": "/h"}) == {"HOME": "/h"}


@pytest.mark.parametrize("problem", ["missing", "empty", "directory"])
def test_a_token_file_that_gives_nothing_stops_the_daemon_at_start(
    problem: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from makima.cli.daemon import app

    path = tmp_path / "token"
    if problem == "empty":
        path.write_text("\n")
    elif problem == "directory":
        path.mkdir()
    monkeypatch.setenv(ENV_DAEMON_TOKEN, "env-token-never-shown")  # the file wins, even when it fails
    monkeypatch.setenv(ENV_DAEMON_TOKEN_FILE, str(path))
    result = CliRunner().invoke(app, ["run", "--api-url", "http://127.0.0.1:1", "--namespace", NAMESPACE])
    assert result.exit_code == 2, result.output
    assert f"{ENV_DAEMON_TOKEN_FILE}: " in result.output and str(path) in result.output
    assert "env-token-never-shown" not in result.output
