"""Fixtures for the runner tests: real git, bare repositories in temp dirs as remotes."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from makima.core.protocol import AgentSettings, CompletionPlan, TaskSpec, WorkspacePlan
from makima.core.tasks import TaskKind

from .doubles import FakeOperatorApi, RecordingReporter

SCRIPTED = [sys.executable, "-m", "makima_testing.scripted"]


@pytest.fixture(autouse=True)
def git_identity(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """CI machines have no global git config: give the tests' own git calls an identity."""
    for var in ("AUTHOR", "COMMITTER"):
        monkeypatch.setenv(f"GIT_{var}_NAME", "test")
        monkeypatch.setenv(f"GIT_{var}_EMAIL", "test@localhost")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(tmp_path / "no-global-gitconfig"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for var in ("MAKIMA_GIT_TOKEN", "MAKIMA_GIT_USERNAME", "MAKIMA_API_URL", "MAKIMA_TASK_ID", "MAKIMA_TASK_TOKEN"):
        monkeypatch.delenv(var, raising=False)


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def files_on(remote: Path, branch: str) -> dict[str, str]:
    """path -> content of every file on `branch` of the bare repo."""
    names = git("ls-tree", "-r", "--name-only", branch, cwd=remote).splitlines()
    return {n: git("show", f"{branch}:{n}", cwd=remote) for n in names}


@pytest.fixture
def remote(tmp_path: Path) -> Path:
    """A bare repository with `main` holding README.md and shared.txt."""
    bare = tmp_path / "remote.git"
    git("init", "-q", "--bare", "-b", "main", str(bare), cwd=tmp_path)
    seed = tmp_path / "seed"
    git("clone", "-q", str(bare), str(seed), cwd=tmp_path)
    (seed / "README.md").write_text("# demo\n")
    (seed / "shared.txt").write_text("line 1\nline 2\nline 3\n")
    git("add", "-A", cwd=seed)
    git("commit", "-q", "-m", "initial", cwd=seed)
    git("push", "-q", "origin", "HEAD:main", cwd=seed)
    return bare


def scripted_agent(script: dict[str, Any], timeout: float = 60) -> AgentSettings:
    return AgentSettings(command=SCRIPTED, env={"MAKIMA_AGENT_SCRIPT": yaml.safe_dump(script)}, timeout_seconds=timeout)


def step_spec(
    remote: Path,
    step: str,
    agent: AgentSettings,
    *,
    start_from: str | None = None,
    merge: list[str] | None = None,
    attempt: int = 1,
) -> TaskSpec:
    return TaskSpec(
        task_id=f"task-{step}-{attempt}",
        kind=TaskKind.STEP,
        attempt=attempt,
        namespace="default",
        directive="demo",
        step=step,
        title=f"Do {step}",
        prompt=f"please do {step}",
        workspace=WorkspacePlan(
            repo_url=remote.as_uri(), start_from=start_from, merge=merge or [], branch=f"makima/step-{step}"
        ),
        agent=agent,
    )


def completion_spec(remote: Path, merge: list[str], agent: AgentSettings, generation: int = 1) -> TaskSpec:
    return TaskSpec(
        task_id=f"completion-{generation}",
        kind=TaskKind.COMPLETION,
        generation=generation,
        namespace="default",
        directive="demo",
        title="Complete demo",
        workspace=WorkspacePlan(repo_url=remote.as_uri()),
        completion=CompletionPlan(
            directive_branch="makima/demo", merge=merge, title="Demo directive", body=f"generation {generation}"
        ),
        agent=agent,
    )


@pytest.fixture
def reporter() -> RecordingReporter:
    return RecordingReporter()


@pytest.fixture
def fake_api() -> Iterator[FakeOperatorApi]:
    api = FakeOperatorApi().start()
    yield api
    api.stop()
