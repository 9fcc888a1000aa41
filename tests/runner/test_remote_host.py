"""A git server without a pull-request API (a real `git daemon` on localhost): steps and the
completion work over git://, and the pull request is recorded in the server's own refs."""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from makima.core.protocol import Outcome, TaskSpec
from makima.dataplane.runner.hosts import RemoteRefsHost, host_for
from makima.dataplane.runner.run import run_task
from tests.support.wait import eventually_sync

from .conftest import completion_spec, files_on, git, scripted_agent, step_spec
from .doubles import RecordingReporter

SCRIPT = {"steps": {"a": {"files": {"a.txt": "from a\n"}}, "b": {"files": {"b.txt": "from b\n"}}}}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def served(remote: Path) -> Iterator[str]:
    """`remote` served read-write by git daemon; yields its git:// URL."""
    port = _free_port()
    proc = subprocess.Popen(
        [
            "git", "daemon", "--reuseaddr", "--export-all", "--enable=receive-pack",
            f"--base-path={remote.parent}", "--listen=127.0.0.1", f"--port={port}", str(remote.parent),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:

        def listening() -> bool:
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", port)) == 0

        eventually_sync(listening, "git daemon listening", 30)
        yield f"git://127.0.0.1:{port}/{remote.name}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _at(spec: TaskSpec, url: str) -> TaskSpec:
    return spec.model_copy(update={"workspace": spec.workspace.model_copy(update={"repo_url": url})})


async def test_completion_over_git_protocol_records_the_pull_request_in_the_server(
    remote: Path, served: str, tmp_path: Path, reporter: RecordingReporter
) -> None:
    for step in ("a", "b"):
        spec = _at(step_spec(remote, step, scripted_agent(SCRIPT)), served)
        result = await run_task(spec, reporter, tmp_path / f"work-{step}", heartbeat_seconds=0.2)
        assert result.outcome == Outcome.SUCCEEDED, result.message

    first = _at(completion_spec(remote, ["makima/step-a"], scripted_agent(SCRIPT)), served)
    result = await run_task(first, reporter, tmp_path / "work-c1", heartbeat_seconds=0.2)
    assert result.outcome == Outcome.SUCCEEDED, result.message
    assert result.pull_request_url == f"{served}#pull/1"
    meta = json.loads(git("cat-file", "blob", "refs/makima/pulls/1/meta", cwd=remote))
    assert meta["head"] == "makima/demo" and meta["base"] == "main" and meta["number"] == 1
    assert git("rev-parse", "refs/makima/pulls/1/head", cwd=remote) == git("rev-parse", "makima/demo", cwd=remote)

    # Re-completion with a new step updates the same pull request in the server.
    second = _at(completion_spec(remote, ["makima/step-a", "makima/step-b"], scripted_agent(SCRIPT), 2), served)
    result = await run_task(second, reporter, tmp_path / "work-c2", heartbeat_seconds=0.2)
    assert result.outcome == Outcome.SUCCEEDED, result.message
    assert result.pull_request_url == f"{served}#pull/1"
    assert git("for-each-ref", "--format=%(refname)", "refs/makima/pulls", cwd=remote).splitlines() == [
        "refs/makima/pulls/1/head",
        "refs/makima/pulls/1/meta",
    ]
    assert git("rev-parse", "refs/makima/pulls/1/head", cwd=remote) == git("rev-parse", "makima/demo", cwd=remote)
    assert {"a.txt", "b.txt"} <= set(files_on(remote, "makima/demo"))


def test_plain_git_servers_get_the_refs_host_only_with_a_git_and_scratch(tmp_path: Path) -> None:
    from makima.dataplane.runner.git import Git

    url = "https://git.example.com/team/app.git"
    host = host_for(url, env={}, git=Git(cwd=tmp_path), scratch=tmp_path / "pulls.git")
    assert isinstance(host, RemoteRefsHost)
    assert host.url(3) == "https://git.example.com/team/app.git#pull/3"
    assert isinstance(host_for("git@git.example.com:team/app.git", env={}, git=Git(cwd=tmp_path),
                               scratch=tmp_path / "p2"), RemoteRefsHost)  # fmt: skip
