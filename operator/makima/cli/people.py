"""People-facing commands: `makima get`, `describe`, `logs`, `retry`, `pause`, `resume`.

They use the person's kubeconfig (through `kube.UserKube`, the only Kubernetes access) and,
for `logs`, the operator's HTTP API with the reader token (`dataplane.client.EventReader`).
Drawing is in `views.py`.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console, RenderableType

from makima.cli import views

if TYPE_CHECKING:
    from makima.dataplane.client import EventReader

Namespace = Annotated[
    str | None,
    typer.Option("--namespace", "-n", help="Namespace; default: the kubeconfig context's namespace, else 'default'."),
]
Kubeconfig = Annotated[
    str | None, typer.Option("--kubeconfig", envvar="KUBECONFIG", help="Kubeconfig file (default ~/.kube/config).")
]
Name = Annotated[str, typer.Argument(help="Directive name.", show_default=False)]

DIRECTIVE_KINDS = {"directive", "directives", "dir", "directives.makima.dev", "directive.makima.dev"}
TERMINAL_STEP_PHASES = {"Succeeded", "Failed", "Skipped"}
FOLLOW_INTERVAL = 0.5
PAGE_LIMIT = 1000

console = Console()
err_console = Console(stderr=True)


def fail(message: str, code: int = 1) -> NoReturn:
    err_console.print(f"[red]Error:[/red] {message}", markup=True, highlight=False, soft_wrap=True)
    raise typer.Exit(code)


# ---- Kubernetes access ---------------------------------------------------------------------


class Session:
    """A `UserKube` plus the resolved namespace, with the CLI's error wording."""

    def __init__(self, kubeconfig: str | None, namespace: str | None) -> None:
        from makima.control.kube import UserKube, context_namespace

        try:
            self.kube = UserKube.from_kubeconfig(kubeconfig)
        except Exception as exc:  # the client raises several kinds; all mean "no usable config"
            fail(f"cannot load a kubeconfig ({exc}); pass --kubeconfig or set KUBECONFIG")
        self.namespace = namespace or context_namespace(kubeconfig)

    def directive(self, name: str) -> dict[str, Any]:
        obj = self.kube.get_directive(self.namespace, name)
        if obj is None:
            fail(f'directive "{name}" not found in namespace "{self.namespace}"')
        return obj


@contextmanager
def session(kubeconfig: str | None, namespace: str | None) -> Iterator[Session]:
    """A Session; Kubernetes errors and unreachable servers become one line and exit 1."""
    from urllib3.exceptions import HTTPError

    from makima.control.kube import KubeError

    s: Session | None = None
    try:
        s = Session(kubeconfig, namespace)
        yield s
    except KubeError as exc:
        hint = " (check your RBAC: see kube.USER_RULES)" if exc.status in (401, 403) else ""
        fail(f"Kubernetes API: {exc.reason} (HTTP {exc.status}){hint}")
    except HTTPError as exc:
        fail(f"cannot reach the Kubernetes API: {exc}")
    finally:
        if s is not None:
            s.kube.close()


def _now() -> datetime:
    return datetime.now(UTC)


def _live(render: Callable[[], RenderableType], interval: float) -> None:
    """Redraw `render()` every `interval` seconds until Ctrl-C."""
    from rich.live import Live

    with Live(render(), console=console, auto_refresh=False, screen=False) as live:
        try:
            while True:
                time.sleep(interval)
                live.update(render(), refresh=True)
        except KeyboardInterrupt:
            pass


def _split_kind(kind_or_name: str | None, name: str | None) -> str | None:
    """`get`, `get directives` → None (all); `get directive X` and `get X` → X."""
    if kind_or_name is None:
        return None
    if kind_or_name.lower() in DIRECTIVE_KINDS:
        return name
    if name is not None:
        fail(f'unknown kind "{kind_or_name}": makima shows directives (makima get directive NAME)')
    return kind_or_name


# ---- commands ------------------------------------------------------------------------------


def get(
    kind_or_name: Annotated[
        str | None, typer.Argument(metavar="directive", help="`directive NAME` or just NAME.")
    ] = None,
    name: Annotated[str | None, typer.Argument(metavar="NAME", hidden=True)] = None,
    watch: Annotated[bool, typer.Option("--watch", "-w", help="Redraw live until Ctrl-C.")] = False,
    interval: Annotated[float, typer.Option(help="Seconds between redraws with --watch.", min=0.2)] = 1.0,
    namespace: Namespace = None,
    kubeconfig: Kubeconfig = None,
) -> None:
    """List directives (phase, progress, PR), or show one directive's steps as a tree.

    `makima get` lists the namespace's directives; `makima get directive NAME` shows the steps
    grouped by orderIndex, dependencies first, with phase, attempts, duration, branch and what each
    depends on.
    """
    target = _split_kind(kind_or_name, name)
    with session(kubeconfig, namespace) as s:

        def draw() -> RenderableType:
            if target is None:
                directives = s.kube.list_directives(s.namespace)
                if not directives:
                    return f'No directives in namespace "{s.namespace}".'
                # piped: every column, never cut (like kubectl); a terminal: what fits, PR kept
                width = console.width if console.is_terminal else None
                return views.directive_table(directives, now=_now(), width=width)
            directive = s.directive(target)
            return views.directive_tree(directive, s.kube.list_steps(s.namespace, target), _now())

        if watch:
            _live(draw, interval)
        else:
            console.print(draw(), soft_wrap=target is None)


