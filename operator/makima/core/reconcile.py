"""The reconciler: `decide(snapshot, now, config) -> actions`.

It applies the rules listed in docs/architecture.md, "Life of a directive".

Pure and deterministic: the same snapshot, `now` and config give the same actions in the
same order. No clock, no I/O; the shell (handlers, kube.py, store/, executors/) reads a
Snapshot, calls decide(), and applies the actions *in the order given*. Every action is
idempotent when re-applied (ids are derived from uids, attempts and generations), and
the order is chosen so that a crash between two actions leaves a state the next decide()
repairs without losing or doubling work:

    ExpireTask*  →  planning (CreateSteps | PauseDirective | SetDirectiveStatus + CreatePlanningTask)
    →  MarkStep* (observed outcomes, skips, Pending→Ready)
    →  (DispatchStep, MarkStep Running)*  →  StartCompletion  →  SetDirectiveStatus  →  EmitEvent*

A step's status never points at a task row that does not exist: DispatchStep inserts the
row before the shell marks the step Running, and a step status that lags behind the store
(status.attempts < task.attempt) is adopted from the store instead of being redone.
Planning is the other way round: when decide() creates a planning task, the directive
status (planningTask, planGeneration, plannedGoalHash) comes *before* CreatePlanningTask,
because the goal hash a plan was made for is stored nowhere else; a status naming a
planning task whose row is missing makes the next decide() create that row.

A steady state yields no actions at all: status is emitted only when it differs from the
current one, and nothing time-relative goes into it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from fractions import Fraction
from typing import Any, Literal

from makima.core import agent_ref, dag, naming, prompts
from makima.core import usage as usage_mod
from makima.core.models import (
    Budget,
    Condition,
    ConditionStatus,
    Directive,
    DirectivePhase,
    DirectiveStatus,
    DirectiveStepSpec,
    DirectiveStepStatus,
    ExecutionMode,
    ExecutorKind,
    PullRequestStatus,
    StepCounts,
    StepPhase,
    TaskRef,
    UsageSummary,
    parse_duration,
)
from makima.core.protocol import CompletionPlan, StepSubmission, WorkspacePlan
from makima.core.tasks import Task, TaskKind, TaskState

# A task cancelled with an error starting with this is a person's decision: the step (or
# completion) fails at once instead of being retried. Any other cancellation is retried.
USER_CANCELLED = "cancelled by user"


class Reason:
    """CamelCase condition and event reasons."""

    PENDING = "Pending"
    PLANNING = "Planning"
    REPLANNING = "Replanning"
    PLANNED = "Planned"
    NOT_PLANNED = "NotPlanned"
    PLANNING_FAILED = "PlanningFailed"
    PLANNING_RETRY = "PlanningRetryScheduled"
    EXECUTING = "Executing"
    COMPLETING = "Completing"
    COMPLETED = "Completed"
    PULL_REQUEST_OPENED = "PullRequestOpened"
    PULL_REQUEST_UPDATED = "PullRequestUpdated"
    BRANCH_READY = "BranchReady"
    PAUSED = "Paused"
    STEPS_FAILED = "StepsFailed"
    COMPLETION_FAILED = "CompletionFailed"
    NO_FAILURE = "NoFailure"
    IN_PROGRESS = "InProgress"
    WAITING_FOR_DAEMON = "WaitingForDaemon"
    # events only
    STEP_STARTED = "StepStarted"
    STEP_SUCCEEDED = "StepSucceeded"
    STEP_FAILED = "StepFailed"
    STEP_SKIPPED = "StepSkipped"
    RETRYING = "Retrying"
    TASK_EXPIRED = "TaskExpired"
    INVALID_SPEC = "InvalidSpec"
    DIRECTIVE_FAILED = "DirectiveFailed"
    COMPLETION_STARTED = "CompletionStarted"
    BUDGET_EXCEEDED = "BudgetExceeded"
    WITHIN_BUDGET = "WithinBudget"


class CondType:
    READY = "Ready"
    PLANNING = "Planning"
    PROGRESSING = "Progressing"
    COMPLETED = "Completed"
    FAILED = "Failed"
    BUDGET_EXCEEDED = "BudgetExceeded"


# ---- snapshot ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class StepView:
    """One DirectiveStep: `name` is its `makima.dev/step` label (what dependsOn refers to)."""

    name: str
    uid: str
    spec: DirectiveStepSpec
    status: DirectiveStepStatus


@dataclass(frozen=True)
class DaemonView:
    """A connected daemon. `in_flight` counts tasks it runs now (any directive)."""

    id: str
    namespace: str
    labels: Mapping[str, str]
    capacity: int
    in_flight: int


@dataclass(frozen=True)
class ReconcileConfig:
    retry_base_seconds: float = 10  # backoff after attempt n: min(base * 2**(n-1), max)
    retry_max_seconds: float = 600
    daemon_lost_after_seconds: float = 30  # a daemon task without heartbeat this long is lost
    heartbeat_timeout_seconds: float = 120  # a running Job task without heartbeat this long is lost
    max_planning_attempts: int = 2  # automatic planning attempts per generation before pausing


@dataclass(frozen=True)
class Snapshot:
    """What decide() sees. `tasks`: every task of this directive (all kinds, attempts);
    `agent`: how many tasks its Agent lets it start now (agent_ref.gate)."""

    directive: Directive
    steps: Sequence[StepView]
    tasks: Sequence[Task]
    daemons: Sequence[DaemonView] = ()
    agent: agent_ref.AgentGate = field(default_factory=agent_ref.AgentGate)


# ---- actions -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    """Where a task runs: a Job, or the daemon `daemon_id`."""

    kind: Literal["job", "daemon"]
    daemon_id: str | None = None


@dataclass(frozen=True)
class CreatePlanningTask:
    """Insert the planning task row (ON CONFLICT DO NOTHING) and dispatch it on `route`.

    The directive status fields planningTask/planGeneration/plannedGoalHash are NOT the
    shell's business: the SetDirectiveStatus placed just before this action carries them.
    """

    task_id: str
    generation: int
    attempt: int
    goal_hash: str
    prompt: str
    title: str
    workspace: WorkspacePlan  # read-only (branch None); starts from the PR branch if any
    route: Route
    deadline_at: datetime


@dataclass(frozen=True)
class CreateSteps:
    """Create these DirectiveSteps (spec.generation = generation), named
    naming.step_object_name(directive, step.name), labelled naming.step_labels(...), owned
    by the Directive. Only steps that do not exist yet are listed; creating one that
    exists already (409) is fine."""

    generation: int
    steps: list[StepSubmission]


@dataclass(frozen=True)
class PauseDirective:
    """Set spec.paused=true. The matching condition and message come with the
    SetDirectiveStatus of the same decide() call."""

    reason: str
    message: str


@dataclass(frozen=True)
class MarkStep:
    """Merge-patch the status of step `name`: only the given fields, plus `clear`ed ones
    (snake_case field names set to null). `status_patch()` gives the camelCase body."""

    name: str
    phase: StepPhase
    message: str | None = None
    attempts: int | None = None
    task: TaskRef | None = None
    branch: str | None = None
    commit: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    next_attempt_at: datetime | None = None
    clear: tuple[str, ...] = ()
    usage: UsageSummary | None = None  # of every attempt so far, when a task finished

    def status_patch(self) -> dict[str, Any]:
        fields: dict[str, Any] = {"phase": self.phase}
        for key in ("message", "attempts", "task", "branch", "commit", "started_at", "finished_at", "usage"):
            value = getattr(self, key)
            if value is not None:
                fields[key] = value
        if self.next_attempt_at is not None:
            fields["next_attempt_at"] = self.next_attempt_at
        body = DirectiveStepStatus.model_validate(fields).model_dump(mode="json", by_alias=True, include=set(fields))
        aliases = DirectiveStepStatus.model_fields
        for key in self.clear:
            alias = aliases[key].alias or key
            body[alias] = None
        return body


@dataclass(frozen=True)
class DispatchStep:
    """Insert the step task row (id task_id; ON CONFLICT DO NOTHING), start it on `route`
    (a refusing daemon may fall back to a Job), then patch the step's status from the task
    actually launched: phase Running, attempts=attempt, task {id, executor, name},
    branch=workspace.branch, startedAt=now, nextAttemptAt=null, finishedAt=null, message.
    decide() emits no separate MarkStep for this: only the shell knows where the task went.
    Should the shell die before that patch, the next decide() adopts the task."""

    name: str
    uid: str
    attempt: int
    task_id: str
    route: Route
    workspace: WorkspacePlan
    prompt: str
    deadline_at: datetime
    title: str = ""


@dataclass(frozen=True)
class ExpireTask:
    """Mark an active task lost (compare-and-set) and delete its Job / cancel it on its daemon."""

    task_id: str
    reason: str


@dataclass(frozen=True)
class StartCompletion:
    """Insert the completion task row (ON CONFLICT DO NOTHING) and start it on `route`."""

    task_id: str
    generation: int
    attempt: int
    plan: CompletionPlan
    workspace: WorkspacePlan
    route: Route
    deadline_at: datetime


@dataclass(frozen=True)
class SetDirectiveStatus:
    """Replace the directive's status with this one (the shell may send only the diff)."""

    status: DirectiveStatus


