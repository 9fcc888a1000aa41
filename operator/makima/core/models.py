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

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

from makima.core.agents import ProfileName
from makima.core.dag import StepPhase as StepPhase  # the step phases belong to the DAG rules

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
MAX_TTL_SECONDS = 366 * 86400

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

    type: str = Field(
        min_length=1,
        max_length=316,
        pattern=r"^[A-Za-z0-9]([A-Za-z0-9_.\-/]*[A-Za-z0-9])?$",
        description="Ready, Planning, Progressing, Completed or Failed.",
    )
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(
        min_length=1,
        max_length=1024,
        pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$",
        description="Why, in one CamelCase word.",
    )
    message: str = Field(default="", max_length=32768, description="Human-readable detail of the last transition.")
    last_transition_time: datetime = Field(description="When the status of this condition last changed.")
    observed_generation: int | None = Field(default=None, ge=0, description="metadata.generation this was based on.")


class SecretKeyRef(Wire):
    name: DnsLabel = Field(description="Secret in the directive's namespace.")
    key: str = Field(min_length=1, max_length=253, description="Key in that Secret.")
    optional: bool | None = Field(
        default=None, description="Start the pod even when the Secret or key is missing (the variable is unset)."
    )


class EnvVar(Wire):
    name: str = Field(
        min_length=1, max_length=256, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description="Environment variable name."
    )
    value: str | None = Field(default=None, max_length=65536, description="Its value (or use secretKeyRef).")
    secret_key_ref: SecretKeyRef | None = Field(default=None, description="Take the value from a Secret.")


class ResourceRequirements(Wire):
    requests: dict[str, str] | None = Field(default=None, description='e.g. {"cpu": "500m", "memory": "1Gi"}.')
    limits: dict[str, str] | None = Field(default=None, description='e.g. {"memory": "4Gi"}.')


# ---- Directive ---------------------------------------------------------------------------


# A repository URL: http(s)://, ssh://, git://, file://, scp-like user@host:path, or an absolute
# local path. Never option-shaped (no leading "-"), no whitespace.
REPOSITORY_URL_PATTERN = (
    r"^((https?|ssh|git|file)://[^\s]+|[A-Za-z0-9._][A-Za-z0-9._-]*@[A-Za-z0-9.-]+:[^\s]+|/[^\s]*)$"
)
# A branch name git accepts (`git check-ref-format --branch`), restricted further: components
# of letters, digits, "_", "+", "-" and single dots, separated by "/"; none starts with "-" or
# ".", none ends with "."; so no "..", "@{", "//", control characters or option-shaped names.
_REF_COMPONENT = r"[A-Za-z0-9_+][A-Za-z0-9_+-]*(\.[A-Za-z0-9_+-]+)*"
BRANCH_PATTERN = rf"^{_REF_COMPONENT}(/{_REF_COMPONENT})*$"


class Repository(Wire):
    url: str = Field(
        min_length=1,
        max_length=2048,
        pattern=REPOSITORY_URL_PATTERN,
        description="Git URL of the repository: https://, ssh://, git://, file://, user@host:path or an absolute path.",
    )
    base_branch: str = Field(
        default="main",
        min_length=1,
        max_length=255,
        pattern=BRANCH_PATTERN,
        description="Branch the work starts from and the pull request targets.",
    )

    @field_validator("base_branch")
    @classmethod
    def _not_a_lock(cls, value: str) -> str:
        if any(part.endswith(".lock") for part in value.split("/")):
            raise ValueError("a branch name component may not end with .lock")
        return value

    credentials_secret: DnsLabel | None = Field(
        default=None, description="Secret in the directive's namespace holding `token` (and optional `username`)."
    )


class Agent(Wire):
    profile: ProfileName | None = Field(
        default=None,
        description=(
            "Coding agent CLI: claude-code, codex, gemini, opencode, aider or scripted; "
            "defaults from the operator. Picks the command, the key it needs and the image with the CLI."
        ),
    )
    image: str | None = Field(
        default=None, max_length=1024, description="Defaults to the operator's image for the profile."
    )
    command: list[str] | None = Field(
        default=None, max_length=64, description="Agent command; the prompt arrives on stdin."
    )
    env: list[EnvVar] = Field(
        default_factory=list, max_length=128, description="Extra environment for the agent (values or Secret refs)."
    )
    resources: ResourceRequirements | None = Field(default=None, description="Resources of the agent's Job pod.")

    @property
    def is_set(self) -> bool:
        """Whether any field is given (an empty `agent: {}` is the API server's default)."""
        return bool(self.profile or self.image or self.command or self.env or self.resources)


