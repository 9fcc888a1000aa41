"""Waiting in tests: for a condition, never for a guessed time.

`eventually(check, what)` calls `check` (plain or async) until it returns something truthy and
returns that; after `timeout` seconds it fails with `what` and, when given, `detail()` (the
state worth seeing in the failure). `eventually_sync` is the same for synchronous tests.

The timeout is a deadline for a slow machine, not an expected duration. To show that
something did NOT happen, wait for the event that would have made it happen (a reconcile
counted, a poll served, a process started) and then look: a fixed sleep proves nothing on a
busy machine and wastes time on an idle one.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")

TIMEOUT = 60.0
INTERVAL = 0.05


def _failure(what: str, timeout: float, detail: Any) -> AssertionError:
    suffix = f": {detail}" if detail is not None else ""
    return AssertionError(f"not true after {timeout:g} s: {what}{suffix}")


async def eventually(
    check: Callable[[], T | Awaitable[T]],
    what: str,
    timeout: float = TIMEOUT,
    interval: float = INTERVAL,
    detail: Callable[[], Any] | None = None,
) -> T:
    """The first truthy result of `check()`, polled every `interval` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = check()
        value: T = await result if inspect.isawaitable(result) else result  # type: ignore[assignment]
        if value:
            return value
        if loop.time() > deadline:
            shown = detail() if detail is not None else None
            raise _failure(what, timeout, await shown if inspect.isawaitable(shown) else shown)
        await asyncio.sleep(interval)


def eventually_sync(
    check: Callable[[], T],
    what: str,
    timeout: float = TIMEOUT,
    interval: float = INTERVAL,
    detail: Callable[[], Any] | None = None,
) -> T:
    """`eventually` for synchronous code (blocks the calling thread between checks)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise _failure(what, timeout, detail() if detail is not None else None)
        time.sleep(interval)