def describe(
    kind_or_name: Annotated[str, typer.Argument(metavar="directive|NAME", help="`directive NAME` or just NAME.")],
    name: Annotated[str | None, typer.Argument(metavar="NAME", hidden=True)] = None,
    events: Annotated[int, typer.Option(help="How many recent events to show.", min=0)] = 20,
    namespace: Namespace = None,
    kubeconfig: Kubeconfig = None,
) -> None:
    """Show a directive in full: spec summary, status, conditions, steps and recent events (of the
    directive and of its steps)."""
    target = _split_kind(kind_or_name, name)
    if target is None:
        fail("which directive? makima describe NAME")
    with session(kubeconfig, namespace) as s:
        directive = s.directive(target)
        steps = s.kube.list_steps(s.namespace, target)
        found = s.kube.list_events(s.namespace, target, kind="Directive") if events else []
        for step in steps if events else []:
            found += s.kube.list_events(s.namespace, step["metadata"]["name"], kind="DirectiveStep")
        found = sorted(found, key=lambda e: str(e.get("lastTimestamp") or e.get("eventTime") or ""))[-events:]
        console.print(views.describe(directive, steps, found if events else [], now=_now()))


def pause(name: Name, namespace: Namespace = None, kubeconfig: Kubeconfig = None) -> None:
    """Pause a directive (spec.paused=true): no new steps are dispatched; running ones finish."""
    _set_paused(name, True, namespace, kubeconfig)


def resume(name: Name, namespace: Namespace = None, kubeconfig: Kubeconfig = None) -> None:
    """Resume a paused directive (spec.paused=false)."""
    _set_paused(name, False, namespace, kubeconfig)


def _set_paused(name: str, paused: bool, namespace: str | None, kubeconfig: str | None) -> None:
    with session(kubeconfig, namespace) as s:
        if s.kube.set_paused(s.namespace, name, paused) is None:
            fail(f'directive "{name}" not found in namespace "{s.namespace}"')
        console.print(f"directive/{name} {'paused' if paused else 'resumed'}", highlight=False)


RETRY_ACK_SECONDS = 20.0  # how long `makima retry` waits to see the operator act on the request


def retry(
    name: Name,
    step: Annotated[
        list[str] | None, typer.Option("--step", "-s", help="Only these steps (repeat); default all.")
    ] = None,
    wait: Annotated[
        float, typer.Option("--wait", help="Seconds to wait for the operator to act on the request (0: do not wait).")
    ] = RETRY_ACK_SECONDS,
    namespace: Namespace = None,
    kubeconfig: Kubeconfig = None,
) -> None:
    """Ask the operator to move the directive's Failed and Skipped steps back to Pending.

    Sets the Directive's `makima.dev/retry` annotation (what an editor may write; a step's status
    is the operator's). Each step keeps its attempt count (a retried step gets one more attempt)
    and the id of its last task (so `makima logs` still shows why it failed). The operator
    dispatches them again once their dependencies have succeeded.
    """
    from makima.control.kube import RETRYABLE_STEP_PHASES

    with session(kubeconfig, namespace) as s:
        s.directive(name)
        steps = s.kube.list_steps(s.namespace, name)
        wanted = set(step or [])
        unknown = wanted - {views.step_name(x) for x in steps} - {x["metadata"]["name"] for x in steps}
        if unknown:
            fail(f"directive {name} has no step {', '.join(sorted(unknown))}")
        chosen = sorted(
            (
                x
                for x in steps
                if (x.get("status") or {}).get("phase") in RETRYABLE_STEP_PHASES
                and (not wanted or views.step_name(x) in wanted or x["metadata"]["name"] in wanted)
            ),
            key=lambda o: (o["spec"].get("orderIndex", 0), views.step_name(o)),
        )
        if not chosen:
            console.print(f"directive/{name}: no Failed or Skipped steps to retry", highlight=False)
            return
        names = [views.step_name(x) for x in chosen]
        request = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ") + (f":{','.join(names)}" if wanted else "")
        if s.kube.request_retry(s.namespace, name, request) is None:
            fail(f'directive "{name}" not found in namespace "{s.namespace}"')
        console.print(
            f"directive/{name}: retry requested for {len(names)} step(s): {', '.join(names)}", highlight=False
        )
        deadline = time.monotonic() + wait
        while wait > 0 and time.monotonic() < deadline:
            current = s.kube.get_directive(s.namespace, name) or {}
            if (current.get("status") or {}).get("retryHandled") == request:
                console.print(f"directive/{name}: the operator moved them back to Pending", highlight=False)
                return
            time.sleep(0.5)
        if wait > 0:
            console.print(
                f"directive/{name}: the operator has not acted on it yet; it will when it next reconciles",
                highlight=False,
            )


