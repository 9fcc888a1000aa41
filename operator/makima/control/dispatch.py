"""Turns decided actions into task rows and executor calls (Jobs or daemons).

Idempotent by construction: task ids are derived (naming), rows are created with
ON CONFLICT DO NOTHING, and a task that already left `pending` is never launched twice.
A task found still `pending` (the operator died between insert and launch) gets a
fresh token, since only the hash of the first one survived.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from makima.control import metrics
from makima.control.executors.jobs import JobExecutor
from makima.control.kube import KubeError
from makima.control.logs import task_ids
from makima.control.ports import DaemonRegistry, KubeGateway, TaskRecords
from makima.control.resources import directive_owner
from makima.control.store.errors import IllegalTransition, VersionConflict
from makima.control.store.tokens import hash_token, new_token
from makima.core import agent_ref, naming
from makima.core.agents import DEFAULT_PROFILE
from makima.core.models import Agent, Directive, parse_duration
from makima.core.protocol import AgentSettings, CompletionPlan, TaskSpec, WorkspacePlan
from makima.core.reconcile import CreatePlanningTask, DispatchStep, Route, StartCompletion
from makima.core.tasks import Task, TaskKind, TaskState

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AgentDefaults:
    """The operator's agent defaults: the profile of Directives that name none, and a command
    replacing that profile's own (None = the profile's)."""

    command: list[str] | None = None
    timeout_seconds: float = 3600
    profile: str = DEFAULT_PROFILE


def agent_settings(spec_agent: Agent, defaults: AgentDefaults, timeout_seconds: float) -> AgentSettings:
    """The AgentSettings a task runs with. Pure.

    The profile is spec.agent.profile, else the operator's default. A command given in the
    spec replaces the profile's own; given without a profile it is a custom agent (no key
    check, no usage parsing). The operator's default command applies only to its default
    profile.
    """
    env = {v.name: v.value for v in spec_agent.env if v.value is not None and v.secret_key_ref is None}
    if spec_agent.profile is None and spec_agent.command:
        settings = AgentSettings(command=spec_agent.command, timeout_seconds=timeout_seconds)
    else:
        name = spec_agent.profile.value if spec_agent.profile is not None else defaults.profile
        command = spec_agent.command or (defaults.command if spec_agent.profile is None else None)
        settings = AgentSettings.from_profile(name, timeout_seconds=timeout_seconds, command=command)
    return settings.model_copy(update={"env": {**settings.env, **env}})


class TaskDispatcher:
    """Starts and stops tasks: a task row in the store, then a Job or a daemon (`hub`; None
    when the operator serves no daemons)."""

    def __init__(
        self,
        store: TaskRecords,
        jobs: JobExecutor,
        hub: DaemonRegistry | None,
        agent: AgentDefaults,
        kube: KubeGateway,
    ) -> None:
        self.store = store
        self.jobs = jobs
        self.hub = hub
        self.agent = agent
        self.kube = kube

    # ---- specs -----------------------------------------------------------------------------

    def _agent(self, directive: Directive) -> AgentSettings:
        spec = directive.spec
        timeout = parse_duration(spec.execution.step_timeout).total_seconds()
        settings = agent_settings(spec.agent, self.agent, timeout)
        return settings.model_copy(update={"agent_ref": agent_ref.in_use(directive)})  # counted per Agent

    def _spec(
        self,
        directive: Directive,
        task: Task,
        prompt: str,
        workspace: WorkspacePlan,
        title: str | None = None,
        **extra: Any,
    ) -> TaskSpec:
        return TaskSpec(
            task_id=task.id,
            kind=task.kind,
            attempt=task.attempt,
            generation=task.generation,
            namespace=task.namespace,
            directive=task.directive_name,
            step=task.step_name,
            title=title or directive.spec.title,  # a step's own title names its commits
            prompt=prompt,
            workspace=workspace,
            agent=self._agent(directive),
            **extra,
        )

    def _base_task(self, directive: Directive, kind: TaskKind, task_id: str, attempt: int, generation: int) -> Task:
        return Task(
            id=task_id,
            kind=kind,
            namespace=directive.metadata.namespace,
            directive_uid=directive.metadata.uid,
            directive_name=directive.metadata.name,
            attempt=attempt,
            generation=generation,
            base_branch=directive.spec.repository.base_branch,
        )

    # ---- the three kinds of task -------------------------------------------------------------

    async def start_planning(self, directive: Directive, action: CreatePlanningTask) -> Task:
        task = self._base_task(directive, TaskKind.PLANNING, action.task_id, action.attempt, action.generation)
        task = task.model_copy(update={"continue_from": action.workspace.start_from, "deadline_at": action.deadline_at})
        spec = self._spec(directive, task, action.prompt, action.workspace, goal_hash=action.goal_hash)
        return await self._launch(directive, task, spec, action.route, owner=None)

    async def dispatch_step(self, directive: Directive, step: dict[str, Any], action: DispatchStep) -> Task:
        task = self._base_task(directive, TaskKind.STEP, action.task_id, action.attempt, step["spec"]["generation"])
        task = task.model_copy(
            update={
                "step_uid": action.uid,
                "step_name": action.name,
                "branch": action.workspace.branch,
                "continue_from": action.workspace.start_from,
                "merge_branches": list(action.workspace.merge),
                "deadline_at": action.deadline_at,
            }
        )
        spec = self._spec(directive, task, action.prompt, action.workspace, title=step["spec"].get("title"))
        return await self._launch(directive, task, spec, action.route, owner=step)

    async def start_completion(self, directive: Directive, action: StartCompletion) -> Task:
        task = self._base_task(directive, TaskKind.COMPLETION, action.task_id, action.attempt, action.generation)
        plan: CompletionPlan = action.plan
        task = task.model_copy(
            update={
                "branch": plan.directive_branch,
                "merge_branches": list(plan.merge),
                "deadline_at": action.deadline_at,
            }
        )
        spec = self._spec(directive, task, "", action.workspace, completion=plan)
        return await self._launch(directive, task, spec, action.route, owner=None)

    # ---- launching ---------------------------------------------------------------------------

    async def _launch(
        self, directive: Directive, task: Task, spec: TaskSpec, route: Route | None, owner: dict[str, Any] | None
    ) -> Task:
        row, created = await self.store.create_task(task)
        if row.state is not TaskState.PENDING:
            return row  # launched before (this is a re-applied action after a crash or a stale view)
        # A fresh token each launch: only its hash is stored, so a pending task found after a
        # crash cannot reuse the first one. The stored spec never holds credentials.
        token = new_token()
        row = await self.store.update_fields(
            row.id, row.version, token_hash=hash_token(token), spec=spec.model_dump(mode="json")
        )
        route = route or Route(kind="job", daemon_id=None)
        if route.kind == "daemon" and route.daemon_id and self.hub is not None:
            try:
                creds = await self._credentials(directive)
            except KubeError as exc:
                if exc.status != 403:
                    raise
                # The chart grants `get` on any Secret only with rbac.daemonRepositoryCredentials:
                # without it, a Job (whose pod references the Secret) runs the task instead.
                log.warning(
                    "task %s: may not read Secret %s to hand it to a daemon (rbac.daemonRepositoryCredentials "
                    "is off); running it on a Job",
                    row.id,
                    directive.spec.repository.credentials_secret,
                    extra=task_ids(row),
                )
            else:
                wire = spec.model_copy(update={"credentials": creds}) if creds else spec
                if await self.hub.spawn(route.daemon_id, wire, token):
                    return await self._dispatched(row, "daemon", route.daemon_id)
                log.info(
                    "daemon %s refused task %s; falling back to a Job", route.daemon_id, row.id, extra=task_ids(row)
                )
        job_owner = owner or directive_owner(directive)
        if not created:
            # A pending row from before a crash may have a Secret with the old token: replace it.
            await self.kube.delete_secret(row.namespace, naming.token_secret_name(row.id))
        job = await self.jobs.spawn(row, token, directive, job_owner)
        return await self._dispatched(row, "job", job)

    async def _dispatched(self, row: Task, executor: str, ref: str) -> Task:
        metrics.TASKS_DISPATCHED.labels(kind=row.kind.value, route=executor).inc()
        try:
            return await self.store.transition(
                row.id, row.version, TaskState.DISPATCHED, executor=executor, executor_ref=ref
            )
        except (VersionConflict, IllegalTransition):
            # The runner was faster than us and already reported; its state wins, but where
            # it runs is still ours to record (lost-daemon detection and cancel depend on it).
            fresh = await self._row(row.id)
            for _ in range(3):
                if fresh.executor is not None:
                    break
                try:
                    fresh = await self.store.update_fields(fresh.id, fresh.version, executor=executor, executor_ref=ref)
                except VersionConflict:
                    fresh = await self._row(row.id)
            return fresh

    async def _row(self, task_id: str) -> Task:
        """A row this dispatcher inserted (rows are never deleted while their directive lives)."""
        row = await self.store.get_task(task_id)
        if row is None:
            raise LookupError(f"task {task_id} vanished from the store")
        return row

    async def _credentials(self, directive: Directive) -> dict[str, str] | None:
        name = directive.spec.repository.credentials_secret
        if not name:
            return None
        return await self.kube.get_secret_data(directive.metadata.namespace, name)

    # ---- stopping ----------------------------------------------------------------------------

    async def _stop(self, task: Task, state: TaskState, reason: str) -> None:
        try:
            await self.store.transition(task.id, task.version, state, error=reason)
        except (VersionConflict, IllegalTransition):
            return  # it finished or moved on meanwhile; nothing to stop
        if task.executor == "daemon" and task.executor_ref and self.hub is not None:
            await self.hub.cancel(task.executor_ref, task.id)
        else:
            await self.jobs.cancel(task)

    async def expire(self, task_id: str, reason: str) -> None:
        task = await self.store.get_task(task_id)
        if task is not None and task.state.active:
            await self._stop(task, TaskState.LOST, reason)

    async def cancel(self, task: Task, reason: str) -> None:
        await self._stop(task, TaskState.CANCELLED, reason)

    async def spec_for(self, task: Task) -> TaskSpec | None:
        return TaskSpec.model_validate(task.spec) if task.spec else None
