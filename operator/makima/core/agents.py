"""Coding-agent profiles, as data: how each CLI runs unattended, and what it reports.

A profile says, for one CLI: the package that provides it (registry, name, pinned version)
and the image target that contains it; the non-interactive command, where its flags come
from (auto-approve, structured output) and how the prompt reaches it (stdin, or a file
or argument through the `{prompt_file}` / `{prompt}` placeholders); which environment
variable carries the model key (any one of `key_env`); what it refuses (Claude Code's
skip-permissions flag as root); and the format of its structured output, which
`UsageCollector` turns into a usage record (tokens in and out, cost where the CLI reports
it, turns, model).

Nothing here runs anything: the operator copies a profile into the task's
`AgentSettings`, and the runner checks it (`preflight`) before starting the CLI and feeds
its output lines to a `UsageCollector`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

PROMPT = "{prompt}"
PROMPT_FILE = "{prompt_file}"


class ProfileName(StrEnum):
    CLAUDE_CODE = "claude-code"
    CODEX = "codex"
    GEMINI = "gemini"
    OPENCODE = "opencode"
    AIDER = "aider"
    SCRIPTED = "scripted"


class UsageFormat(StrEnum):
    """How a CLI's structured output reads; one parser each in `UsageCollector`."""

    CLAUDE_STREAM_JSON = "claude-stream-json"  # claude -p --output-format stream-json --verbose
    CODEX_JSONL = "codex-jsonl"  # codex exec --json
    GEMINI_STREAM_JSON = "gemini-stream-json"  # gemini --output-format stream-json
    OPENCODE_JSON = "opencode-json"  # opencode run --format json
    AIDER_TEXT = "aider-text"  # aider's "Tokens: … Cost: …" lines (it has no JSON output)


@dataclass(frozen=True)
class Package:
    registry: str  # "npm" | "pypi"
    name: str
    version: str
    binary: str

    @property
    def spec(self) -> str:
        return f"{self.name}@{self.version}" if self.registry == "npm" else f"{self.name}=={self.version}"


@dataclass(frozen=True)
class Profile:
    name: ProfileName
    description: str
    command: tuple[str, ...]
    auto_approve: tuple[str, ...] = ()  # already part of `command`; listed for docs and tests
    structured_output: tuple[str, ...] = ()  # idem
    prompt_via: str = "stdin"  # stdin | file | argument
    key_env: tuple[str, ...] = ()  # any one of them must be set (empty = no key needed)
    env: Mapping[str, str] = field(default_factory=dict)
    package: Package | None = None
    image_target: str | None = None  # Dockerfile target whose image contains the CLI
    refuses_root: str | None = None  # why it will not run as root, if it will not
    usage_format: UsageFormat | None = None
    notes: str = ""

    @property
    def binary(self) -> str:
        return self.command[0]


