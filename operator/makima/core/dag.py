"""Pure DAG rules over directive steps: validation, readiness, skip propagation, order, counts.

Standard library and our models only. Every function takes plain data (`Node` values or
planner submissions) and returns plain data; nothing here reads a clock or calls out.

Two kinds of ordering constrain a step:

* ``dependsOn`` — explicit edges to other steps of the same directive (by name);
* ``orderIndex`` within a generation — a step waits for every step of its own generation
  with a lower ``orderIndex`` ("phases"). Steps of other generations do not constrain it.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from makima.core.models import (
    MAX_DEPENDS_ON,
    MAX_ORDER_INDEX,
    MAX_STEPS_PER_DIRECTIVE,
    StepCounts,
    StepPhase,
    check_dns_label,
)
from makima.core.protocol import Problem, StepSubmission

_BAD = (StepPhase.FAILED, StepPhase.SKIPPED)


@dataclass(frozen=True)
class Node:
    """What the DAG rules need to know about one step (existing or submitted)."""

    name: str
    depends_on: tuple[str, ...] = ()
    order_index: int = 0
    generation: int = 1
    phase: StepPhase = StepPhase.PENDING


@dataclass(frozen=True)
class Limits:
    """Size bounds for a directive's plan (defaults: the CRD bounds in models.py)."""

    max_steps: int = MAX_STEPS_PER_DIRECTIVE
    max_depends_on: int = MAX_DEPENDS_ON
    max_order_index: int = MAX_ORDER_INDEX


@dataclass(frozen=True)
class Progress:
    counts: StepCounts
    text: str  # "3/7": succeeded / total


# ---- validation -----------------------------------------------------------------------------


def parse_submission(raw: Any) -> tuple[list[StepSubmission], list[Problem]]:
    """Turn a planner's JSON (a list of step objects) into submissions, or Problems.

    Field errors (negative orderIndex, bad name, missing title, ...) name the step by its
    `name` when it has one, else by its position in the batch.
    """
    if not isinstance(raw, list):
        return [], [Problem(message="steps must be a JSON array of step objects", field="steps")]
    steps: list[StepSubmission] = []
    problems: list[Problem] = []
    for pos, item in enumerate(raw):
        name = item.get("name") if isinstance(item, dict) else None
        label = f"step {name!r}" if isinstance(name, str) and name else f"step #{pos}"
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
    lim = limits or Limits()
    existing = {n.name: n for n in existing_steps}
    problems: list[Problem] = []

    if not new_steps:
        problems.append(Problem(message="no steps submitted: a plan needs at least one step", field="steps"))
        return problems
    total = len(existing) + len(new_steps)
    if total > lim.max_steps:
        problems.append(
            Problem(
                message=(
                    f"too many steps: {len(existing)} existing + {len(new_steps)} submitted = {total}, "
                    f"the limit per directive is {lim.max_steps}"
                ),
                field="steps",
            )
        )

    first_pos: dict[str, int] = {}
    for pos, step in enumerate(new_steps):
        name = step.name
        try:
            check_dns_label(name)
        except ValueError as exc:
            problems.append(Problem(message=f"step #{pos}: {exc}", field="name", step=name))
        if name in existing:
            problems.append(
                Problem(
                    message=(
                        f"step {name!r} already exists (generation {existing[name].generation}); "
                        "choose a new name — existing steps cannot be redefined"
                    ),
                    field="name",
                    step=name,
                )
            )
        elif name in first_pos:
            problems.append(
                Problem(
                    message=f"step name {name!r} is used twice in this batch (positions {first_pos[name]} and {pos})",
                    field="name",
                    step=name,
                )
            )
        else:
            first_pos[name] = pos
        if step.order_index < 0:
            problems.append(
                Problem(
                    message=f"step {name!r}: orderIndex must be >= 0, got {step.order_index}",
                    field="orderIndex",
                    step=name,
                )
            )
        elif step.order_index > lim.max_order_index:
            problems.append(
                Problem(
                    message=f"step {name!r}: orderIndex must be <= {lim.max_order_index}, got {step.order_index}",
                    field="orderIndex",
                    step=name,
                )
            )
        if len(step.depends_on) > lim.max_depends_on:
            problems.append(
                Problem(
                    message=(
                        f"step {name!r} has {len(step.depends_on)} dependencies, the limit is {lim.max_depends_on}"
                    ),
                    field="dependsOn",
                    step=name,
                )
            )

    batch = {s.name: s for s in new_steps}
    known = set(existing) | set(batch)
    for step in new_steps:
        seen: set[str] = set()
        for dep in step.depends_on:
            if dep == step.name:
                problems.append(
                    Problem(message=f"step {step.name!r} depends on itself", field="dependsOn", step=step.name)
                )
            elif dep not in known:
                problems.append(
                    Problem(
                        message=(
                            f"step {step.name!r} depends on unknown step {dep!r}: dependsOn must name a step "
                            "of this batch or an existing step of the directive"
                        ),
                        field="dependsOn",
                        step=step.name,
                    )
                )
            elif dep in seen:
                problems.append(
                    Problem(
                        message=f"step {step.name!r} lists dependency {dep!r} twice",
                        field="dependsOn",
                        step=step.name,
                    )
                )
            else:
                other = batch.get(dep)
                if other is not None and other.order_index > step.order_index:
                    problems.append(
                        Problem(
                            message=(
                                f"step {step.name!r} (orderIndex {step.order_index}) depends on {dep!r} "
                                f"(orderIndex {other.order_index}) of the same generation: a step waits for "
                                "every lower orderIndex, so this can never start; give the dependency an "
                                "orderIndex <= the step's"
                            ),
                            field="orderIndex",
                            step=step.name,
                        )
                    )
                ex = existing.get(dep)
                if (
                    ex is not None
                    and generation is not None
                    and ex.generation == generation
                    and ex.order_index > step.order_index
                ):
                    problems.append(
                        Problem(
                            message=(
                                f"step {step.name!r} (orderIndex {step.order_index}) depends on {dep!r} "
                                f"(orderIndex {ex.order_index}) of the same generation: it could never start"
                            ),
                            field="orderIndex",
                            step=step.name,
                        )
                    )
            seen.add(dep)

    graph: dict[str, tuple[str, ...]] = {n.name: n.depends_on for n in existing.values()}
    for step in new_steps:
        graph.setdefault(step.name, tuple(step.depends_on))
    for cycle in find_cycles(graph):
        problems.append(
            Problem(
                message=f"dependency cycle: {' -> '.join(cycle)}",
                field="dependsOn",
                step=cycle[0],
            )
        )
    return problems


