"""Messages between the operator, daemons and tasks: defined once, used by both halves.

Every body on the operator API is one of these models. Unknown fields are rejected
so a typo in a client is an error, not a silently ignored field.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from makima.core import agents
from makima.core.agents import CUSTOM, Usage, UsageFormat
from makima.core.models import (
    BRANCH_PATTERN,
    MAX_DEPENDS_ON,
    MAX_DESCRIPTION,
    MAX_ORDER_INDEX,
    MAX_TASK_PLAN,
    MAX_TITLE,
    DnsLabel,
)
from makima.core.tasks import TaskKind

MAX_BODY_BYTES = 1024 * 1024
MAX_EVENTS_PER_BATCH = 500
MAX_EVENT_PAYLOAD_BYTES = 16 * 1024


class Msg(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


# ---- what a task is asked to do ------------------------------------------------------------


class AgentSettings(Msg):
    """A profile is data (agents.py): the command to run (prompt on stdin, or through the
    `{prompt}`/`{prompt_file}` placeholders) and extra environment, plus what the runner
    checks before starting it and how it reads the CLI's usage report."""

    command: list[str] = Field(min_length=1)
    env: dict[str, str] = Field(default_factory=dict)
    timeout_seconds: float = Field(default=3600, gt=0)
    profile: str = Field(default=CUSTOM, description="Profile name, for messages and usage records.")
    key_env: list[str] = Field(default_factory=list, description="Any one must be set for the agent to start.")
    refuses_root: str | None = Field(default=None, description="Why the agent will not run as root, if so.")
    image_target: str | None = Field(default=None, description="Dockerfile target of the image with the CLI.")
    package: str | None = Field(default=None, description="Registry package of the CLI (name@version).")
    usage_format: UsageFormat | None = Field(default=None, description="How to read usage from its output.")
    agent_ref: str | None = Field(
        default=None, description="namespace/name of the Agent resource these settings came from (None: inline)."
    )

    @classmethod
    def from_profile(
        cls,
        name: str = agents.DEFAULT_PROFILE,
        *,
        timeout_seconds: float | None = None,
        command: list[str] | None = None,
    ) -> AgentSettings:
        """The named profile's settings (`command` replaces the profile's own)."""
        profile = agents.get_profile(name)
        data: dict[str, Any] = {
            "command": list(command or profile.command),
            "env": dict(profile.env),
            "profile": profile.name.value,
            "key_env": list(profile.key_env),
            "refuses_root": profile.refuses_root,
            "image_target": profile.image_target,
            "package": profile.package.spec if profile.package else None,
            "usage_format": profile.usage_format,
        }
        if timeout_seconds is not None:
            data["timeout_seconds"] = timeout_seconds
        return cls.model_validate(data)


class WorkspacePlan(Msg):
    """How the runner prepares the git workspace before the agent starts."""

    repo_url: str
    base_branch: str = "main"
    start_from: str | None = None  # branch to start from; None = base_branch
    merge: list[str] = Field(default_factory=list)  # branches merged --no-ff after start_from, in order
    branch: str | None = None  # branch to create and push; None = read-only (planning)


class CompletionPlan(Msg):
    directive_branch: str
    base_branch: str = "main"
    merge: list[str] = Field(default_factory=list)  # succeeded step branches in topological order
    title: str
    body: str = ""
    draft: bool = False
    open_pull_request: bool = True


class TaskSpec(Msg):
    """Everything the runner needs; fetched by a Job pod, pushed to a daemon."""

    task_id: str
    kind: TaskKind
    attempt: int = 1
    generation: int = 1
    namespace: str
    directive: str
    step: str | None = None
    title: str = ""
    prompt: str = ""
    workspace: WorkspacePlan
    completion: CompletionPlan | None = None
    agent: AgentSettings
    goal_hash: str | None = Field(default=None, description="Planning: hash of the goal this plan is made for.")
    credentials: dict[str, str] | None = Field(
        default=None, description="Only sent to daemons over the authenticated socket; Jobs mount a Secret."
    )


# ---- what a task says back -----------------------------------------------------------------


class EventType(StrEnum):
    PROGRESS = "progress"
    OUTPUT = "output"
    GIT = "git"
    HEARTBEAT = "heartbeat"
    RESULT = "result"
    USAGE = "usage"  # one per agent run that reported its usage (agents.Usage, camelCase)


class TaskEvent(Msg):
    type: EventType
    payload: dict[str, Any] = Field(default_factory=dict)