class Execution(Wire):
    mode: ExecutionMode = Field(
        default=ExecutionMode.AUTO, description="Auto: a free daemon, else a Job. Job or Daemon: only that."
    )
    daemon_selector: dict[str, str] | None = Field(default=None, description="Labels a daemon must carry.")
    max_parallel_steps: int = Field(default=4, ge=1, le=64, description="Steps running at the same time.")
    step_timeout: Duration = Field(default="1h", description='Per attempt, e.g. "30m", "2h".')
    retries: int = Field(default=2, ge=0, le=10, description="Extra attempts after the first failure.")


class PullRequest(Wire):
    enabled: bool = Field(default=True, description="Open a pull request when every step succeeded.")
    draft: bool = Field(default=False, description="Open it as a draft.")


# ---- agent usage and budget (issue 19) -------------------------------------------------------


class Budget(Wire):
    """Most a directive may use: when its usage reaches either, no new task starts (running
    ones finish) and the directive pauses with a BudgetExceeded condition; raising it resumes."""

    # ge, not gt: a CRD schema's exclusiveMinimum is a boolean, which pydantic's gt does not give
    max_cost_usd: float | None = Field(
        default=None, ge=0.01, description="Agent cost in US dollars, as the CLIs report it (at least 0.01)."
    )
    max_tokens: int | None = Field(default=None, ge=1, description="Agent tokens, input plus output.")


class UsageSummary(Wire):
    """What the agent runs used, summed over tasks (attempts included)."""

    input_tokens: int = Field(default=0, ge=0, description="Tokens sent to the model (cache reads included).")
    output_tokens: int = Field(default=0, ge=0, description="Tokens the model produced.")
    total_tokens: int = Field(default=0, ge=0, description="Input plus output.")
    cost_usd: float | None = Field(
        default=None, ge=0, description="Cost the CLIs reported (some report none: Codex, Gemini)."
    )
    tasks: int = Field(default=0, ge=0, description="Tasks whose agents reported usage.")


# ---- the Agent resource: a coding agent the platform team defines (issue 19) ------------------

DEFAULT_AGENT = "default"  # the Agent of this name applies to its namespace's directives that name none
ANY_NAMESPACE = "*"
ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
SECRET_KEY_PATTERN = r"^[-._a-zA-Z0-9]+$"
AllowedNamespace = Annotated[str, Field(min_length=1, max_length=63, pattern=r"^(\*|[a-z0-9]([-a-z0-9]*[a-z0-9])?)$")]


class AgentRef(Wire):
    """Which Agent a directive's tasks run with."""

    name: DnsLabel = Field(description="Name of the Agent.")
    namespace: DnsLabel | None = Field(
        default=None,
        description=(
            "Namespace of the Agent; the directive's own when unset. An Agent of another namespace must list "
            "the directive's namespace in its spec.allowedNamespaces."
        ),
    )


class AgentSecretKey(Wire):
    key: str = Field(min_length=1, max_length=253, pattern=SECRET_KEY_PATTERN, description="Key in the Secret.")
    env: str = Field(
        min_length=1, max_length=256, pattern=ENV_NAME_PATTERN, description="Environment variable it becomes."
    )


# CEL rules, checked by the API server at admission (the models check the same, for the sandbox).
_UNIQUE_ENV_RULE = "!has(self.keys) || self.keys.all(a, self.keys.exists_one(b, b.env == a.env))"
_LONE_WILDCARD_RULE = f"!self.allowedNamespaces.exists(n, n == '{ANY_NAMESPACE}') || size(self.allowedNamespaces) == 1"
_INLINE_AGENT_SET = (
    "has(self.agent.profile) || has(self.agent.image) || has(self.agent.command) || "
    "has(self.agent.resources) || (has(self.agent.env) && size(self.agent.env) > 0)"
)
_EXCLUSIVE_AGENT_RULE = f"!has(self.agentRef) || !has(self.agent) || !({_INLINE_AGENT_SET})"
EXCLUSIVE_AGENT_MESSAGE = (
    "spec.agentRef and spec.agent exclude each other: name an Agent, or describe the agent inline (tests, demos)"
)


