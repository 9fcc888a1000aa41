"""Run the coding agent: a configurable command, prompt on stdin, output streamed as events.

Profiles are data (command, environment), not code: `PROFILES` maps a name to an
`AgentSettings`-shaped dict. The default is the Claude Code CLI in non-interactive
print mode.

The agent's environment is the runner's minus the secrets not meant for it (git
credentials, daemon token, askpass), plus:

- `MAKIMA_API_URL`, `MAKIMA_TASK_ID`, `MAKIMA_TASK_TOKEN` — so it can run task-side
  commands such as `makima directive batch-add-steps`;
- `MAKIMA_TASK_KIND` (planning|step|completion), `MAKIMA_STEP` (step name, if any),
  `MAKIMA_ATTEMPT`, `MAKIMA_GENERATION`, `MAKIMA_DIRECTIVE`;
- `MAKIMA_AGENT_MODE` — `task` (do the work) or `conflict` (resolve a merge);
- `MAKIMA_CONFLICT_FILES` — in conflict mode, the conflicting paths, one per line;
- the fixed git identity (the agent may commit, the runner pushes);
- the profile's own `env`.

Output: stdout and stderr lines become `output` events, batched (every `flush_seconds` or
`max_lines` lines), each line cut at `MAX_LINE_CHARS`, the whole run bounded by
`MAX_TOTAL_LINES` / `MAX_TOTAL_BYTES` after which one "truncated" marker is sent and the
rest is only kept as a short tail for the failure message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from makima.core import agents
from makima.core.protocol import AgentSettings, EventType
from makima.dataplane.runner import proctree
from makima.dataplane.runner.git import ENV_GIT_TOKEN, ENV_GIT_USERNAME, IDENTITY_EMAIL, IDENTITY_NAME
from makima.dataplane.runner.report import Reporter

log = logging.getLogger(__name__)

# The profiles themselves are data in makima.core.agents (one per CLI, plus the scripted agent).
PROFILES: Final[dict[str, agents.Profile]] = agents.PROFILES
DEFAULT_PROFILE = agents.DEFAULT_PROFILE

# Environment the agent must not see.
SECRET_ENV: Final[frozenset[str]] = frozenset(
    {ENV_GIT_TOKEN, ENV_GIT_USERNAME, "MAKIMA_DAEMON_TOKEN", "GIT_ASKPASS", "SSH_ASKPASS"}
)

MAX_LINE_CHARS = 4000
MAX_TOTAL_LINES = 20_000
MAX_TOTAL_BYTES = 4 * 1024 * 1024
MAX_EVENT_BYTES = 12 * 1024  # below the protocol's per-payload bound
MAX_PARSED_LINE_BYTES = 1024 * 1024  # a structured-output line (a CLI's final JSON) is read whole up to this
TAIL_LINES = 30
KILL_GRACE_SECONDS = 5.0

MODE_TASK = "task"
MODE_CONFLICT = "conflict"


def check_agent(settings: AgentSettings, env: Mapping[str, str]) -> str | None:
    """Why this agent cannot start with this environment (agent and missing thing named), or None."""
    req = agents.Requirements(
        name=settings.profile,
        command=tuple(settings.command),
        key_env=tuple(settings.key_env),
        refuses_root=settings.refuses_root,
        image_target=settings.image_target,
        package=settings.package,
    )
    return agents.preflight(req, env, which=shutil.which, euid=os.geteuid())


@dataclass(frozen=True)
class AgentContext:
    """Who the agent works for; becomes `MAKIMA_*` environment."""

    task_id: str
    kind: str
    directive: str = ""
    step: str | None = None
    attempt: int = 1
    generation: int = 1
    api_url: str | None = None
    token: str | None = None

    def __repr__(self) -> str:
        return f"AgentContext(task_id={self.task_id!r}, kind={self.kind!r}, step={self.step!r})"


@dataclass
class AgentOutcome:
    exit_code: int | None
    timed_out: bool = False
    error: str | None = None  # could not start, etc.
    duration: float = 0.0
    tail: list[str] = field(default_factory=list)
    usage: agents.Usage | None = None
    retryable: bool = True  # False: the agent cannot start here at all (preflight), retrying is pointless

    @property
    def ok(self) -> bool:
        return self.error is None and not self.timed_out and self.exit_code == 0

    def describe(self) -> str:
        if self.error:
            what = self.error
        elif self.timed_out:
            what = f"agent timed out after {self.duration:.0f}s"
        else:
            what = f"agent exited with code {self.exit_code}"
        if self.tail:
            what += "\nlast output:\n" + "\n".join(self.tail[-10:])
        return what


def agent_env(
    context: AgentContext,
    *,
    mode: str = MODE_TASK,
    conflict_files: list[str] | None = None,
    profile_env: Mapping[str, str] | None = None,
    base: Mapping[str, str] | None = None,
) -> dict[str, str]:
    env = {k: v for k, v in (os.environ if base is None else base).items() if k not in SECRET_ENV}
    env.update(
        {
            "MAKIMA_TASK_ID": context.task_id,
            "MAKIMA_TASK_KIND": context.kind,
            "MAKIMA_DIRECTIVE": context.directive,
            "MAKIMA_ATTEMPT": str(context.attempt),
            "MAKIMA_GENERATION": str(context.generation),
            "MAKIMA_AGENT_MODE": mode,
            "GIT_AUTHOR_NAME": IDENTITY_NAME,
            "GIT_AUTHOR_EMAIL": IDENTITY_EMAIL,
            "GIT_COMMITTER_NAME": IDENTITY_NAME,
            "GIT_COMMITTER_EMAIL": IDENTITY_EMAIL,
            "GIT_TERMINAL_PROMPT": "0",
        }
    )
    if context.api_url:
        env["MAKIMA_API_URL"] = context.api_url
    if context.token:
        env["MAKIMA_TASK_TOKEN"] = context.token
    if context.step:
        env["MAKIMA_STEP"] = context.step
    else:
        env.pop("MAKIMA_STEP", None)
    if conflict_files:
        env["MAKIMA_CONFLICT_FILES"] = "\n".join(conflict_files)
    else:
        env.pop("MAKIMA_CONFLICT_FILES", None)
    env.update(profile_env or {})
    return env


class OutputStreamer:
    """Turns agent output into bounded, batched `output` events."""

    def __init__(self, reporter: Reporter, mode: str, *, flush_seconds: float = 0.5, max_lines: int = 100) -> None:
        self.reporter = reporter
        self.mode = mode
        self.flush_seconds = flush_seconds
        self.max_lines = max_lines
        self.buffers: dict[str, list[str]] = {"stdout": [], "stderr": []}
        self.buffer_bytes = 0
        self.total_lines = 0
        self.total_bytes = 0
        self.truncated = False
        self.tail: deque[str] = deque(maxlen=TAIL_LINES)
        self.last_flush = time.monotonic()

    async def line(self, stream: str, text: str) -> None:
        if len(text) > MAX_LINE_CHARS:
            text = text[:MAX_LINE_CHARS] + " …[line truncated]"
        self.tail.append(text)
        if self.truncated:
            return
        size = len(text.encode(errors="replace"))
        if self.total_lines >= MAX_TOTAL_LINES or self.total_bytes + size > MAX_TOTAL_BYTES:
            self.truncated = True
            await self.flush()
            await self.reporter.event(
                EventType.OUTPUT,
                {
                    "source": "agent",
                    "mode": self.mode,
                    "stream": "stderr",
                    "lines": [f"[makima] agent output truncated after {self.total_lines} lines"],
                    "truncated": True,
                },
            )
            return
        if self.buffer_bytes + size > MAX_EVENT_BYTES:
            await self.flush()
        self.buffers[stream].append(text)
        self.buffer_bytes += size
        self.total_lines += 1
        self.total_bytes += size
        if (
            sum(len(b) for b in self.buffers.values()) >= self.max_lines
            or time.monotonic() - self.last_flush >= self.flush_seconds
        ):
            await self.flush()

    async def flush(self) -> None:
        self.last_flush = time.monotonic()
        for stream, lines in self.buffers.items():
            if lines:
                self.buffers[stream] = []
                await self.reporter.event(
                    EventType.OUTPUT, {"source": "agent", "mode": self.mode, "stream": stream, "lines": lines}
                )
        self.buffer_bytes = 0

    async def ticker(self) -> None:
        """Flush periodically so a quiet agent's last lines do not wait for the next line."""
        while True:
            await asyncio.sleep(self.flush_seconds)
            if time.monotonic() - self.last_flush >= self.flush_seconds:
                await self.flush()


