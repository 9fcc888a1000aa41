"""Watching the directive until it ends: the live step tree on a terminal, one line per change otherwise.

The directive and its steps are read every `POLL_SECONDS` through the person's client, as
`makima get directive -w` would; the loop ends at a terminal phase, at the timeout, on
Ctrl-C, or when the demo's own operator stops.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.live import Live

from makima.cli.demo.errors import DemoError, Interrupted
from makima.cli.views import directive_tree, step_name
from makima.control.kube import UserKube

TERMINAL_PHASES = ("Completed", "Failed")
POLL_SECONDS = 0.25

Directive = dict[str, Any]
Steps = list[dict[str, Any]]


def phase_line(directive: Directive) -> str:
    status = directive.get("status") or {}
    return f"{status.get('phase', 'Pending')} {status.get('progress', '')}".strip()


def _in_order(steps: Steps) -> Steps:
    return sorted(steps, key=lambda s: (s.get("spec", {}).get("orderIndex", 0), step_name(s)))


def changes(seen: dict[str, str], directive: Directive, steps: Steps, elapsed: float) -> list[str]:
    """Lines for what changed since the last poll (the view when the console is not a terminal)."""
    lines = []
    key = phase_line(directive)
    if seen.get("") != key:
        seen[""] = key
        lines.append(f"[{elapsed:5.1f}s] directive {directive['metadata']['name']}: {key}")
    for s in _in_order(steps):
        name, phase = step_name(s), (s.get("status") or {}).get("phase", "Pending")
        if seen.get(name) != phase:
            seen[name] = phase
            lines.append(f"[{elapsed:5.1f}s]   step {name}: {phase}")
    return lines


def _check_running(operator_task: asyncio.Task[None] | None, interrupted: asyncio.Event | None, now: str) -> None:
    if interrupted is not None and interrupted.is_set():
        raise Interrupted(f"interrupted while the directive was {now}")
    if operator_task is not None and operator_task.done():
        exc = None if operator_task.cancelled() else operator_task.exception()
        raise DemoError(f"the operator stopped unexpectedly: {exc!r}" if exc else "the operator stopped")


async def watch(
    kube: UserKube,
    namespace: str,
    name: str,
    timeout: float,
    console: Console,
    live: bool,
    operator_task: asyncio.Task[None] | None = None,
    interrupted: asyncio.Event | None = None,
) -> tuple[Directive, Steps, bool]:
    """Poll the directive and its steps until a terminal phase or the timeout; (directive, steps, timed_out)."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    directive: Directive = {"metadata": {"name": name}}
    steps: Steps = []
    seen: dict[str, str] = {}
    view = None
    if live:
        view = Live(directive_tree(directive, steps, datetime.now(UTC)), console=console, refresh_per_second=8)
    with view if view is not None else contextlib.nullcontext():
        while True:
            _check_running(operator_task, interrupted, phase_line(directive))
            current = await asyncio.to_thread(kube.get_directive, namespace, name)
            directive = current or directive
            steps = await asyncio.to_thread(kube.list_steps, namespace, name)
            elapsed = loop.time() - started
            if view is not None:
                view.update(directive_tree(directive, steps, datetime.now(UTC)))
            else:
                for line in changes(seen, directive, steps, elapsed):
                    console.print(line, highlight=False)
            if (directive.get("status") or {}).get("phase") in TERMINAL_PHASES:
                return directive, steps, False
            if elapsed > timeout:
                return directive, steps, True
            await asyncio.sleep(POLL_SECONDS)