class AgentSecretRef(Wire):
    """The Secret with the model key, read by the task's pod (so: in the directive's namespace)."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {"rule": _UNIQUE_ENV_RULE, "message": "each environment variable may come from one key only"}
            ]
        }
    )

    name: DnsLabel = Field(description="Name of the Secret, looked up in the namespace the task's pod runs in.")
    keys: list[AgentSecretKey] = Field(
        default_factory=list,
        max_length=16,
        description=(
            "Keys of the Secret and the variables they become. Empty: each key variable of the profile "
            "(e.g. ANTHROPIC_API_KEY) from the key of the same name."
        ),
    )

    @field_validator("keys")
    @classmethod
    def _unique_env(cls, value: list[AgentSecretKey]) -> list[AgentSecretKey]:
        names = [k.env for k in value]
        if len(set(names)) != len(names):
            raise ValueError("each environment variable may come from one key only")
        return value


class AgentResourceSpec(Wire):
    """What the Agent is: written by the platform team; the operator only reads it."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": f"!has(self.allowedNamespaces) || ({_LONE_WILDCARD_RULE})",
                    "message": f"'{ANY_NAMESPACE}' (every namespace) must be the only entry of allowedNamespaces",
                }
            ]
        }
    )

    profile: ProfileName | None = Field(
        default=None,
        description=(
            "Coding agent CLI: claude-code, codex, gemini, opencode, aider or scripted; the operator's default "
            "when unset. Picks the command, the key variables and the image with the CLI."
        ),
    )
    image: str | None = Field(
        default=None, max_length=1024, description="Image of the task pods; the operator's image for the profile."
    )
    command: list[str] | None = Field(
        default=None, max_length=64, description="Replaces the profile's command; the prompt arrives on stdin."
    )
    resources: ResourceRequirements | None = Field(default=None, description="Resources of the task pods.")
    secret_ref: AgentSecretRef | None = Field(
        default=None, description="The Secret holding the model key, as environment variables of the agent."
    )
    env: list[EnvVar] = Field(
        default_factory=list, max_length=128, description="Extra environment for the agent (values or Secret refs)."
    )
    max_concurrent_tasks: int | None = Field(
        default=None,
        ge=1,
        le=10_000,
        description="Tasks of this Agent running at once, over every directive using it; unlimited when unset.",
    )
    timeout: Duration | None = Field(
        default=None, description='Longest a task may run, e.g. "30m": caps the directives\' stepTimeout.'
    )
    allowed_namespaces: list[AllowedNamespace] = Field(
        default_factory=list,
        max_length=256,
        description=(
            f"Namespaces besides its own whose directives may use this Agent; '{ANY_NAMESPACE}' for every one. "
            "Their task pods run in their own namespace, so the Secret of secretRef must exist there too."
        ),
    )

    @field_validator("allowed_namespaces")
    @classmethod
    def _lone_wildcard(cls, value: list[str]) -> list[str]:
        if ANY_NAMESPACE in value and len(value) > 1:
            raise ValueError(f"'{ANY_NAMESPACE}' (every namespace) must be the only entry of allowedNamespaces")
        return value


class DirectiveSpec(Wire):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [{"rule": _EXCLUSIVE_AGENT_RULE, "message": EXCLUSIVE_AGENT_MESSAGE}]
        }
    )

    title: Title = Field(description="Short name, used as the pull request's title.")
    goal: str = Field(
        min_length=1, max_length=MAX_GOAL, description="What should be true when done; editing it re-plans."
    )
    repository: Repository = Field(description="The git repository to work on.")
    agent_ref: AgentRef | None = Field(
        default=None,
        description=(
            "The Agent its tasks run with. Unset: the Agent named `default` in the directive's namespace, "
            "else the operator's defaults (or spec.agent)."
        ),
    )
    agent: Agent = Field(
        default_factory=Agent,
        description="The coding agent inline (tests, demos); excludes agentRef. Defaults from the operator.",
    )
    execution: Execution = Field(default_factory=Execution, description="Routing, parallelism, timeouts, retries.")
    paused: bool = Field(default=False, description="Stop dispatching new tasks; running ones finish.")
    pull_request: PullRequest = Field(default_factory=PullRequest, description="Pull request settings.")
    ttl_seconds_after_finished: int | None = Field(
        default=None,
        ge=0,
        le=MAX_TTL_SECONDS,
        description=(
            "Delete the directive (and its steps) this many seconds after it reached Completed or Failed; "
            "unset keeps it. Like a Job's ttlSecondsAfterFinished."
        ),
    )
    budget: Budget | None = Field(default=None, description="Most agent cost and/or tokens this directive may use.")

    @field_validator("goal")
    @classmethod
    def _goal_not_blank(cls, value: str) -> str:
        return _non_blank(value)

    @model_validator(mode="after")
    def _one_agent(self) -> DirectiveSpec:
        if self.agent_ref is not None and self.agent.is_set:
            raise ValueError(EXCLUSIVE_AGENT_MESSAGE)
        return self


class StepCounts(Wire):
    total: int = Field(default=0, ge=0, description="Steps of every plan generation.")
    pending: int = Field(default=0, ge=0, description="Waiting for dependencies.")
    ready: int = Field(default=0, ge=0, description="Free to run (or waiting for a retry).")
    running: int = Field(default=0, ge=0, description="A task runs it now.")
    succeeded: int = Field(default=0, ge=0, description="Done; its branch is kept.")
    failed: int = Field(default=0, ge=0, description="Out of attempts.")
    skipped: int = Field(default=0, ge=0, description="Can never run: a dependency failed.")


