"""The graph of a directive's steps: readiness, skip propagation, topological order, cycles.

Standard library only. Every function takes plain data (`Node` values) and returns plain
data; nothing here reads a clock or calls out. The checks of a planner's submission against
this graph are in validation.py.

Two kinds of ordering constrain a step:

* ``dependsOn`` — explicit edges to other steps of the same directive (by name);
* ``orderIndex`` within a generation — a step waits for every step of its own generation
  with a lower ``orderIndex`` ("phases"). Steps of other generations do not constrain it.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum


# Where a step stands: what the rules below decide on, and the DirectiveStep's status.phase
# (models.py uses this enum). No docstring: the CRD schema would take it as a description.
class StepPhase(StrEnum):
    PENDING = "Pending"
    READY = "Ready"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SKIPPED = "Skipped"

    @property
    def terminal(self) -> bool:
        return self in (StepPhase.SUCCEEDED, StepPhase.FAILED, StepPhase.SKIPPED)


_BAD = (StepPhase.FAILED, StepPhase.SKIPPED)


@dataclass(frozen=True)
class Node:
    """What the DAG rules need to know about one step (existing or submitted)."""

    name: str
    depends_on: tuple[str, ...] = ()
    order_index: int = 0
    generation: int = 1
    phase: StepPhase = StepPhase.PENDING


# ---- cycles ---------------------------------------------------------------------------------


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
                    cycle = [*path[start:], dep]
                    key = frozenset(cycle)
                    if key not in seen_cycles:
                        seen_cycles.add(key)
                        cycles.append(cycle)
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
        if phase[name] not in (StepPhase.PENDING, StepPhase.READY):
            continue
        reason = _blocked_for_good(index[name], index, phase)
        if reason is not None:
            reasons[name] = reason
            phase[name] = StepPhase.SKIPPED
    return reasons


def _blocked_for_good(node: Node, index: Mapping[str, Node], phase: Mapping[str, StepPhase]) -> str | None:
    """Why `node` can never run, given the phases so far, or None."""
    deps, earlier = _blockers(node, index)
    for dep in deps:
        if phase[dep.name] in _BAD:
            return f"dependency {dep.name!r} {_verb(phase[dep.name])}"
    for other in earlier:
        if phase[other.name] in _BAD:
            return (
                f"step {other.name!r} (orderIndex {other.order_index} < {node.order_index}, "
                f"generation {node.generation}) {_verb(phase[other.name])}"
            )
    return None


def _verb(phase: StepPhase) -> str:
    return "failed" if phase is StepPhase.FAILED else "was skipped"


# ---- order --------------------------------------------------------------------------


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