CLAUDE_CODE: Final = Profile(
    name=ProfileName.CLAUDE_CODE,
    description="Anthropic's Claude Code CLI in print mode",
    command=(
        "claude",
        "-p",
        "--dangerously-skip-permissions",
        "--output-format",
        "stream-json",
        "--verbose",
    ),
    auto_approve=("--dangerously-skip-permissions",),
    structured_output=("--output-format", "stream-json", "--verbose"),
    key_env=("ANTHROPIC_API_KEY", "CLAUDE_CODE_OAUTH_TOKEN"),
    env={"CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_AUTOUPDATER": "1"},
    package=Package("npm", "@anthropic-ai/claude-code", "2.1.332", "claude"),
    image_target="agent-claude",
    refuses_root="--dangerously-skip-permissions cannot be used with root/sudo privileges",
    usage_format=UsageFormat.CLAUDE_STREAM_JSON,
    notes="Prompt on stdin; stream-json needs --verbose in print mode.",
)
CODEX: Final = Profile(
    name=ProfileName.CODEX,
    description="OpenAI's Codex CLI, `codex exec`",
    command=("codex", "exec", "--dangerously-bypass-approvals-and-sandbox", "--json", "-"),
    auto_approve=("--dangerously-bypass-approvals-and-sandbox",),
    structured_output=("--json",),
    key_env=("OPENAI_API_KEY", "CODEX_API_KEY"),
    package=Package("npm", "@openai/codex", "0.171.0", "codex"),
    image_target="agent-codex",
    usage_format=UsageFormat.CODEX_JSONL,
    notes=(
        "`-` reads the prompt from stdin. The pod is the sandbox, so Codex's own one (Landlock, "
        "unavailable in most containers) is bypassed. Refuses to run outside a git repository "
        "(the workspace always is one). Reports tokens, not cost."
    ),
)
GEMINI: Final = Profile(
    name=ProfileName.GEMINI,
    description="Google's Gemini CLI, non-interactive",
    command=("gemini", "--yolo", "--output-format", "stream-json"),
    auto_approve=("--yolo",),
    structured_output=("--output-format", "stream-json"),
    key_env=("GEMINI_API_KEY", "GOOGLE_GENAI_USE_VERTEXAI", "GOOGLE_GENAI_USE_GCA"),
    # Without it an untrusted folder (every fresh clone) turns --yolo back into asking.
    env={"GEMINI_CLI_TRUST_WORKSPACE": "true"},
    package=Package("npm", "@google/gemini-cli", "0.61.0", "gemini"),
    image_target="agent-gemini",
    usage_format=UsageFormat.GEMINI_STREAM_JSON,
    notes=(
        "A prompt on stdin (not a terminal) makes it non-interactive. In an untrusted folder it "
        "overrides --yolo back to asking, hence GEMINI_CLI_TRUST_WORKSPACE. Reports tokens, not cost."
    ),
)
OPENCODE: Final = Profile(
    name=ProfileName.OPENCODE,
    description="OpenCode, `opencode run`",
    command=("opencode", "run", "--auto", "--format", "json"),
    auto_approve=("--auto",),
    structured_output=("--format", "json"),
    # No key required: without one it uses OpenCode's own hosted models; with a provider's
    # key variable (ANTHROPIC_API_KEY, OPENAI_API_KEY, …) and `--model provider/model`, that provider.
    env={"OPENCODE_PERMISSION": '{"edit":"allow","bash":"allow","webfetch":"allow"}'},
    package=Package("npm", "opencode-ai", "1.18.33", "opencode"),
    image_target="agent-opencode",
    usage_format=UsageFormat.OPENCODE_JSON,
    notes=(
        "Piped stdin is the message. `--auto` approves what is not denied, and OPENCODE_PERMISSION allows "
        "edits, shell and web fetches. "
        "Needs no key of its own (it falls back to OpenCode's hosted models)."
    ),
)
AIDER: Final = Profile(
    name=ProfileName.AIDER,
    description="Aider, one message then exit",
    command=(
        "aider",
        "--yes-always",
        "--no-pretty",
        "--no-stream",
        "--no-check-update",
        "--no-show-release-notes",
        "--no-gitignore",
        "--analytics-disable",
        "--message-file",
        PROMPT_FILE,
    ),
    auto_approve=("--yes-always",),
    prompt_via="file",
    key_env=("ANTHROPIC_API_KEY", "OPENAI_API_KEY", "GEMINI_API_KEY", "OPENROUTER_API_KEY", "DEEPSEEK_API_KEY"),
    package=Package("pypi", "aider-chat", "0.86.2", "aider"),
    image_target="agent-aider",
    usage_format=UsageFormat.AIDER_TEXT,
    notes="No JSON output: usage is read from its `Tokens: … Cost: …` lines. It commits as it goes.",
)
SCRIPTED: Final = Profile(
    name=ProfileName.SCRIPTED,
    description="makima's deterministic agent for tests and demos",
    command=("makima", "agent", "scripted"),
)

PROFILES: Final[dict[str, Profile]] = {p.name.value: p for p in (CLAUDE_CODE, CODEX, GEMINI, OPENCODE, AIDER, SCRIPTED)}
DEFAULT_PROFILE: Final = ProfileName.CLAUDE_CODE.value
CUSTOM = "custom"  # a command given without a profile: no key check, no usage parsing


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown agent profile {name!r}; known: {', '.join(sorted(PROFILES))}") from None


# ---- checks before the CLI starts ----------------------------------------------------------


@dataclass(frozen=True)
class Requirements:
    """What the runner checks before starting an agent (a slice of `AgentSettings`)."""

    name: str
    command: tuple[str, ...]
    key_env: tuple[str, ...] = ()
    refuses_root: str | None = None
    image_target: str | None = None
    package: str | None = None