class PullRequestStatus(Wire):
    url: str | None = Field(default=None, description="The pull request's URL.")
    branch: str | None = Field(default=None, description="Its head branch (the steps merged).")


class DirectiveStatus(Wire):
    phase: DirectivePhase = Field(default=DirectivePhase.PENDING, description="Where the directive stands.")
    conditions: list[Condition] = Field(
        default_factory=list, description="Ready, Planning, Progressing, Completed, Failed."
    )
    observed_generation: int | None = Field(default=None, description="metadata.generation last reconciled.")
    plan_generation: int = Field(
        default=0, ge=0, description="Generation of the current plan (1, then +1 per re-plan)."
    )
    planned_goal_hash: str | None = Field(default=None, description="Hash of the goal the current plan was made for.")
    planning_task: str | None = Field(default=None, description="Id of the current planning task.")
    completion_task: str | None = Field(default=None, description="Id of the current completion task.")
    steps: StepCounts = Field(default_factory=StepCounts, description="Steps by phase.")
    progress: str | None = Field(default=None, description='Succeeded / total steps, e.g. "3/7".')
    pull_request: PullRequestStatus | None = Field(default=None, description="The pull request and its branch.")
    started_at: datetime | None = Field(default=None, description="When planning started.")
    completed_at: datetime | None = Field(default=None, description="When the directive reached Completed.")
    message: str | None = Field(default=None, description="What is happening now, for people.")
    usage: UsageSummary | None = Field(default=None, description="Agent usage of every task of the directive.")
    retry_handled: str | None = Field(
        default=None,
        description="The last makima.dev/retry annotation value the operator acted on (`makima retry`).",
    )


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


class AgentResource(Wire):
    """An `Agent` object (kind Agent; `AgentResource` here, beside the inline `Agent` settings)."""

    model_config = ConfigDict(extra="ignore")

    api_version: str = API_VERSION
    kind: str = "Agent"
    metadata: ObjectMeta
    spec: AgentResourceSpec = Field(default_factory=AgentResourceSpec)


# ---- DirectiveStep -----------------------------------------------------------------------


class DirectiveStepSpec(Wire):
    directive: DnsLabel = Field(description="Name of the Directive this step belongs to.")
    title: Title = Field(description="Short description of the step.")
    description: str = Field(default="", max_length=MAX_DESCRIPTION, description="What the step is for.")
    task_plan: str = Field(default="", max_length=MAX_TASK_PLAN, description="Instructions for the agent.")
    depends_on: list[DnsLabel] = Field(
        default_factory=list,
        max_length=MAX_DEPENDS_ON,
        description="Names of steps that must succeed first; the first one's branch is the starting point.",
    )
    order_index: int = Field(
        default=0, ge=0, le=MAX_ORDER_INDEX, description="Phase: waits for every lower orderIndex of its generation."
    )
    generation: int = Field(default=1, ge=1, description="Plan generation that created the step.")


class TaskRef(Wire):
    id: str = Field(description="Task id in the operator's store (`makima logs` reads its events).")
    executor: ExecutorKind | None = Field(default=None, description="job or daemon.")
    name: str | None = Field(default=None, description="The Job's name or the daemon's id.")


class DirectiveStepStatus(Wire):
    phase: StepPhase = Field(default=StepPhase.PENDING, description="Where the step stands.")
    attempts: int = Field(default=0, ge=0, description="Attempts started so far (only ever grows).")
    task: TaskRef | None = Field(default=None, description="The task of the latest attempt.")
    branch: str | None = Field(default=None, description="The step's git branch.")
    commit: str | None = Field(default=None, description="Commit the step's branch ended at.")
    started_at: datetime | None = Field(default=None, description="When the latest attempt started.")
    finished_at: datetime | None = Field(default=None, description="When the step finished.")
    next_attempt_at: datetime | None = Field(default=None, description="When a retry is due (backoff).")
    message: str | None = Field(default=None, description="What is happening, or why it failed.")
    conditions: list[Condition] = Field(default_factory=list, description="Reserved for step conditions.")
    usage: UsageSummary | None = Field(default=None, description="Agent usage of the step's attempts.")


class DirectiveStep(Wire):
    model_config = ConfigDict(extra="ignore")

    api_version: str = API_VERSION
    kind: str = "DirectiveStep"
    metadata: ObjectMeta
    spec: DirectiveStepSpec
    status: DirectiveStepStatus = Field(default_factory=DirectiveStepStatus)
