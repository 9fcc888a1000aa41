"""The task store: PostgreSQL (asyncpg) for tasks, task events and daemons.

Only this package speaks SQL. `open_store(settings)` is what the operator calls at start:
it uses `MAKIMA_DATABASE_URL` when set, else starts (or reuses) a private embedded server
under `state_dir/postgres`, then applies migrations.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from makima.control.config import OperatorSettings
from makima.control.store.embedded import EmbeddedPostgres, embedded_data_dir, ensure_embedded
from makima.control.store.errors import (
    IllegalTransition,
    MigrationError,
    StoreError,
    StoreUnavailable,
    TaskNotFound,
    VersionConflict,
)
from makima.control.store.records import MAX_PAYLOAD_BYTES, Daemon, Event
from makima.control.store.task_store import TaskStore
from makima.control.store.tokens import hash_token, new_token, token_matches

__all__ = [
    "MAX_PAYLOAD_BYTES",
    "Daemon",
    "EmbeddedPostgres",
    "Event",
    "IllegalTransition",
    "MigrationError",
    "StoreError",
    "StoreUnavailable",
    "TaskNotFound",
    "TaskStore",
    "VersionConflict",
    "embedded_data_dir",
    "ensure_embedded",
    "hash_token",
    "new_token",
    "open_store",
    "resolve_dsn",
    "token_matches",
]


def _data_dir(settings: OperatorSettings) -> Path:
    # `postgres_dir` is not an OperatorSettings field yet; honour it once it is.
    configured = getattr(settings, "postgres_dir", None)
    return Path(configured) if configured else embedded_data_dir(settings.state_dir)


def resolve_dsn(settings: OperatorSettings) -> str:
    """The configured DSN, or the embedded server's (started if needed). Blocking."""
    if settings.database_url:
        return settings.database_url
    return EmbeddedPostgres(_data_dir(settings)).start()


async def open_store(settings: OperatorSettings, *, migrate: bool = True, **pool: Any) -> TaskStore:
    """Connect (starting the embedded server if no DSN is set) and apply migrations."""
    dsn = await asyncio.to_thread(resolve_dsn, settings)
    store = await TaskStore.connect(dsn, **pool)
    if migrate:
        await store.migrate()
    return store
