"""Finding 4, the daemon half (issue 14): the operator's store going silent never costs a
daemon its connection, and a daemon connecting meanwhile is told to try again, not refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from makima.control.api import ApiDeps, build_app
from makima.control.executors.daemons import DaemonHub, DaemonSettings
from makima.control.store import StoreUnavailable, TaskStore
from makima.core.protocol import TaskSpec
from makima.dataplane.daemon import Daemon, DaemonConfig
from tests.support.wait import eventually

from .proxy import CutProxy

LIMIT = 30.0


async def any_token(namespace: str, token: str) -> bool:
    """Test double of the namespace daemon-token check: every token is good here."""
    return True


async def unused(*args: object) -> None:
    raise AssertionError("not used by these tests")


@contextlib.asynccontextmanager
async def operator_api(store: TaskStore) -> AsyncIterator[tuple[str, DaemonHub]]:
    hub = DaemonHub(store, DaemonSettings(heartbeat_seconds=0.2, lost_after_seconds=5.0, hello_timeout_seconds=5.0))
    deps = ApiDeps(
        store=store,
        hub=hub,
        spec_for=unused,  # type: ignore[arg-type]
        validate_steps=unused,  # type: ignore[arg-type]
        on_task_report=unused,  # type: ignore[arg-type]
        verify_daemon_token=any_token,
    )
    runner = web.AppRunner(build_app(deps))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}", hub
    finally:
        await runner.cleanup()


async def idle_runner(spec: TaskSpec, token: str, workdir: Path) -> None:
    """Test double of the task runner: these tests run no task."""
    await asyncio.Event().wait()


def daemon(url: str, tmp_path: Path) -> Daemon:
    config = DaemonConfig(
        api_url=url,
        namespace="default",
        name="d1",
        token="daemon-token-" + "x" * 40,
        work_dir=tmp_path,
        backoff_initial=0.05,
        backoff_max=0.3,
    )
    return Daemon(config, runner=idle_runner)


async def test_a_silent_store_does_not_close_daemon_sockets(
    cut_store: TaskStore, db_proxy: CutProxy, tmp_path: Path
) -> None:
    async with operator_api(cut_store) as (url, hub):
        d = daemon(url, tmp_path)
        run = asyncio.create_task(d.run())
        try:
            await eventually(lambda: d.connections == 1 and hub.connected(), "the daemon connected", LIMIT)
            failed: list[BaseException] = []
            write = cut_store.daemon_heartbeat

            async def recorded(*args: Any, **kwargs: Any) -> bool:
                try:
                    return await write(*args, **kwargs)
                except StoreUnavailable as exc:
                    failed.append(exc)
                    raise

            cut_store.daemon_heartbeat = recorded  # type: ignore[method-assign]
            db_proxy.cut()
            # Heartbeats keep coming (every 0.2 s); wait until writing two of them failed.
            await eventually(lambda: len(failed) >= 2, "two heartbeat writes failed", LIMIT)
            db_proxy.heal()
            await eventually(cut_store.ping, "the store answering again", LIMIT)
            # Still the first connection: it was never closed.
            assert d.connections == 1 and len(hub.connected()) == 1
        finally:
            db_proxy.heal()
            d.stop()
            await asyncio.wait_for(run, LIMIT)


async def test_a_daemon_connecting_during_a_store_outage_retries_and_is_not_refused(
    cut_store: TaskStore, db_proxy: CutProxy, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with operator_api(cut_store) as (url, hub):
        db_proxy.cut()
        d = daemon(url, tmp_path)
        run = asyncio.create_task(d.run())
        try:
            await eventually(
                lambda: any("cannot take this daemon now" in r.getMessage() for r in caplog.records),
                "the daemon told to try again",
                LIMIT,
            )
            assert not d.connected.is_set()
            db_proxy.heal()
            await eventually(
                lambda: d.connected.is_set() and bool(hub.connected()), "the daemon connected after the outage", LIMIT
            )
            assert not [r for r in caplog.records if "refused this daemon" in r.getMessage()]
        finally:
            db_proxy.heal()
            d.stop()
            await asyncio.wait_for(run, LIMIT)
