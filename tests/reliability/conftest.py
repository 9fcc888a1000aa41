"""Fixtures of the reliability suite: a database reached through a proxy that can be cut."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest

from makima.control.store import TaskStore

from .proxy import CutProxy


def via(dsn: str, port: int) -> str:
    """The DSN with its host and port replaced by the proxy's."""
    parts = urlsplit(dsn)
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@127.0.0.1:{port}" if userinfo else f"127.0.0.1:{port}"
    return urlunsplit(parts._replace(netloc=netloc))


@pytest.fixture
def db_proxy(pg_dsn: str) -> Iterator[CutProxy]:
    parts = urlsplit(pg_dsn)
    with CutProxy(parts.hostname or "127.0.0.1", parts.port or 5432) as proxy:
        yield proxy


@pytest.fixture
def proxied_dsn(pg_dsn: str, db_proxy: CutProxy) -> str:
    return via(pg_dsn, db_proxy.port)


@pytest.fixture
async def cut_store(proxied_dsn: str) -> AsyncIterator[TaskStore]:
    """A store whose database path can be cut; short timeouts so a cut costs a test seconds."""
    store = await TaskStore.connect(
        proxied_dsn, attempt_timeout=0.5, op_timeout=1.5, retry_base=0.05, retry_max=0.2, connect_timeout=1.0
    )
    try:
        yield store
    finally:
        await store.close()


# The sandbox, a bare origin repository and a free port, from the integration suite's fixtures.
from makima.cli.demo.stack import free_port  # noqa: E402, F401
from tests.integration.conftest import api, cluster, origin, sandbox, start_operator  # noqa: E402, F401