class EventBatch(Msg):
    events: list[TaskEvent] = Field(min_length=1, max_length=MAX_EVENTS_PER_BATCH)
    # A batch sent again with the same id (a retry after a lost reply) is stored once.
    batch_id: str | None = Field(default=None, alias="batchId", pattern=r"^[A-Za-z0-9_-]{1,64}$")


class Outcome(StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"


COMMIT_PATTERN = r"^[0-9a-f]{40}([0-9a-f]{24})?$"  # a full SHA-1 (or SHA-256) object name


class TaskResult(Msg):
    outcome: Outcome
    # The branch a step pushed (the API also requires it to be the one the operator assigned)
    # and its commit: never option-shaped, never free text.
    branch: str | None = Field(default=None, max_length=255, pattern=BRANCH_PATTERN)
    commit: str | None = Field(default=None, pattern=COMMIT_PATTERN)
    changed_files: int | None = Field(default=None, ge=0)
    message: str = Field(default="", max_length=8192)
    pull_request_url: str | None = None
    usage: Usage | None = Field(default=None, description="What the agent runs of this task used.")
    retryable: bool = Field(
        default=True,
        description="False when no other attempt can succeed (the agent's CLI or model key is missing, "
        "or it refuses to run as root): the operator fails the step at once instead of retrying.",
    )


class StepSubmission(Msg):
    """One step as the planner writes it: dependencies are step *names*."""

    name: DnsLabel
    title: str = Field(min_length=1, max_length=MAX_TITLE)
    description: str = Field(default="", max_length=MAX_DESCRIPTION)
    task_plan: str = Field(default="", max_length=MAX_TASK_PLAN, alias="taskPlan")
    depends_on: list[DnsLabel] = Field(default_factory=list, max_length=MAX_DEPENDS_ON, alias="dependsOn")
    order_index: int = Field(default=0, ge=0, le=MAX_ORDER_INDEX, alias="orderIndex")


class StepBatch(Msg):
    """Steps the planner submits. `final` says the plan is complete; an empty batch must be
    final: a re-plan (generation >= 2) whose goal the existing steps already reach."""

    final: bool = False
    steps: list[StepSubmission] = Field(default_factory=list, max_length=200, validate_default=True)

    @field_validator("steps")
    @classmethod
    def _empty_only_when_final(cls, steps: list[StepSubmission], info: ValidationInfo) -> list[StepSubmission]:
        if not steps and not info.data.get("final"):
            raise ValueError("submit at least one step, or an empty batch with final=true (nothing new to do)")
        return steps


class PullRequestReport(Msg):
    url: str = Field(min_length=1, max_length=2048)
    branch: str | None = None


class Problem(Msg):
    message: str
    field: str | None = None
    step: str | None = None


class ErrorBody(Msg):
    error: str
    problems: list[Problem] = Field(default_factory=list)


# ---- daemon socket ---------------------------------------------------------------------------


class DaemonHello(Msg):
    type: Literal["hello"] = "hello"
    name: DnsLabel
    namespace: DnsLabel
    labels: dict[str, str] = Field(default_factory=dict)
    capacity: int = Field(default=1, ge=1, le=256)
    running: list[str] = Field(default_factory=list)  # task ids still running after a reconnect


class DaemonWelcome(Msg):
    type: Literal["welcome"] = "welcome"
    daemon_id: str
    heartbeat_seconds: float


class DaemonHeartbeat(Msg):
    type: Literal["heartbeat"] = "heartbeat"
    running: list[str] = Field(default_factory=list)


class SpawnTask(Msg):
    type: Literal["spawn"] = "spawn"
    spec: TaskSpec
    token: str


class SpawnAck(Msg):
    type: Literal["ack"] = "ack"
    task_id: str
    accepted: bool = True
    reason: str | None = None


class CancelTask(Msg):
    type: Literal["cancel"] = "cancel"
    task_id: str


DaemonToOperator = Annotated[DaemonHello | DaemonHeartbeat | SpawnAck, Field(discriminator="type")]
OperatorToDaemon = Annotated[DaemonWelcome | SpawnTask | CancelTask, Field(discriminator="type")]


# ---- reading a task's event log (GET /v1/tasks/{id}/events) ----------------------------------


class StoredEvent(Msg):
    seq: int
    at: datetime
    type: str
    payload: dict[str, Any] = Field(default_factory=dict)


class EventPage(Msg):
    """Events with seq > `since`, oldest first; ask again with `since=next_since` for more."""

    events: list[StoredEvent] = Field(default_factory=list)
    next_since: int = Field(alias="nextSince")
