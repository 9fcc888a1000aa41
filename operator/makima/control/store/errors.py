"""Typed failures of the task store; callers branch on these, never on SQL errors."""

from __future__ import annotations


class StoreError(Exception):
    pass


class StoreUnavailable(StoreError):
    """The database could not be reached after bounded retries."""


class TaskNotFound(StoreError):
    def __init__(self, task_id: str) -> None:
        super().__init__(f"task {task_id} not found")
        self.task_id = task_id


class VersionConflict(StoreError):
    """Compare-and-set lost: the row changed since the caller read it. Re-read and decide again."""

    def __init__(self, task_id: str, expected: int, actual: int) -> None:
        super().__init__(f"task {task_id}: expected version {expected}, found {actual}")
        self.task_id = task_id
        self.expected = expected
        self.actual = actual


class IllegalTransition(StoreError):
    """The requested state change is not in TRANSITIONS (e.g. a late report on a finished task)."""

    def __init__(self, task_id: str, current: str, requested: str) -> None:
        super().__init__(f"task {task_id}: {current} -> {requested} is not allowed")
        self.task_id = task_id
        self.current = current
        self.requested = requested


class MigrationError(StoreError):
    pass