def find_cycles(graph: Mapping[str, Sequence[str]]) -> list[list[str]]:
    """Every distinct cycle met by a depth-first walk, as a closed path ["a", "b", "a"].

    Deterministic: nodes are visited by name, edges in their given order. Self-edges are
    left to the caller (validate_submission reports them as "depends on itself").
    Unknown targets are ignored.
    """
    white, grey, black = 0, 1, 2
    color = dict.fromkeys(graph, white)
    cycles: list[list[str]] = []
    seen_cycles: set[frozenset[str]] = set()

    for root in sorted(graph):
        if color[root] != white:
            continue
        # iterative DFS: stack of (node, iterator position)
        path: list[str] = [root]
        pos: list[int] = [0]
        color[root] = grey
        while path:
            node = path[-1]
            deps = graph.get(node, ())
            if pos[-1] < len(deps):
                dep = deps[pos[-1]]
                pos[-1] += 1
                if dep == node or dep not in color:
                    continue
                if color[dep] == grey:
                    start = path.index(dep)
                    cyc = [*path[start:], dep]
                    key = frozenset(cyc)
                    if key not in seen_cycles:
                        seen_cycles.add(key)
                        cycles.append(cyc)
                elif color[dep] == white:
                    color[dep] = grey
                    path.append(dep)
                    pos.append(0)
            else:
                color[node] = black
                path.pop()
                pos.pop()
    return cycles


# ---- readiness and skipping -------------------------------------------------------------------


def _blockers(node: Node, nodes: Mapping[str, Node]) -> tuple[list[Node], list[Node]]:
    """(dependencies, same-generation lower-orderIndex steps) of `node` that exist."""
    deps = [nodes[d] for d in node.depends_on if d in nodes]
    earlier = [
        other
        for other in nodes.values()
        if other.generation == node.generation and other.order_index < node.order_index
    ]
    earlier.sort(key=lambda n: (n.order_index, n.name))
    return deps, earlier


def is_ready(node: Node, nodes: Mapping[str, Node]) -> bool:
    """Every dependency (which must exist) and every lower orderIndex of its generation Succeeded."""
    if any(d not in nodes for d in node.depends_on):
        return False
    deps, earlier = _blockers(node, nodes)
    return all(n.phase is StepPhase.SUCCEEDED for n in (*deps, *earlier))


