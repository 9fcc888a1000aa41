"""PostgreSQL fixtures: one real server per session, a fresh migrated schema per test.

- `pg_server` (session): the embedded server in a temp dir (or `MAKIMA_TEST_DATABASE_URL`).
- `pg_dsn` (function): DSN of a fresh, migrated, private schema (`?search_path=` in the
  DSN, which asyncpg applies as a server setting). ~20 ms; a CREATE DATABASE costs ~250 ms
  whatever the strategy, so whole databases are only for tests that need one.
- `pg_database_dsn` (function): DSN of a fresh, migrated database (slower; cloned from a template).
- `store` (function): a connected `TaskStore` on `pg_dsn`.

Admin statements (CREATE/DROP DATABASE) run on one connection owned by a background
thread with its own event loop, so they work from any test's loop and cost no reconnects.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import threading
import uuid
from collections.abc import AsyncIterator, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from makima.control.store import TaskStore
from makima.control.store.embedded import FAST_SETTINGS, EmbeddedPostgres
from makima.control.store.migrations import migrate

T = TypeVar("T")


def dsn_with_database(dsn: str, database: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{database}"))


class _AdminLoop:
    """A private event loop in a thread, holding one admin connection."""

    def __init__(self, dsn: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="pg-admin", daemon=True)
        self.thread.start()
        self.dsn = dsn
        self.conn: asyncpg.Connection | None = None

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=60)

    async def _conn(self) -> asyncpg.Connection:
        if self.conn is None or self.conn.is_closed():
            self.conn = await asyncpg.connect(self.dsn)
        return self.conn

    async def _execute(self, sql: str) -> None:
        try:
            await (await self._conn()).execute(sql)
        except (asyncpg.PostgresConnectionError, asyncpg.InterfaceError, OSError):
            self.conn = None  # the server was restarted by a test: reconnect once
            await (await self._conn()).execute(sql)

    async def migrate_schema(self, schema: str) -> None:
        conn = await self._conn()
        await conn.execute(f'CREATE SCHEMA "{schema}"; SET search_path TO "{schema}"')
        try:
            await migrate(conn)
        finally:
            await conn.execute("RESET search_path")

    def execute(self, sql: str) -> None:
        self.run(self._execute(sql))

    async def close_conn(self) -> None:
        if self.conn is not None and not self.conn.is_closed():
            await self.conn.close()
        self.conn = None

    def close(self) -> None:
        self.run(self.close_conn())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)


@dataclass
class PgServer:
    admin_dsn: str  # DSN of the maintenance database ("postgres")
    template: str  # migrated, never connected to, so it can be cloned
    shared: str  # where per-test schemas live; the admin connection sits here
    embedded: EmbeddedPostgres | None = None
    admin: _AdminLoop = field(init=False)

    def dsn(self, database: str) -> str:
        return dsn_with_database(self.admin_dsn, database)

    def create_schema(self) -> str:
        """A new schema in the shared test database with every migration applied."""
        name = f"t_{uuid.uuid4().hex[:16]}"
        self.admin.run(self.admin.migrate_schema(name))
        return name

    def drop_schema(self, name: str) -> None:
        self.admin.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')

    def create_database(self) -> str:
        name = f"t_{uuid.uuid4().hex[:16]}"
        self.admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{self.template}" STRATEGY FILE_COPY')
        return name

    def drop_database(self, name: str) -> None:
        self.admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def _create_databases(admin_dsn: str, template: str, shared: str) -> None:
    conn = await asyncpg.connect(admin_dsn)
    try:
        for name in (template, shared):
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    conn = await asyncpg.connect(dsn_with_database(admin_dsn, template))
    try:
        await migrate(conn)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    external = os.environ.get("MAKIMA_TEST_DATABASE_URL")
    tmp: str | None = None
    embedded: EmbeddedPostgres | None = None
    if external:
        admin_dsn = dsn_with_database(external, "postgres")
    else:
        # Not pytest's tmp_path: it is 0700 under root, and the server may run as `nobody`.
        tmp = tempfile.mkdtemp(prefix="makima-pg-")
        os.chmod(tmp, 0o755)
        embedded = EmbeddedPostgres(os.path.join(tmp, "data"), settings=FAST_SETTINGS, database="postgres")
        admin_dsn = embedded.start()
    suffix = uuid.uuid4().hex[:8]
    server = PgServer(admin_dsn, template=f"makima_tmpl_{suffix}", shared=f"makima_test_{suffix}")
    server.embedded = embedded
    server.admin = _AdminLoop(server.dsn(server.shared))
    try:
        server.admin.run(_create_databases(admin_dsn, server.template, server.shared))
        yield server
    finally:
        try:
            if external:  # leave an external server as we found it
                server.admin.run(server.admin.close_conn())
                for name in (server.template, server.shared):
                    server.admin.run(_drop(admin_dsn, name))
        finally:
            server.admin.close()
            if embedded is not None:
                embedded.stop(mode="immediate")
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)


async def _drop(admin_dsn: str, name: str) -> None:
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture
def pg_dsn(pg_server: PgServer) -> Iterator[str]:
    """DSN of a fresh schema with every migration applied; dropped after the test."""
    name = pg_server.create_schema()
    try:
        yield f"{pg_server.dsn(pg_server.shared)}?search_path={name}"
    finally:
        pg_server.drop_schema(name)


@pytest.fixture
def pg_database_dsn(pg_server: PgServer) -> Iterator[str]:
    """DSN of a fresh database with every migration applied; dropped after the test."""
    name = pg_server.create_database()
    try:
        yield pg_server.dsn(name)
    finally:
        pg_server.drop_database(name)


@pytest.fixture
async def store(pg_dsn: str) -> AsyncIterator[TaskStore]:
    """A connected TaskStore on a fresh migrated database."""
    s = await TaskStore.connect(pg_dsn, min_size=1, max_size=10)
    try:
        yield s
    finally:
        await s.close()