# ---- logs ----------------------------------------------------------------------------------

LOGS_HELP = """Print a task's events (agent output, progress, git, result) from the operator API.

Which task: --step S (the step's current or last attempt), --planning, --completion. Without them
the directive's phase decides: the planning task while Planning, the completion task while
Completing or Completed, else the only step that has run. With -f, new attempts (retries) are
followed too, until the task ends.

How readers are authorised: GET /v1/tasks/{id}/events on the operator API takes "Authorization:
Bearer <reader token>". The reader token is the one the operator is configured with
(MAKIMA_READER_TOKEN in the operator's environment, typically from a Secret); it reads any task's
event log, finished or not, and grants nothing else (no reports, no daemon registration). Give it to
this command in the MAKIMA_READER_TOKEN environment variable, never on the command line. An operator
without a reader token refuses readers (403).
"""


class LogsError(Exception):
    pass


async def fetch_events(reader: EventReader, task_id: str, since: int, limit: int = PAGE_LIMIT) -> dict[str, Any]:
    """One EventPage (as a dict) of `task_id` after `since`; LogsError says what went wrong."""
    from makima.dataplane.client import ApiError

    try:
        return await reader.events(task_id, since, limit)
    except ApiError as exc:
        detail = exc.body.error
        if exc.status in (401, 403):
            raise LogsError(
                f"the operator API refused the reader token ({detail}); "
                "set MAKIMA_READER_TOKEN to the token the operator was given"
            ) from None
        if exc.status == 404:
            raise LogsError(f"task {task_id} is not known to the operator API") from None
        if exc.status == 0:
            raise LogsError(f"{detail}; set --api-url") from None
        raise LogsError(f"operator API: HTTP {exc.status}: {detail}") from None


KIND_WIDTH = 8  # "progress"


def _event_message(kind: str, payload: dict[str, Any]) -> list[str]:
    if kind == "output":
        lines = payload.get("lines")
        if isinstance(lines, list):
            return [str(line) for line in lines]
        if "line" in payload:
            return [str(payload["line"])]
    if kind == "result":
        outcome = str(payload.get("outcome") or "?")
        extra = [f"{k}={payload[k]}" for k in ("branch", "commit", "pull_request_url") if payload.get(k)]
        message = str(payload.get("message") or "")
        return [" ".join([outcome + (":" if message else ""), message, *extra]).replace("  ", " ").strip()]
    note = payload.get("message")
    rest = {k: v for k, v in payload.items() if k != "message"}
    details = " ".join(f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in sorted(rest.items()))
    text = " ".join(part for part in (str(note) if note else "", details) if part)
    return (text or "-").splitlines() or ["-"]


def format_event(event: dict[str, Any]) -> list[str]:
    """For people: `HH:MM:SS  kind      message`, one line per line of agent output."""
    kind = str(event.get("type") or "?")
    at = views.parse_time(event.get("at"))
    clock = at.astimezone().strftime("%H:%M:%S") if at is not None else "--:--:--"
    payload = event.get("payload") or {}
    return [f"{clock}  {kind:<{KIND_WIDTH}}  {line}" for line in _event_message(kind, payload)]


def format_event_json(event: dict[str, Any]) -> list[str]:
    """For machines (`-o json`): the stored event, one JSON object per line."""
    return [json.dumps(event, sort_keys=True)]


