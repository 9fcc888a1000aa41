"""makima.core.dag: readiness, skip propagation, topological order."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from makima.core import dag
from makima.core.dag import Node
from makima.core.models import StepPhase

P = StepPhase


# ---- readiness --------------------------------------------------------------------------------


def test_ready_needs_dependencies_and_lower_phases_succeeded() -> None:
    nodes = [
        Node("a", order_index=0, phase=P.SUCCEEDED),
        Node("b", ("a",), order_index=1),
        Node("c", order_index=1),
        Node("d", order_index=2),
        Node("e", order_index=0, generation=2),  # other generation: phases don't apply
        Node("f", ("ghost",), generation=3),  # dependency not created yet: waits
    ]
    assert dag.ready_steps(nodes) == ["e", "b", "c"]


def test_ready_waits_for_running_dependency() -> None:
    nodes = [Node("a", phase=P.RUNNING), Node("b", ("a",))]
    assert dag.ready_steps(nodes) == []


def test_skip_propagates_transitively_with_reasons() -> None:
    nodes = [
        Node("a", phase=P.FAILED),
        Node("b", ("a",)),
        Node("c", ("b",), phase=P.READY),
        Node("x", order_index=1),
        Node("y", order_index=0, generation=2),
        Node("done", phase=P.SUCCEEDED),
    ]
    reasons = dag.skip_propagation(nodes)
    assert reasons == {
        "b": "dependency 'a' failed",
        "c": "dependency 'b' was skipped",
        "x": "step 'a' (orderIndex 0 < 1, generation 1) failed",
    }


def test_topological_order_is_stable() -> None:
    nodes = [
        Node("d", ("b", "c"), order_index=2),
        Node("c", ("a",), order_index=1),
        Node("b", ("a",), order_index=1),
        Node("a"),
        Node("z"),
    ]
    assert dag.topological_order(nodes) == ["a", "z", "b", "c", "d"]
    assert dag.topological_order(list(reversed(nodes))) == ["a", "z", "b", "c", "d"]


# ---- properties -------------------------------------------------------------------------------


@st.composite
def dags(draw: st.DrawFn) -> list[Node]:
    n = draw(st.integers(1, 9))
    orders = sorted(draw(st.lists(st.integers(0, 3), min_size=n, max_size=n)))
    nodes = []
    for i in range(n):
        deps = draw(st.lists(st.sampled_from(range(i)), unique=True, max_size=3)) if i else []
        phase = draw(st.sampled_from(list(P)))
        nodes.append(Node(f"s{i}", tuple(f"s{j}" for j in deps), orders[i], 1, phase))
    perm = draw(st.permutations(nodes))
    return list(perm)


@settings(max_examples=500, deadline=None)
@given(dags())
def test_topological_order_respects_every_edge(nodes: list[Node]) -> None:
    order = dag.topological_order(nodes)
    assert sorted(order) == sorted(n.name for n in nodes)
    pos = {name: i for i, name in enumerate(order)}
    for n in nodes:
        for d in n.depends_on:
            assert pos[d] < pos[n.name]


@settings(max_examples=500, deadline=None)
@given(dags())
def test_ready_and_skipped_are_consistent(nodes: list[Node]) -> None:
    index = {n.name: n for n in nodes}
    ready = dag.ready_steps(nodes)
    skipped = dag.skip_propagation(nodes)
    for name in ready:
        node = index[name]
        assert node.phase in (P.PENDING, P.READY)
        assert all(index[d].phase is P.SUCCEEDED for d in node.depends_on)
        assert all(
            o.phase is P.SUCCEEDED
            for o in nodes
            if o.generation == node.generation and o.order_index < node.order_index
        )
        assert name not in skipped
    for name in skipped:
        assert index[name].phase in (P.PENDING, P.READY)
