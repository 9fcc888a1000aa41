"""Task-side commands: `makima task run`, `makima agent scripted`, `makima directive …`.

They run inside a task (a Job pod, or a daemon's child process) and reach the operator
with the task's environment: `MAKIMA_API_URL`, `MAKIMA_TASK_ID`, `MAKIMA_TASK_TOKEN`.
API errors are printed with every problem listed, and the exit status is non-zero.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console

from makima.core.protocol import Outcome, StepSubmission
from makima.dataplane.client import ApiError, MissingEnvironment, TaskClient

task_app = typer.Typer(no_args_is_help=True)
agent_app = typer.Typer(no_args_is_help=True)
directive_app = typer.Typer(no_args_is_help=True)

T = TypeVar("T")

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_TERMINATED = 128 + 15  # as if killed by SIGTERM


def _err() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


def print_api_error(exc: ApiError, what: str) -> None:
    console = _err()
    status = f" ({exc.status})" if exc.status else ""
    console.print(f"[bold red]error[/]: {what}{status}: {exc.body.error}", markup=True)
    for line in exc.problems:
        console.print(f"  • {line}", markup=False)


def _run_api(what: str, call: Callable[[TaskClient], Awaitable[T]]) -> T:
    """Run one API call with a client from the environment; exit non-zero on any error."""

    async def go() -> T:
        async with TaskClient.from_env() as client:
            return await call(client)

    try:
        return asyncio.run(go())
    except MissingEnvironment as exc:
        _err().print(f"error: {exc}", markup=False)
        raise typer.Exit(EXIT_USAGE) from None
    except ApiError as exc:
        print_api_error(exc, what)
        raise typer.Exit(EXIT_FAILED) from None


def submit_steps_or_report(steps: list[StepSubmission], *, final: bool = False) -> int:
    """Submit steps for the current task; print the outcome; return an exit status.

    Shared by `makima directive batch-add-steps`/`add-step`/`no-new-steps` and the scripted
    agent. `final` with no steps: a re-plan that adds nothing.
    """
    try:
        accepted = _run_api("steps rejected", lambda c: c.submit_steps(steps, final=final))
    except typer.Exit as exc:
        return int(exc.exit_code)
    if not steps:
        Console(highlight=False).print("recorded: the plan needs no new steps", markup=False)
        return 0
    Console(highlight=False).print(f"accepted {accepted} step(s): {', '.join(s.name for s in steps)}", markup=False)
    return 0


def _parse_steps(raw: Any) -> list[StepSubmission]:
    if isinstance(raw, dict) and "steps" in raw:
        raw = raw["steps"]
    if not isinstance(raw, list) or not raw:
        raise ValueError('expected a non-empty JSON list of steps (or {"steps": [...]})')
    steps: list[StepSubmission] = []
    problems: list[str] = []
    for i, item in enumerate(raw):
        try:
            steps.append(StepSubmission.model_validate(item))
        except ValidationError as exc:
            name = item.get("name") if isinstance(item, dict) else None
            for e in exc.errors():
                loc = ".".join(str(x) for x in e["loc"])
                problems.append(f"step {name or f'#{i}'} {loc}: {e['msg']}")
    if problems:
        raise ValueError("invalid steps:\n" + "\n".join(f"  • {p}" for p in problems))
    return steps


def _usage_error(message: str) -> typer.Exit:
    _err().print(f"error: {message}", markup=False)
    return typer.Exit(EXIT_USAGE)


# ---- makima task --------------------------------------------------------------------------


@task_app.callback()
def _task() -> None:
    """Run a task (inside a Job pod or a daemon)."""


@task_app.command("run")
def task_run(
    workdir: Annotated[
        Path | None, typer.Option(help="Workspace directory (default: a temporary one, removed afterwards).")
    ] = None,
    keep: Annotated[bool, typer.Option(help="Keep the temporary workspace.")] = False,
) -> None:
    """Fetch this task's spec from the operator, run it, and post the result."""
    from makima.dataplane.runner.git import ENV_GIT_TOKEN, ENV_GIT_USERNAME, GitCredentials
    from makima.dataplane.runner.proctree import harden_runner
    from makima.dataplane.runner.report import ApiReporter, RedactionFilter, Redactor
    from makima.dataplane.runner.run import run_task

    # Before anything else (and long before any agent exists): the git credential leaves the
    # environment, and the process becomes non-dumpable, so the agent (same UID) cannot read
    # it from /proc/<pid>/environ or /proc/<pid>/mem. Orphans of the agent come back to us.
    credentials = GitCredentials(
        token=os.environ.pop(ENV_GIT_TOKEN, None), username=os.environ.pop(ENV_GIT_USERNAME, None)
    )
    harden_runner(subreaper=True)

    token = os.environ.get("MAKIMA_TASK_TOKEN")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactionFilter(Redactor([token, credentials.token])))
    logging.basicConfig(level=logging.INFO, handlers=[handler])

    work = workdir or Path(tempfile.mkdtemp(prefix="makima-task-"))
    terminated = False

    async def go(client: TaskClient) -> Outcome:
        nonlocal terminated
        main = asyncio.current_task()
        assert main is not None

        def on_signal() -> None:  # the pod or the Job is being deleted: end the agent's tree, then exit
            nonlocal terminated
            terminated = True
            main.cancel()

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal)
        spec = await client.get_task()
        client.cover(spec)  # reports are retried for as long as this attempt could still be valid
        async with ApiReporter(client) as reporter:
            result = await run_task(spec, reporter, work, credentials=credentials)
        await client.post_result(result)
        console = Console(highlight=False)
        console.print(f"task {spec.task_id}: {result.outcome.value}: {result.message}", markup=False)
        return result.outcome

    try:
        outcome = _run_api("task run", go)
    except asyncio.CancelledError:
        if not terminated:
            raise
        _err().print("task run: terminated; the agent and everything it started were stopped", markup=False)
        raise typer.Exit(EXIT_TERMINATED) from None
    finally:
        if workdir is None and not keep:
            shutil.rmtree(work, ignore_errors=True)
    raise typer.Exit(0 if outcome == Outcome.SUCCEEDED else EXIT_FAILED)