@dataclass(frozen=True)
class EmitEvent:
    type: Literal["Normal", "Warning"]
    reason: str
    message: str


Action = (
    CreatePlanningTask
    | CreateSteps
    | PauseDirective
    | MarkStep
    | DispatchStep
    | ExpireTask
    | StartCompletion
    | SetDirectiveStatus
    | EmitEvent
)


# ---- helpers ------------------------------------------------------------------------------------------


def backoff(attempt: int, config: ReconcileConfig) -> timedelta:
    """Delay before the attempt after `attempt`: base * 2**(attempt-1), capped."""
    seconds = min(config.retry_base_seconds * 2 ** max(attempt - 1, 0), config.retry_max_seconds)
    return timedelta(seconds=seconds)


def _iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def _failure_text(task: Task) -> str:
    if task.state is TaskState.LOST:
        return f"lost ({task.error})" if task.error else "lost (executor gone)"
    if task.state is TaskState.CANCELLED:
        return task.error or "cancelled"
    return task.error or str((task.result or {}).get("message") or "failed")


def _user_cancelled(task: Task) -> bool:
    return task.state is TaskState.CANCELLED and (task.error or "").startswith(USER_CANCELLED)


def _expiry_reason(task: Task, now: datetime, timeout: timedelta, config: ReconcileConfig) -> str | None:
    start = task.started_at or task.created_at
    deadline = task.deadline_at or (start + timeout if start is not None else None)
    if deadline is not None and now >= deadline:
        return f"deadline {_iso(deadline)} passed without a result"
    daemon = task.executor == ExecutorKind.DAEMON.value
    if task.state is TaskState.RUNNING or (task.state is TaskState.DISPATCHED and daemon):
        last = task.heartbeat_at or task.started_at or task.created_at
        limit = config.daemon_lost_after_seconds if daemon else config.heartbeat_timeout_seconds
        if last is not None and (now - last).total_seconds() > limit:
            who = f"daemon {task.executor_ref}" if daemon else f"job {task.executor_ref or ''}".rstrip()
            return f"no heartbeat from {who} since {_iso(last)}"
    if (
        task.state is TaskState.PENDING
        and task.created_at is not None
        and (now - task.created_at).total_seconds() > config.heartbeat_timeout_seconds
    ):
        return f"never handed to an executor since {_iso(task.created_at)}"
    return None


def choose_route(
    mode: ExecutionMode,
    selector: Mapping[str, str] | None,
    daemons: Sequence[DaemonView],
    extra_load: Mapping[str, int] | None = None,
) -> Route | None:
    """Where one task goes. Job mode: a Job. Auto: the least-loaded daemon (in_flight +
    extra_load over capacity, then id) that carries every selector label and has a free
    slot, else a Job. Daemon: that daemon, or None (wait). The caller passes only the
    daemons of the directive's namespace that are connected."""
    if mode is ExecutionMode.JOB:
        return Route("job")
    extra = extra_load or {}
    want = selector or {}
    free = [
        d
        for d in daemons
        if d.capacity > 0
        and d.in_flight + extra.get(d.id, 0) < d.capacity
        and all(d.labels.get(k) == v for k, v in want.items())
    ]
    if free:
        best = min(
            free,
            key=lambda d: (Fraction(d.in_flight + extra.get(d.id, 0), d.capacity), d.in_flight, d.id),
        )
        return Route("daemon", best.id)
    if mode is ExecutionMode.DAEMON:
        return None
    return Route("job")


