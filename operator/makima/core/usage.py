"""Agent usage of tasks, summed for steps and directives, and the budget check. Pure.

A task's usage is the `usage` record of its result (agents.Usage, reported by the runner
from the CLI's structured output), failed attempts included: they cost too.
"""

from __future__ import annotations

from collections.abc import Iterable

from makima.core.agents import Usage
from makima.core.models import Budget, UsageSummary
from makima.core.tasks import Task


def task_usage(task: Task) -> Usage | None:
    raw = (task.result or {}).get("usage")
    if not isinstance(raw, dict):
        return None
    try:
        return Usage.model_validate(raw)
    except ValueError:
        return None


def summarize(tasks: Iterable[Task]) -> UsageSummary | None:
    """The usage of these tasks, or None when none reported any."""
    records = [u for u in (task_usage(t) for t in tasks) if u is not None]
    if not records:
        return None
    costs = [u.cost_usd for u in records if u.cost_usd is not None]
    tokens_in = sum(u.input_tokens for u in records)
    tokens_out = sum(u.output_tokens for u in records)
    return UsageSummary(
        input_tokens=tokens_in,
        output_tokens=tokens_out,
        total_tokens=tokens_in + tokens_out,
        cost_usd=round(sum(costs), 6) if costs else None,
        tasks=len(records),
    )


def over_budget(budget: Budget | None, usage: UsageSummary | None) -> str | None:
    """Why the usage has reached the budget, or None."""
    if budget is None or usage is None:
        return None
    if budget.max_cost_usd is not None and usage.cost_usd is not None and usage.cost_usd >= budget.max_cost_usd:
        return f"agent cost ${usage.cost_usd:.4f} reached the budget of ${budget.max_cost_usd:.4f}"
    if budget.max_tokens is not None and usage.total_tokens >= budget.max_tokens:
        return f"{usage.total_tokens} agent tokens reached the budget of {budget.max_tokens}"
    return None


def describe(usage: UsageSummary | None) -> str:
    """One line for people: "12,345 tokens (10,000 in, 2,345 out), $0.1234"."""
    if usage is None:
        return "no usage reported"
    text = f"{usage.total_tokens:,} tokens ({usage.input_tokens:,} in, {usage.output_tokens:,} out)"
    if usage.cost_usd is not None:
        text += f", ${usage.cost_usd:.4f}"
    return text


def pull_request_section(tasks: Iterable[Task]) -> str:
    """The pull request body's "Agent usage" table: planning, each step, total ("" if none)."""
    rows: dict[str, list[Task]] = {}
    for t in tasks:
        label = t.step_name if t.step_name else t.kind.value
        rows.setdefault(label, []).append(t)
    lines = []
    for label, group in rows.items():
        used = summarize(group)
        if used is not None:
            cost = f"${used.cost_usd:.4f}" if used.cost_usd is not None else "-"
            lines.append(f"| {label} | {used.tasks} | {used.input_tokens:,} | {used.output_tokens:,} | {cost} |")
    total = summarize([t for group in rows.values() for t in group])
    if total is None:
        return ""
    cost = f"${total.cost_usd:.4f}" if total.cost_usd is not None else "-"
    head = ["## Agent usage", "", "| | runs | tokens in | tokens out | cost |", "|---|---:|---:|---:|---:|"]
    tail = [f"| **total** | {total.tasks} | {total.input_tokens:,} | {total.output_tokens:,} | {cost} |"]
    return "\n".join([*head, *lines, *tail]) + "\n"
