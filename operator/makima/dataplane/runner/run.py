"""Run one task: the entry point shared by `makima task run` (Jobs) and the daemon.

`run_task(spec, reporter, workdir)` never raises for a task failure: it returns a failed
`TaskResult` with a clear message. It sends a heartbeat every `heartbeat_seconds` while it
runs, and every event goes through a redacting wrapper (task token, git token, in plain, base64 and
URL-encoded forms). How the git token reaches git and nothing else: see `git.py`.

- planning: workspace on a detached HEAD of the start branch; the agent submits steps itself
  (`makima directive batch-add-steps`); success when it exits 0.
- step: workspace with the task branch; the agent works; leftovers are committed, the branch
  is pushed (forced, since each attempt rebuilds it from its start point, but fenced by attempt
  number: never over a newer attempt's push, always over an older one's), and the result
  carries the branch, commit and number of files changed since the start point (after merges).
- completion: see `completion.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from makima.core.agents import Usage, total_usage
from makima.core.protocol import EventType, Outcome, TaskResult, TaskSpec
from makima.core.tasks import TaskKind
from makima.dataplane.client import ENV_API_URL, ENV_TASK_TOKEN, ApiError
from makima.dataplane.runner.agent import MODE_CONFLICT, AgentContext, AgentOutcome, run_agent
from makima.dataplane.runner.completion import HostFactory, run_completion
from makima.dataplane.runner.git import (
    Git,
    GitCredentials,
    GitError,
    Guard,
    git_env,
    global_config_snapshot,
    origin_of,
    push_fenced,
)
from makima.dataplane.runner.hosts import GitHost, GitHostError, host_for
from makima.dataplane.runner.report import RedactingReporter, Redactor, Reporter
from makima.dataplane.runner.workspace import (
    ConflictResolver,
    Workspace,
    WorkspaceError,
    conflict_prompt_for,
    prepare_workspace,
)

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 10.0
REPO_DIR = "repo"


def _failed(message: str, **kw: object) -> TaskResult:
    return TaskResult(outcome=Outcome.FAILED, message=message[-8000:], **kw)


async def run_task(
    spec: TaskSpec,
    reporter: Reporter,
    workdir: Path,
    *,
    api_url: str | None = None,
    task_token: str | None = None,
    credentials: GitCredentials | None = None,
    env: Mapping[str, str] | None = None,
    heartbeat_seconds: float = HEARTBEAT_SECONDS,
    host_factory: HostFactory | None = None,
) -> TaskResult:
    env = dict(os.environ if env is None else env)
    api_url = api_url or env.get(ENV_API_URL)
    task_token = task_token or env.get(ENV_TASK_TOKEN)
    creds = credentials if credentials is not None and credentials.token else None
    creds = creds or GitCredentials.resolve(spec.credentials, env)
    redactor = Redactor([task_token, creds.token, *(spec.credentials or {}).values()])
    tally = UsageTally(RedactingReporter(reporter, redactor))
    rep: Reporter = tally
    workdir = _prepare_dir(workdir)
    origin = origin_of(spec.workspace.repo_url)
    guard = Guard(credentials=creds, origin=origin, global_config=global_config_snapshot(env))
    git = Git(cwd=workdir, env=git_env(None, base=env), guard=guard)
    context = AgentContext(
        task_id=spec.task_id,
        kind=spec.kind.value,
        directive=spec.directive,
        step=spec.step,
        attempt=spec.attempt,
        generation=spec.generation,
        api_url=api_url,
        token=task_token,
    )

    if spec.kind == TaskKind.COMPLETION:
        purpose = f"merging the steps of directive '{spec.directive}' into its pull request branch"
    elif spec.step:
        purpose = f"preparing the workspace of step '{spec.step}'"
    else:
        purpose = "preparing the workspace"

    def resolver_for(path: Path) -> ConflictResolver:
        async def resolve(branch: str, into: str, files: list[str]) -> AgentOutcome:
            prompt = conflict_prompt_for(spec.title, branch, into, files, purpose=purpose)
            return await run_agent(
                spec.agent, path, prompt, context, rep, mode=MODE_CONFLICT, conflict_files=files, base_env=env
            )

        return resolve

    def default_host(url: str) -> GitHost:
        return host_for(url, creds, env=env, git=git, scratch=workdir / "pulls.git")

    hosts: HostFactory = host_factory or default_host
    heartbeat = asyncio.create_task(_heartbeats(rep, heartbeat_seconds))
    await rep.event(
        EventType.PROGRESS,
        {"message": f"{spec.kind.value} task started", "attempt": spec.attempt, "step": spec.step},
    )
    dest = workdir / REPO_DIR
    try:
        if spec.kind == TaskKind.PLANNING:
            result = await _run_planning(spec, dest, git, rep, context, resolver_for(dest), env)
        elif spec.kind == TaskKind.STEP:
            result = await _run_step(spec, dest, git, rep, context, resolver_for(dest), env)
        else:
            result = await run_completion(spec, dest, git, rep, resolver_for, hosts)
    except (WorkspaceError, GitHostError) as exc:
        result = _failed(str(exc))
    except GitError as exc:
        result = _failed(str(exc))
    except Exception as exc:  # a runner bug must still end as a clear task failure
        log.exception("runner error in task %s", spec.task_id)
        result = _failed(f"runner error: {type(exc).__name__}: {exc}")
    finally:
        heartbeat.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await heartbeat
    result = result.model_copy(update={"message": redactor.text(result.message), "usage": tally.total()})
    await rep.event(EventType.RESULT, result.model_dump(mode="json", exclude_none=True))
    try:
        await rep.flush()
    except ApiError as exc:  # the events stay queued; the result is what matters now
        log.warning("task events not delivered yet: %s", exc)
    return result


class UsageTally:
    """A reporter that passes everything on and sums the `usage` events of the task's agent runs."""

    def __init__(self, inner: Reporter) -> None:
        self.inner = inner
        self.records: list[Usage] = []

    async def event(self, type: EventType, payload: dict[str, Any]) -> None:
        if type is EventType.USAGE:
            fields = {k: v for k, v in payload.items() if k != "mode"}
            with contextlib.suppress(ValueError):
                self.records.append(Usage.model_validate(fields))
        await self.inner.event(type, payload)

    async def flush(self) -> None:
        await self.inner.flush()

    async def submit_pull_request(self, url: str, branch: str | None) -> None:
        await self.inner.submit_pull_request(url, branch)

    def total(self) -> Usage | None:
        return total_usage(self.records)


