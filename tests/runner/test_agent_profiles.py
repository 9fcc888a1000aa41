"""Each agent profile end to end in the runner, driven by STAND-IN executables
(tests/runner/standin_agent.py: they print each CLI's documented structured output; they
are not the real CLIs): the prompt reaches the CLI the profile's way, the usage it reports
becomes a `usage` event and the task result's usage record; a missing CLI, a missing key
or root for a CLI that refuses it fail the task at once, naming the agent and what is missing."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from makima.core.agents import PROFILES, get_profile
from makima.core.protocol import AgentSettings, EventType, Outcome
from makima.dataplane.runner import agent as runner_agent
from makima.dataplane.runner.run import run_task

from .conftest import files_on, step_spec
from .doubles import RecordingReporter

STANDIN = Path(__file__).with_name("standin_agent.py")
CLIS = ["claude-code", "codex", "gemini", "opencode", "aider"]
ALL_KEYS = {k for p in PROFILES.values() for k in p.key_env}


def install_standin(bin_dir: Path, name: str) -> None:
    """Put the stand-in on PATH under the CLI's own name."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    exe = bin_dir / get_profile(name).binary
    exe.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{STANDIN}" {name} "$@"\n')
    exe.chmod(0o755)


def task_env(bin_dir: Path, *, key: str | None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ALL_KEYS}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    if key:
        env[key] = "sk-standin-not-a-real-key"
    env.update(extra)
    return env


@pytest.fixture
def non_root(monkeypatch: pytest.MonkeyPatch) -> None:
    """The suite may run as root (CI containers); Claude Code's profile refuses root, so the
    runner is told it runs as the image's user 10001, as it does in a pod."""
    monkeypatch.setattr(runner_agent.os, "geteuid", lambda: 10001)


@pytest.mark.parametrize("name", CLIS)
async def test_usage_of_each_cli_reaches_the_task_result(
    name: str, remote: Path, tmp_path: Path, non_root: None
) -> None:
    number = CLIS.index(name) + 1
    # aider prints counts over 1000 rounded ("2.1k"): keep its numbers exact
    given = {"input": 300 + 17 * number, "output": 40 + 3 * number, "cost": 0.0125 * number, "turns": 1 + number}
    bin_dir = tmp_path / "bin"
    install_standin(bin_dir, name)
    p = get_profile(name)
    env = task_env(
        bin_dir,
        key=p.key_env[0] if p.key_env else None,
        STANDIN_INPUT_TOKENS=str(given["input"]),
        STANDIN_OUTPUT_TOKENS=str(given["output"]),
        STANDIN_COST_USD=str(given["cost"]),
        STANDIN_TURNS=str(given["turns"]),
        STANDIN_MODEL=f"model-of-{name}",
    )
    reporter = RecordingReporter()
    spec = step_spec(remote, "s", AgentSettings.from_profile(name, timeout_seconds=60))
    result = await run_task(spec, reporter, tmp_path / "work", env=env, heartbeat_seconds=5)

    assert result.outcome == Outcome.SUCCEEDED, result.message
    assert files_on(remote, "makima/step-s")[f"{p.binary}.txt"] == "please do s", "the prompt reached the CLI"
    usage = result.usage
    assert usage is not None, reporter.dump()[-2000:]
    assert usage.agent == name
    assert (usage.input_tokens, usage.output_tokens) == (given["input"], given["output"])
    assert usage.turns == given["turns"]
    if name in ("codex", "gemini"):
        assert usage.cost_usd is None, f"{name} reports tokens, not cost"
    else:
        assert usage.cost_usd == pytest.approx(given["cost"], abs=1e-4)
    if name not in ("codex", "opencode"):  # these two do not name the model in their output
        assert usage.model == f"model-of-{name}"
    events = reporter.of(EventType.USAGE)
    assert len(events) == 1 and events[0]["inputTokens"] == given["input"] and events[0]["agent"] == name
    assert reporter.of(EventType.RESULT)[-1]["usage"]["input_tokens"] == given["input"]


@pytest.mark.parametrize("name", CLIS)
async def test_a_missing_cli_fails_at_once_naming_agent_and_command(
    name: str, remote: Path, tmp_path: Path, non_root: None
) -> None:
    p = get_profile(name)
    reporter = RecordingReporter()
    env = task_env(tmp_path / "empty-bin", key=p.key_env[0] if p.key_env else None)
    spec = step_spec(remote, "s", AgentSettings.from_profile(name, timeout_seconds=3600))
    result = await run_task(spec, reporter, tmp_path / "work", env=env, heartbeat_seconds=5)
    assert result.outcome == Outcome.FAILED
    assert f"agent {name}: its command '{p.binary}' is not installed" in result.message
    assert result.retryable is False, "another attempt in the same image would fail the same way"
    assert f"--target {p.image_target}" in result.message
    assert not [e for e in reporter.of(EventType.PROGRESS) if str(e.get("message", "")).startswith("agent started")]


@pytest.mark.parametrize("name", [n for n in CLIS if get_profile(n).key_env])
async def test_a_missing_key_fails_at_once_naming_agent_and_variable(
    name: str, remote: Path, tmp_path: Path, non_root: None
) -> None:
    p = get_profile(name)
    install_standin(tmp_path / "bin", name)
    reporter = RecordingReporter()
    spec = step_spec(remote, "s", AgentSettings.from_profile(name, timeout_seconds=3600))
    result = await run_task(spec, reporter, tmp_path / "work", env=task_env(tmp_path / "bin", key=None))
    assert result.outcome == Outcome.FAILED
    assert f"agent {name}: no model key: set {p.key_env[0]}" in result.message
    assert result.retryable is False
    assert "makima/step-s" not in {b for b in (result.branch,) if result.commit}, "nothing was pushed"


async def test_claude_code_as_root_fails_at_once(remote: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner_agent.os, "geteuid", lambda: 0)
    install_standin(tmp_path / "bin", "claude-code")
    reporter = RecordingReporter()
    spec = step_spec(remote, "s", AgentSettings.from_profile("claude-code", timeout_seconds=3600))
    env = task_env(tmp_path / "bin", key="ANTHROPIC_API_KEY")
    result = await run_task(spec, reporter, tmp_path / "work", env=env, heartbeat_seconds=5)
    assert result.outcome == Outcome.FAILED
    assert "agent claude-code: refuses to run as root" in result.message
    assert "--dangerously-skip-permissions" in result.message