def ready_steps(nodes: Iterable[Node]) -> list[str]:
    """Names of Pending or Ready steps whose preconditions hold, by (orderIndex, name).

    A dependency that does not exist (yet) keeps the step waiting: steps of one batch may
    be created one object at a time.
    """
    index = {n.name: n for n in nodes}
    out = [n for n in index.values() if n.phase in (StepPhase.PENDING, StepPhase.READY) and is_ready(n, index)]
    out.sort(key=lambda n: (n.order_index, n.name))
    return [n.name for n in out]


def skip_propagation(nodes: Iterable[Node]) -> dict[str, str]:
    """Steps (Pending or Ready) that can never run, mapped to the reason, transitively.

    A step is skipped when a dependency Failed or was Skipped, or when a step of its
    generation with a lower orderIndex Failed or was Skipped. Steps skipped here count as
    Skipped for the steps after them, so one call settles the whole downstream.
    """
    index = {n.name: n for n in nodes}
    phase = {name: n.phase for name, n in index.items()}
    reasons: dict[str, str] = {}
    for name in topological_order(index.values()):
        node = index[name]
        if phase[name] not in (StepPhase.PENDING, StepPhase.READY):
            continue
        deps, earlier = _blockers(node, index)
        reason = None
        for dep in deps:
            if phase[dep.name] in _BAD:
                reason = f"dependency {dep.name!r} {_verb(phase[dep.name])}"
                break
        if reason is None:
            for other in earlier:
                if phase[other.name] in _BAD:
                    reason = (
                        f"step {other.name!r} (orderIndex {other.order_index} < {node.order_index}, "
                        f"generation {node.generation}) {_verb(phase[other.name])}"
                    )
                    break
        if reason is not None:
            reasons[name] = reason
            phase[name] = StepPhase.SKIPPED
    return reasons


def _verb(phase: StepPhase) -> str:
    return "failed" if phase is StepPhase.FAILED else "was skipped"


# ---- order and counts --------------------------------------------------------------------------


def topological_order(nodes: Iterable[Node]) -> list[str]:
    """Names in dependency order; among steps free to go, lowest (generation, orderIndex, name)
    first: an earlier plan's work comes before a re-plan's.

    Stable and total: dependencies on unknown steps are ignored, and should a cycle slip
    through, its members follow in (generation, orderIndex, name) order rather than being dropped.
    """
    index = {n.name: n for n in nodes}
    indegree = dict.fromkeys(index, 0)
    children: dict[str, list[str]] = {name: [] for name in index}
    for n in index.values():
        for dep in dict.fromkeys(n.depends_on):
            if dep in index and dep != n.name:
                indegree[n.name] += 1
                children[dep].append(n.name)
    heap = [(index[name].generation, index[name].order_index, name) for name, deg in indegree.items() if deg == 0]
    heapq.heapify(heap)
    out: list[str] = []
    done: set[str] = set()
    while heap:
        _, _, name = heapq.heappop(heap)
        out.append(name)
        done.add(name)
        for child in children[name]:
            indegree[child] -= 1
            if indegree[child] == 0:
                heapq.heappush(heap, (index[child].generation, index[child].order_index, child))
    if len(out) < len(index):
        rest = sorted(
            (n for n in index.values() if n.name not in done), key=lambda n: (n.generation, n.order_index, n.name)
        )
        out.extend(n.name for n in rest)
    return out


def count_steps(phases: Iterable[StepPhase]) -> StepCounts:
    counts = {p: 0 for p in StepPhase}
    total = 0
    for p in phases:
        counts[p] += 1
        total += 1
    return StepCounts(
        total=total,
        pending=counts[StepPhase.PENDING],
        ready=counts[StepPhase.READY],
        running=counts[StepPhase.RUNNING],
        succeeded=counts[StepPhase.SUCCEEDED],
        failed=counts[StepPhase.FAILED],
        skipped=counts[StepPhase.SKIPPED],
    )


def progress_text(counts: StepCounts) -> str:
    """ "succeeded/total", e.g. "3/7"."""
    return f"{counts.succeeded}/{counts.total}"


def progress(phases: Iterable[StepPhase]) -> Progress:
    counts = count_steps(phases)
    return Progress(counts=counts, text=progress_text(counts))
