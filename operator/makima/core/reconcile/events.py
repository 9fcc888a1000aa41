"""Event texts: one line each, and the one event a person watches for (Completed or Failed)."""

from __future__ import annotations

from makima.core.models import DirectivePhase, DirectiveStatus
from makima.core.reconcile.actions import EmitEvent
from makima.core.reconcile.reasons import Reason


def one_line(message: str, limit: int = 1024) -> str:
    """An Event message as `kubectl describe` can show it in its table: the first non-blank
    line, then a pointer to the rest (a task's full output is in its log: `makima logs`)."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    if not lines:
        return ""
    first = lines[0]
    if len(lines) > 1:
        first += f" (+{len(lines) - 1} more lines in the task log)"
    return first if len(first) <= limit else first[: limit - 1] + "…"


def outcome_events(before: DirectiveStatus, after: DirectiveStatus, pr_reason: str) -> list[EmitEvent]:
    """One event when the directive reaches Completed or Failed."""
    if after.phase is before.phase:
        return []
    if after.phase is DirectivePhase.COMPLETED:
        pr = after.pull_request
        if pr and pr.url:
            return [EmitEvent("Normal", pr_reason, f"pull request {pr.url} (branch {pr.branch})")]
        branch = pr.branch if pr else "the directive branch"
        return [EmitEvent("Normal", Reason.BRANCH_READY, f"every step merged into {branch}")]
    if after.phase is DirectivePhase.FAILED:
        return [EmitEvent("Warning", Reason.DIRECTIVE_FAILED, after.message or "directive failed")]
    return []
