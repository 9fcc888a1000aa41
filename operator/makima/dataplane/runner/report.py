"""How the runner speaks back: the `Reporter` protocol, its API implementation, redaction.

`ApiReporter` batches events and posts them through `TaskClient` (a background flush
every `flush_seconds`, or as soon as `max_batch` events are waiting). Events are spooled,
not dropped: a batch the operator could not take (it is restarting, its database is
away) stays queued, with the id it was first sent with, and is sent again (the client
retries with backoff; the operator stores a batch id once). Only an answer saying the
attempt is over (its token refused) or that the batch is wrong drops a batch, with a
warning. `RedactingReporter`
wraps any reporter and replaces every known secret (task token, git token) in event
payloads with `***`, also base64- and URL-encoded copies of them — a safety net; the runner
itself never puts secrets there.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import uuid
from collections.abc import Iterable
from typing import Any, Protocol
from urllib.parse import quote, quote_plus

from makima.core.protocol import EventType, TaskEvent
from makima.dataplane.client import ApiError, TaskClient

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


FINAL_STATUSES = frozenset({400, 401, 403, 404, 413, 422})  # resending cannot help


class ApiReporter:
    """Posts events to the operator in batches. Use as an async context manager."""

    def __init__(self, client: TaskClient, *, flush_seconds: float = 0.5, max_batch: int = 100) -> None:
        self.client = client
        self.flush_seconds = flush_seconds
        self.max_batch = max_batch
        self._buffer: list[TaskEvent] = []
        self._spool: list[tuple[str, list[TaskEvent]]] = []  # formed batches not yet accepted, with their ids
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None
        self.dropped = 0  # events the operator refused for good (the attempt is over)

    @property
    def pending(self) -> int:
        """Events not yet accepted by the operator."""
        return len(self._buffer) + sum(len(b) for _, b in self._spool)

    async def __aenter__(self) -> ApiReporter:
        self._flusher = asyncio.create_task(self._flush_loop())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
            self._flusher = None
        try:
            await self.flush()
        except ApiError as exc:
            log.warning("%d task events could not be delivered: %s", self.pending, exc)

    async def event(self, type: EventType, payload: dict[str, Any]) -> None:
        self._buffer.append(TaskEvent(type=type, payload=payload))
        if len(self._buffer) >= self.max_batch:
            if self._flusher is None:
                try:
                    await self.flush()
                except ApiError as exc:  # queued still; the next flush sends them
                    log.warning("%d task events queued, not yet delivered: %s", self.pending, exc)
            else:
                self._wake.set()  # the flusher sends it; the caller (agent output) never waits for the API

    async def flush(self) -> None:
        """Send everything queued. Raises ApiError if the operator stays unreachable past the
        client's patience; the events stay queued for the next flush."""
        async with self._lock:
            while self._buffer:
                batch, self._buffer = self._buffer[: self.max_batch], self._buffer[self.max_batch :]
                self._spool.append((uuid.uuid4().hex, batch))
            while self._spool:
                batch_id, batch = self._spool[0]
                try:
                    await self.client.post_events(batch, batch_id=batch_id)
                except ApiError as exc:
                    if exc.status not in FINAL_STATUSES:
                        raise  # kept in the spool, sent again (same id) by the next flush
                    self.dropped += len(batch)
                    log.warning("the operator refused %d task events: %s", len(batch), exc)
                self._spool.pop(0)

    async def submit_pull_request(self, url: str, branch: str | None) -> None:
        await self.client.report_pull_request(url, branch)

    async def _flush_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.flush_seconds)
            self._wake.clear()
            try:
                await self.flush()
            except ApiError as exc:
                log.warning("%d task events queued, not yet delivered: %s", self.pending, exc)
