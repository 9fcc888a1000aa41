"""The REAL agent CLIs from npm (cached under ~/.cache/makima/agents/<profile>): each profile's
invocation gets past the CLI's own argument parser, and a run without a model key ends in
the CLI's own error, surfaced as a clear step failure.

They run only with MAKIMA_AGENT_CLIS=1 (skipped otherwise, saying so): starting four node
CLIs takes a minute or more on a busy machine, too much for the default suite. The CLIs are
installed once (`npm install` of the pinned package into the cache) and reused. Aider (PyPI,
~100 dependencies) is not part
of the fixture. No network is assumed: where a CLI without a key goes to the network
instead of failing on auth (Codex, OpenCode), the test checks what it can without one.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from makima.core.agents import PROFILES, get_profile
from makima.core.protocol import AgentSettings, Outcome
from makima.dataplane.runner.run import run_task

from .conftest import step_spec
from .doubles import RecordingReporter

CACHE = Path(os.environ.get("MAKIMA_AGENT_CACHE", Path.home() / ".cache" / "makima" / "agents"))
INSTALL = os.environ.get("MAKIMA_AGENT_CLIS") == "1"
ALL_KEYS = {k for p in PROFILES.values() for k in p.key_env}
# How each parser says no: clap (codex), commander (claude), yargs (gemini; opencode prints its help)
USAGE_ERRORS = ("unexpected argument", "Unknown argument", "unknown option", "run opencode with a message")


def real_cli(name: str) -> Path:
    p = get_profile(name)
    assert p.package is not None and p.package.registry == "npm"
    home = CACHE / name
    exe = home / "node_modules" / ".bin" / p.binary
    stamp = home / "installed-version"
    if not INSTALL:
        pytest.skip(f"real {p.package.spec}: set MAKIMA_AGENT_CLIS=1 to run it (installed once into {home})")
    if exe.exists() and stamp.exists() and stamp.read_text().strip() == p.package.spec:
        return exe
    if shutil.which("npm") is None:
        pytest.skip("npm is not installed here")
    home.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["npm", "install", "--no-audit", "--no-fund", "--loglevel=error", "--prefix", str(home), p.package.spec],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if done.returncode != 0 or not exe.exists():
        pytest.skip(f"npm could not install {p.package.spec}: {done.stderr.strip()[-500:]}")
    stamp.write_text(p.package.spec + "\n")
    return exe


def env_without_keys(exe: Path, tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ALL_KEYS}
    env["PATH"] = f"{exe.parent}{os.pathsep}{env.get('PATH', '')}"
    env["HOME"] = str(tmp_path / "home")  # no login state of whoever runs the tests
    (tmp_path / "home").mkdir(exist_ok=True)
    env.update(extra)
    return env


async def run_real(name: str, remote: Path, tmp_path: Path, env: dict[str, str], *, timeout: float, extra: list[str]):  # type: ignore[no-untyped-def]
    """The profile as the operator sends it, minus the key check (the CLI's own check is the point)."""
    settings = AgentSettings.from_profile(name, timeout_seconds=timeout)
    settings = settings.model_copy(update={"key_env": [], "command": [*settings.command, *extra]})
    if get_profile(name).refuses_root and os.geteuid() == 0:
        # The suite runs as root here; pods do not. Claude Code lets root pass in a sandbox it is told of.
        settings = settings.model_copy(update={"refuses_root": None, "env": {**settings.env, "IS_SANDBOX": "1"}})
    reporter = RecordingReporter()
    result = await run_task(step_spec(remote, "s", settings), reporter, tmp_path / "work", env=env, heartbeat_seconds=5)
    return result, "\n".join(reporter.output_lines())


@pytest.mark.parametrize("name", ["claude-code", "gemini", "codex", "opencode"])
async def test_the_real_parser_refuses_a_bogus_flag_but_accepts_the_profile(
    name: str, remote: Path, tmp_path: Path
) -> None:
    exe = real_cli(name)
    env = env_without_keys(exe, tmp_path)
    bad, bad_out = await run_real(name, remote, tmp_path / "bad", env, timeout=60, extra=["--makima-no-such-flag"])
    assert bad.outcome == Outcome.FAILED
    assert any(e in bad_out or e in bad.message for e in USAGE_ERRORS), (bad.message, bad_out[-1500:])
    good, good_out = await run_real(name, remote, tmp_path / "good", env, timeout=20, extra=[])
    assert not any(e in good_out or e in good.message for e in USAGE_ERRORS), good_out[-1500:]


async def test_claude_code_without_a_key_fails_the_step_with_its_login_error(remote: Path, tmp_path: Path) -> None:
    exe = real_cli("claude-code")
    result, _out = await run_real(
        "claude-code", remote, tmp_path, env_without_keys(exe, tmp_path), timeout=60, extra=[]
    )
    assert result.outcome == Outcome.FAILED
    assert "step failed: agent exited with code 1" in result.message
    assert "Not logged in" in result.message, "the CLI's own words end the step's message"


async def test_gemini_without_a_key_fails_the_step_with_its_auth_error(remote: Path, tmp_path: Path) -> None:
    exe = real_cli("gemini")
    result, out = await run_real("gemini", remote, tmp_path, env_without_keys(exe, tmp_path), timeout=60, extra=[])
    assert result.outcome == Outcome.FAILED
    assert "step failed: agent exited with code" in result.message
    assert "GEMINI_API_KEY" in result.message, result.message
    assert "not trusted" not in out, "GEMINI_CLI_TRUST_WORKSPACE keeps --yolo in force in a fresh clone"