class Target:
    """Which task to read, re-resolved while following (a retry starts a new attempt)."""

    def __init__(self, s: Session, directive: str, step: str | None, which: str | None) -> None:
        self.s, self.directive, self.step, self.which = s, directive, step, which

    def resolve(self) -> tuple[str | None, bool, str]:
        """(task id or None, finished?, label) from the current objects."""
        d = self.s.directive(self.directive)
        status = d.get("status") or {}
        phase = status.get("phase") or "Pending"
        which = self.which
        if which is None and self.step is None:
            if phase in ("Pending", "Planning"):
                which = "planning"
            elif phase in ("Completing", "Completed") and status.get("completionTask"):
                which = "completion"
            else:
                which = "step"
        if which == "planning":
            return status.get("planningTask"), phase not in ("Pending", "Planning"), "planning task"
        if which == "completion":
            done = phase not in ("Executing", "Completing", "Paused")
            return status.get("completionTask"), done, "completion task"
        steps = self.s.kube.list_steps(self.s.namespace, self.directive)
        if self.step is None:
            started = [x for x in steps if (x.get("status") or {}).get("task")]
            if len(started) != 1:
                names = ", ".join(sorted(views.step_name(x) for x in (started or steps))) or "none yet"
                fail(f"directive {self.directive} is {phase}: choose a step with --step (steps: {names})")
            self.step = views.step_name(started[0])
        match = [x for x in steps if self.step in (views.step_name(x), x["metadata"]["name"])]
        if not match:
            names = ", ".join(sorted(views.step_name(x) for x in steps)) or "none yet"
            fail(f"directive {self.directive} has no step {self.step} (steps: {names})")
        st = match[0].get("status") or {}
        task = (st.get("task") or {}).get("id")
        return task, st.get("phase") in TERMINAL_STEP_PHASES, f"step {self.step}, attempt {st.get('attempts') or 0}"


def logs(
    name: Name,
    step: Annotated[str | None, typer.Option("--step", "-s", help="Step name.")] = None,
    planning: Annotated[bool, typer.Option("--planning", help="The directive's planning task.")] = False,
    completion: Annotated[bool, typer.Option("--completion", help="The directive's completion task.")] = False,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing until the task ends.")] = False,
    since: Annotated[int, typer.Option(help="Start after this event sequence number.", min=0)] = 0,
    api_url: Annotated[
        str, typer.Option("--api-url", envvar="MAKIMA_API_URL", help="Operator API base URL.")
    ] = "http://127.0.0.1:8080",
    output: Annotated[
        str, typer.Option("--output", "-o", help="text (time, kind, message) or json (one event per line).")
    ] = "text",
    namespace: Namespace = None,
    kubeconfig: Kubeconfig = None,
) -> None:
    if sum([step is not None, planning, completion]) > 1:
        fail("choose one of --step, --planning, --completion")
    if output not in ("text", "json"):
        fail(f"unknown output format {output!r}: text or json")
    render = format_event_json if output == "json" else format_event
    token = os.environ.get("MAKIMA_READER_TOKEN", "")
    if not token:
        fail("set MAKIMA_READER_TOKEN to the operator's reader token (see makima logs --help)")
    which = "planning" if planning else "completion" if completion else None
    with session(kubeconfig, namespace) as s:
        target = Target(s, name, step, which)
        try:
            asyncio.run(_print_events(api_url, token, target, since, follow, render))
        except LogsError as exc:
            fail(str(exc))
        except KeyboardInterrupt:
            return


logs.__doc__ = LOGS_HELP


async def _print_events(
    api_url: str, token: str, target: Target, since: int, follow: bool, render: Callable[[dict[str, Any]], list[str]]
) -> None:
    """Print the target task's events after `since`; with `follow`, until the task ends, moving on
    to each new attempt (a retry)."""
    from makima.dataplane.client import EventReader

    task_id, finished, label = await asyncio.to_thread(target.resolve)
    if task_id is None and not follow:
        fail(f"the {label} of directive {target.directive} has not started yet")
    reader = EventReader(api_url, token)
    try:
        position = since
        while True:
            if task_id is not None:
                position = await _drain(reader, task_id, position, render)
            if not follow or finished:
                return
            await asyncio.sleep(FOLLOW_INTERVAL)
            new_id, finished, new_label = await asyncio.to_thread(target.resolve)
            if new_id != task_id and new_id is not None:
                if task_id is not None:
                    position = await _drain(reader, task_id, position, render)
                typer.echo(f"--- {new_label} (task {new_id}) ---")
                task_id, position = new_id, 0
    finally:
        await reader.close()


async def _drain(
    reader: EventReader, task_id: str, since: int, render: Callable[[dict[str, Any]], list[str]] = format_event
) -> int:
    """Print every event after `since`; returns the new position."""
    while True:
        page = await fetch_events(reader, task_id, since)
        events = page.get("events") or []
        for event in events:
            for line in render(event):
                typer.echo(line)
        sys.stdout.flush()
        since = int(page.get("nextSince", since))
        if len(events) < PAGE_LIMIT:
            return since


def _paragraphs(doc: str | None) -> str:
    """A docstring as help text: lines of one paragraph joined, so the terminal wraps them."""
    import inspect

    text = inspect.cleandoc(doc or "")
    return "\n\n".join(" ".join(p.split()) for p in text.split("\n\n"))


def register(app: typer.Typer) -> None:
    """Add `get`, `describe`, `logs`, `retry`, `pause`, `resume` to the top-level app."""
    for name, fn in (
        ("get", get),
        ("describe", describe),
        ("logs", logs),
        ("retry", retry),
        ("pause", pause),
        ("resume", resume),
    ):
        app.command(name, help=_paragraphs(fn.__doc__))(fn)
