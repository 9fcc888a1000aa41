"""The dashboard's pure shaping: rows, nodes, the DAG layout, attempts from task events."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from makima.cli.dashboard import shape
from makima.core.naming import step_task_id


def node(name: str, deps: list[str] | None = None, order: int = 0, gen: int = 1) -> dict[str, Any]:
    return {"name": name, "dependsOn": deps or [], "orderIndex": order, "generation": gen}


def test_directive_row_reads_progress_phase_and_pr() -> None:
    d = {
        "metadata": {"name": "greeter", "namespace": "team", "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"title": "Greet", "paused": True},
        "status": {
            "phase": "Paused",
            "steps": {"total": 6, "succeeded": 2, "failed": 1},
            "pullRequest": {"url": "https://example.invalid/pr/1"},
        },
    }
    row = shape.directive_row(d)
    assert (row["name"], row["namespace"], row["phase"], row["paused"]) == ("greeter", "team", "Paused", True)
    assert (row["done"], row["total"], row["failed"]) == (2, 6, 1)
    assert row["prUrl"] == "https://example.invalid/pr/1"
    # Without counts, the "3/7" progress string is used; a new directive is Pending.
    assert shape.directive_row({"metadata": {"name": "x"}, "status": {"progress": "3/7"}})["done"] == 3
    assert shape.directive_row({"metadata": {"name": "x"}})["phase"] == "Pending"


def test_columns_follow_dependency_depth_and_survive_bad_input() -> None:
    nodes = [node("a"), node("b", ["a"]), node("c", ["a"]), node("d", ["b", "c"]), node("e", ["d", "ghost"])]
    assert shape.columns(nodes) == {"a": 0, "b": 1, "c": 1, "d": 2, "e": 3}
    # A cycle (refused by the operator, but a page must not hang on one) is cut, not looped on.
    cyc = shape.columns([node("x", ["y"]), node("y", ["x"]), node("z", ["z"])])
    assert set(cyc) == {"x", "y", "z"} and cyc["z"] == 0
    # A 2,000-step chain: no recursion limit.
    chain = [node(f"s{i}", [f"s{i - 1}"] if i else []) for i in range(2000)]
    assert shape.columns(chain)["s1999"] == 1999


@st.composite
def dags(draw: st.DrawFn) -> list[dict[str, Any]]:
    n = draw(st.integers(1, 60))
    out = []
    for i in range(n):
        deps = draw(st.lists(st.integers(0, max(i - 1, 0)), max_size=4, unique=True)) if i else []
        out.append(node(f"n{i}", [f"n{d}" for d in deps], order=draw(st.integers(0, 3))))
    return out


@settings(max_examples=60, deadline=None)
@given(dags())
def test_layout_places_every_node_once_without_overlap_and_edges_point_right(nodes: list[dict[str, Any]]) -> None:
    lay = shape.layout(nodes)
    placed = {p["name"]: p for p in lay["nodes"]}
    assert set(placed) == {n["name"] for n in nodes}
    spots = {(p["x"], p["y"]) for p in lay["nodes"]}
    assert len(spots) == len(nodes)  # one cell each; cells are NODE_W by NODE_H apart at least
    for a, b in lay["edges"]:
        assert placed[a]["x"] + lay["nodeWidth"] <= placed[b]["x"]
    assert all(
        p["x"] + lay["nodeWidth"] <= lay["width"] and p["y"] + lay["nodeHeight"] <= lay["height"]
        for p in placed.values()
    )
    assert len(lay["edges"]) == sum(len(n["dependsOn"]) for n in nodes)


def test_structure_key_ignores_phases_but_not_edges() -> None:
    a = [dict(node("a"), phase="Pending"), dict(node("b", ["a"]), phase="Pending")]
    b = [dict(node("a"), phase="Succeeded"), dict(node("b", ["a"]), phase="Running")]
    c = [dict(node("a"), phase="Pending"), dict(node("b"), phase="Pending")]
    assert shape.structure_key(a) == shape.structure_key(b) != shape.structure_key(c)


def test_generations_list_the_steps_each_plan_added() -> None:
    gens = shape.generations([node("a"), node("b", gen=2), node("c", gen=2)])
    assert gens == [{"generation": 1, "steps": ["a"]}, {"generation": 2, "steps": ["b", "c"]}]


def test_attempts_are_derived_from_the_step_uid_newest_first() -> None:
    step = {"metadata": {"name": "d-core", "uid": "u-1"}, "status": {"attempts": 2}}
    assert shape.attempt_task_ids(step) == [(2, step_task_id("u-1", 2)), (1, step_task_id("u-1", 1))]
    assert shape.attempt_task_ids({"metadata": {"name": "x"}, "status": {"attempts": 3}}) == []


def test_attempt_summary_from_the_task_log() -> None:
    events = [
        {"seq": 1, "at": "2026-01-01T00:00:00Z", "type": "progress", "payload": {"message": "started"}},
        {"seq": 2, "at": "2026-01-01T00:00:02.5Z", "type": "output", "payload": {"lines": ["hi"]}},
        {
            "seq": 3,
            "at": "2026-01-01T00:00:04Z",
            "type": "result",
            "payload": {"outcome": "failed", "message": "tests failed", "branch": "b", "commit": "abc"},
        },
    ]
    done = shape.attempt_summary(1, "t1", events)
    assert (done["outcome"], done["duration"], done["message"], done["commit"]) == (
        "failed",
        4.0,
        "tests failed",
        "abc",
    )
    running = shape.attempt_summary(2, "t2", events[:2])
    assert (running["outcome"], running["duration"]) == ("running", 2.5)
    assert shape.attempt_summary(3, "t3", [])["outcome"] == "no events"


def test_log_lines_match_makima_logs() -> None:
    from makima.cli.people import format_event

    output = {"at": "2026-01-01T10:00:00Z", "type": "output", "payload": {"lines": ["first", "second"]}}
    lines = shape.log_lines(output)
    assert lines == format_event(output)
    assert len(lines) == 2 and lines[0].endswith("first") and lines[1].endswith("second")
    progress = {"at": "2026-01-01T10:00:01Z", "type": "progress", "payload": {"message": "step task started"}}
    assert shape.log_lines(progress) == format_event(progress)


def test_recent_events_newest_first_and_bounded() -> None:
    events = [
        {"reason": f"R{i}", "lastTimestamp": f"2026-01-01T00:00:{i:02d}Z", "involvedObject": {"kind": "Directive"}}
        for i in range(40)
    ]
    rows = shape.recent_events(events, limit=5)
    assert [r["reason"] for r in rows] == ["R39", "R38", "R37", "R36", "R35"]
