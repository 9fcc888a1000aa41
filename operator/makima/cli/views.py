"""Pure renderers for the people CLI: plain dicts (Kubernetes objects) in, rich renderables out.

No I/O here: the commands in `people_cli.py` fetch, these functions draw. `directive_tree`
is also the live view of `makima demo`; its signature is a contract:

    directive_table(directives) -> Text
    directive_tree(directive, steps, now) -> RenderableType
    describe(directive, steps, events) -> RenderableType
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from makima.core.dag import Node, topological_order
from makima.core.naming import LABEL_STEP

PHASE_STYLES: dict[str, str] = {
    # directive phases
    "Pending": "dim",
    "Planning": "cyan",
    "Executing": "blue",
    "Completing": "cyan",
    "Completed": "green",
    "Paused": "yellow",
    "Failed": "bold red",
    # step phases (Pending, Failed shared)
    "Ready": "cyan",
    "Running": "blue",
    "Succeeded": "green",
    "Skipped": "magenta",
}


def phase_text(phase: str | None) -> Text:
    """A phase name in its colour ("-" when unknown)."""
    value = phase or "-"
    return Text(value, style=PHASE_STYLES.get(value, ""))


def _get(obj: Mapping[str, Any] | None, *path: str) -> Any:
    cur: Any = obj
    for key in path:
        if not isinstance(cur, Mapping):
            return None
        cur = cur.get(key)
    return cur


def parse_time(value: Any) -> datetime | None:
    """An RFC 3339 timestamp (as Kubernetes writes it) to an aware datetime; None if absent."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def format_duration(seconds: float | None) -> str:
    """Compact duration: 850ms, 42s, 3m05s, 2h07m, 3d04h; '-' when unknown."""
    if seconds is None:
        return "-"
    seconds = max(0.0, seconds)
    if seconds < 1:
        return f"{int(seconds * 1000)}ms"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 86400}d{(s % 86400) // 3600:02d}h"


def age(created: Any, now: datetime) -> str:
    start = parse_time(created)
    if start is None:
        return "-"
    seconds = (now - start).total_seconds()
    return "0s" if seconds < 1 else format_duration(seconds)


def step_duration(step: Mapping[str, Any], now: datetime) -> str:
    """startedAt → finishedAt, or → now while the step runs."""
    started = parse_time(_get(step, "status", "startedAt"))
    if started is None:
        return "-"
    finished = parse_time(_get(step, "status", "finishedAt"))
    if finished is None and _get(step, "status", "phase") != "Running":
        return "-"
    return format_duration(((finished or now) - started).total_seconds())


def step_name(step: Mapping[str, Any]) -> str:
    """The step's short name (what `dependsOn` refers to): its step label, else the object name
    without the directive prefix."""
    meta = step.get("metadata") or {}
    label = (meta.get("labels") or {}).get(LABEL_STEP)
    if label:
        return str(label)
    name = str(meta.get("name", "?"))
    directive = _get(step, "spec", "directive")
    if directive and name.startswith(f"{directive}-"):
        return name[len(directive) + 1 :]
    return name


def _progress(directive: Mapping[str, Any]) -> str:
    progress = _get(directive, "status", "progress")
    if progress:
        return str(progress)
    counts = _get(directive, "status", "steps") or {}
    total = counts.get("total") or 0
    return f"{counts.get('succeeded') or 0}/{total}" if total else "-"


def usage_text(usage: Mapping[str, Any] | None, *, short: bool = False) -> str:
    """Agent usage for people: "12,345 tokens, $0.1234" (short: "12.3k tok $0.12"); "" if none."""
    if not usage:
        return ""
    total = int(usage.get("totalTokens") or 0)
    cost = usage.get("costUsd")
    if short:
        tokens = f"{total / 1000:.1f}k tok" if total >= 1000 else f"{total} tok"
        return tokens + (f" ${float(cost):.2f}" if cost is not None else "")
    return f"{total:,} tokens" + (f", ${float(cost):.4f}" if cost is not None else "")


def _pr_url(directive: Mapping[str, Any]) -> str | None:
    url = _get(directive, "status", "pullRequest", "url")
    return str(url) if url else None


# ---- makima get ----------------------------------------------------------------------------


DIRECTIVE_COLUMNS = ("NAME", "TITLE", "PHASE", "PROGRESS", "PR", "AGE")
# Dropped in this order when a terminal is too narrow; NAME, PHASE and PR always stay.
DROP_ORDER = ("TITLE", "AGE", "PROGRESS")
COLUMN_GAP = 3  # as kubectl


def directive_table(directives: list[dict[str, Any]], now: datetime | None = None, width: int | None = None) -> Text:
    """One row per directive: name, title, phase, progress, PR, age (sorted by name).

    Aligned with spaces like `kubectl get`; no cell is ever cut or folded. `width` (a
    terminal's) drops the least useful columns until the lines fit (never the PR); None
    (piped output) keeps every column whatever the length.
    """
    now = now or datetime.now(UTC)
    rows: list[list[Text]] = [[Text(c) for c in DIRECTIVE_COLUMNS]]
    for d in sorted(directives, key=lambda o: str(_get(o, "metadata", "name"))):
        paused = bool(_get(d, "spec", "paused"))
        phase = phase_text(_get(d, "status", "phase") or "Pending")
        if paused and phase.plain != "Paused":
            phase.append(" (paused)", style="yellow")
        rows.append(
            [
                Text(str(_get(d, "metadata", "name"))),
                Text(str(_get(d, "spec", "title") or "")),
                phase,
                Text(_progress(d)),
                Text(_pr_url(d) or "-"),
                Text(age(_get(d, "metadata", "creationTimestamp"), now)),
            ]
        )
    keep = list(range(len(DIRECTIVE_COLUMNS)))

    def widths() -> dict[int, int]:
        return {i: max(len(r[i].plain) for r in rows) for i in keep}

    def line_length() -> int:
        w = widths()
        return sum(w.values()) + COLUMN_GAP * (len(keep) - 1)

    for column in DROP_ORDER:
        if width is None or line_length() <= width:
            break
        keep.remove(DIRECTIVE_COLUMNS.index(column))
    w = widths()
    out = Text(no_wrap=True, overflow="ignore")
    for n, row in enumerate(rows):
        if n:
            out.append("\n")
        for k, i in enumerate(keep):
            cell = row[i].copy()
            if n == 0:
                cell.stylize("bold")
            if k < len(keep) - 1:
                cell.pad_right(w[i] - len(cell.plain) + COLUMN_GAP)
            out.append_text(cell)
    return out


# ---- makima get directive NAME ---------------------------------------------------------------


def _header(directive: Mapping[str, Any]) -> Text:
    name = str(_get(directive, "metadata", "name"))
    title = str(_get(directive, "spec", "title") or "")
    head = Text()
    head.append(name, style="bold")
    if title:
        head.append(f"  {title}")
    head.append("\n")
    head.append("phase ")
    head.append_text(phase_text(_get(directive, "status", "phase") or "Pending"))
    if _get(directive, "spec", "paused"):
        head.append(" (paused)", style="yellow")
    head.append(f"  progress {_progress(directive)}")
    used = usage_text(_get(directive, "status", "usage"))
    if used:
        head.append(f"  usage {used}")
    url = _pr_url(directive)
    branch = _get(directive, "status", "pullRequest", "branch")
    if url:
        head.append("  PR ")
        head.append(url, style="underline")
    elif branch:
        head.append(f"  branch {branch}")
    message = _get(directive, "status", "message")
    if message:
        head.append(f"\n{message}", style="dim")
    return head


def _step_line(step: Mapping[str, Any], now: datetime, name_width: int) -> Text:
    status = step.get("status") or {}
    phase = str(status.get("phase") or "Pending")
    line = Text()
    line.append(step_name(step).ljust(name_width), style="bold")
    line.append("  ")
    line.append_text(phase_text(phase))
    line.append(" " * (_PHASE_WIDTH - len(phase)))
    line.append(f"  attempts {status.get('attempts') or 0:<2}")
    line.append(f"  {step_duration(step, now):>6}")
    if status.get("branch"):
        line.append(f"  {status['branch']}", style="dim")
    used = usage_text(status.get("usage"), short=True)
    if used:
        line.append(f"  {used}")
    deps = _get(step, "spec", "dependsOn") or []
    if deps:
        line.append(f"  ← {', '.join(deps)}", style="italic")
    nxt = parse_time(status.get("nextAttemptAt"))
    if nxt is not None and phase not in ("Succeeded", "Failed", "Skipped"):
        line.append(f"  retry in {format_duration((nxt - now).total_seconds())}", style="yellow")
    if status.get("message") and phase in ("Failed", "Skipped", "Pending", "Ready"):
        line.append(f"\n{status['message']}", style="dim")
    return line


_PHASE_WIDTH = len("Succeeded")


def _in_dependency_order(members: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Steps of one orderIndex group, dependencies before dependents, ties by name."""
    by_name = {step_name(s): s for s in members}
    nodes = [Node(name, tuple(_get(s, "spec", "dependsOn") or ())) for name, s in by_name.items()]
    return [by_name[name] for name in topological_order(nodes)]


def directive_tree(directive: dict[str, Any], steps: list[dict[str, Any]], now: datetime) -> RenderableType:
    """The directive's steps as a tree: a header (title, phase, progress, PR), then one branch
    per orderIndex ("phase 0", "phase 1", …) holding its steps — dependencies first — with
    phase, attempts, duration, branch and dependencies (← a, b)."""
    tree = Tree(_header(directive), guide_style="dim")
    if not steps:
        phase = _get(directive, "status", "phase") or "Pending"
        tree.add(Text("planning…" if phase in ("Pending", "Planning") else "no steps", style="dim"))
        return tree
    groups: dict[int, list[dict[str, Any]]] = {}
    for step in sorted(steps, key=lambda s: int(_get(s, "spec", "orderIndex") or 0)):
        groups.setdefault(int(_get(step, "spec", "orderIndex") or 0), []).append(step)
    name_width = max(len(step_name(s)) for s in steps)
    for index, members in groups.items():
        done = sum(1 for s in members if _get(s, "status", "phase") == "Succeeded")
        branch = tree.add(Text.assemble((f"phase {index}", "bold"), (f"  {done}/{len(members)} succeeded", "dim")))
        for step in _in_dependency_order(members):
            branch.add(_step_line(step, now, name_width))
    return tree


# ---- makima describe -------------------------------------------------------------------------


def _kv_table() -> Table:
    table = Table(box=None, show_header=False, pad_edge=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    return table


def conditions_table(conditions: list[dict[str, Any]], now: datetime) -> Table:
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("TYPE", "STATUS", "REASON", "AGE", "MESSAGE"):
        table.add_column(column, overflow="fold", no_wrap=column != "MESSAGE")
    for c in conditions:
        status = str(c.get("status", ""))
        table.add_row(
            str(c.get("type", "")),
            Text(status, style={"True": "green", "False": "red"}.get(status, "yellow")),
            str(c.get("reason", "")),
            age(c.get("lastTransitionTime"), now),
            str(c.get("message", "")),
        )
    return table


def _event_time(event: Mapping[str, Any]) -> datetime | None:
    return (
        parse_time(event.get("lastTimestamp"))
        or parse_time(event.get("eventTime"))
        or parse_time(event.get("firstTimestamp"))
        or parse_time(_get(event, "metadata", "creationTimestamp"))
    )


def events_table(events: list[dict[str, Any]], now: datetime, limit: int = 20) -> Table:
    """The most recent `limit` core/v1 Events, oldest first (as `kubectl describe` shows them)."""
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("TYPE", "REASON", "AGE", "OBJECT", "MESSAGE"):
        table.add_column(column, overflow="fold", no_wrap=column != "MESSAGE")
    epoch = datetime.min.replace(tzinfo=UTC)
    ordered = sorted(events, key=lambda e: _event_time(e) or epoch)[-limit:]
    for e in ordered:
        type_ = str(e.get("type") or "Normal")
        at = _event_time(e)
        count = e.get("count") or 1
        when = format_duration((now - at).total_seconds()) if at else "-"
        if count > 1:
            when += f" (x{count})"
        table.add_row(
            Text(type_, style="yellow" if type_ == "Warning" else ""),
            str(e.get("reason", "")),
            when,
            f"{_get(e, 'involvedObject', 'kind') or ''}/{_get(e, 'involvedObject', 'name') or ''}",
            str(e.get("message", "")),
        )
    return table


def describe(
    directive: dict[str, Any],
    steps: list[dict[str, Any]],
    events: list[dict[str, Any]],
    now: datetime | None = None,
) -> RenderableType:
    """Everything about one directive: spec summary, status, conditions, the step tree and
    recent events."""
    now = now or datetime.now(UTC)
    spec = directive.get("spec") or {}
    status = directive.get("status") or {}
    meta = directive.get("metadata") or {}
    info = _kv_table()
    info.add_row("Name", str(meta.get("name", "")))
    info.add_row("Namespace", str(meta.get("namespace", "")))
    info.add_row("Title", str(spec.get("title", "")))
    repo = spec.get("repository") or {}
    info.add_row("Repository", f"{repo.get('url', '')} ({repo.get('baseBranch') or 'main'})")
    execution = spec.get("execution") or {}
    info.add_row(
        "Execution",
        f"mode {execution.get('mode') or 'Auto'}, maxParallelSteps {execution.get('maxParallelSteps') or 4}, "
        f"retries {execution.get('retries', 2)}, stepTimeout {execution.get('stepTimeout') or '1h'}",
    )
    info.add_row("Paused", "yes" if spec.get("paused") else "no")
    phase = phase_text(status.get("phase") or "Pending")
    info.add_row("Phase", phase)
    info.add_row("Progress", _progress(directive))
    if status.get("message"):
        info.add_row("Message", str(status["message"]))
    used = usage_text(status.get("usage"))
    if used:
        info.add_row("Usage", used)
    budget = spec.get("budget") or {}
    if budget:
        limits = []
        if budget.get("maxCostUsd") is not None:
            limits.append(f"${budget['maxCostUsd']}")
        if budget.get("maxTokens") is not None:
            limits.append(f"{budget['maxTokens']:,} tokens")
        info.add_row("Budget", " or ".join(limits) or "-")
    info.add_row("Pull request", _pr_url(directive) or "-")
    if _get(status, "pullRequest", "branch"):
        info.add_row("Branch", str(status["pullRequest"]["branch"]))
    info.add_row(
        "Generation",
        f"spec {meta.get('generation', '-')}, observed {status.get('observedGeneration', '-')}, "
        f"plan {status.get('planGeneration', 0)}",
    )
    for key, label in (("planningTask", "Planning task"), ("completionTask", "Completion task")):
        if status.get(key):
            info.add_row(label, str(status[key]))
    for key, label in (("startedAt", "Started"), ("completedAt", "Completed")):
        if status.get(key):
            info.add_row(label, f"{status[key]} ({age(status[key], now)} ago)")
    info.add_row("Age", age(meta.get("creationTimestamp"), now))

    parts: list[RenderableType] = [info, Text("")]
    conditions = status.get("conditions") or []
    parts.append(Text("Conditions:", style="bold"))
    parts.append(conditions_table(conditions, now) if conditions else Text("  <none>", style="dim"))
    parts.append(Text(""))
    parts.append(Text("Steps:", style="bold"))
    parts.append(directive_tree(directive, steps, now))
    parts.append(Text(""))
    parts.append(Text("Events:", style="bold"))
    parts.append(events_table(events, now) if events else Text("  <none>", style="dim"))
    return Group(*parts)
