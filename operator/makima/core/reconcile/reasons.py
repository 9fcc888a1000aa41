"""The CamelCase reasons of the Directive's conditions and Events, and the condition types."""

from __future__ import annotations


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
    RETRY_REQUESTED = "RetryRequested"


class CondType:
    READY = "Ready"
    PLANNING = "Planning"
    PROGRESSING = "Progressing"
    COMPLETED = "Completed"
    FAILED = "Failed"
    BUDGET_EXCEEDED = "BudgetExceeded"
