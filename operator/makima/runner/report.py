"""How the runner speaks back: the `Reporter` protocol, its API implementation, redaction.

`ApiReporter` batches events and posts them through `TaskClient` (a background flush
every `flush_seconds`, or at once when `max_batch` events are waiting). `RedactingReporter`
wraps any reporter and replaces every known secret (task token, git token) in event
payloads with `***`, also base64- and URL-encoded copies of them — a safety net; the runner
itself never puts secrets there.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from collections.abc import Iterable
from typing import Any, Protocol
from urllib.parse import quote, quote_plus

from ..client import ApiError, TaskClient
from ..protocol import EventType, TaskEvent

log = logging.getLogger(__name__)

REDACTED = "***"


class Reporter(Protocol):
    async def event(self, type: EventType, payload: dict[str, Any]) -> None: ...

    async def flush(self) -> None: ...

    async def submit_pull_request(self, url: str, branch: str | None) -> None: ...


MIN_ENCODED_CHARS = 8  # an encoded fragment shorter than this is too common to mask safely


def encoded_forms(secret: str) -> set[str]:
    """The secret as it appears inside base64 (standard and URL-safe, at each of the three byte
    alignments it can have within a longer encoded text) and URL-encoded text."""
    forms = {quote(secret, safe=""), quote_plus(secret, safe="")}
    raw = secret.encode()
    for offset in range(3):
        encoded = base64.b64encode(b"\0" * offset + raw)
        # Characters that depend only on the secret's bytes: skip those mixed with the padding
        # before it, and the last group (mixed with whatever follows in the longer text).
        start = (offset * 8 + 5) // 6
        full = (offset + len(raw)) // 3 * 4
        core = encoded[start:full].decode()
        forms.add(core)
        forms.add(core.translate(_URLSAFE))
    return {f for f in forms if len(f) >= MIN_ENCODED_CHARS and f != secret}


_URLSAFE = str.maketrans("+/", "-_")


class Redactor:
    """Replaces each secret (strings of 4+ characters) with `***`, and its base64 and
    URL-encoded forms (see `encoded_forms`) with `***` too."""

    def __init__(self, secrets: Iterable[str | None]) -> None:
        plain = {s for s in secrets if s and len(s) >= 4}
        forms = set(plain)
        for secret in plain:
            forms |= encoded_forms(secret)
        self.secrets = sorted(forms, key=len, reverse=True)

    def text(self, value: str) -> str:
        for secret in self.secrets:
            if secret in value:
                value = value.replace(secret, REDACTED)
        return value

    def obj(self, value: Any) -> Any:
        if not self.secrets:
            return value
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {self.obj(k): self.obj(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.obj(v) for v in value]
        return value


class RedactionFilter(logging.Filter):
    """A logging filter that redacts secrets from every record passing through a handler."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        if self.redactor.secrets:
            record.msg = self.redactor.text(record.getMessage())
            record.args = None
        return True


class RedactingReporter:
    def __init__(self, inner: Reporter, redactor: Redactor) -> None:
        self.inner = inner
        self.redactor = redactor

    async def event(self, type: EventType, payload: dict[str, Any]) -> None:
        await self.inner.event(type, self.redactor.obj(payload))

    async def flush(self) -> None:
        await self.inner.flush()

    async def submit_pull_request(self, url: str, branch: str | None) -> None:
        await self.inner.submit_pull_request(self.redactor.text(url), branch)


class ApiReporter:
    """Posts events to the operator in batches. Use as an async context manager."""

    def __init__(self, client: TaskClient, *, flush_seconds: float = 0.5, max_batch: int = 100) -> None:
        self.client = client
        self.flush_seconds = flush_seconds
        self.max_batch = max_batch
        self._buffer: list[TaskEvent] = []
        self._lock = asyncio.Lock()
        self._flusher: asyncio.Task[None] | None = None

    async def __aenter__(self) -> ApiReporter:
        self._flusher = asyncio.create_task(self._flush_loop())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
            self._flusher = None
        await self.flush()

    async def event(self, type: EventType, payload: dict[str, Any]) -> None:
        self._buffer.append(TaskEvent(type=type, payload=payload))
        if len(self._buffer) >= self.max_batch:
            await self.flush()

    async def flush(self) -> None:
        async with self._lock:
            while self._buffer:
                batch, self._buffer = self._buffer[: self.max_batch], self._buffer[self.max_batch :]
                try:
                    await self.client.post_events(batch)
                except ApiError as exc:
                    # Events are progress, not results: losing some must not fail the task.
                    log.warning("dropped %d task events: %s", len(batch), exc)

    async def submit_pull_request(self, url: str, branch: str | None) -> None:
        await self.client.report_pull_request(url, branch)

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self.flush_seconds)
            await self.flush()
