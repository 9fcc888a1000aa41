"""What the dashboard shows, as pure functions of Kubernetes objects and task events.

Directives and steps arrive as plain dicts (the API's JSON); the page gets small JSON
documents: a directive row, a step node, the DAG's layout, a step's attempts. No I/O here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from makima.core.naming import LABEL_STEP, step_task_id

# Geometry of the drawn DAG (SVG user units, i.e. CSS pixels at zoom 1).
NODE_W = 180
NODE_H = 38
COL_GAP = 70
ROW_GAP = 14
MARGIN = 16

TERMINAL_STEP_PHASES = frozenset({"Succeeded", "Failed", "Skipped"})


def step_name(step: Mapping[str, Any]) -> str:
    meta = step.get("metadata") or {}
    return str((meta.get("labels") or {}).get(LABEL_STEP) or meta.get("name", ""))


def _progress(status: Mapping[str, Any]) -> tuple[int, int]:
    counts = status.get("steps") or {}
    total, done = int(counts.get("total") or 0), int(counts.get("succeeded") or 0)
    if not total and status.get("progress"):
        left, _, right = str(status["progress"]).partition("/")
        if left.isdigit() and right.isdigit():
            done, total = int(left), int(right)
    return done, total


def directive_row(directive: Mapping[str, Any]) -> dict[str, Any]:
    """One line of the list: name, title, phase, progress, PR, creation time."""
    meta = directive.get("metadata") or {}
    spec = directive.get("spec") or {}
    status = directive.get("status") or {}
    done, total = _progress(status)
    pr = status.get("pullRequest") or {}
    return {
        "namespace": meta.get("namespace", "default"),
        "name": meta.get("name", ""),
        "title": spec.get("title", ""),
        "phase": status.get("phase") or "Pending",
        "paused": bool(spec.get("paused")),
        "done": done,
        "total": total,
        "failed": int((status.get("steps") or {}).get("failed") or 0),
        "prUrl": pr.get("url"),
        "created": meta.get("creationTimestamp"),
        "message": status.get("message"),
    }


def directive_detail(directive: Mapping[str, Any]) -> dict[str, Any]:
    """The directive's header: the row plus PR, tasks, conditions, plan generation, repository."""
    spec = directive.get("spec") or {}
    status = directive.get("status") or {}
    pr = status.get("pullRequest") or {}
    row = directive_row(directive)
    row.update(
        {
            "goal": spec.get("goal", ""),
            "repository": (spec.get("repository") or {}).get("url"),
            "baseBranch": (spec.get("repository") or {}).get("baseBranch", "main"),
            "pullRequest": {
                "url": pr.get("url"),
                "branch": pr.get("branch"),
                "draft": bool((spec.get("pullRequest") or {}).get("draft")),
                "enabled": (spec.get("pullRequest") or {}).get("enabled", True),
            },
            "planGeneration": int(status.get("planGeneration") or 0),
            "planningTask": status.get("planningTask"),
            "completionTask": status.get("completionTask"),
            "conditions": [
                {k: c.get(k) for k in ("type", "status", "reason", "message", "lastTransitionTime")}
                for c in status.get("conditions") or []
            ],
            "startedAt": status.get("startedAt"),
            "completedAt": status.get("completedAt"),
            "maxParallelSteps": (spec.get("execution") or {}).get("maxParallelSteps"),
        }
    )
    return row


def step_node(step: Mapping[str, Any]) -> dict[str, Any]:
    """A step as the graph and the step panel see it."""
    meta = step.get("metadata") or {}
    spec = step.get("spec") or {}
    status = step.get("status") or {}
    task = status.get("task") or {}
    return {
        "name": step_name(step),
        "object": meta.get("name", ""),
        "title": spec.get("title", ""),
        "description": spec.get("description", ""),
        "dependsOn": list(spec.get("dependsOn") or []),
        "orderIndex": int(spec.get("orderIndex") or 0),
        "generation": int(spec.get("generation") or 1),
        "phase": status.get("phase") or "Pending",
        "attempts": int(status.get("attempts") or 0),
        "task": task.get("id"),
        "executor": task.get("executor"),
        "branch": status.get("branch"),
        "commit": status.get("commit"),
        "startedAt": status.get("startedAt"),
        "finishedAt": status.get("finishedAt"),
        "nextAttemptAt": status.get("nextAttemptAt"),
        "message": status.get("message"),
    }


def structure_key(nodes: Iterable[Mapping[str, Any]]) -> tuple[tuple[str, tuple[str, ...], int, int], ...]:
    """What the layout depends on: when it is unchanged, only colours and labels need updating."""
    return tuple(sorted((n["name"], tuple(n["dependsOn"]), n["orderIndex"], n["generation"]) for n in nodes))