class _Router:
    """choose_route() with the slots taken by this very decide() call counted in, the daemons'
    and the Agent's (a task of any kind takes one of the Agent's slots)."""

    def __init__(
        self, directive: Directive, daemons: Sequence[DaemonView], agent: agent_ref.AgentGate | None = None
    ) -> None:
        self.mode = directive.spec.execution.mode
        self.selector = directive.spec.execution.daemon_selector
        ns = directive.metadata.namespace
        self.daemons = sorted((d for d in daemons if d.namespace == ns), key=lambda d: d.id)
        self.extra: dict[str, int] = {}
        self.agent = agent or agent_ref.AgentGate()
        self.slots = self.agent.slots
        self.waiting_for = "a daemon"  # what a None from pick() waits for

    def pick(self) -> Route | None:
        if self.slots is not None and self.slots <= 0:
            self.waiting_for = self.agent.waiting_for
            return None
        route = choose_route(self.mode, self.selector, self.daemons, self.extra)
        if route is not None and route.daemon_id is not None:
            self.extra[route.daemon_id] = self.extra.get(route.daemon_id, 0) + 1
        if route is not None and self.slots is not None:
            self.slots -= 1
        return route


def _ref_of(task: Task) -> TaskRef:
    executor = ExecutorKind(task.executor) if task.executor in ("job", "daemon") else None
    return TaskRef(id=task.id, executor=executor, name=task.executor_ref)


def _submission(task: Task) -> tuple[list[StepSubmission], str | None]:
    """The steps a succeeded planning task submitted, or why they are unusable."""
    result = task.result or {}
    raw = result.get("steps")
    if not raw:
        if result.get("final") and task.generation >= 2:
            return [], None  # a re-plan that says, explicitly, there is nothing new to do
        return [], "the planner finished without submitting any steps"
    subs, problems = dag.parse_submission(raw)
    if problems:
        return [], "the stored submission is invalid: " + "; ".join(p.message for p in problems)
    return subs, None


# ---- decide ---------------------------------------------------------------------------------------------


@dataclass
class _Planning:
    generation: int = 0  # effective plan generation
    goal_hash: str | None = None  # effective planned goal hash
    task_id: str | None = None  # effective status.planningTask
    active: bool = False  # a planning task is running or was created in this call
    created: CreatePlanningTask | None = None
    planned: bool = False  # this generation's plan is in (all its steps exist)
    failed_message: str | None = None  # planning failed and the directive is (being) paused
    retry_at: datetime | None = None  # automatic retry scheduled
    retry_message: str | None = None
    waiting_for_daemon: bool = False
    new_steps: list[StepSubmission] = field(default_factory=list)


