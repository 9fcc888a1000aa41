"""Snapshot tests of the people CLI's renderers (makima.cli.views).

The renderables are printed to a fixed-width rich Console without colour and compared with
tests/cli/snapshots/. Regenerate with MAKIMA_UPDATE_SNAPSHOTS=1 pytest tests/cli/test_views.py,
then review the diff."""

from __future__ import annotations

import io
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console, RenderableType

from makima.cli import views

SNAPSHOTS = Path(__file__).parent / "snapshots"
UPDATE = os.environ.get("MAKIMA_UPDATE_SNAPSHOTS") == "1"
NOW = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)


def render(renderable: RenderableType, width: int = 110) -> str:
    console = Console(width=width, record=True, color_system=None, force_terminal=False, file=io.StringIO())
    console.print(renderable)
    return "\n".join(line.rstrip() for line in console.export_text(styles=False).splitlines()) + "\n"


def check(name: str, text: str) -> None:
    path = SNAPSHOTS / f"{name}.txt"
    if UPDATE:
        SNAPSHOTS.mkdir(exist_ok=True)
        path.write_text(text)
        return
    if not path.exists():
        pytest.fail(f"missing snapshot {path}; run with MAKIMA_UPDATE_SNAPSHOTS=1 to create it")
    assert text == path.read_text()


def directive(**status: Any) -> dict[str, Any]:
    return {
        "apiVersion": "makima.dev/v1alpha1",
        "kind": "Directive",
        "metadata": {
            "name": "add-search",
            "namespace": "default",
            "generation": 1,
            "creationTimestamp": "2025-03-01T11:00:00Z",
        },
        "spec": {
            "title": "Add full-text search",
            "goal": "Search notes by content.",
            "repository": {"url": "https://git.example/notes.git"},
        },
        "status": status,
    }


def step(
    name: str,
    order: int,
    phase: str,
    depends_on: tuple[str, ...] = (),
    attempts: int = 0,
    started: str | None = None,
    finished: str | None = None,
    message: str | None = None,
    next_attempt: str | None = None,
) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": phase, "attempts": attempts}
    if attempts:
        status["branch"] = f"makima/step-{name}-0123abcd"
    if started:
        status["startedAt"] = started
    if finished:
        status["finishedAt"] = finished
    if message:
        status["message"] = message
    if next_attempt:
        status["nextAttemptAt"] = next_attempt
    return {
        "metadata": {"name": f"add-search-{name}", "labels": {"makima.dev/step": name}},
        "spec": {
            "directive": "add-search",
            "title": name.title(),
            "dependsOn": list(depends_on),
            "orderIndex": order,
        },
        "status": status,
    }


def diamond_steps() -> list[dict[str, Any]]:
    """a → (b, c) → d in phase 0, then docs in phase 1, plus a failed and a skipped step."""
    return [
        step("d", 0, "Pending", ("b", "c")),
        step("a", 0, "Succeeded", attempts=1, started="2025-03-01T11:10:00Z", finished="2025-03-01T11:12:05Z"),
        step("b", 0, "Running", ("a",), attempts=2, started="2025-03-01T11:58:30Z"),
        step(
            "c",
            0,
            "Ready",
            ("a",),
            attempts=1,
            started="2025-03-01T11:12:10Z",
            message="attempt 1 failed: agent exited 1",
            next_attempt="2025-03-01T12:00:30Z",
        ),
        step("docs", 1, "Pending"),
        step(
            "index",
            2,
            "Failed",
            attempts=3,
            started="2025-03-01T11:20:00Z",
            finished="2025-03-01T11:21:00Z",
            message="agent exited 2",
        ),
        step("ui", 2, "Skipped", ("index",), message="dependency index Failed"),
    ]


def test_tree_diamond_and_phases() -> None:
    d = directive(
        phase="Executing",
        progress="1/7",
        steps={"total": 7, "succeeded": 1},
        pullRequest={"url": "https://git.example/notes/pull/7", "branch": "makima/add-search-1a2b3c4d"},
    )
    check("tree_diamond", render(views.directive_tree(d, diamond_steps(), NOW)))


def test_tree_planning_without_steps() -> None:
    d = directive(phase="Planning")
    d["spec"]["paused"] = True
    check("tree_planning", render(views.directive_tree(d, [], NOW)))


def test_directive_table() -> None:
    done = directive(phase="Completed", progress="3/3", pullRequest={"url": "https://git.example/notes/pull/7"})
    other = directive(phase="Executing", progress="1/4")
    other["metadata"]["name"] = "fix-login"
    other["spec"]["title"] = "Fix login redirect"
    other["spec"]["paused"] = True
    fresh = directive()
    fresh["metadata"]["name"] = "brand-new"
    check("table", render(views.directive_table([done, other, fresh], now=NOW)))