async def run_agent(
    settings: AgentSettings,
    workdir: Path,
    prompt: str,
    context: AgentContext,
    reporter: Reporter,
    *,
    mode: str = MODE_TASK,
    conflict_files: list[str] | None = None,
    base_env: Mapping[str, str] | None = None,
    flush_seconds: float = 0.5,
) -> AgentOutcome:
    """Run the agent to completion (or timeout). Never raises for agent failures."""
    env = agent_env(context, mode=mode, conflict_files=conflict_files, profile_env=settings.env, base=base_env)
    problem = check_agent(settings, env)
    if problem is not None:
        await reporter.event(EventType.PROGRESS, {"message": problem, "mode": mode, "agent": settings.profile})
        return AgentOutcome(None, error=problem, retryable=False)
    streamer = OutputStreamer(reporter, mode, flush_seconds=flush_seconds)
    collector = agents.UsageCollector(settings.profile, settings.usage_format)
    started = time.monotonic()
    await reporter.event(
        EventType.PROGRESS,
        {"message": f"agent started ({mode})", "command": settings.command[0], "mode": mode, "agent": settings.profile},
    )
    with contextlib.ExitStack() as cleanup:
        argv, stdin_text = _argv(settings.command, prompt, cleanup)
        return await _run(settings, argv, stdin_text, workdir, env, reporter, streamer, collector, mode, started)