def decide(snapshot: Snapshot, now: datetime, config: ReconcileConfig | None = None) -> list[Action]:
    """Everything the shell should do for this directive now, in the order to do it."""
    cfg = config or ReconcileConfig()
    d = snapshot.directive
    if d.metadata.deletion_timestamp is not None:
        return []  # the finalizer cancels tasks; ownerReferences remove the steps
    spec = d.spec
    cur = d.status
    paused = spec.paused
    timeout = parse_duration(spec.execution.step_timeout)
    retries = spec.execution.retries
    router = _Router(d, snapshot.daemons, snapshot.agent)
    events: list[EmitEvent] = []
    actions: list[Action] = []

    steps = sorted(snapshot.steps, key=lambda s: s.name)
    by_name = {s.name: s for s in steps}
    tasks = sorted(snapshot.tasks, key=lambda t: (t.kind.value, t.generation, t.attempt, t.id))
    task_ids = {t.id for t in tasks}
    planning_tasks = [t for t in tasks if t.kind is TaskKind.PLANNING]
    completion_tasks = [t for t in tasks if t.kind is TaskKind.COMPLETION]
    step_tasks: dict[str, list[Task]] = {}
    for t in tasks:
        if t.kind is TaskKind.STEP and t.step_uid:
            step_tasks.setdefault(t.step_uid, []).append(t)

    # 1. expire active tasks past their deadline or heartbeat ---------------------------------
    for t in sorted((t for t in tasks if t.state.active), key=lambda t: t.id):
        reason = _expiry_reason(t, now, timeout, cfg)
        if reason is not None:
            actions.append(ExpireTask(t.id, reason))
            what = f"step {t.step_name!r} attempt {t.attempt}" if t.step_name else f"{t.kind.value} task"
            events.append(EmitEvent("Warning", Reason.TASK_EXPIRED, f"{what}: {reason}"))

    # 2. planning ----------------------------------------------------------------------------------
    pr_status = _pull_request(d, completion_tasks, cur.pull_request)
    pr_branch = pr_status.branch if pr_status is not None else None
    plan = _plan(d, steps, planning_tasks, now, cfg, router, pr_branch, actions, events)

    # 3. steps: observe task outcomes ------------------------------------------------------------
    phase: dict[str, StepPhase] = {s.name: s.status.phase for s in steps}
    attempts: dict[str, int] = {s.name: s.status.attempts for s in steps}
    branch: dict[str, str | None] = {s.name: s.status.branch for s in steps}
    next_at: dict[str, datetime | None] = {s.name: s.status.next_attempt_at for s in steps}
    has_active: dict[str, bool] = {}
    marks: dict[str, MarkStep] = {}
    nodes = [_node(s, s.status.phase) for s in steps]
    order = dag.topological_order(nodes)

    for name in order:
        s = by_name[name]
        mine = step_tasks.get(s.uid, [])
        has_active[name] = any(t.state.active for t in mine)
        latest = mine[-1] if mine else None
        p = s.status.phase
        if p.terminal:
            continue
        adopted = latest is not None and latest.attempt > s.status.attempts
        if adopted and latest is not None:
            attempts[name] = latest.attempt
            phase[name] = StepPhase.RUNNING
        if phase[name] is not StepPhase.RUNNING:
            continue
        n = attempts[name]
        task = next((t for t in mine if t.attempt == n), None)
        if task is not None and task.state.active:
            if adopted:
                marks[name] = MarkStep(
                    name,
                    StepPhase.RUNNING,
                    message=f"attempt {n} running",
                    attempts=n,
                    task=_ref_of(task),
                    started_at=task.started_at or task.created_at or now,
                    clear=("next_attempt_at", "finished_at"),
                )
            continue
        ref = _ref_of(task) if task is not None else None
        if task is not None and task.state is TaskState.SUCCEEDED:
            res = task.result or {}
            got_branch = task.branch or res.get("branch") or naming.step_branch(name, s.uid)
            commit = task.commit or res.get("commit")
            phase[name] = StepPhase.SUCCEEDED
            branch[name] = str(got_branch)
            marks[name] = MarkStep(
                name,
                StepPhase.SUCCEEDED,
                message=f"succeeded on attempt {n}",
                attempts=n,
                task=ref,
                branch=str(got_branch),
                commit=str(commit) if commit else None,
                finished_at=task.finished_at or now,
                clear=("next_attempt_at",),
                usage=usage_mod.summarize(mine),
            )
            events.append(EmitEvent("Normal", Reason.STEP_SUCCEEDED, f"step {name!r} succeeded (attempt {n})"))
            continue
        why = _failure_text(task) if task is not None else "its task record is missing"
        finished = (task.finished_at if task is not None else None) or now
        if (task is None or not _user_cancelled(task)) and n < 1 + retries:
            at = finished + backoff(max(n, 1), cfg)
            phase[name] = StepPhase.READY
            next_at[name] = at
            marks[name] = MarkStep(
                name,
                StepPhase.READY,
                message=f"attempt {n} failed: {why}; retry {n} of {retries} at {_iso(at)}",
                attempts=n,
                task=ref,
                next_attempt_at=at,
                finished_at=finished,
                usage=usage_mod.summarize(mine),
            )
            events.append(EmitEvent("Warning", Reason.RETRYING, f"step {name!r} attempt {n} failed: {why}; retrying"))
        else:
            phase[name] = StepPhase.FAILED
            marks[name] = MarkStep(
                name,
                StepPhase.FAILED,
                message=f"failed after {n} attempt{'s' if n != 1 else ''}: {why}",
                attempts=n,
                task=ref,
                finished_at=finished,
                clear=("next_attempt_at",),
                usage=usage_mod.summarize(mine),
            )
            events.append(EmitEvent("Warning", Reason.STEP_FAILED, f"step {name!r} failed: {why}"))

    # 4. skip what can never run; Pending -> Ready -------------------------------------------------
    work_nodes = [_node(s, phase[s.name]) for s in steps]
    for name, reason in sorted(dag.skip_propagation(work_nodes).items(), key=lambda kv: order.index(kv[0])):
        phase[name] = StepPhase.SKIPPED
        marks[name] = MarkStep(name, StepPhase.SKIPPED, message=f"skipped: {reason}", finished_at=now)
        events.append(EmitEvent("Warning", Reason.STEP_SKIPPED, f"step {name!r} skipped: {reason}"))
    work_nodes = [_node(s, phase[s.name]) for s in steps]
    ready = dag.ready_steps(work_nodes)
    ready_set = set(ready)
    for name in order:
        if phase[name] is StepPhase.PENDING and name in ready_set:
            phase[name] = StepPhase.READY
            marks.setdefault(name, MarkStep(name, StepPhase.READY, message="ready"))
        elif phase[name] is StepPhase.READY and name not in ready_set:
            phase[name] = StepPhase.PENDING  # a precondition no longer holds (e.g. a retried step)
            marks[name] = MarkStep(name, StepPhase.PENDING, message="waiting for its dependencies")

    # 5. dispatch -----------------------------------------------------------------------------------
    dispatches: list[DispatchStep] = []
    waiting_for_daemon = plan.waiting_for_daemon
    running = sum(1 for p in phase.values() if p is StepPhase.RUNNING)
    spent = usage_mod.summarize(tasks)
    over_budget = usage_mod.over_budget(spec.budget, spent)  # no new task; running ones finish
    if not paused and not plan.active and over_budget is None:
        for name in ready:
            if running >= spec.execution.max_parallel_steps:
                break
            s = by_name[name]
            if phase[name] is not StepPhase.READY or has_active.get(name):
                continue
            due = next_at[name]
            if due is not None and now < due:
                continue
            n = max(attempts[name], *(t.attempt for t in step_tasks.get(s.uid, [])), 0) + 1
            tid = naming.step_task_id(s.uid, n)
            if tid in task_ids:
                continue
            route = router.pick()
            if route is None:
                waiting_for_daemon = True
                break
            dispatch = DispatchStep(
                name=name,
                uid=s.uid,
                attempt=n,
                task_id=tid,
                route=route,
                workspace=_workspace(d, s, by_name, branch, pr_branch),
                prompt=_step_prompt(d, s, by_name, branch, pr_branch, n),
                deadline_at=now + timeout,
                title=f"{spec.title}: {s.spec.title}",
            )
            dispatches.append(dispatch)
            marks.pop(name, None)
            phase[name] = StepPhase.RUNNING
            attempts[name] = n
            running += 1
            events.append(
                EmitEvent("Normal", Reason.STEP_STARTED, f"step {name!r} attempt {n} started on {_route_text(route)}")
            )

    for name in order:
        if name in marks:
            actions.append(marks[name])
    actions.extend(dispatches)

    # 6. completion ------------------------------------------------------------------------------
    all_phases = [phase[s.name] for s in steps] + [StepPhase.PENDING] * len(plan.new_steps)
    counts = dag.count_steps(all_phases)
    comp = _completion(
        d, steps, order, phase, branch, completion_tasks, plan, counts.total, now, cfg, router, timeout, events
    )
    completion_running = comp.active
    if comp.start is not None and over_budget is not None:  # not started: it would be a new task
        events = [e for e in events if e.reason != Reason.COMPLETION_STARTED]
        comp.start = None
        completion_running = False
    if comp.start is not None:
        section = usage_mod.pull_request_section(tasks)
        if section:  # what the agents used so far goes into the pull request body
            plan_body = "\n\n".join(p for p in (comp.start.plan.body.rstrip(), section) if p)
            comp.start = replace(comp.start, plan=comp.start.plan.model_copy(update={"body": plan_body}))
        actions.append(comp.start)
    waiting_for_daemon = waiting_for_daemon or comp.waiting_for_daemon

    # 7. status ----------------------------------------------------------------------------------------
    pr_reason = _pull_request_reason(completion_tasks, comp.done)
    waiting_on = router.waiting_for if waiting_for_daemon else None  # a daemon, or the Agent
    status = _status(d, steps, order, phase, marks, plan, comp, counts, pr_status, pr_reason, waiting_on, now)
    status = _with_budget(status, cur, spec.budget, spent, over_budget, completion_running, d.metadata.generation, now)
    status, agent_events = agent_ref.with_condition(status, cur, snapshot.agent, d.metadata.generation, now)
    events.extend(EmitEvent(*e) for e in agent_events)
    was_over = any(c.type == CondType.BUDGET_EXCEEDED and c.status is ConditionStatus.TRUE for c in cur.conditions)
    if over_budget is not None and not was_over:
        events.append(EmitEvent("Warning", Reason.BUDGET_EXCEEDED, f"paused: {over_budget}; running tasks finish"))
    events.extend(_outcome_events(cur, status, pr_reason))
    if status != cur:
        if plan.created is not None:
            # status first: a crash before the task row exists leaves a status naming the
            # task (and the goal hash it plans), and the next decide() creates the row
            actions.insert(actions.index(plan.created), SetDirectiveStatus(status))
        else:
            actions.append(SetDirectiveStatus(status))
    actions.extend(EmitEvent(e.type, e.reason, one_line(e.message)) for e in events)
    return actions


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


