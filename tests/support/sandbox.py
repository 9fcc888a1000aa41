"""Fixtures for the sandbox cluster (makima_testing.sandbox, a test double of the Kubernetes API).

- `sandbox_session`: one sandbox for the whole session, on a thread of its own (works for
  sync and async tests alike; the `kubernetes` client and kubectl can use it too).
- `sandbox`: a fresh one per test, same shape (starts in a few milliseconds).
- `sandbox_namespace`: a fresh namespace in `sandbox_session`, deleted afterwards.
- `kopf_operator(...)`: run kopf in-process against a sandbox (an async context manager).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from makima_testing.sandbox import SandboxThread


@pytest.fixture(scope="session")
def sandbox_session() -> Iterator[SandboxThread]:
    with SandboxThread() as sb:
        yield sb


@pytest.fixture
def sandbox() -> Iterator[SandboxThread]:
    with SandboxThread() as sb:
        yield sb


@pytest.fixture
def sandbox_namespace(sandbox_session: SandboxThread) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:10]}"
    sandbox_session.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    yield name
    with contextlib.suppress(Exception):
        sandbox_session.delete("v1", "Namespace", name)


@contextlib.asynccontextmanager
async def kopf_operator(
    url: str,
    registry: Any,
    namespaces: list[str] | None = None,
    settings: Any = None,
) -> AsyncIterator[list[logging.LogRecord]]:
    """Run `kopf.operator` against the sandbox at `url`; yields kopf's log records (live list).

    `registry` is a `kopf.OperatorRegistry` with the handlers under test. A login handler
    pointing at `url` is added to it; peering is standalone, as fits a single test operator.
    """
    import kopf

    @kopf.on.login(registry=registry)
    def _login(**_: Any) -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(server=url, insecure=True, default_namespace="default")

    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Collect(level=logging.DEBUG)
    kopf_logger = logging.getLogger("kopf")
    kopf_logger.addHandler(handler)
    old_level = kopf_logger.level
    kopf_logger.setLevel(logging.DEBUG)
    stop: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    ready = asyncio.Event()
    task = asyncio.create_task(
        kopf.operator(
            registry=registry,
            settings=settings,
            standalone=True,
            namespaces=namespaces or [],
            clusterwide=not namespaces,
            stop_flag=stop,
            ready_flag=ready,
        )
    )
    try:
        await asyncio.wait_for(ready.wait(), 10)
        yield records
    finally:
        stop.set_result(None)
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 10)
        kopf_logger.removeHandler(handler)
        kopf_logger.setLevel(old_level)