def columns(nodes: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Column of each step: its dependency depth (0 for steps depending on nothing known).

    Unknown dependencies are ignored; a cycle (which the operator refuses, but a page must not
    hang on) is cut where it is met.
    """
    deps = {n["name"]: [d for d in n["dependsOn"]] for n in nodes}
    deps = {name: [d for d in ds if d in deps and d != name] for name, ds in deps.items()}
    depth: dict[str, int] = {}
    for start in sorted(deps):
        if start in depth:
            continue
        # Iterative DFS (200 steps in a chain would be deep for recursion).
        stack: list[tuple[str, int]] = [(start, 0)]
        on_path: set[str] = set()
        while stack:
            name, i = stack.pop()
            if i == 0:
                on_path.add(name)
            pending = [d for d in deps[name][i:] if d not in depth and d not in on_path]
            if pending:
                stack.append((name, deps[name].index(pending[0]) + 1))
                stack.append((pending[0], 0))
                continue
            depth[name] = 1 + max((depth[d] for d in deps[name] if d in depth), default=-1)
            on_path.discard(name)
    return depth


def layout(nodes: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Positions for the SVG: columns by dependency depth, rows ordered by orderIndex then by the
    mean row of the dependencies (fewer crossings), then by name. Edges go dependency → step."""
    col = columns(nodes)
    by_name = {n["name"]: n for n in nodes}
    row_of: dict[str, float] = {}
    placed: dict[str, dict[str, Any]] = {}
    n_cols = 1 + max(col.values(), default=-1)
    tallest = 0
    for c in range(n_cols):
        members = [name for name, v in col.items() if v == c]

        def key(name: str) -> tuple[int, float, str]:
            ds = [row_of[d] for d in by_name[name]["dependsOn"] if d in row_of]
            return (by_name[name]["orderIndex"], sum(ds) / len(ds) if ds else 0.0, name)

        for r, name in enumerate(sorted(members, key=key)):
            row_of[name] = r
            placed[name] = {
                "name": name,
                "col": c,
                "row": r,
                "x": MARGIN + c * (NODE_W + COL_GAP),
                "y": MARGIN + r * (NODE_H + ROW_GAP),
            }
        tallest = max(tallest, len(members))
    edges = [[d, n["name"]] for n in nodes for d in n["dependsOn"] if d in placed and d != n["name"]]
    return {
        "nodes": [placed[n["name"]] for n in nodes if n["name"] in placed],
        "edges": edges,
        "nodeWidth": NODE_W,
        "nodeHeight": NODE_H,
        "width": 2 * MARGIN + max(n_cols, 1) * NODE_W + max(n_cols - 1, 0) * COL_GAP,
        "height": 2 * MARGIN + max(tallest, 1) * NODE_H + max(tallest - 1, 0) * ROW_GAP,
    }


def generations(nodes: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Which steps each plan generation added, oldest first."""
    by_gen: dict[int, list[str]] = {}
    for n in nodes:
        by_gen.setdefault(int(n["generation"]), []).append(n["name"])
    return [{"generation": g, "steps": sorted(names)} for g, names in sorted(by_gen.items())]


def event_row(event: Mapping[str, Any]) -> dict[str, Any]:
    """A core/v1 Event, as `kubectl describe` lists it."""
    involved = event.get("involvedObject") or {}
    return {
        "type": event.get("type"),
        "reason": event.get("reason"),
        "message": event.get("message"),
        "object": f"{involved.get('kind', '')}/{involved.get('name', '')}",
        "count": event.get("count") or 1,
        "last": event.get("lastTimestamp") or event.get("eventTime") or event.get("firstTimestamp"),
    }


def recent_events(events: Iterable[Mapping[str, Any]], limit: int = 30) -> list[dict[str, Any]]:
    rows = sorted((event_row(e) for e in events), key=lambda r: str(r["last"] or ""))
    return rows[-limit:][::-1]


def attempt_task_ids(step: Mapping[str, Any]) -> list[tuple[int, str]]:
    """(attempt, task id) of every attempt the step has started, newest first. Task ids are
    derived from (step uid, attempt), so earlier attempts can be read back too."""
    uid = str((step.get("metadata") or {}).get("uid") or "")
    attempts = int((step.get("status") or {}).get("attempts") or 0)
    if not uid:
        return []
    return [(n, step_task_id(uid, n)) for n in range(attempts, 0, -1)]


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def attempt_summary(number: int, task_id: str, events: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """An attempt from its task's event log: outcome, duration, branch, commit, message.

    The outcome is the `result` event's (succeeded/failed); without one the attempt is running
    (or was lost). Duration runs from the first event to the result (or to the last event).
    """
    result = next((e for e in reversed(events) if e.get("type") == "result"), None)
    payload = (result or {}).get("payload") or {}
    first = _parse_time(events[0].get("at")) if events else None
    last_event = result or (events[-1] if events else None)
    last = _parse_time(last_event.get("at")) if last_event else None
    duration = (last - first).total_seconds() if first and last else None
    return {
        "attempt": number,
        "task": task_id,
        "outcome": payload.get("outcome") or ("running" if events else "no events"),
        "duration": duration,
        "started": events[0].get("at") if events else None,
        "branch": payload.get("branch"),
        "commit": payload.get("commit"),
        "message": payload.get("message") or None,
        "events": len(events),
    }


def log_lines(event: Mapping[str, Any]) -> list[str]:
    """What `makima logs` prints for one event (the same function, so the two agree)."""
    from makima.cli.people import format_event

    return format_event(dict(event))