def _with_budget(
    status: DirectiveStatus,
    cur: DirectiveStatus,
    budget: Budget | None,
    spent: UsageSummary | None,
    over: str | None,
    completion_running: bool,
    gen: int,
    now: datetime,
) -> DirectiveStatus:
    """status.usage, and the budget's say: Paused with BudgetExceeded=True while the usage has
    reached it (a completion already running goes on), BudgetExceeded=False once it is raised."""
    update: dict[str, Any] = {"usage": spent}
    prev = next((c for c in cur.conditions if c.type == CondType.BUDGET_EXCEEDED), None)
    if budget is not None or prev is not None:
        value = ConditionStatus.TRUE if over else ConditionStatus.FALSE
        text = over or (f"within budget: {usage_mod.describe(spent)}" if budget else "no budget")
        cond = Condition(
            type=CondType.BUDGET_EXCEEDED,
            status=value,
            reason=Reason.BUDGET_EXCEEDED if over else Reason.WITHIN_BUDGET,
            message=text,
            last_transition_time=prev.last_transition_time if prev is not None and prev.status == value else now,
            observed_generation=gen,
        )
        others = [c for c in status.conditions if c.type != CondType.BUDGET_EXCEEDED]
        update["conditions"] = [*others, cond]
    settled = (DirectivePhase.COMPLETED, DirectivePhase.FAILED, DirectivePhase.PAUSED)
    finishing = status.phase is DirectivePhase.COMPLETING and completion_running
    if over and status.phase not in settled and not finishing:
        update["phase"] = DirectivePhase.PAUSED
        update["message"] = f"paused: {over}; raise spec.budget to resume"[:4096]
    return status.model_copy(update=update)


def reject_invalid(cur: DirectiveStatus, generation: int, error: Any, now: datetime) -> list[Action]:
    """A spec the API server accepted but the models refuse: Failed, with every problem named.

    `error` is the pydantic ValidationError. Nothing else happens until the spec is fixed
    (a new generation is reconciled from scratch). No actions when already said.
    """
    problems = [f"spec.{'.'.join(str(p) for p in e['loc'][1:])}: {e['msg']}" for e in error.errors()]
    message = "invalid spec: " + "; ".join(problems)
    if cur.phase is DirectivePhase.FAILED and cur.message == message and cur.observed_generation == generation:
        return []
    prev = next((c for c in cur.conditions if c.type == CondType.READY), None)
    since = prev.last_transition_time if prev is not None and prev.status is ConditionStatus.FALSE else now
    ready = Condition(
        type=CondType.READY,
        status=ConditionStatus.FALSE,
        reason=Reason.INVALID_SPEC,
        message=message[:32768],
        last_transition_time=since,
        observed_generation=generation,
    )
    others = [c for c in cur.conditions if c.type != CondType.READY]
    status = cur.model_copy(
        update={
            "phase": DirectivePhase.FAILED,
            "message": message[:4096],
            "observed_generation": generation,
            "conditions": [ready, *others],
        }
    )
    return [SetDirectiveStatus(status), EmitEvent("Warning", Reason.INVALID_SPEC, message[:1024])]


def _pull_request_reason(completion_tasks: Sequence[Task], done: Task | None) -> str:
    """PullRequestUpdated when an earlier generation's completion already gave a pull request."""
    if done is not None and any(
        t.state is TaskState.SUCCEEDED and t.generation < done.generation and (t.result or {}).get("pull_request_url")
        for t in completion_tasks
    ):
        return Reason.PULL_REQUEST_UPDATED
    return Reason.PULL_REQUEST_OPENED


def _outcome_events(cur: DirectiveStatus, new: DirectiveStatus, pr_reason: str) -> list[EmitEvent]:
    """One event when the directive reaches Completed or Failed (a person watches for these)."""
    if new.phase is cur.phase:
        return []
    if new.phase is DirectivePhase.COMPLETED:
        pr = new.pull_request
        if pr and pr.url:
            return [EmitEvent("Normal", pr_reason, f"pull request {pr.url} (branch {pr.branch})")]
        branch = pr.branch if pr else "the directive branch"
        return [EmitEvent("Normal", Reason.BRANCH_READY, f"every step merged into {branch}")]
    if new.phase is DirectivePhase.FAILED:
        return [EmitEvent("Warning", Reason.DIRECTIVE_FAILED, new.message or "directive failed")]
    return []


def _node(s: StepView, phase: StepPhase) -> dag.Node:
    return dag.Node(s.name, tuple(s.spec.depends_on), s.spec.order_index, s.spec.generation, phase)


def _route_text(route: Route) -> str:
    return f"daemon {route.daemon_id}" if route.kind == "daemon" else "a job"


# ---- planning -------------------------------------------------------------------------------------------