def _prepare_dir(workdir: Path) -> Path:
    workdir = workdir.absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    return workdir


async def _heartbeats(reporter: Reporter, seconds: float) -> None:
    while True:
        try:
            await reporter.event(EventType.HEARTBEAT, {})
            await reporter.flush()
        except Exception as exc:  # never let a reporting hiccup kill the task
            log.warning("heartbeat failed: %s", exc)
        await asyncio.sleep(seconds)


async def _run_planning(
    spec: TaskSpec,
    dest: Path,
    git: Git,
    reporter: Reporter,
    context: AgentContext,
    resolver: ConflictResolver,
    env: Mapping[str, str],
) -> TaskResult:
    plan = spec.workspace.model_copy(update={"branch": None})
    ws = await prepare_workspace(plan, dest, git, reporter, resolver)
    outcome = await run_agent(spec.agent, ws.path, spec.prompt, context, reporter, base_env=env)
    if not outcome.ok:
        return _failed(f"planning failed: {outcome.describe()}", retryable=outcome.retryable)
    return TaskResult(outcome=Outcome.SUCCEEDED, commit=ws.start, message="planning finished")


async def _run_step(
    spec: TaskSpec,
    dest: Path,
    git: Git,
    reporter: Reporter,
    context: AgentContext,
    resolver: ConflictResolver,
    env: Mapping[str, str],
) -> TaskResult:
    branch = spec.workspace.branch
    if not branch:
        raise WorkspaceError("step task without a branch in its workspace plan")
    ws = await prepare_workspace(spec.workspace, dest, git, reporter, resolver)
    outcome = await run_agent(spec.agent, ws.path, spec.prompt, context, reporter, base_env=env)
    if not outcome.ok:
        return _failed(f"step failed: {outcome.describe()}", branch=branch, retryable=outcome.retryable)
    return await finish_step(spec, ws, reporter)


async def finish_step(spec: TaskSpec, ws: Workspace, reporter: Reporter) -> TaskResult:
    """Commit leftovers, push the branch, and describe what changed since the start point."""
    repo = ws.git
    assert ws.branch is not None
    current = (await repo.run("symbolic-ref", "--quiet", "--short", "HEAD", check=False)).stdout.strip()
    if current != ws.branch:
        return _failed(f"the agent left the workspace on {current or 'a detached HEAD'}, not on {ws.branch}")
    if await repo.merge_in_progress():
        return _failed("the agent left a merge in progress")
    if await repo.status_porcelain():
        await repo.run("add", "-A")
        await repo.run("commit", "-q", "-m", commit_message(spec))
        await reporter.event(EventType.GIT, {"action": "commit", "message": "committed the agent's changes"})
    head = await repo.head()
    changed = await repo.changed_files(ws.start, head)
    # Forced (each attempt rebuilds the branch) but fenced by attempt number: a lost attempt that
    # wakes up late never overwrites its retry's push, and never makes the retry fail either.
    pushed = await push_fenced(repo, ws.branch, spec.attempt, head)
    if not pushed.pushed:
        return _failed(f"not pushing the step branch {ws.branch}: {pushed.message}")
    await reporter.event(EventType.GIT, {"action": "push", "branch": ws.branch, "commit": head, "message": "pushed"})
    message = f"{len(changed)} file(s) changed" if changed else "no changes"
    return TaskResult(
        outcome=Outcome.SUCCEEDED, branch=ws.branch, commit=head, changed_files=len(changed), message=message
    )


def commit_message(spec: TaskSpec) -> str:
    title = (spec.title or spec.step or "makima step").strip().splitlines()[0][:72]
    return f"{title}\n\nmakima: directive {spec.directive}, step {spec.step or '-'}, attempt {spec.attempt}\n"