def preflight(req: Requirements, env: Mapping[str, str], *, which: Any, euid: int) -> str | None:
    """Why this agent cannot start here, naming the agent and the missing thing; None if it can.

    `which(name, path=...)` finds an executable (shutil.which); `euid` is the runner's user id.
    """
    binary = req.command[0]
    if which(binary, path=env.get("PATH")) is None:
        fix = ""
        if req.image_target:
            fix = f"; use the agent image built with `--target {req.image_target}`"
        if req.package:
            fix += f" (it installs {req.package})"
        return f"agent {req.name}: its command {binary!r} is not installed (not found on PATH){fix}"
    if req.key_env and not any(env.get(k) for k in req.key_env):
        names = " or ".join(req.key_env)
        return (
            f"agent {req.name}: no model key: set {names} "
            "(the Agent's secretRef, with its Secret in the directive's namespace; spec.agent.env with a "
            "secretKeyRef; or the daemon's environment)"
        )
    if req.refuses_root and euid == 0:
        return f"agent {req.name}: refuses to run as root ({req.refuses_root}); run tasks as a non-root user"
    return None


def render_command(command: list[str] | tuple[str, ...], prompt: str, prompt_file: str | None) -> list[str]:
    """The argv with `{prompt}` / `{prompt_file}` filled in."""
    out = []
    for arg in command:
        if PROMPT_FILE in arg:
            if prompt_file is None:
                raise ValueError("the command needs {prompt_file} but no file was written")
            arg = arg.replace(PROMPT_FILE, prompt_file)
        out.append(arg.replace(PROMPT, prompt))
    return out


def prompt_on_stdin(command: list[str] | tuple[str, ...]) -> bool:
    return not any(PROMPT in a or PROMPT_FILE in a for a in command)


def needs_prompt_file(command: list[str] | tuple[str, ...]) -> bool:
    return any(PROMPT_FILE in a for a in command)


# ---- usage ---------------------------------------------------------------------------------