def _plan(
    d: Directive,
    steps: Sequence[StepView],
    planning_tasks: Sequence[Task],
    now: datetime,
    cfg: ReconcileConfig,
    router: _Router,
    pr_branch: str | None,
    actions: list[Action],
    events: list[EmitEvent],
) -> _Planning:
    cur = d.status
    goal_h = naming.goal_hash(d.spec.goal)
    paused = d.spec.paused
    g_tasks = max((t.generation for t in planning_tasks), default=0)
    gen = max(cur.plan_generation, g_tasks)
    st = _Planning(generation=gen)
    latest = max((t for t in planning_tasks if t.generation == gen), key=lambda t: t.attempt, default=None)
    if gen == cur.plan_generation:
        st.goal_hash = cur.planned_goal_hash
        st.task_id = cur.planning_task
        if latest is not None and cur.planning_task is not None and cur.planning_task != latest.id:
            st.task_id = latest.id  # a newer attempt exists than the status says
    else:  # a planning task was created but the status never said so: adopt it
        st.goal_hash = goal_h
        st.task_id = latest.id if latest is not None else None
    names = {s.name for s in steps}

    def create(generation: int, attempt: int) -> None:
        route = router.pick()
        if route is None:
            st.waiting_for_daemon = True
            return
        tid = naming.planning_task_id(d.metadata.uid, generation, attempt)
        by_name = {s.name: s for s in steps}
        existing = [
            prompts.PromptStep(
                name=s.name,
                uid=s.uid,
                title=s.spec.title,
                phase=s.status.phase.value,
                generation=s.spec.generation,
                order_index=s.spec.order_index,
                depends_on=tuple(s.spec.depends_on),
                branch=s.status.branch,
                description=s.spec.description,
            )
            for s in (by_name[n] for n in dag.topological_order(_node(x, x.status.phase) for x in steps))
        ]
        action = CreatePlanningTask(
            task_id=tid,
            generation=generation,
            attempt=attempt,
            goal_hash=goal_h,
            prompt=prompts.planning_prompt(
                title=d.spec.title,
                goal=d.spec.goal,
                repo_url=d.spec.repository.url,
                base_branch=d.spec.repository.base_branch,
                generation=generation,
                existing=existing,
                pr_branch=pr_branch,
            ),
            title=f"{'Re-plan' if generation > 1 else 'Plan'}: {d.spec.title}",
            workspace=WorkspacePlan(
                repo_url=d.spec.repository.url,
                base_branch=d.spec.repository.base_branch,
                start_from=pr_branch,
                branch=None,
            ),
            route=route,
            deadline_at=now + parse_duration(d.spec.execution.step_timeout),
        )
        actions.append(action)
        st.created = action
        st.active = True
        st.generation = generation
        st.goal_hash = goal_h
        st.task_id = tid
        st.failed_message = None
        st.retry_at = None
        st.retry_message = None

    if gen == 0:
        if not steps and not paused:
            create(1, 1)
        else:
            st.planned = bool(steps)
        return st

    promised = cur.planning_task
    if gen == cur.plan_generation and promised is not None and all(t.id != promised for t in planning_tasks):
        # the status names a planning task whose row was never created (the shell died
        # between writing the status and inserting the task): create it now
        if not paused:
            create(gen, (latest.attempt + 1) if latest is not None else 1)
        return st

    if latest is None:
        if any(s.spec.generation == gen for s in steps):
            st.planned = True
        elif not paused:
            create(gen, 1)
        return st

    if latest.state.active:
        st.active = True
        st.task_id = latest.id
        return st

    earlier = _earlier_goal_hash(planning_tasks, gen)
    if earlier is not None and earlier in (goal_h, st.goal_hash) and not _usable(latest, steps, gen):
        # the goal is back to the one the previous generation planned (or was, and changed
        # again): this generation's failed or pending re-plan is moot; its plan is the old one
        st.planned = True
        st.goal_hash = earlier
        st.task_id = None
        if goal_h != earlier and not paused:
            create(gen + 1, 1)
        return st

    problem: str | None = None
    if latest.state is TaskState.SUCCEEDED:
        subs, problem = _submission(latest)
        if problem is None and subs:
            others = [_node(s, s.status.phase) for s in steps if s.spec.generation != gen]
            problems = dag.validate_submission(others, subs, generation=gen)
            if problems:
                problem = "the submission conflicts with the existing steps: " + "; ".join(p.message for p in problems)
        if problem is None:
            st.task_id = latest.id
            missing = [s for s in subs if s.name not in names]
            if missing:
                actions.append(CreateSteps(gen, missing))
                st.new_steps = missing
                verb = "Planned" if len(missing) == len(subs) else "Creating the remaining"
                events.append(EmitEvent("Normal", Reason.PLANNED, f"{verb} {len(missing)} steps (generation {gen})"))
                return st
            st.planned = True
            if st.goal_hash != goal_h and not paused:
                create(gen + 1, 1)
                if st.created is not None:
                    events.append(
                        EmitEvent(
                            "Normal",
                            Reason.REPLANNING,
                            f"the goal changed: planning generation {gen + 1} on top of {len(steps)} steps",
                        )
                    )
            return st
    else:
        problem = _failure_text(latest)

    # the latest planning attempt of this generation failed or gave an unusable plan
    why = f"planning attempt {latest.attempt} (generation {gen}) failed: {problem}"
    handled = gen == cur.plan_generation and cur.planning_task is None
    if handled:
        if paused:
            st.failed_message = why
        else:  # the person resumed: try again now
            create(gen, latest.attempt + 1)
        return st
    if latest.attempt < cfg.max_planning_attempts and not _user_cancelled(latest):
        at = (latest.finished_at or now) + backoff(latest.attempt, cfg)
        if now >= at and not paused:
            create(gen, latest.attempt + 1)
            if st.created is not None:
                events.append(EmitEvent("Warning", Reason.RETRYING, f"{why}; retrying"))
        else:
            st.retry_at = at
            st.retry_message = f"{why}; retrying at {_iso(at)}"
        return st
    st.failed_message = why
    st.task_id = None  # marks the failure as handled: resuming starts the next attempt
    if not paused:
        actions.append(PauseDirective(Reason.PLANNING_FAILED, why))
        events.append(EmitEvent("Warning", Reason.PAUSED, f"paused: {why}; set spec.paused=false to retry"))
    return st


def _earlier_goal_hash(planning_tasks: Sequence[Task], gen: int) -> str | None:
    """The goal hash the latest succeeded planning before generation `gen` was made for."""
    done = [t for t in planning_tasks if t.generation < gen and t.state is TaskState.SUCCEEDED]
    if not done:
        return None
    last = max(done, key=lambda t: (t.generation, t.attempt))
    value = (last.spec or {}).get("goal_hash")
    return value if isinstance(value, str) else None


def _usable(task: Task, steps: Sequence[StepView], gen: int) -> bool:
    """Whether a planning task is running or gave a plan that can be used."""
    if task.state.active:
        return True
    if task.state is not TaskState.SUCCEEDED:
        return False
    subs, problem = _submission(task)
    if problem is not None:
        return False
    if not subs:
        return True
    others = [_node(s, s.status.phase) for s in steps if s.spec.generation != gen]
    return not dag.validate_submission(others, subs, generation=gen)


# ---- workspace and prompts -----------------------------------------------------------------------------


