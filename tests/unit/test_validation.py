"""makima.core.validation: a planner's submission checked against the directive's steps."""

from __future__ import annotations

import itertools

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from makima.core import validation
from makima.core.dag import Node
from makima.core.protocol import StepSubmission
from makima.core.validation import Limits
from tests.unit.test_dag import dags


def sub(name: str, deps: list[str] | None = None, order: int = 0) -> StepSubmission:
    return StepSubmission(name=name, title=name.title(), dependsOn=deps or [], orderIndex=order)


def msgs(problems: list) -> list[str]:
    return [p.message for p in problems]


# ---- examples ------------------------------------------------------------------------------


def test_valid_diamond_has_no_problems() -> None:
    batch = [sub("a"), sub("b", ["a"]), sub("c", ["a"]), sub("d", ["b", "c"])]
    assert validation.validate_submission([], batch) == []


def test_cycle_is_reported_with_its_path() -> None:
    batch = [sub("a", ["c"]), sub("b", ["a"]), sub("c", ["b"])]
    problems = validation.validate_submission([], batch)
    assert msgs(problems) == ["dependency cycle: a -> c -> b -> a"]
    assert problems[0].step == "a"
    assert problems[0].field == "dependsOn"


def test_two_node_cycle_and_self_dependency() -> None:
    problems = validation.validate_submission([], [sub("x", ["y"]), sub("y", ["x"]), sub("z", ["z"])])
    assert "dependency cycle: x -> y -> x" in msgs(problems)
    assert "step 'z' depends on itself" in msgs(problems)
    assert {p.step for p in problems} == {"x", "z"}


def test_unknown_dependency_names_the_step_and_the_dependency() -> None:
    problems = validation.validate_submission([Node("old")], [sub("a", ["old"]), sub("b", ["nope"])])
    assert len(problems) == 1
    assert problems[0].step == "b"
    assert "'b' depends on unknown step 'nope'" in problems[0].message


def test_duplicate_names_in_batch_and_against_existing() -> None:
    problems = validation.validate_submission([Node("a", generation=1)], [sub("a"), sub("b"), sub("b")])
    assert [p.step for p in problems] == ["a", "b"]
    assert "step 'a' already exists (generation 1)" in problems[0].message
    assert "step name 'b' is used twice in this batch (positions 1 and 2)" in problems[1].message


def test_negative_order_index_is_rejected_naming_the_step() -> None:
    bad = StepSubmission.model_construct(name="late", title="Late", depends_on=[], order_index=-1)
    problems = validation.validate_submission([], [bad])
    assert msgs(problems) == ["step 'late': orderIndex must be >= 0, got -1"]
    assert problems[0].step == "late"
    assert problems[0].field == "orderIndex"


def test_parse_submission_reports_field_errors_per_step() -> None:
    steps, problems = validation.parse_submission(
        [
            {"name": "ok", "title": "Ok"},
            {"name": "neg", "title": "Neg", "orderIndex": -3},
            {"title": "Nameless"},
        ]
    )
    assert [s.name for s in steps] == ["ok"]
    assert [p.step for p in problems] == ["neg", None]
    assert problems[0].message.startswith("step 'neg': orderIndex:")
    assert problems[0].field == "orderIndex"
    assert problems[1].message.startswith("step #2: name:")
    assert validation.parse_submission({"steps": []})[1][0].message.startswith("steps must be a JSON array")


def test_sizes_are_bounded() -> None:
    existing = [Node(f"s{i}") for i in range(3)]
    problems = validation.validate_submission(existing, [sub("a"), sub("b")], Limits(max_steps=4))
    assert msgs(problems) == ["too many steps: 3 existing + 2 submitted = 5, the limit per directive is 4"]
    many = [f"d{i}" for i in range(3)]
    problems = validation.validate_submission([Node(n) for n in many], [sub("a", many)], Limits(max_depends_on=2))
    assert msgs(problems) == ["step 'a' has 3 dependencies, the limit is 2"]


def test_empty_batch_is_a_problem() -> None:
    assert msgs(validation.validate_submission([], [])) == ["no steps submitted: a plan needs at least one step"]


def test_dependency_on_a_later_phase_would_deadlock() -> None:
    problems = validation.validate_submission([], [sub("a", ["b"], order=0), sub("b", order=1)])
    assert len(problems) == 1
    assert problems[0].step == "a"
    assert "can never start" in problems[0].message


def test_duplicate_dependency_entry() -> None:
    problems = validation.validate_submission([], [sub("a"), sub("b", ["a", "a"])])
    assert msgs(problems) == ["step 'b' lists dependency 'a' twice"]


# ---- properties -------------------------------------------------------------------------------


@settings(max_examples=500, deadline=None)
@given(dags())
def test_a_valid_acyclic_plan_validates_cleanly(nodes: list[Node]) -> None:
    batch = [sub(n.name, list(n.depends_on), n.order_index) for n in nodes]
    assert validation.validate_submission([], batch) == []


@settings(max_examples=500, deadline=None)
@given(dags(), st.data())
def test_an_added_back_edge_is_reported_as_a_cycle(nodes: list[Node], data: st.DataObject) -> None:
    chains = [n for n in nodes if n.depends_on]
    assume(chains)  # a back edge needs an edge
    child = data.draw(st.sampled_from(sorted(chains, key=lambda n: n.name)))
    parent = child.depends_on[0]
    batch = [sub(n.name, [*n.depends_on, child.name] if n.name == parent else list(n.depends_on), 0) for n in nodes]
    problems = validation.validate_submission([], batch)
    cycles = [p for p in problems if p.message.startswith("dependency cycle: ")]
    assert cycles
    path = cycles[0].message.removeprefix("dependency cycle: ").split(" -> ")
    assert path[0] == path[-1]
    edges = {(n.name, d) for n in batch for d in n.depends_on}
    assert all((a, b) in edges for a, b in itertools.pairwise(path))
