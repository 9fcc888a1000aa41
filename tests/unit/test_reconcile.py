"""Table tests: one per rule of docs/architecture.md ("Life of a directive"), driving decide()
on hand-built snapshots."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from typing import Any

import pytest

from makima.core import naming
from makima.core.models import DirectivePhase, DirectiveStatus, PullRequestStatus, StepPhase, TaskRef
from makima.core.protocol import StepSubmission
from makima.core.reconcile import (
    CreatePlanningTask,
    CreateSteps,
    DaemonView,
    DispatchStep,
    EmitEvent,
    ExpireTask,
    MarkStep,
    PauseDirective,
    ReconcileConfig,
    Route,
    SetDirectiveStatus,
    Snapshot,
    StartCompletion,
    StepView,
    choose_route,
    decide,
)
from makima.core.reconcile.status import progress_text, step_counts
from makima.core.tasks import Task, TaskKind, TaskState
from tests.unit.sim import T0, World, directive, step, subs_wire, task

P = StepPhase
CFG = ReconcileConfig()


def of(actions: list[Any], kind: type) -> list[Any]:
    return [a for a in actions if isinstance(a, kind)]


def planned(
    steps: list[StepView],
    tasks: list[Task] = (),  # type: ignore[assignment]
    goal: str = "Build the thing",
    **spec: Any,
) -> Snapshot:
    """A directive whose generation-1 plan is in place (status as decide() leaves it)."""
    d = directive(goal, **spec)
    plan_task = task(
        TaskKind.PLANNING,
        TaskState.SUCCEEDED,
        result={
            "steps": subs_wire(
                [
                    StepSubmission(
                        name=s.name,
                        title=s.spec.title,
                        dependsOn=s.spec.depends_on,
                        orderIndex=s.spec.order_index,
                    )
                    for s in steps
                    if s.spec.generation == 1
                ]
            )
        },
    )
    status = DirectiveStatus(
        plan_generation=1,
        planned_goal_hash=naming.goal_hash("Build the thing"),
        planning_task=plan_task.id,
    )
    d = d.model_copy(update={"status": status})
    return Snapshot(directive=d, steps=steps, tasks=[plan_task, *tasks])


def settle(snap: Snapshot, now=T0) -> Snapshot:
    """Apply decide() until nothing is left to do (tasks do not move)."""
    world = World(snap.directive, now=now)
    world.steps = {s.name: s for s in snap.steps}
    world.tasks = {t.id: t for t in snap.tasks}
    for _ in range(10):
        actions = decide(world.snapshot(), now, CFG)
        if not actions:
            return world.snapshot()
        world.apply(actions)
    raise AssertionError("decide() did not settle")


# ---- 1. plan ---------------------------------------------------------------------------------


def test_plan_new_directive_creates_planning_task_and_status_first() -> None:
    actions = decide(Snapshot(directive(), [], []), T0, CFG)
    assert [type(a) for a in actions] == [SetDirectiveStatus, CreatePlanningTask]
    status, create = actions[0].status, actions[1]
    assert create.task_id == naming.planning_task_id("dir-uid-1", 1, 1)
    assert (create.generation, create.attempt) == (1, 1)
    assert create.goal_hash == naming.goal_hash("Build the thing")
    assert create.workspace.branch is None and create.workspace.start_from is None
    assert create.route == Route("job")
    assert create.deadline_at == T0 + timedelta(hours=1)
    assert "GOAL" in create.prompt and "batch-add-steps" in create.prompt
    assert status.phase is DirectivePhase.PLANNING
    assert (status.plan_generation, status.planned_goal_hash, status.planning_task) == (
        1,
        create.goal_hash,
        create.task_id,
    )
    assert status.started_at == T0
    cond = {c.type: c for c in status.conditions}
    assert cond["Planning"].status.value == "True" and cond["Planning"].reason == "Planning"
    assert cond["Ready"].status.value == "False"


def test_plan_status_written_but_task_row_missing_is_recreated() -> None:
    first = decide(Snapshot(directive(), [], []), T0, CFG)
    d = directive().model_copy(update={"status": first[0].status})
    again = decide(Snapshot(d, [], []), T0 + timedelta(seconds=5), CFG)
    assert [type(a) for a in again] == [CreatePlanningTask]
    assert again[0].task_id == first[1].task_id


def test_planning_in_flight_does_nothing() -> None:
    snap = Snapshot(directive(), [], [])
    world = World(snap.directive)
    world.apply(decide(snap, T0, CFG))
    assert decide(world.snapshot(), T0 + timedelta(seconds=15), CFG) == []


# ---- 2. validate / create steps / planning failures --------------------------------------------


def test_succeeded_planning_creates_only_missing_steps() -> None:
    subs = [StepSubmission(name="a", title="A"), StepSubmission(name="b", title="B", dependsOn=["a"])]
    world = World(directive())
    world.apply(decide(world.snapshot(), T0, CFG))
    (tid,) = world.tasks
    world.finish(tid, TaskState.SUCCEEDED, result={"steps": subs_wire(subs)})
    actions = decide(world.snapshot(), T0, CFG)
    (create,) = of(actions, CreateSteps)
    assert create.generation == 1 and [s.name for s in create.steps] == ["a", "b"]
    assert of(actions, EmitEvent)[0].message == "Planned 2 steps (generation 1)"
    # one step made it before a crash: only the other is created again
    world.apply([CreateSteps(1, subs[:1])])
    (create,) = of(decide(world.snapshot(), T0, CFG), CreateSteps)
    assert [s.name for s in create.steps] == ["b"]


@pytest.mark.parametrize(
    ("result", "state", "why"),
    [
        ({"steps": []}, TaskState.SUCCEEDED, "without submitting any steps"),
        (None, TaskState.FAILED, "agent exited"),
        ({"steps": [{"name": "a", "title": "A", "dependsOn": ["ghost"]}]}, TaskState.SUCCEEDED, "ghost"),
    ],
)
def test_planning_failure_retries_then_pauses_and_resume_retries(result, state, why) -> None:
    world = World(directive())
    world.apply(decide(world.snapshot(), T0, CFG))
    (tid,) = world.tasks
    world.finish(tid, state, result=result, error="agent exited" if state is TaskState.FAILED else None)
    # attempt 1 failed: automatic retry after the backoff
    assert of(decide(world.snapshot(), T0, CFG), CreatePlanningTask) == []
    later = T0 + timedelta(seconds=CFG.retry_base_seconds)
    actions = decide(world.snapshot(), later, CFG)
    (retry,) = of(actions, CreatePlanningTask)
    assert retry.attempt == 2
    world.now = later
    world.apply(actions)
    world.finish(retry.task_id, state, result=result, error="agent exited" if state is TaskState.FAILED else None)
    # attempt 2 (= max_planning_attempts) failed: pause
    actions = decide(world.snapshot(), later, CFG)
    (pause,) = of(actions, PauseDirective)
    assert pause.reason == "PlanningFailed" and why in pause.message
    world.apply(actions)
    status = world.directive.status
    assert world.directive.spec.paused and status.phase is DirectivePhase.PAUSED
    assert status.planning_task is None
    assert {c.type: c.reason for c in status.conditions}["Planning"] == "PlanningFailed"
    assert decide(world.snapshot(), later + timedelta(hours=1), CFG) == []  # stays paused
    world.set_paused(False)
    (again,) = of(decide(world.snapshot(), later + timedelta(hours=1), CFG), CreatePlanningTask)
    assert again.attempt == 3


# ---- 3. ready / skipped --------------------------------------------------------------------------


def test_ready_and_skip_rules() -> None:
    snap = planned(
        [
            step("a", phase=P.SUCCEEDED, attempts=1, branch="br-a"),
            step("b", ["a"]),
            step("c", order=1),
            step("f", phase=P.FAILED, attempts=3),
            step("g", ["f"]),
            step("h", ["g"]),
        ],
        execution={"maxParallelSteps": 1},
    )
    actions = decide(snap, T0, CFG)
    marks = {m.name: m for m in of(actions, MarkStep)}
    assert marks["c"].phase is P.SKIPPED  # lower orderIndex f failed
    assert "step 'f' (orderIndex 0 < 1, generation 1) failed" in (marks["c"].message or "")
    assert marks["g"].phase is P.SKIPPED and marks["g"].message == "skipped: dependency 'f' failed"
    assert marks["h"].message == "skipped: dependency 'g' was skipped"
    (dispatch,) = of(actions, DispatchStep)
    assert dispatch.name == "b"


def test_pending_becomes_ready_when_capacity_is_full() -> None:
    running = step("r", phase=P.RUNNING, attempts=1, task=TaskRef(id=naming.step_task_id("uid-r", 1)))
    snap = planned(
        [running, step("x")],
        [task(TaskKind.STEP, TaskState.RUNNING, step=running)],
        execution={"maxParallelSteps": 1},
    )
    actions = decide(snap, T0, CFG)
    assert of(actions, DispatchStep) == []
    assert [(m.name, m.phase) for m in of(actions, MarkStep)] == [("x", P.READY)]


# ---- 4. dispatch: order, cap, routing -------------------------------------------------------------


def test_dispatch_lowest_order_then_name_up_to_the_cap() -> None:
    snap = planned([step("zeta"), step("alpha"), step("mid")], execution={"maxParallelSteps": 2})
    dispatches = of(decide(snap, T0, CFG), DispatchStep)
    assert [d.name for d in dispatches] == ["alpha", "mid"]
    d = dispatches[0]
    assert d.attempt == 1 and d.task_id == naming.step_task_id("uid-alpha", 1)
    assert d.deadline_at == T0 + timedelta(hours=1)
    assert "STEP: alpha" in d.prompt


def _daemon(id_: str, in_flight: int = 0, capacity: int = 2, ns: str = "team", **labels: str) -> DaemonView:
    return DaemonView(id=id_, namespace=ns, labels=labels or {"pool": "a"}, capacity=capacity, in_flight=in_flight)


def test_auto_routing_prefers_least_loaded_matching_daemon_then_jobs() -> None:
    daemons = [
        _daemon("busy", in_flight=1),
        _daemon("idle", in_flight=0, capacity=1),
        _daemon("other-ns", ns="elsewhere"),
        _daemon("wrong-pool", pool="b"),
    ]
    snap = planned([step(n) for n in "abcd"], execution={"mode": "Auto", "daemonSelector": {"pool": "a"}})
    snap = Snapshot(snap.directive, snap.steps, snap.tasks, daemons)
    routes = [d.route for d in of(decide(snap, T0, CFG), DispatchStep)]
    assert routes == [Route("daemon", "idle"), Route("daemon", "busy"), Route("job"), Route("job")]


def test_daemon_mode_waits_for_a_daemon() -> None:
    snap = planned([step("a")], execution={"mode": "Daemon"})
    actions = decide(snap, T0, CFG)
    assert of(actions, DispatchStep) == []
    (status,) = of(actions, SetDirectiveStatus)
    assert "waiting for a daemon" in (status.status.message or "")
    world = settle(snap)
    assert decide(world, T0 + timedelta(minutes=5), CFG) == []


def test_choose_route_job_mode_ignores_daemons() -> None:
    from makima.core.models import ExecutionMode

    assert choose_route(ExecutionMode.JOB, None, [_daemon("d")]) == Route("job")
    assert choose_route(ExecutionMode.DAEMON, None, [_daemon("d", in_flight=2)]) is None


# ---- 5. workspace: the diamond ---------------------------------------------------------------------


def test_diamond_d_continues_from_b_and_merges_c() -> None:
    a = step("a", phase=P.SUCCEEDED, attempts=1, branch="makima/step-a-1")
    b = step("b", ["a"], phase=P.SUCCEEDED, attempts=1, branch="makima/step-b-2")
    c = step("c", ["a"], phase=P.SUCCEEDED, attempts=1, branch="makima/step-c-3")
    d = step("d", ["b", "c"])
    (dispatch,) = of(decide(planned([a, b, c, d]), T0, CFG), DispatchStep)
    ws = dispatch.workspace
    assert ws.start_from == "makima/step-b-2"
    assert ws.merge == ["makima/step-c-3"]
    assert ws.branch == naming.step_branch("d", "uid-d")
    assert ws.repo_url == "https://git.example/demo.git" and ws.base_branch == "main"
    assert "continues from the branch of step 'b'" in dispatch.prompt
    assert "The branch of step 'c' (Do c) has been merged in" in dispatch.prompt


def test_root_step_starts_from_pr_branch_when_one_exists() -> None:
    snap = planned([step("a", phase=P.SUCCEEDED, attempts=1, branch="br-a"), step("n", gen=2)])
    status = snap.directive.status.model_copy(
        update={"pull_request": PullRequestStatus(url="https://pr/1", branch="makima/demo-x")}
    )
    snap = Snapshot(snap.directive.model_copy(update={"status": status}), snap.steps, snap.tasks)
    (dispatch,) = of(decide(snap, T0, CFG), DispatchStep)
    assert dispatch.workspace.start_from == "makima/demo-x" and dispatch.workspace.merge == []
    (root,) = of(decide(planned([step("n")]), T0, CFG), DispatchStep)
    assert root.workspace.start_from is None


# ---- 6. observe: success, retries with backoff, expiry, adoption -----------------------------------


def _running(name: str = "a", attempts: int = 1, **kw: Any) -> StepView:
    return step(name, phase=P.RUNNING, attempts=attempts, task=TaskRef(id=naming.step_task_id(f"uid-{name}", attempts)))


def test_success_records_branch_and_commit() -> None:
    a = _running()
    t = task(TaskKind.STEP, TaskState.SUCCEEDED, step=a, commit="abc123", result={"branch": "makima/step-a-x"})
    (mark,) = of(decide(planned([a], [t]), T0, CFG), MarkStep)
    assert (mark.phase, mark.branch, mark.commit, mark.finished_at) == (
        P.SUCCEEDED,
        naming.step_branch("a", "uid-a"),
        "abc123",
        T0,
    )


@pytest.mark.parametrize("state", [TaskState.FAILED, TaskState.LOST, TaskState.CANCELLED])
def test_failure_retries_with_exponential_backoff_then_fails(state: TaskState) -> None:
    for attempt, delay in [(1, 10), (2, 20)]:
        a = _running(attempts=attempt)
        t = task(TaskKind.STEP, state, step=a, attempt=attempt, error="boom")
        actions = decide(planned([a], [t]), T0, CFG)
        (mark,) = of(actions, MarkStep)
        assert mark.phase is P.READY and mark.next_attempt_at == T0 + timedelta(seconds=delay)
        assert of(actions, DispatchStep) == []
        # once the time has come, the next attempt is dispatched
        waiting = step("a", phase=P.READY, attempts=attempt, next_attempt_at=mark.next_attempt_at)
        assert of(decide(planned([waiting], [t]), T0, CFG), DispatchStep) == []
        (again,) = of(decide(planned([waiting], [t]), mark.next_attempt_at, CFG), DispatchStep)
        assert again.attempt == attempt + 1
    a = _running(attempts=3)  # retries=2 by default: 3 attempts in all
    t = task(TaskKind.STEP, state, step=a, attempt=3, error="boom")
    (mark,) = of(decide(planned([a], [t]), T0, CFG), MarkStep)
    assert mark.phase is P.FAILED and "failed after 3 attempts" in (mark.message or "")


def test_backoff_is_capped() -> None:
    a = _running(attempts=8)
    t = task(TaskKind.STEP, TaskState.FAILED, step=a, attempt=8)
    (mark,) = of(decide(planned([a], [t], execution={"retries": 10}), T0, CFG), MarkStep)
    assert mark.next_attempt_at == T0 + timedelta(seconds=CFG.retry_max_seconds)


def test_user_cancel_fails_without_retry() -> None:
    a = _running()
    t = task(TaskKind.STEP, TaskState.CANCELLED, step=a, error="cancelled by user (makima cancel)")
    (mark,) = of(decide(planned([a], [t]), T0, CFG), MarkStep)
    assert mark.phase is P.FAILED


def _with_retry_annotation(snap: Snapshot, value: str) -> Snapshot:
    meta = snap.directive.metadata.model_copy(update={"annotations": {"makima.dev/retry": value}})
    return dataclasses.replace(snap, directive=snap.directive.model_copy(update={"metadata": meta}))


def test_a_retry_request_moves_failed_and_skipped_steps_back_once() -> None:
    """`makima retry` sets the annotation; decide() moves the steps (attempts kept) and records
    the value in status.retryHandled, so the same request is not acted on twice."""
    failed_at = T0 - timedelta(minutes=5)
    steps = [
        step("ok", phase=P.SUCCEEDED, attempts=1, branch="br-ok"),
        step("bad", phase=P.FAILED, attempts=2, message="boom", finished_at=failed_at),
        step("after", ["bad"], order=1, phase=P.SKIPPED, message="skipped: bad failed"),
    ]
    snap = _with_retry_annotation(settle(planned(steps, execution={"retries": 1})), "r1")
    actions = decide(snap, T0, CFG)
    dispatched = of(actions, DispatchStep)
    assert [(d.name, d.attempt) for d in dispatched] == [("bad", 3)], "one more attempt for the failed step"
    marks = {m.name: m for m in of(actions, MarkStep)}
    assert marks["after"].phase is P.PENDING and "finished_at" in marks["after"].clear
    (status,) = of(actions, SetDirectiveStatus)
    assert status.status.retry_handled == "r1"
    (said,) = [e for e in of(actions, EmitEvent) if e.reason == "RetryRequested"]
    assert "2 step(s) back to Pending (bad, after)" in said.message
    handled = snap.directive.model_copy(update={"status": status.status})
    again = decide(dataclasses.replace(snap, directive=handled), T0, CFG)
    assert of(again, DispatchStep) == [] and not [e for e in of(again, EmitEvent) if e.reason == "RetryRequested"]


def test_a_retry_request_for_named_steps_leaves_the_others_failed() -> None:
    steps = [step("x", phase=P.FAILED, attempts=1), step("y", phase=P.FAILED, attempts=1)]
    actions = decide(_with_retry_annotation(settle(planned(steps)), "r2:y,ghost"), T0, CFG)
    assert [d.name for d in of(actions, DispatchStep)] == ["y"]
    assert "x" not in {m.name for m in of(actions, MarkStep)}
    (said,) = [e for e in of(actions, EmitEvent) if e.reason == "RetryRequested"]
    assert "no step named ghost" in said.message


def test_a_failure_the_runner_says_cannot_be_retried_fails_the_step_at_once() -> None:
    """The agent's CLI or key is missing: the next pod would fail the same way, so retries
    (10 allowed here) are not spent on it; an ordinary failure is still retried."""
    a = _running()
    why = "step failed: agent codex: no model key: set OPENAI_API_KEY"
    fail_fast = task(TaskKind.STEP, TaskState.FAILED, step=a, error=why, result={"retryable": False})
    (mark,) = of(decide(planned([a], [fail_fast], execution={"retries": 10}), T0, CFG), MarkStep)
    assert mark.phase is P.FAILED and "OPENAI_API_KEY" in mark.message
    ordinary = task(TaskKind.STEP, TaskState.FAILED, step=a, error="exit 1", result={"retryable": True})
    (mark,) = of(decide(planned([a], [ordinary], execution={"retries": 10}), T0, CFG), MarkStep)
    assert mark.phase is P.READY


def test_a_planning_attempt_that_cannot_be_retried_pauses_at_once() -> None:
    world = World(directive())
    world.apply(decide(world.snapshot(), T0, CFG))
    (tid,) = world.tasks
    why = "planning failed: agent claude-code: its command 'claude' is not installed"
    world.finish(tid, TaskState.FAILED, error=why, result={"retryable": False})
    actions = decide(world.snapshot(), T0 + timedelta(hours=1), CFG)
    assert of(actions, CreatePlanningTask) == [], "no automatic second attempt"
    (pause,) = of(actions, PauseDirective)
    assert pause.reason == "PlanningFailed" and "not installed" in pause.message


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"deadline_at": T0 + timedelta(minutes=30)}, "deadline"),
        ({"executor": "daemon", "executor_ref": "d1", "heartbeat_at": T0}, "no heartbeat from daemon d1"),
        ({"heartbeat_at": T0 - timedelta(minutes=10)}, "no heartbeat from job"),
    ],
)
def test_expiry(fields: dict[str, Any], reason: str) -> None:
    a = _running()
    t = task(TaskKind.STEP, TaskState.RUNNING, step=a, **fields)
    now = T0 + timedelta(minutes=31) if "deadline_at" in fields else T0 + timedelta(seconds=45)
    actions = decide(planned([a], [t]), now, CFG)
    (expire,) = of(actions, ExpireTask)
    assert expire.task_id == t.id and reason in expire.reason
    assert of(actions, MarkStep) == [] and of(actions, DispatchStep) == []


def test_fresh_heartbeat_is_left_alone() -> None:
    a = _running()
    t = task(TaskKind.STEP, TaskState.RUNNING, step=a, heartbeat_at=T0)
    assert decide(settle(planned([a], [t])), T0 + timedelta(seconds=60), CFG) == []


def test_adopts_a_task_the_status_does_not_know() -> None:
    a = step("a", phase=P.READY)
    t = task(TaskKind.STEP, TaskState.DISPATCHED, step=a)
    actions = decide(planned([a], [t]), T0, CFG)
    assert of(actions, DispatchStep) == []
    (mark,) = of(actions, MarkStep)
    assert (mark.phase, mark.attempts, mark.task.id) == (P.RUNNING, 1, t.id)
    # adopted and already finished: straight to the outcome
    done = task(TaskKind.STEP, TaskState.SUCCEEDED, step=a)
    (mark,) = of(decide(planned([a], [done]), T0, CFG), MarkStep)
    assert mark.phase is P.SUCCEEDED and mark.attempts == 1


def test_same_snapshot_same_actions_and_no_redispatch_after_apply() -> None:
    snap = planned([step("a"), step("b")])
    first = decide(snap, T0, CFG)
    assert first == decide(snap, T0, CFG)
    world = World(snap.directive)
    world.steps = {s.name: s for s in snap.steps}
    world.tasks = {t.id: t for t in snap.tasks}
    world.apply(first[:1])  # crash right after the first DispatchStep
    again = of(decide(world.snapshot(), T0, CFG), DispatchStep)
    assert [d.name for d in again] == ["b"]


# ---- 7. complete ----------------------------------------------------------------------------------------


def _all_done() -> list[StepView]:
    return [
        step("a", phase=P.SUCCEEDED, attempts=1, branch="br-a"),
        step("b", ["a"], phase=P.SUCCEEDED, attempts=1, branch="br-b", order=1),
        step("c", phase=P.SUCCEEDED, attempts=1, branch="br-c", order=0),
    ]


def test_completion_merges_every_branch_in_topological_order() -> None:
    actions = decide(planned(_all_done()), T0, CFG)
    (start,) = of(actions, StartCompletion)
    assert start.task_id == naming.completion_task_id("dir-uid-1", 1, 1)
    assert start.plan.merge == ["br-a", "br-c", "br-b"]
    assert start.plan.directive_branch == naming.directive_branch("demo", "dir-uid-1")
    assert start.plan.open_pull_request is True
    assert of(actions, SetDirectiveStatus)[0].status.phase is DirectivePhase.COMPLETING


def test_completion_success_sets_pull_request_and_completed() -> None:
    done = task(
        TaskKind.COMPLETION,
        TaskState.SUCCEEDED,
        result={"pull_request_url": "https://pr/7", "branch": "makima/demo-abc"},
    )
    (set_status,) = of(decide(planned(_all_done(), [done]), T0, CFG), SetDirectiveStatus)
    st = set_status.status
    assert st.phase is DirectivePhase.COMPLETED and st.completed_at == T0
    assert (st.pull_request.url, st.pull_request.branch) == ("https://pr/7", "makima/demo-abc")
    assert st.progress == "3/3" and st.steps.succeeded == 3
    cond = {c.type: c for c in st.conditions}
    assert cond["Ready"].status.value == "True" and cond["Ready"].reason == "PullRequestOpened"
    # steady: nothing more to do, not even on the timer
    assert decide(settle(planned(_all_done(), [done])), T0 + timedelta(hours=2), CFG) == []


def test_completion_failure_retries_then_fails_directive() -> None:
    f1 = task(TaskKind.COMPLETION, TaskState.FAILED, error="push rejected")
    (start,) = of(decide(planned(_all_done(), [f1]), T0 + timedelta(seconds=10), CFG), StartCompletion)
    assert start.attempt == 2
    f3 = task(TaskKind.COMPLETION, TaskState.FAILED, attempt=3, error="push rejected")
    (st,) = of(decide(planned(_all_done(), [f1, f3]), T0, CFG), SetDirectiveStatus)
    assert st.status.phase is DirectivePhase.FAILED
    assert {c.type: c.reason for c in st.status.conditions}["Failed"] == "CompletionFailed"


def test_pull_request_disabled_still_merges_the_branch_without_a_pr() -> None:
    (start,) = of(decide(planned(_all_done(), pullRequest={"enabled": False}), T0, CFG), StartCompletion)
    assert start.plan.open_pull_request is False


def test_failed_step_fails_directive_once_nothing_runs() -> None:
    snap = planned([step("a", phase=P.FAILED, attempts=3, message="failed after 3 attempts: boom")])
    (st,) = of(decide(snap, T0, CFG), SetDirectiveStatus)
    assert st.status.phase is DirectivePhase.FAILED and "boom" in (st.status.message or "")
    assert of(decide(snap, T0, CFG), StartCompletion) == []


def test_step_counts_and_progress_text() -> None:
    counts = step_counts([P.SUCCEEDED, P.SUCCEEDED, P.SUCCEEDED, P.RUNNING, P.PENDING, P.FAILED, P.SKIPPED])
    assert progress_text(counts) == "3/7"
    assert (counts.total, counts.running, counts.pending, counts.failed, counts.skipped) == (7, 1, 1, 1, 1)


# ---- 8. re-plan ----------------------------------------------------------------------------------------------


def test_goal_change_replans_next_generation_with_existing_steps() -> None:
    snap = planned(_all_done(), goal="Build the thing, and document it")
    actions = decide(snap, T0, CFG)
    (create,) = of(actions, CreatePlanningTask)
    assert (create.generation, create.attempt) == (2, 1)
    assert create.task_id == naming.planning_task_id("dir-uid-1", 2, 1)
    assert "THIS IS A RE-PLAN" in create.prompt and "id: uid-a" in create.prompt and "br-a" in create.prompt
    assert of(actions, StartCompletion) == []
    assert actions.index(of(actions, SetDirectiveStatus)[0]) < actions.index(create)
    assert of(actions, MarkStep) == []  # succeeded steps are kept


def test_no_dispatch_while_planning_runs() -> None:
    running_plan = task(TaskKind.PLANNING, TaskState.RUNNING, generation=2)
    snap = planned([step("a")], [running_plan])
    assert of(decide(snap, T0, CFG), DispatchStep) == []


# ---- 9. pause -------------------------------------------------------------------------------------------------


def test_pause_stops_dispatch_planning_and_completion() -> None:
    assert of(decide(planned([step("a")], paused=True), T0, CFG), DispatchStep) == []
    assert of(decide(planned(_all_done(), paused=True), T0, CFG), StartCompletion) == []
    assert of(decide(Snapshot(directive(paused=True), [], []), T0, CFG), CreatePlanningTask) == []
    (st,) = of(decide(planned([step("a")], paused=True), T0, CFG), SetDirectiveStatus)
    assert st.status.phase is DirectivePhase.PAUSED


def test_deleted_directive_gets_no_actions() -> None:
    snap = planned([step("a")])
    meta = snap.directive.metadata.model_copy(update={"deletion_timestamp": T0})
    d = snap.directive.model_copy(update={"metadata": meta})
    assert decide(Snapshot(d, snap.steps, snap.tasks), T0, CFG) == []


def test_mark_step_patch_is_camel_case_with_clears() -> None:
    mark = MarkStep("a", P.READY, message="m", next_attempt_at=T0, clear=("finished_at",))
    assert mark.status_patch() == {
        "phase": "Ready",
        "message": "m",
        "nextAttemptAt": "2026-01-01T12:00:00Z",
        "finishedAt": None,
    }
