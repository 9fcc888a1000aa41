"""`makima dashboard` in a real browser: Playwright for Python driving Debian's Chromium.

The dashboard runs on its own loop in a thread (as it would in its own process), talking to
the sandbox cluster (a test double of the Kubernetes API, see docs/sandbox.md) through
`UserKube` with a kubeconfig, and to the real operator's API with the reader token. No
browser is downloaded: the tests use /usr/bin/chromium (`apt-get install chromium`, done by
.ci/run) and are skipped, saying why, where it is missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from makima.cli.dashboard.server import DashboardSettings, start
from makima.control.kube import UserKube

# The operator and the sandbox as the integration tests start them (fixtures re-exported).
from tests.integration.conftest import api, cluster, origin, sandbox, start_operator  # noqa: F401

CHROMIUM = os.environ.get("MAKIMA_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
READER_TOKEN = "dashboard-test-reader-token-4f1c"


def _skip_reason() -> str | None:
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "playwright (Python) is not installed: pip install -e '.[test]'"
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        return f"{CHROMIUM} is missing: apt-get install -y chromium (.ci/run does; it failed or was skipped here)"
    return None


class DashboardThread:
    """The dashboard server on its own event loop in a daemon thread."""

    def __init__(self, kubeconfig: Path, settings: DashboardSettings) -> None:
        self.kubeconfig, self.settings = kubeconfig, settings
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._main, name="dashboard-under-test", daemon=True)
        self._started = threading.Event()
        self._error: BaseException | None = None

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())
        # Handlers of connections the browser left open: end them before the loop closes.
        pending = asyncio.all_tasks(self._loop)
        for task in pending:
            task.cancel()
        self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self._loop.close()

    async def _serve(self) -> None:
        kube = UserKube.from_kubeconfig(str(self.kubeconfig))
        try:
            runner, self.url = await start(kube, self.settings)
        except BaseException as exc:
            self._error = exc
            self._started.set()
            kube.close()
            return
        self._stop = asyncio.Event()
        self._started.set()
        try:
            await self._stop.wait()
        finally:
            await runner.cleanup()
            kube.close()

    def start(self) -> DashboardThread:
        self._thread.start()
        self._started.wait(30)
        if self._error is not None:
            raise self._error
        return self

    def stop(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(15)


DashboardFactory = Callable[..., Awaitable[str]]


@pytest.fixture
async def dashboard() -> AsyncIterator[DashboardFactory]:
    """`await dashboard(kubeconfig, api_url=..., reader_token=...)` → the dashboard's URL."""
    running: list[DashboardThread] = []

    async def make(kubeconfig: Path, **kwargs: Any) -> str:
        settings = DashboardSettings(port=0, watch_timeout=10, **kwargs)
        thread = await asyncio.to_thread(DashboardThread(kubeconfig, settings).start)
        running.append(thread)
        return thread.url

    yield make
    for thread in running:
        await asyncio.to_thread(thread.stop)


BROWSER_DEADLINE_MS = 180_000


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    """A headless Chromium (the system's), with a fresh profile; skipped where there is none."""
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    from playwright.async_api import async_playwright

    profile = tempfile.mkdtemp(prefix="makima-chromium-")
    try:
        async with async_playwright() as pw:
            context = await pw.chromium.launch_persistent_context(
                profile,
                executable_path=CHROMIUM,
                headless=True,
                args=CHROMIUM_ARGS,
                viewport={"width": 1400, "height": 900},
            )
            # Playwright's 30 s default is a guess for an idle machine; waits are for conditions,
            # and this is only the deadline past which a slow (busy) machine is called broken.
            context.set_default_timeout(BROWSER_DEADLINE_MS)
            try:
                yield context
            finally:
                with contextlib.suppress(Exception):
                    await context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    """Where the screenshots go (the test's temporary output)."""
    out = tmp_path / "screenshots"
    out.mkdir()
    return out