class Usage(BaseModel):
    """What one agent run (or a sum of them) used. Wire form is camelCase."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    agent: str | None = Field(default=None, max_length=64)
    model: str | None = Field(default=None, max_length=256)
    input_tokens: int = Field(default=0, ge=0)
    output_tokens: int = Field(default=0, ge=0)
    cost_usd: float | None = Field(default=None, ge=0)
    turns: int | None = Field(default=None, ge=0)

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def __add__(self, other: Usage) -> Usage:
        def both(a: Any, b: Any) -> Any:
            if a is None:
                return b
            if b is None:
                return a
            return a + b

        return Usage(
            agent=_same(self.agent, other.agent),
            model=_same(self.model, other.model),
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            cost_usd=both(self.cost_usd, other.cost_usd),
            turns=both(self.turns, other.turns),
        )

    def wire(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


def _same(a: str | None, b: str | None) -> str | None:
    """One name for a sum: the shared one, the only one, or "mixed"."""
    if a is None or a == b:
        return b
    return a if b is None else "mixed"


def _int(value: Any) -> int:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0 else 0


_AIDER_TOKENS = re.compile(r"Tokens:\s*([\d.,]+[kKmM]?)\s+sent,.*?([\d.,]+[kKmM]?)\s+received", re.IGNORECASE)
_AIDER_COST = re.compile(r"Cost:\s*\$([\d.,]+)\s+message,\s*\$([\d.,]+)\s+session", re.IGNORECASE)
_AIDER_MODEL = re.compile(r"^(?:Main )?model:\s*(\S+)", re.IGNORECASE)


def _aider_count(text: str) -> int:
    text = text.replace(",", "")
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1:].lower(), 1)
    number = text[:-1] if scale != 1 else text
    try:
        return round(float(number) * scale)
    except ValueError:
        return 0


class UsageCollector:
    """Fed the agent's stdout lines one by one; `usage()` is what they reported, or None."""

    def __init__(self, agent: str, fmt: UsageFormat | str | None) -> None:
        self.agent = agent
        self.format = UsageFormat(fmt) if fmt else None
        self.model: str | None = None
        self.input_tokens = 0
        self.output_tokens = 0
        self.cost_usd: float | None = None
        self.turns: int | None = None
        self.seen = False

    def line(self, text: str) -> None:
        if self.format is None:
            return
        if self.format is UsageFormat.AIDER_TEXT:
            self._aider(text)
            return
        text = text.strip()
        if not text.startswith("{"):
            return
        try:
            obj = json.loads(text)
        except ValueError:
            return
        if isinstance(obj, dict):
            {
                UsageFormat.CLAUDE_STREAM_JSON: self._claude,
                UsageFormat.CODEX_JSONL: self._codex,
                UsageFormat.GEMINI_STREAM_JSON: self._gemini,
                UsageFormat.OPENCODE_JSON: self._opencode,
            }[self.format](obj)

    def usage(self) -> Usage | None:
        if not self.seen:
            return None
        return Usage(
            agent=self.agent,
            model=self.model,
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            cost_usd=round(self.cost_usd, 6) if self.cost_usd is not None else None,
            turns=self.turns,
        )

    # Claude Code: {"type":"system","subtype":"init","model":…} first, one
    # {"type":"result", "usage":{input_tokens, cache_creation_input_tokens,
    # cache_read_input_tokens, output_tokens}, "total_cost_usd", "num_turns"} last.
    def _claude(self, obj: dict[str, Any]) -> None:
        if obj.get("type") == "system" and obj.get("subtype") == "init" and isinstance(obj.get("model"), str):
            self.model = obj["model"]
        if obj.get("type") != "result":
            return
        usage = obj.get("usage") or {}
        self.seen = True
        self.input_tokens = sum(
            _int(usage.get(k)) for k in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
        )
        self.output_tokens = _int(usage.get("output_tokens"))
        cost = obj.get("total_cost_usd")
        if isinstance(cost, int | float):
            self.cost_usd = float(cost)
        if isinstance(obj.get("num_turns"), int):
            self.turns = obj["num_turns"]
        models = obj.get("modelUsage")
        if self.model is None and isinstance(models, dict) and models:
            self.model = next(iter(models))

    # Codex: one {"type":"turn.completed","usage":{input_tokens, cached_input_tokens,
    # output_tokens}} per turn (cached tokens are part of input_tokens).
    def _codex(self, obj: dict[str, Any]) -> None:
        if obj.get("type") != "turn.completed":
            return
        usage = obj.get("usage") or {}
        self.seen = True
        self.input_tokens += _int(usage.get("input_tokens"))
        self.output_tokens += _int(usage.get("output_tokens"))
        self.turns = (self.turns or 0) + 1

    # Gemini: {"type":"init","model":…} first, {"type":"result","stats":{input_tokens,
    # output_tokens, total_tokens, tool_calls, duration_ms}} last.
    def _gemini(self, obj: dict[str, Any]) -> None:
        if obj.get("type") == "init" and isinstance(obj.get("model"), str):
            self.model = obj["model"]
        if obj.get("type") != "result":
            return
        stats = obj.get("stats") or {}
        self.seen = True
        self.input_tokens = _int(stats.get("input_tokens"))
        self.output_tokens = _int(stats.get("output_tokens"))
        if isinstance(stats.get("tool_calls"), int):
            self.turns = stats["tool_calls"] + 1
        models = stats.get("models")
        if self.model is None and isinstance(models, dict) and models:
            self.model = next(iter(models))

    # OpenCode: one {"type":"step_finish","part":{"tokens":{input, output, reasoning,
    # cache:{read, write}}, "cost"}} per model step.
    def _opencode(self, obj: dict[str, Any]) -> None:
        if obj.get("type") != "step_finish":
            return
        part = obj.get("part") or {}
        tokens = part.get("tokens") or {}
        cache = tokens.get("cache") or {}
        self.seen = True
        self.input_tokens += _int(tokens.get("input")) + _int(cache.get("read")) + _int(cache.get("write"))
        self.output_tokens += _int(tokens.get("output")) + _int(tokens.get("reasoning"))
        cost = part.get("cost")
        if isinstance(cost, int | float):
            self.cost_usd = (self.cost_usd or 0.0) + float(cost)
        self.turns = (self.turns or 0) + 1

    # Aider: "Model: <name> with <format> edit format" at start, then per message
    # "Tokens: 2.1k sent, 150 received. Cost: $0.0083 message, $0.0123 session."
    def _aider(self, text: str) -> None:
        model = _AIDER_MODEL.match(text.strip())
        if model and self.model is None:
            self.model = model.group(1)
        tokens = _AIDER_TOKENS.search(text)
        if tokens:
            self.seen = True
            self.input_tokens += _aider_count(tokens.group(1))
            self.output_tokens += _aider_count(tokens.group(2))
            self.turns = (self.turns or 0) + 1
        cost = _AIDER_COST.search(text)
        if cost:
            self.seen = True
            self.cost_usd = float(cost.group(2).replace(",", ""))


def total_usage(records: list[Usage]) -> Usage | None:
    """The sum of several records (None when there are none)."""
    if not records:
        return None
    out = records[0]
    for r in records[1:]:
        out = out + r
    return out