def test_describe() -> None:
    d = directive(
        phase="Failed",
        progress="5/7",
        message="step index Failed after 3 attempts",
        planningTask="7a0c0b3e-0000-5000-8000-000000000001",
        conditions=[
            {
                "type": "Planned",
                "status": "True",
                "reason": "StepsCreated",
                "message": "7 steps",
                "lastTransitionTime": "2025-03-01T11:05:00Z",
            },
            {
                "type": "Ready",
                "status": "False",
                "reason": "StepFailed",
                "message": "step index failed",
                "lastTransitionTime": "2025-03-01T11:21:00Z",
            },
        ],
    )
    events: list[dict[str, Any]] = [
        {
            "type": "Warning",
            "reason": "StepFailed",
            "message": "index: agent exited 2",
            "lastTimestamp": "2025-03-01T11:21:00Z",
            "involvedObject": {"kind": "DirectiveStep", "name": "add-search-index"},
        },
        {
            "type": "Normal",
            "reason": "Planned",
            "message": "7 steps in 3 phases",
            "lastTimestamp": "2025-03-01T11:05:00Z",
            "count": 2,
            "involvedObject": {"kind": "Directive", "name": "add-search"},
        },
    ]
    check("describe", render(views.describe(d, diamond_steps(), events, now=NOW)))


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(None, "-"), (0.25, "250ms"), (42, "42s"), (185, "3m05s"), (7620, "2h07m"), (273600, "3d04h")],
)
def test_format_duration(seconds: float | None, text: str) -> None:
    assert views.format_duration(seconds) == text


def test_tree_lists_dependencies_before_dependents() -> None:
    steps = [step("alpha", 0, "Pending", ("zulu",)), step("zulu", 0, "Running", attempts=1), step("mid", 0, "Pending")]
    lines = [line for line in render(views.directive_tree(directive(), steps, NOW)).splitlines() if "attempts" in line]
    assert [line.split()[1] for line in lines] == ["mid", "zulu", "alpha"]


LONG_PR = "https://git.example/an-organisation/a-repository-with-a-long-name/pull/12345"


def _lines(text: Any) -> list[str]:
    return [line.rstrip() for line in text.plain.splitlines()]


def test_directive_table_piped_keeps_every_column_and_never_cuts_the_pr() -> None:
    d = directive(phase="Completed", progress="3/3", pullRequest={"url": LONG_PR})
    lines = _lines(views.directive_table([d], now=NOW))  # width None: piped
    assert lines[0].split() == ["NAME", "TITLE", "PHASE", "PROGRESS", "PR", "AGE"]
    assert LONG_PR in lines[1] and len(lines) == 2
    # printed through an 80-column console that is not a terminal: one line, untouched
    assert LONG_PR in render(views.directive_table([d], now=NOW), width=80)


def test_directive_table_on_a_narrow_terminal_drops_title_then_age_never_the_pr() -> None:
    d = directive(phase="Completed", progress="3/3", pullRequest={"url": LONG_PR})
    full = len(_lines(views.directive_table([d], now=NOW))[1])
    header = _lines(views.directive_table([d], now=NOW, width=full))[0].split()
    assert header == ["NAME", "TITLE", "PHASE", "PROGRESS", "PR", "AGE"]
    header = _lines(views.directive_table([d], now=NOW, width=full - 1))[0].split()
    assert header == ["NAME", "PHASE", "PROGRESS", "PR", "AGE"]
    narrow = _lines(views.directive_table([d], now=NOW, width=80))
    assert narrow[0].split() == ["NAME", "PHASE", "PR"] and LONG_PR in narrow[1]


def test_usage_and_budget_are_shown() -> None:
    usage = {"inputTokens": 10_000, "outputTokens": 2_345, "totalTokens": 12_345, "costUsd": 0.1234, "tasks": 3}
    d = directive(phase="Paused", progress="2/3", usage=usage, message="paused: budget reached")
    d["spec"]["budget"] = {"maxCostUsd": 0.1, "maxTokens": 50_000}
    steps = [step("schema", 0, "Succeeded", ())]
    steps[0]["status"]["usage"] = {**usage, "totalTokens": 1_500, "costUsd": 0.05}
    tree = render(views.directive_tree(d, steps, NOW))
    assert "usage 12,345 tokens, $0.1234" in tree
    assert "1.5k tok $0.05" in tree
    described = render(views.describe(d, steps, [], NOW))
    assert "Usage" in described and "12,345 tokens, $0.1234" in described
    assert "$0.1 or 50,000 tokens" in described
    assert views.usage_text(None) == "" and views.usage_text({"totalTokens": 7}) == "7 tokens"
