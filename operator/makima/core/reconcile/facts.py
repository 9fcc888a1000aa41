"""What every stage of decide() reads, gathered once from the snapshot, and what a stage gives back."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Generic, TypeVar

from makima.core import dag, naming, usage
from makima.core.agent_ref import AgentGate
from makima.core.models import Directive, DirectiveSpec, PullRequestStatus, StepPhase, UsageSummary, parse_duration
from makima.core.reconcile.actions import Action, EmitEvent, Route
from makima.core.reconcile.inputs import DaemonView, ReconcileConfig, Snapshot, StepView
from makima.core.reconcile.routing import Router
from makima.core.tasks import Task, TaskKind, TaskState

State = TypeVar("State")


@dataclass(frozen=True)
class Stage(Generic[State]):
    """What one stage of decide() gives back: its state for the stages after it, the actions
    it asks the shell for and the events it tells (in order)."""

    state: State
    actions: tuple[Action, ...] = ()
    events: tuple[EmitEvent, ...] = ()


@dataclass(frozen=True)
class Facts:
    """The snapshot sorted and indexed, and the values several stages share. Read-only."""

    directive: Directive
    now: datetime
    config: ReconcileConfig
    steps: tuple[StepView, ...]  # by name
    by_name: Mapping[str, StepView]
    order: tuple[str, ...]  # step names in topological order
    tasks: tuple[Task, ...]  # by (kind, generation, attempt, id)
    task_ids: frozenset[str]
    planning_tasks: tuple[Task, ...]
    completion_tasks: tuple[Task, ...]
    step_tasks: Mapping[str, tuple[Task, ...]]  # by step uid, oldest attempt first
    daemons: tuple[DaemonView, ...]  # connected daemons of the directive's namespace, by id
    timeout: timedelta  # spec.execution.stepTimeout: a task's deadline after its start
    goal_hash: str  # of the goal as it reads now
    pull_request: PullRequestStatus | None  # from the latest succeeded completion, else the status
    spent: UsageSummary | None  # agent usage of every task so far
    over_budget: str | None  # why no new task may start (running ones finish), or None
    agent: AgentGate  # how many tasks the directive's Agent lets start now

    @property
    def spec(self) -> DirectiveSpec:
        return self.directive.spec

    @property
    def paused(self) -> bool:
        return self.directive.spec.paused

    @property
    def pr_branch(self) -> str | None:
        return self.pull_request.branch if self.pull_request is not None else None

    def router(self) -> Router:
        execution = self.spec.execution
        return Router(execution.mode, execution.daemon_selector, self.daemons, slots=self.agent.slots)

    def route(self) -> Route | None:
        """Where the one task of a planning or completion stage goes (None: it waits)."""
        route, _ = self.router().pick()
        return route

    @property
    def waiting_for(self) -> str:
        """What a task that could not start waits for: the Agent's slot, or a daemon."""
        return self.router().waiting_for(self.agent)


def gather(snapshot: Snapshot, now: datetime, config: ReconcileConfig) -> Facts:
    directive = snapshot.directive
    steps = tuple(sorted(snapshot.steps, key=lambda s: s.name))
    tasks = tuple(sorted(snapshot.tasks, key=lambda t: (t.kind.value, t.generation, t.attempt, t.id)))
    completion_tasks = tuple(t for t in tasks if t.kind is TaskKind.COMPLETION)
    step_tasks: dict[str, list[Task]] = {}
    for task in tasks:
        if task.kind is TaskKind.STEP and task.step_uid:
            step_tasks.setdefault(task.step_uid, []).append(task)
    namespace = directive.metadata.namespace
    spent = usage.summarize(tasks)
    return Facts(
        directive=directive,
        now=now,
        config=config,
        steps=steps,
        by_name={s.name: s for s in steps},
        order=tuple(dag.topological_order(node(s, s.status.phase) for s in steps)),
        tasks=tasks,
        task_ids=frozenset(t.id for t in tasks),
        planning_tasks=tuple(t for t in tasks if t.kind is TaskKind.PLANNING),
        completion_tasks=completion_tasks,
        step_tasks={uid: tuple(mine) for uid, mine in step_tasks.items()},
        daemons=tuple(sorted((d for d in snapshot.daemons if d.namespace == namespace), key=lambda d: d.id)),
        timeout=parse_duration(directive.spec.execution.step_timeout),
        goal_hash=naming.goal_hash(directive.spec.goal),
        pull_request=_pull_request(directive, completion_tasks),
        spent=spent,
        over_budget=usage.over_budget(directive.spec.budget, spent),
        agent=snapshot.agent,
    )


def node(step: StepView, phase: StepPhase) -> dag.Node:
    """The step as the DAG rules see it, in `phase`."""
    spec = step.spec
    return dag.Node(step.name, tuple(spec.depends_on), spec.order_index, spec.generation, phase)


def _pull_request(directive: Directive, completion_tasks: tuple[Task, ...]) -> PullRequestStatus | None:
    current = directive.status.pull_request
    done = [t for t in completion_tasks if t.state is TaskState.SUCCEEDED]
    if not done:
        return current
    result = done[-1].result or {}
    url = result.get("pull_request_url") or (current.url if current else None)
    meta = directive.metadata
    branch = result.get("branch") or done[-1].branch or naming.directive_branch(meta.name, meta.uid)
    return PullRequestStatus(url=str(url) if url else None, branch=str(branch))
