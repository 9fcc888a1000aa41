"""Custom resources as pydantic models: the single source of truth for the CRDs.

Python uses snake_case; the wire (Kubernetes) uses camelCase. `crds.py` turns these
models into the CRD YAML under `crds/`, so every bound declared here is also
enforced by the API server.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator
from pydantic.alias_generators import to_camel

GROUP = "makima.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

MAX_TITLE = 200
MAX_GOAL = 20_000
MAX_DESCRIPTION = 10_000
MAX_TASK_PLAN = 20_000
MAX_STEPS_PER_DIRECTIVE = 200
MAX_DEPENDS_ON = 32
MAX_ORDER_INDEX = 10_000

DNS1123_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
_DNS1123 = re.compile(DNS1123_LABEL)
DURATION_PATTERN = r"^([0-9]+(ms|s|m|h|d))+$"
_DURATION_PART = re.compile(r"([0-9]+)(ms|s|m|h|d)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> timedelta:
    """Parse "30m", "2h", "1h30m", "45s", "500ms" into a timedelta; raise ValueError otherwise."""
    if not isinstance(text, str) or not re.fullmatch(DURATION_PATTERN, text):
        raise ValueError(f"invalid duration {text!r}: use a number with a unit, e.g. 30s, 30m, 2h, 1h30m")
    seconds = sum(int(n) * _UNIT_SECONDS[u] for n, u in _DURATION_PART.findall(text))
    if seconds <= 0:
        raise ValueError(f"invalid duration {text!r}: must be greater than zero")
    return timedelta(seconds=seconds)


def check_dns_label(value: str) -> str:
    if len(value) > 63 or not _DNS1123.match(value):
        raise ValueError(
            f"{value!r} is not a valid name: use at most 63 lower-case letters, digits and '-', "
            "starting and ending with a letter or digit (DNS-1123 label)"
        )
    return value


def _check_duration(value: str | None) -> str | None:
    if value is not None:
        parse_duration(value)
    return value


def _non_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    return value


DnsLabel = Annotated[str, Field(min_length=1, max_length=63, pattern=DNS1123_LABEL), AfterValidator(check_dns_label)]
Duration = Annotated[str, Field(pattern=DURATION_PATTERN, max_length=32), AfterValidator(_check_duration)]
Title = Annotated[str, Field(min_length=1, max_length=MAX_TITLE), AfterValidator(_non_blank)]


class Wire(BaseModel):
    """Base: camelCase aliases on the wire, snake_case in Python, unknown fields rejected."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", use_enum_values=False)

    def wire(self) -> dict[str, Any]:
        """The JSON-ready camelCase form, without unset optional fields."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


# ---- enums -------------------------------------------------------------------------------


class DirectivePhase(StrEnum):
    PENDING = "Pending"
    PLANNING = "Planning"
    EXECUTING = "Executing"
    COMPLETING = "Completing"
    COMPLETED = "Completed"
    PAUSED = "Paused"
    FAILED = "Failed"


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


class ExecutionMode(StrEnum):
    AUTO = "Auto"
    JOB = "Job"
    DAEMON = "Daemon"


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class ExecutorKind(StrEnum):
    JOB = "job"
    DAEMON = "daemon"


# ---- shared pieces -----------------------------------------------------------------------


class Condition(Wire):
    """Shape of metav1.Condition."""

    type: str = Field(min_length=1, max_length=316, pattern=r"^[A-Za-z0-9]([A-Za-z0-9_.\-/]*[A-Za-z0-9])?$")
    status: ConditionStatus
    reason: str = Field(min_length=1, max_length=1024, pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")
    message: str = Field(default="", max_length=32768)
    last_transition_time: datetime
    observed_generation: int | None = Field(default=None, ge=0)


class SecretKeyRef(Wire):
    name: DnsLabel
    key: str = Field(min_length=1, max_length=253)


class EnvVar(Wire):
    name: str = Field(min_length=1, max_length=256, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    value: str | None = Field(default=None, max_length=65536)
    secret_key_ref: SecretKeyRef | None = None


class ResourceRequirements(Wire):
    requests: dict[str, str] | None = None
    limits: dict[str, str] | None = None


# ---- Directive ---------------------------------------------------------------------------


class Repository(Wire):
    url: str = Field(min_length=1, max_length=2048, description="Git URL of the repository (https, ssh or file).")
    base_branch: str = Field(default="main", min_length=1, max_length=255, pattern=r"^[^\s~^:?*\[\\]+$")
    credentials_secret: DnsLabel | None = Field(
        default=None, description="Secret in the directive's namespace holding `token` (and optional `username`)."
    )


class Agent(Wire):
    image: str | None = Field(default=None, max_length=1024, description="Defaults to the operator's agent image.")
    command: list[str] | None = Field(
        default=None, max_length=64, description="Agent command; the prompt arrives on stdin."
    )
    env: list[EnvVar] = Field(default_factory=list, max_length=128)
    resources: ResourceRequirements | None = None


class Execution(Wire):
    mode: ExecutionMode = ExecutionMode.AUTO
    daemon_selector: dict[str, str] | None = Field(default=None, description="Labels a daemon must carry.")
    max_parallel_steps: int = Field(default=4, ge=1, le=64)
    step_timeout: Duration = Field(default="1h", description='Per attempt, e.g. "30m", "2h".')
    retries: int = Field(default=2, ge=0, le=10, description="Extra attempts after the first failure.")


class PullRequest(Wire):
    enabled: bool = True
    draft: bool = False


class DirectiveSpec(Wire):
    title: Title
    goal: str = Field(min_length=1, max_length=MAX_GOAL)
    repository: Repository
    agent: Agent = Field(default_factory=Agent)
    execution: Execution = Field(default_factory=Execution)
    paused: bool = False
    pull_request: PullRequest = Field(default_factory=PullRequest)

    @field_validator("goal")
    @classmethod
    def _goal_not_blank(cls, value: str) -> str:
        return _non_blank(value)


class StepCounts(Wire):
    total: int = Field(default=0, ge=0)
    pending: int = Field(default=0, ge=0)
    ready: int = Field(default=0, ge=0)
    running: int = Field(default=0, ge=0)
    succeeded: int = Field(default=0, ge=0)
    failed: int = Field(default=0, ge=0)
    skipped: int = Field(default=0, ge=0)


class PullRequestStatus(Wire):
    url: str | None = None
    branch: str | None = None


class DirectiveStatus(Wire):
    phase: DirectivePhase = DirectivePhase.PENDING
    conditions: list[Condition] = Field(default_factory=list)
    observed_generation: int | None = None
    plan_generation: int = Field(default=0, ge=0)
    planned_goal_hash: str | None = None
    planning_task: str | None = None
    completion_task: str | None = None
    steps: StepCounts = Field(default_factory=StepCounts)
    progress: str | None = None
    pull_request: PullRequestStatus | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    message: str | None = None


class ObjectMeta(BaseModel):
    """The part of metadata our code reads. Everything else passes through untouched."""

    model_config = ConfigDict(populate_by_name=True, extra="allow", alias_generator=to_camel)

    name: str
    namespace: str = "default"
    uid: str = ""
    generation: int = 1
    resource_version: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    creation_timestamp: datetime | None = None
    deletion_timestamp: datetime | None = None


class Directive(Wire):
    model_config = ConfigDict(extra="ignore")

    api_version: str = API_VERSION
    kind: str = "Directive"
    metadata: ObjectMeta
    spec: DirectiveSpec
    status: DirectiveStatus = Field(default_factory=DirectiveStatus)


# ---- DirectiveStep -----------------------------------------------------------------------


class DirectiveStepSpec(Wire):
    directive: DnsLabel
    title: Title
    description: str = Field(default="", max_length=MAX_DESCRIPTION)
    task_plan: str = Field(default="", max_length=MAX_TASK_PLAN)
    depends_on: list[DnsLabel] = Field(default_factory=list, max_length=MAX_DEPENDS_ON)
    order_index: int = Field(default=0, ge=0, le=MAX_ORDER_INDEX)
    generation: int = Field(default=1, ge=1)


class TaskRef(Wire):
    id: str
    executor: ExecutorKind | None = None
    name: str | None = None


class DirectiveStepStatus(Wire):
    phase: StepPhase = StepPhase.PENDING
    attempts: int = Field(default=0, ge=0)
    task: TaskRef | None = None
    branch: str | None = None
    commit: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    next_attempt_at: datetime | None = None
    message: str | None = None
    conditions: list[Condition] = Field(default_factory=list)


class DirectiveStep(Wire):
    model_config = ConfigDict(extra="ignore")

    api_version: str = API_VERSION
    kind: str = "DirectiveStep"
    metadata: ObjectMeta
    spec: DirectiveStepSpec
    status: DirectiveStepStatus = Field(default_factory=DirectiveStepStatus)
