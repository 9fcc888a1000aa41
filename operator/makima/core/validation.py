"""The rules a planner's submission must follow before its steps are created.

`parse_submission` turns the planner's JSON into step submissions; `validate_submission`
checks a batch against the directive's existing steps (names, bounds, dependencies, cycles).
The API runs both when the planner submits, so the planner gets its errors back while it
runs; decide() runs them again on the stored submission before creating the steps.

Durations and DNS-1123 names are checked where the CRD fields are declared (models.py:
`parse_duration`, `check_dns_label`), so the API server and these rules say the same.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from makima.core.dag import Node, find_cycles
from makima.core.models import MAX_DEPENDS_ON, MAX_ORDER_INDEX, MAX_STEPS_PER_DIRECTIVE, check_dns_label
from makima.core.protocol import Problem, StepSubmission


@dataclass(frozen=True)
class Limits:
    """Size bounds for a directive's plan (defaults: the CRD bounds in models.py)."""

    max_steps: int = MAX_STEPS_PER_DIRECTIVE
    max_depends_on: int = MAX_DEPENDS_ON
    max_order_index: int = MAX_ORDER_INDEX


def parse_submission(raw: Any) -> tuple[list[StepSubmission], list[Problem]]:
    """Turn a planner's JSON (a list of step objects) into submissions, or Problems.

    Field errors (negative orderIndex, bad name, missing title, ...) name the step by its
    `name` when it has one, else by its position in the batch.
    """
    if not isinstance(raw, list):
        return [], [Problem(message="steps must be a JSON array of step objects", field="steps")]
    steps: list[StepSubmission] = []
    problems: list[Problem] = []
    for position, item in enumerate(raw):
        name = item.get("name") if isinstance(item, dict) else None
        label = f"step {name!r}" if isinstance(name, str) and name else f"step #{position}"
        try:
            steps.append(StepSubmission.model_validate(item))
        except ValidationError as exc:
            for err in exc.errors():
                loc = ".".join(str(x) for x in err["loc"]) or None
                problems.append(
                    Problem(
                        message=f"{label}: {loc or 'value'}: {err['msg']}",
                        field=loc,
                        step=name if isinstance(name, str) else None,
                    )
                )
    return steps, problems


def validate_submission(
    existing_steps: Iterable[Node],
    new_steps: Sequence[StepSubmission],
    limits: Limits | None = None,
    generation: int | None = None,
) -> list[Problem]:
    """Check a planner's batch against the directive's existing steps; [] means valid.

    Problems are reported in a stable order (by batch position, then kind) and each names
    the culprit step. `generation` is the generation the batch will be created with (used
    to reject an `orderIndex` that would deadlock against a dependency of the same
    generation); None means "a new generation", i.e. existing steps are never the same one.
    """
    limits = limits or Limits()
    existing = {n.name: n for n in existing_steps}
    if not new_steps:
        return [Problem(message="no steps submitted: a plan needs at least one step", field="steps")]
    return [
        *_size(existing, new_steps, limits),
        *_names_and_bounds(existing, new_steps, limits),
        *_dependencies(existing, new_steps, generation),
        *_cycles(existing, new_steps),
    ]


def _size(existing: Mapping[str, Node], new_steps: Sequence[StepSubmission], limits: Limits) -> list[Problem]:
    total = len(existing) + len(new_steps)
    if total <= limits.max_steps:
        return []
    message = (
        f"too many steps: {len(existing)} existing + {len(new_steps)} submitted = {total}, "
        f"the limit per directive is {limits.max_steps}"
    )
    return [Problem(message=message, field="steps")]


def _names_and_bounds(
    existing: Mapping[str, Node], new_steps: Sequence[StepSubmission], limits: Limits
) -> list[Problem]:
    problems: list[Problem] = []
    first_position: dict[str, int] = {}
    for position, step in enumerate(new_steps):
        problems += _name(position, step, existing, first_position)
        if step.name not in existing:
            first_position.setdefault(step.name, position)
        problems += _bounds(step, limits)
    return problems