# ---- makima agent -------------------------------------------------------------------------


@agent_app.callback()
def _agent() -> None:
    """Built-in agents."""


@agent_app.command("scripted")
def agent_scripted(
    script: Annotated[
        Path | None, typer.Option(help="YAML script (default: $MAKIMA_AGENT_SCRIPT text or $MAKIMA_AGENT_SCRIPT_FILE).")
    ] = None,
) -> None:
    """Deterministic agent for tests and demos: plans, writes files, resolves conflicts as scripted."""
    from makima_testing.scripted import main

    raise typer.Exit(main(script))


# ---- makima directive ---------------------------------------------------------------------


@directive_app.callback()
def _directive() -> None:
    """Task-side directive commands (planner, completion)."""


@directive_app.command("add-step")
def add_step(
    name: Annotated[str, typer.Argument(help="Step name (DNS label, unique in the directive).")],
    title: Annotated[str | None, typer.Option(help="One-line title (default: the name).")] = None,
    description: Annotated[str, typer.Option(help="What the step achieves.")] = "",
    task_plan: Annotated[str, typer.Option("--task-plan", help="Instructions for the step's agent.")] = "",
    depends_on: Annotated[
        str, typer.Option("--depends-on", help="Comma-separated names of steps this one builds on.")
    ] = "",
    order_index: Annotated[int, typer.Option("--order-index", help="Ordering among ready steps (>= 0).")] = 0,
) -> None:
    """Submit one step of the plan."""
    item = {
        "name": name,
        "title": title or name,
        "description": description,
        "taskPlan": task_plan,
        "dependsOn": [d.strip() for d in depends_on.split(",") if d.strip()],
        "orderIndex": order_index,
    }
    try:
        steps = _parse_steps([item])
    except ValueError as exc:
        raise _usage_error(str(exc)) from None
    raise typer.Exit(submit_steps_or_report(steps))


@directive_app.command("batch-add-steps")
def batch_add_steps(
    json_text: Annotated[str | None, typer.Option("--json", help="JSON list of steps.")] = None,
    file: Annotated[Path | None, typer.Option("--file", help="File holding the JSON list ('-' = stdin).")] = None,
) -> None:
    """Submit several steps at once; `dependsOn` names steps of the same batch or earlier ones."""
    if (json_text is None) == (file is None):
        raise _usage_error("give exactly one of --json or --file")
    try:
        text = json_text if json_text is not None else (sys.stdin.read() if str(file) == "-" else file.read_text())  # type: ignore[union-attr]
        steps = _parse_steps(json.loads(text))
    except (OSError, ValueError) as exc:
        raise _usage_error(str(exc)) from None
    raise typer.Exit(submit_steps_or_report(steps))


@directive_app.command("no-new-steps")
def no_new_steps() -> None:
    """Say that this re-plan adds nothing: the existing steps already reach the goal."""
    raise typer.Exit(submit_steps_or_report([], final=True))


@directive_app.command("update")
def update(
    pr_url: Annotated[str, typer.Option("--pr-url", help="URL of the directive's pull request.")],
    branch: Annotated[str | None, typer.Option(help="The pull request's head branch.")] = None,
) -> None:
    """Report the directive's pull request to the operator."""
    _run_api("pull request not recorded", lambda c: c.report_pull_request(pr_url, branch))
    Console(highlight=False).print(f"recorded pull request {pr_url}", markup=False)