def _argv(command: list[str], prompt: str, cleanup: contextlib.ExitStack) -> tuple[list[str], str]:
    """The command with the prompt placed where the profile wants it; what goes on stdin."""
    if agents.prompt_on_stdin(command):
        return list(command), prompt
    prompt_file = None
    if agents.needs_prompt_file(command):
        # In $TMPDIR (an emptyDir in pods), never in the clone the agent commits from.
        fd, prompt_file = tempfile.mkstemp(prefix="makima-prompt-", suffix=".md")
        with os.fdopen(fd, "w") as fh:
            fh.write(prompt)
        cleanup.callback(lambda: Path(prompt_file).unlink(missing_ok=True))
    return agents.render_command(command, prompt, prompt_file), ""


async def _run(
    settings: AgentSettings,
    argv: list[str],
    prompt: str,
    workdir: Path,
    env: dict[str, str],
    reporter: Reporter,
    streamer: OutputStreamer,
    collector: agents.UsageCollector,
    mode: str,
    started: float,
) -> AgentOutcome:
    marker = uuid.uuid4().hex
    env[proctree.ENV_AGENT_RUN] = marker
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            cwd=str(workdir),
            env=env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
            preexec_fn=proctree.agent_preexec,
        )
    except OSError as exc:
        return AgentOutcome(None, error=f"cannot start agent command {settings.command[0]!r}: {exc.strerror}")
    proctree.track(proc.pid)

    async def feed() -> None:
        assert proc.stdin is not None
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            proc.stdin.write(prompt.encode())
            await proc.stdin.drain()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            proc.stdin.close()

    async def pump(stream: asyncio.StreamReader | None, name: str) -> None:
        if stream is None:
            return
        pending = b""
        while True:
            chunk = await stream.read(65536)
            if not chunk:
                break
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for raw in lines:
                await line(name, raw.decode(errors="replace").rstrip("\r"))
            if len(pending) > MAX_PARSED_LINE_BYTES:  # an endless line: cut it here
                await line(name, pending.decode(errors="replace"))
                pending = b""
        if pending:
            await line(name, pending.decode(errors="replace").rstrip("\r"))

    async def line(name: str, text: str) -> None:
        if name == "stdout":
            collector.line(text)
        await streamer.line(name, text)

    io = [
        asyncio.create_task(feed()),
        asyncio.create_task(pump(proc.stdout, "stdout")),
        asyncio.create_task(pump(proc.stderr, "stderr")),
    ]
    ticker = asyncio.create_task(streamer.ticker())
    timed_out = False
    try:
        try:
            await asyncio.wait_for(_exited(proc), timeout=settings.timeout_seconds)
        except TimeoutError:
            timed_out = True
        # The agent is done (or out of time): nothing it started may outlive it — background
        # children, its process group, setsid-escaped descendants carrying the run's marker.
        await _end(proc, marker)
        _done, stuck = await asyncio.wait(io, timeout=KILL_GRACE_SECONDS)
        for t in stuck:
            t.cancel()
    except asyncio.CancelledError:
        await asyncio.shield(_end(proc, marker))
        for t in io:
            t.cancel()
        raise
    finally:
        proctree.untrack(proc.pid)
        ticker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticker
    await streamer.flush()
    outcome = AgentOutcome(
        exit_code=proc.returncode,
        timed_out=timed_out,
        duration=time.monotonic() - started,
        tail=list(streamer.tail),
        usage=collector.usage(),
    )
    if outcome.usage is not None:
        await reporter.event(EventType.USAGE, {**outcome.usage.wire(), "mode": mode})
    await reporter.event(
        EventType.PROGRESS,
        {
            "message": "agent finished" if outcome.ok else outcome.describe().splitlines()[0],
            "exitCode": outcome.exit_code,
            "timedOut": timed_out,
            "seconds": round(outcome.duration, 3),
            "mode": mode,
        },
    )
    return outcome


async def _exited(proc: asyncio.subprocess.Process, poll: float = 0.05) -> None:
    """Until the agent process itself has exited. Not `proc.wait()`: that also waits for its
    pipes to close, which a background child holding them would put off indefinitely."""
    while proc.returncode is None:  # noqa: ASYNC110 - asyncio offers no event for the exit alone
        await asyncio.sleep(poll)


async def _end(proc: asyncio.subprocess.Process, marker: str) -> None:
    """End the agent's whole process tree: SIGTERM, a grace period, then SIGKILL."""
    root = proc.pid if proc.returncode is None else None
    await proctree.end_tree(proc.pid, root, marker, grace=KILL_GRACE_SECONDS)
    if proc.returncode is None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(_exited(proc), timeout=KILL_GRACE_SECONDS)