def _dep_branch(dep: StepView, branch: Mapping[str, str | None]) -> str:
    return branch.get(dep.name) or naming.step_branch(dep.name, dep.uid)


def _workspace(
    d: Directive,
    s: StepView,
    by_name: Mapping[str, StepView],
    branch: Mapping[str, str | None],
    pr_branch: str | None,
) -> WorkspacePlan:
    deps = [by_name[n] for n in s.spec.depends_on if n in by_name]
    if deps:
        start: str | None = _dep_branch(deps[0], branch)
        merge = [_dep_branch(x, branch) for x in deps[1:]]
    else:
        start, merge = pr_branch, []
    return WorkspacePlan(
        repo_url=d.spec.repository.url,
        base_branch=d.spec.repository.base_branch,
        start_from=start,
        merge=merge,
        branch=naming.step_branch(s.name, s.uid),
    )


def _step_prompt(
    d: Directive,
    s: StepView,
    by_name: Mapping[str, StepView],
    branch: Mapping[str, str | None],
    pr_branch: str | None,
    attempt: int,
) -> str:
    deps = [by_name[n] for n in s.spec.depends_on if n in by_name]
    merged = [prompts.MergedStep(x.name, x.spec.title, _dep_branch(x, branch)) for x in deps]
    ws = prompts.StepWorkspace(
        base_branch=d.spec.repository.base_branch,
        start_step=merged[0] if merged else None,
        merged=tuple(merged[1:]),
        pr_branch=pr_branch,
    )
    return prompts.step_prompt(
        directive_title=d.spec.title,
        goal=d.spec.goal,
        name=s.name,
        title=s.spec.title,
        description=s.spec.description,
        task_plan=s.spec.task_plan,
        workspace=ws,
        attempt=attempt,
    )


# ---- completion ---------------------------------------------------------------------------------------


@dataclass
class _Completion:
    start: StartCompletion | None = None
    task_id: str | None = None
    active: bool = False
    done: Task | None = None  # succeeded completion of the current generation
    failed_message: str | None = None  # retries exhausted
    retry_message: str | None = None
    waiting_for_daemon: bool = False
    relevant: bool = False  # every step succeeded: completion is what happens now


def _completion(
    d: Directive,
    steps: Sequence[StepView],
    order: Sequence[str],
    phase: Mapping[str, StepPhase],
    branch: Mapping[str, str | None],
    completion_tasks: Sequence[Task],
    plan: _Planning,
    total: int,
    now: datetime,
    cfg: ReconcileConfig,
    router: _Router,
    timeout: timedelta,
    events: list[EmitEvent],
) -> _Completion:
    cur = d.status
    out = _Completion(task_id=cur.completion_task)
    gen = plan.generation
    mine = [t for t in completion_tasks if t.generation == gen]
    latest = mine[-1] if mine else None
    if latest is not None:
        out.task_id = latest.id
    all_done = total > 0 and all(phase[s.name] is StepPhase.SUCCEEDED for s in steps) and not plan.new_steps
    # Only a plan that is in place completes: not while a newer generation is being planned,
    # waits for its retry, or failed (the steps of an older plan do not reach the new goal).
    if not all_done or not plan.planned or plan.active or plan.created is not None:
        out.active = latest is not None and latest.state.active
        return out
    if plan.goal_hash is not None and plan.goal_hash != naming.goal_hash(d.spec.goal):
        return out  # a re-plan is due (paused, or waiting for a daemon): do not complete the old goal
    out.relevant = True
    retries = d.spec.execution.retries
    attempt = 1
    if latest is not None:
        if latest.state.active:
            out.active = True
            return out
        if latest.state is TaskState.SUCCEEDED:
            out.done = latest
            return out
        why = f"completion attempt {latest.attempt} failed: {_failure_text(latest)}"
        if _user_cancelled(latest) or latest.attempt >= 1 + retries:
            out.failed_message = why
            return out
        at = (latest.finished_at or now) + backoff(latest.attempt, cfg)
        if now < at:
            out.retry_message = f"{why}; retrying at {_iso(at)}"
            return out
        attempt = latest.attempt + 1
    if d.spec.paused:
        return out
    route = router.pick()
    if route is None:
        out.waiting_for_daemon = True
        return out
    by_name = {s.name: s for s in steps}
    dbranch = naming.directive_branch(d.metadata.name, d.metadata.uid)
    merge = [_dep_branch(by_name[n], branch) for n in order]
    tid = naming.completion_task_id(d.metadata.uid, gen, attempt)
    out.start = StartCompletion(
        task_id=tid,
        generation=gen,
        attempt=attempt,
        plan=CompletionPlan(
            directive_branch=dbranch,
            base_branch=d.spec.repository.base_branch,
            merge=merge,
            title=d.spec.title,
            body=prompts.pull_request_body(goal=d.spec.goal, steps=[(n, by_name[n].spec.title) for n in order]),
            draft=d.spec.pull_request.draft,
            open_pull_request=d.spec.pull_request.enabled,
        ),
        workspace=WorkspacePlan(
            repo_url=d.spec.repository.url,
            base_branch=d.spec.repository.base_branch,
            start_from=None,
            merge=merge,
            branch=dbranch,
        ),
        route=route,
        deadline_at=now + timeout,
    )
    out.task_id = tid
    out.active = True
    what = "pull request" if d.spec.pull_request.enabled else "branch"
    events.append(
        EmitEvent(
            "Normal",
            Reason.COMPLETION_STARTED,
            f"merging {len(merge)} step branches into {dbranch} for the {what} (attempt {attempt})",
        )
    )
    return out


def _pull_request(
    d: Directive, completion_tasks: Sequence[Task], current: PullRequestStatus | None
) -> PullRequestStatus | None:
    done = [t for t in completion_tasks if t.state is TaskState.SUCCEEDED]
    if not done:
        return current
    res = done[-1].result or {}
    url = res.get("pull_request_url") or (current.url if current else None)
    got = res.get("branch") or done[-1].branch or naming.directive_branch(d.metadata.name, d.metadata.uid)
    return PullRequestStatus(url=str(url) if url else None, branch=str(got))


# ---- status ------------------------------------------------------------------------------------------


