"""The agent profiles as data, and the pure pieces around them: which profile and command a
Directive gets, the image of its pod, the pre-start checks, the usage parsers' edge cases."""

from __future__ import annotations

import re

import pytest

from makima.control.dispatch import AgentDefaults, agent_settings
from makima.control.executors.jobs import JobDefaults, agent_image
from makima.core import agents
from makima.core.agents import PROFILES, Requirements, Usage, UsageCollector, get_profile, preflight
from makima.core.models import Agent


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_each_profile_is_complete_and_consistent(name: str) -> None:
    p = get_profile(name)
    for flag in (*p.auto_approve, *p.structured_output):
        assert flag in p.command, f"{name}: {flag} is listed but not in the command"
    if name == "scripted":
        return
    assert p.package is not None and re.fullmatch(r"\d+\.\d+\.\d+", p.package.version), "pinned exactly"
    assert p.image_target == f"agent-{p.package.binary}"
    assert p.usage_format is not None
    assert p.auto_approve, f"{name} runs unattended"
    assert agents.prompt_on_stdin(p.command) == (p.prompt_via == "stdin")


def test_the_profile_and_command_a_directive_gets() -> None:
    defaults = AgentDefaults()
    plain = agent_settings(Agent(), defaults, 60)
    assert plain.profile == "claude-code" and plain.command[0] == "claude"
    assert plain.key_env == ["ANTHROPIC_API_KEY", "CLAUDE_CODE_OAUTH_TOKEN"] and plain.timeout_seconds == 60

    codex = agent_settings(Agent(profile="codex", env=[{"name": "X", "value": "1"}]), defaults, 60)
    assert codex.command[:2] == ["codex", "exec"] and codex.env["X"] == "1" and codex.usage_format == "codex-jsonl"

    tuned = agent_settings(Agent(profile="codex", command=["codex", "exec", "--json", "-"]), defaults, 60)
    assert tuned.command == ["codex", "exec", "--json", "-"] and tuned.key_env, "the profile's checks stay"

    custom = agent_settings(Agent(command=["my-agent"]), defaults, 60)
    assert custom.profile == "custom" and custom.key_env == [] and custom.usage_format is None

    operator_default = AgentDefaults(profile="gemini", command=["gemini", "--yolo"])
    assert agent_settings(Agent(), operator_default, 60).command == ["gemini", "--yolo"]
    assert agent_settings(Agent(profile="aider"), operator_default, 60).command[0] == "aider", (
        "the operator's command belongs to its default profile only"
    )


def test_the_image_of_a_task_pod() -> None:
    d = JobDefaults(image="reg/m:1-agent-claude", api_url="http://x", images={"codex": "reg/m:1-agent-codex"})
    assert agent_image(Agent(), d) == "reg/m:1-agent-claude"
    assert agent_image(Agent(profile="codex"), d) == "reg/m:1-agent-codex"
    assert agent_image(Agent(profile="gemini"), d) == "reg/m:1-agent-claude", "no image for it: the default"
    assert agent_image(Agent(profile="codex", image="mine:2"), d) == "mine:2"


def test_preflight_names_the_agent_and_the_first_missing_thing() -> None:
    req = Requirements(
        name="claude-code",
        command=("claude", "-p"),
        key_env=("ANTHROPIC_API_KEY", "CLAUDE_CODE_OAUTH_TOKEN"),
        refuses_root="no root",
        image_target="agent-claude",
        package="@anthropic-ai/claude-code@2.1.332",
    )

    def which(name: str, path: str | None = None) -> str | None:
        return f"/bin/{name}" if path == "has-it" else None

    missing = preflight(req, {"PATH": "nothing"}, which=which, euid=10001)
    assert missing is not None and "agent claude-code: its command 'claude' is not installed" in missing
    assert "--target agent-claude" in missing and "@anthropic-ai/claude-code@2.1.332" in missing
    no_key = preflight(req, {"PATH": "has-it", "ANTHROPIC_API_KEY": ""}, which=which, euid=10001)
    assert no_key is not None and "no model key: set ANTHROPIC_API_KEY or CLAUDE_CODE_OAUTH_TOKEN" in no_key
    assert preflight(req, {"PATH": "has-it", "CLAUDE_CODE_OAUTH_TOKEN": "t"}, which=which, euid=10001) is None
    root = preflight(req, {"PATH": "has-it", "ANTHROPIC_API_KEY": "k"}, which=which, euid=0)
    assert root is not None and "refuses to run as root (no root)" in root


def test_prompt_placeholders() -> None:
    cmd = ["aider", "--message-file", "{prompt_file}", "--x={prompt}"]
    assert agents.render_command(cmd, "hi", "/tmp/p") == ["aider", "--message-file", "/tmp/p", "--x=hi"]
    with pytest.raises(ValueError, match="prompt_file"):
        agents.render_command(cmd, "hi", None)


def test_usage_parsers_ignore_noise_and_read_aider_counts() -> None:
    aider = UsageCollector("aider", "aider-text")
    for line in ["Model: gpt-4o with diff edit format", "Tokens: 2.1k sent, 150 received.", "noise"]:
        aider.line(line)
    aider.line("Tokens: 12k sent, 1,234 received. Cost: $0.05 message, $0.0712 session.")
    got = aider.usage()
    assert got is not None and (got.input_tokens, got.output_tokens) == (2100 + 12_000, 150 + 1234)
    assert got.cost_usd == 0.0712 and got.turns == 2 and got.model == "gpt-4o"

    claude = UsageCollector("claude-code", "claude-stream-json")
    for line in ["not json", "{broken", '{"type": "assistant"}', '["a list"]']:
        claude.line(line)
    assert claude.usage() is None, "nothing reported, no usage"
    claude.line('{"type":"result","usage":{"input_tokens":"many"},"total_cost_usd":0.5,"num_turns":3}')
    odd = claude.usage()
    assert odd is not None and odd.input_tokens == 0 and odd.cost_usd == 0.5, "bad counts read as 0"


def test_usage_sums() -> None:
    a = Usage(agent="codex", model="m1", input_tokens=1, output_tokens=2)
    b = Usage(agent="codex", model="m2", input_tokens=10, output_tokens=20, cost_usd=0.5, turns=2)
    total = agents.total_usage([a, b])
    assert total is not None
    assert (total.agent, total.model, total.input_tokens, total.output_tokens) == ("codex", "mixed", 11, 22)
    assert total.cost_usd == 0.5 and total.turns == 2 and total.total_tokens == 33
    assert agents.total_usage([]) is None