def _name(
    position: int, step: StepSubmission, existing: Mapping[str, Node], first_position: Mapping[str, int]
) -> list[Problem]:
    """A DNS-1123 name, neither an existing step's nor one used earlier in the batch."""
    name = step.name
    problems: list[Problem] = []
    try:
        check_dns_label(name)
    except ValueError as exc:
        problems.append(Problem(message=f"step #{position}: {exc}", field="name", step=name))
    if name in existing:
        message = (
            f"step {name!r} already exists (generation {existing[name].generation}); "
            "choose a new name — existing steps cannot be redefined"
        )
        problems.append(Problem(message=message, field="name", step=name))
    elif name in first_position:
        message = f"step name {name!r} is used twice in this batch (positions {first_position[name]} and {position})"
        problems.append(Problem(message=message, field="name", step=name))
    return problems


def _bounds(step: StepSubmission, limits: Limits) -> list[Problem]:
    name, order = step.name, step.order_index
    problems: list[Problem] = []
    if order < 0:
        message = f"step {name!r}: orderIndex must be >= 0, got {order}"
        problems.append(Problem(message=message, field="orderIndex", step=name))
    elif order > limits.max_order_index:
        message = f"step {name!r}: orderIndex must be <= {limits.max_order_index}, got {order}"
        problems.append(Problem(message=message, field="orderIndex", step=name))
    if len(step.depends_on) > limits.max_depends_on:
        message = f"step {name!r} has {len(step.depends_on)} dependencies, the limit is {limits.max_depends_on}"
        problems.append(Problem(message=message, field="dependsOn", step=name))
    return problems


def _dependencies(
    existing: Mapping[str, Node], new_steps: Sequence[StepSubmission], generation: int | None
) -> list[Problem]:
    """Each dependency names another known step, once, that can finish before the step starts."""
    batch = {s.name: s for s in new_steps}
    known = set(existing) | set(batch)
    problems: list[Problem] = []
    for step in new_steps:
        seen: set[str] = set()
        for dep in step.depends_on:
            if dep == step.name:
                problems.append(
                    Problem(message=f"step {step.name!r} depends on itself", field="dependsOn", step=step.name)
                )
            elif dep not in known:
                message = (
                    f"step {step.name!r} depends on unknown step {dep!r}: dependsOn must name a step "
                    "of this batch or an existing step of the directive"
                )
                problems.append(Problem(message=message, field="dependsOn", step=step.name))
            elif dep in seen:
                message = f"step {step.name!r} lists dependency {dep!r} twice"
                problems.append(Problem(message=message, field="dependsOn", step=step.name))
            else:
                problems += _order_deadlocks(step, dep, batch.get(dep), existing.get(dep), generation)
            seen.add(dep)
    return problems


def _order_deadlocks(
    step: StepSubmission,
    dep: str,
    in_batch: StepSubmission | None,
    existing: Node | None,
    generation: int | None,
) -> list[Problem]:
    """A dependency of the same generation with a higher orderIndex: the step waits for every
    lower orderIndex of its generation, the dependency for the step, so neither starts."""
    problems: list[Problem] = []
    if in_batch is not None and in_batch.order_index > step.order_index:
        message = (
            f"step {step.name!r} (orderIndex {step.order_index}) depends on {dep!r} "
            f"(orderIndex {in_batch.order_index}) of the same generation: a step waits for "
            "every lower orderIndex, so this can never start; give the dependency an "
            "orderIndex <= the step's"
        )
        problems.append(Problem(message=message, field="orderIndex", step=step.name))
    same_generation = existing is not None and generation is not None and existing.generation == generation
    if existing is not None and same_generation and existing.order_index > step.order_index:
        message = (
            f"step {step.name!r} (orderIndex {step.order_index}) depends on {dep!r} "
            f"(orderIndex {existing.order_index}) of the same generation: it could never start"
        )
        problems.append(Problem(message=message, field="orderIndex", step=step.name))
    return problems


def _cycles(existing: Mapping[str, Node], new_steps: Sequence[StepSubmission]) -> list[Problem]:
    graph: dict[str, tuple[str, ...]] = {n.name: n.depends_on for n in existing.values()}
    for step in new_steps:
        graph.setdefault(step.name, tuple(step.depends_on))
    return [
        Problem(message=f"dependency cycle: {' -> '.join(cycle)}", field="dependsOn", step=cycle[0])
        for cycle in find_cycles(graph)
    ]