def _status(
    d: Directive,
    steps: Sequence[StepView],
    order: Sequence[str],
    phase: Mapping[str, StepPhase],
    marks: Mapping[str, MarkStep],
    plan: _Planning,
    comp: _Completion,
    counts: StepCounts,
    pr: PullRequestStatus | None,
    pr_reason: str,
    waiting_on: str | None,
    now: datetime,
) -> DirectiveStatus:
    cur = d.status
    spec = d.spec
    text = dag.progress_text(counts)
    planning_now = plan.active or plan.retry_at is not None or (plan.waiting_for_daemon and not plan.planned)
    unfinished = [n for n in order if not phase[n].terminal]
    bad = [n for n in order if phase[n] in (StepPhase.FAILED, StepPhase.SKIPPED)]
    daemon_note = f"; waiting for {waiting_on}" if waiting_on else ""

    def step_message(name: str) -> str:
        mark = marks.get(name)
        msg = mark.message if mark is not None and mark.message else None
        s = next(x for x in steps if x.name == name)
        return msg or s.status.message or phase[name].value.lower()

    failure_reason: str | None = None
    if spec.paused:
        ph = DirectivePhase.PAUSED
        message = "paused" + (f": {plan.failed_message}" if plan.failed_message else "")
    elif planning_now:
        ph = DirectivePhase.PLANNING
        if plan.retry_message:
            message = plan.retry_message
        elif plan.waiting_for_daemon and not plan.active:
            message = (
                f"waiting for {waiting_on or 'a daemon'} to run the planning task (generation {plan.generation or 1})"
            )
        else:
            message = f"planning generation {plan.generation}"
    elif plan.failed_message:  # paused is being set in this very call
        ph = DirectivePhase.PAUSED
        message = f"paused: {plan.failed_message}"
    elif counts.total == 0:
        ph = DirectivePhase.PENDING
        message = "waiting for a plan" + daemon_note
    elif comp.relevant and comp.done is not None:
        ph = DirectivePhase.COMPLETED
        message = f"pull request {pr.url}" if pr and pr.url else f"all steps merged into {pr.branch if pr else '?'}"
    elif comp.relevant and comp.failed_message:
        ph = DirectivePhase.FAILED
        failure_reason = Reason.COMPLETION_FAILED
        message = comp.failed_message
    elif comp.relevant:
        ph = DirectivePhase.COMPLETING
        message = comp.retry_message or f"merging {counts.total} step branches" + daemon_note
    elif not unfinished and bad:
        ph = DirectivePhase.FAILED
        failure_reason = Reason.STEPS_FAILED
        first = bad[0]
        message = f"step {first!r} {step_message(first)}"
        if len(bad) > 1:
            message += f" (+{len(bad) - 1} more failed or skipped)"
    else:
        ph = DirectivePhase.EXECUTING
        message = f"{text} steps succeeded, {counts.running} running" + daemon_note
        if bad:
            message += f"; {len(bad)} failed or skipped"

    # conditions
    gen = d.metadata.generation
    conds: list[tuple[str, bool, str, str]] = []
    if ph is DirectivePhase.COMPLETED:
        conds.append(
            (
                CondType.READY,
                True,
                pr_reason if pr and pr.url else Reason.BRANCH_READY,
                message,
            )
        )
    else:
        conds.append((CondType.READY, False, failure_reason or ph.value, message))
    if planning_now:
        reason = Reason.REPLANNING if plan.generation > 1 else Reason.PLANNING
        if plan.retry_at is not None:
            reason = Reason.PLANNING_RETRY
        conds.append((CondType.PLANNING, True, reason, message))
    elif plan.failed_message:
        conds.append((CondType.PLANNING, False, Reason.PLANNING_FAILED, plan.failed_message))
    elif plan.planned or plan.new_steps:
        conds.append((CondType.PLANNING, False, Reason.PLANNED, f"plan generation {plan.generation} in place"))
    else:
        conds.append((CondType.PLANNING, False, Reason.NOT_PLANNED, "no plan yet"))
    progressing = ph in (DirectivePhase.PLANNING, DirectivePhase.EXECUTING, DirectivePhase.COMPLETING)
    conds.append((CondType.PROGRESSING, progressing, failure_reason or ph.value, message))
    conds.append(
        (
            CondType.COMPLETED,
            ph is DirectivePhase.COMPLETED,
            Reason.COMPLETED if ph is DirectivePhase.COMPLETED else Reason.IN_PROGRESS,
            message if ph is DirectivePhase.COMPLETED else f"{text} steps succeeded",
        )
    )
    failed_now = ph is DirectivePhase.FAILED or plan.failed_message is not None
    conds.append(
        (
            CondType.FAILED,
            failed_now,
            failure_reason or (Reason.PLANNING_FAILED if failed_now else Reason.NO_FAILURE),
            message if failed_now else "",
        )
    )
    old = {c.type: c for c in cur.conditions}
    conditions = []
    for ctype, truth, reason, msg in conds:
        value = ConditionStatus.TRUE if truth else ConditionStatus.FALSE
        prev = old.get(ctype)
        since = prev.last_transition_time if prev is not None and prev.status == value else now
        conditions.append(
            Condition(
                type=ctype,
                status=value,
                reason=reason,
                message=msg[:32768],
                last_transition_time=since,
                observed_generation=gen,
            )
        )
    # keep conditions others may have set (types we do not manage), after ours
    managed = {c[0] for c in conds}
    conditions.extend(c for c in cur.conditions if c.type not in managed)

    started = cur.started_at
    if started is None and (plan.active or plan.generation > 0 or steps):
        started = now
    completed_at: datetime | None
    if ph is DirectivePhase.COMPLETED:
        completed_at = cur.completed_at if cur.phase is DirectivePhase.COMPLETED and cur.completed_at else now
    elif ph is DirectivePhase.PAUSED:
        completed_at = cur.completed_at
    else:
        completed_at = None

    return DirectiveStatus(
        phase=ph,
        conditions=conditions,
        observed_generation=gen,
        plan_generation=plan.generation,
        planned_goal_hash=plan.goal_hash,
        planning_task=plan.task_id,
        completion_task=comp.task_id,
        steps=counts,
        progress=text,
        pull_request=pr,
        started_at=started,
        completed_at=completed_at,
        message=message[:4096],
    )


__all__ = [
    "USER_CANCELLED",
    "Action",
    "CondType",
    "CreatePlanningTask",
    "CreateSteps",
    "DaemonView",
    "DispatchStep",
    "EmitEvent",
    "ExpireTask",
    "MarkStep",
    "PauseDirective",
    "Reason",
    "ReconcileConfig",
    "Route",
    "SetDirectiveStatus",
    "Snapshot",
    "StartCompletion",
    "StepView",
    "backoff",
    "choose_route",
    "decide",
    "one_line",
]
