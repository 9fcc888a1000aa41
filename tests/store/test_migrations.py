"""Migrations: each file once, in order, safe under concurrent runners."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import asyncpg
import pytest

from makima.control.store import MigrationError, TaskStore
from makima.control.store.migrations import Migration, load_migrations, migrate
from tests.support.pg import PgServer


@pytest.fixture
def empty_dsn(pg_server: PgServer) -> Iterator[str]:
    """A database with no schema at all (not cloned from the migrated template)."""
    name = f"e_{uuid.uuid4().hex[:16]}"
    pg_server.admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield pg_server.dsn(name)
    finally:
        pg_server.drop_database(name)


def test_migration_files_are_ordered_and_named() -> None:
    found = load_migrations()
    assert found, "no migrations packaged"
    assert [m.version for m in found] == sorted(m.version for m in found)
    assert found[0].version == "0001_initial"


async def test_migrate_applies_once_then_is_a_no_op(empty_dsn: str) -> None:
    store = await TaskStore.connect(empty_dsn)
    try:
        first = await store.migrate()
        assert first == [m.version for m in load_migrations()]
        assert await store.migrate() == []
        conn = await asyncpg.connect(empty_dsn)
        try:
            assert await conn.fetchval("SELECT count(*) FROM schema_migrations") == len(first)
            assert await conn.fetchval("SELECT to_regclass('tasks') IS NOT NULL")
        finally:
            await conn.close()
    finally:
        await store.close()


async def test_concurrent_runners_apply_each_file_exactly_once(empty_dsn: str) -> None:
    conns = [await asyncpg.connect(empty_dsn) for _ in range(8)]
    try:
        results = await asyncio.gather(*(migrate(c) for c in conns))
        applied = [v for r in results for v in r]
        assert sorted(applied) == [m.version for m in load_migrations()]  # no file twice, none missing
        assert await conns[0].fetchval("SELECT count(*) FROM schema_migrations") == len(applied)
    finally:
        for c in conns:
            await c.close()


async def test_new_file_is_applied_and_edited_file_is_refused(empty_dsn: str) -> None:
    conn = await asyncpg.connect(empty_dsn)
    try:
        base = load_migrations()
        await migrate(conn, base)
        extra = Migration("9999_probe", "CREATE TABLE probe (x int)")
        assert await migrate(conn, [*base, extra]) == ["9999_probe"]
        assert await conn.fetchval("SELECT to_regclass('probe') IS NOT NULL")
        edited = Migration("9999_probe", "CREATE TABLE probe (x bigint)")
        with pytest.raises(MigrationError, match="edited"):
            await migrate(conn, [*base, edited])
    finally:
        await conn.close()


async def test_failed_migration_rolls_back_and_is_retried(empty_dsn: str) -> None:
    conn = await asyncpg.connect(empty_dsn)
    try:
        base = load_migrations()
        bad = Migration("9998_bad", "CREATE TABLE half (x int); SELECT 1/0;")
        with pytest.raises(asyncpg.DivisionByZeroError):
            await migrate(conn, [*base, bad])
        assert not await conn.fetchval("SELECT to_regclass('half') IS NOT NULL")
        versions = await conn.fetch("SELECT version FROM schema_migrations")
        assert "9998_bad" not in {r["version"] for r in versions}
        # The lock was released despite the failure: another run proceeds.
        assert await migrate(conn, base) == []
    finally:
        await conn.close()
