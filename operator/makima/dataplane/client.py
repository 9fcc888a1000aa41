"""Task-side client of the operator HTTP API (aiohttp), typed with the protocol messages.

Used by `makima task run`, the task-side `makima directive …` commands and the scripted
agent. Everything it sends or receives is a `makima.core.protocol` model; an error answer is
raised as `ApiError(status, body)` with the server's `ErrorBody` (every problem listed).

Every call is idempotent on the server (an event batch carries an id, a step or a result
sent again is recognised), so every call is retried with makima's one policy (`core.retry`:
exponential backoff with full jitter, never shorter than the operator's `Retry-After`) on
connection errors, timeouts, 408/409/425/429 and 5xx answers, for as long as the attempt
could still be valid: `patience` seconds (default 600, `MAKIMA_REPORT_PATIENCE_SECONDS`,
raised to the task's own timeout by `cover(spec)`), more than the heartbeat timeout and an
operator restart. An answer that says the attempt is over (401/403: its token is refused)
or that the request is wrong (400, 404, 413, 422) is final at once.

The token never appears in a log line, an exception message or a repr.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from types import TracebackType
from typing import Any

import aiohttp
from pydantic import ValidationError
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt, stop_after_delay, stop_any
from tenacity.stop import stop_base

from makima.core.protocol import (
    ErrorBody,
    EventBatch,
    PullRequestReport,
    StepBatch,
    StepSubmission,
    TaskEvent,
    TaskResult,
    TaskSpec,
)
from makima.core.retry import AtLeastAsked, backoff

log = logging.getLogger(__name__)

ENV_API_URL = "MAKIMA_API_URL"
ENV_TASK_ID = "MAKIMA_TASK_ID"
ENV_TASK_TOKEN = "MAKIMA_TASK_TOKEN"
ENV_PATIENCE = "MAKIMA_REPORT_PATIENCE_SECONDS"

DEFAULT_PATIENCE = 600.0  # > the default heartbeat timeout (120 s) plus an operator restart
MAX_RETRY_AFTER = 60.0  # a Retry-After beyond this is taken as this
RETRYABLE_STATUSES = frozenset({408, 409, 425, 429}) | frozenset(range(500, 600))


class ApiError(Exception):
    """The operator answered with an error (or could not be reached: status 0)."""

    def __init__(self, status: int, body: ErrorBody) -> None:
        self.status = status
        self.body = body
        super().__init__(f"{status}: {body.error}" if status else body.error)

    @property
    def problems(self) -> list[str]:
        """Every problem as one readable line each."""
        lines = []
        for p in self.body.problems:
            where = " ".join(x for x in (f"step {p.step}" if p.step else "", p.field or "") if x)
            lines.append(f"{where}: {p.message}" if where else p.message)
        return lines


class _Transient(ApiError):
    """A retryable answer or connection error; `retry_after` is the server's hint (seconds)."""

    def __init__(self, status: int, body: ErrorBody, retry_after: float | None = None) -> None:
        super().__init__(status, body)
        self.retry_after = retry_after


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """`Retry-After` as seconds (delta-seconds or an HTTP date), capped; None if absent or garbled."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        from email.utils import parsedate_to_datetime

        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def _asked_wait(error: BaseException) -> float | None:
    """The wait the operator asked for with its answer (Retry-After), if any."""
    return error.retry_after if isinstance(error, _Transient) else None


class MissingEnvironment(Exception):
    """`MAKIMA_API_URL`, `MAKIMA_TASK_ID` or `MAKIMA_TASK_TOKEN` is not set."""


class TaskClient:
    """One task's view of the operator API. Use as an async context manager (or call close())."""

    def __init__(
        self,
        api_url: str,
        task_id: str,
        token: str,
        *,
        patience: float = DEFAULT_PATIENCE,
        retries: int | None = None,
        retry_delay: float = 0.5,
        max_retry_delay: float = 10.0,
        timeout: float = 30.0,
        session: aiohttp.ClientSession | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.api_url = api_url.rstrip("/")
        self.task_id = task_id
        self._token = token
        self.patience = patience  # seconds a call keeps retrying
        self.retries = retries  # an optional cap on retries, besides patience
        self.retry_delay = retry_delay
        self.max_retry_delay = max_retry_delay
        self._sleep = sleep  # the waits between tries (tests record them instead)
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session = session
        self._own_session = session is None

    def __repr__(self) -> str:
        return f"TaskClient(api_url={self.api_url!r}, task_id={self.task_id!r})"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **kwargs: Any) -> TaskClient:
        env = os.environ if env is None else env
        missing = [k for k in (ENV_API_URL, ENV_TASK_ID, ENV_TASK_TOKEN) if not env.get(k)]
        if missing:
            raise MissingEnvironment(
                f"not inside a makima task: {', '.join(missing)} not set "
                "(the runner sets them for the agent and for task-side commands)"
            )
        if env.get(ENV_PATIENCE) and "patience" not in kwargs:
            try:
                kwargs["patience"] = max(float(env[ENV_PATIENCE]), 0.0)
            except ValueError:
                raise MissingEnvironment(f"{ENV_PATIENCE} must be a number of seconds") from None
        return cls(env[ENV_API_URL], env[ENV_TASK_ID], env[ENV_TASK_TOKEN], **kwargs)

    async def __aenter__(self) -> TaskClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None and self._own_session:
            await self._session.close()
        self._session = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
            self._own_session = True
        return self._session

    def cover(self, spec: TaskSpec) -> None:
        """Keep retrying for as long as this attempt may run: at least its own timeout."""
        self.patience = max(self.patience, spec.agent.timeout_seconds)

    # ---- calls -----------------------------------------------------------------------------

    async def get_task(self) -> TaskSpec:
        data = await self._request("GET", f"/v1/tasks/{self.task_id}", None)
        return TaskSpec.model_validate(data)

    async def post_events(self, events: list[TaskEvent] | EventBatch, batch_id: str | None = None) -> int | None:
        """Post events; a retried batch with the same `batch_id` is stored once."""
        batch = events if isinstance(events, EventBatch) else EventBatch(events=events)
        if batch.batch_id is None:
            batch = batch.model_copy(update={"batch_id": batch_id or uuid.uuid4().hex})
        data = await self._request("POST", f"/v1/tasks/{self.task_id}/events", batch)
        last = data.get("lastSeq") if isinstance(data, dict) else None
        return last if isinstance(last, int) else None

    async def post_result(self, result: TaskResult) -> None:
        await self._request("POST", f"/v1/tasks/{self.task_id}/result", result)

    async def submit_steps(self, steps: list[StepSubmission] | StepBatch, *, final: bool = False) -> int:
        batch = steps if isinstance(steps, StepBatch) else StepBatch(steps=steps, final=final)
        data = await self._request("POST", f"/v1/tasks/{self.task_id}/steps", batch)
        accepted = data.get("accepted") if isinstance(data, dict) else None
        return accepted if isinstance(accepted, int) else len(batch.steps)

    async def report_pull_request(self, url: str, branch: str | None = None) -> None:
        report = PullRequestReport(url=url, branch=branch)
        await self._request("POST", f"/v1/tasks/{self.task_id}/pull-request", report)

    # ---- plumbing --------------------------------------------------------------------------

    async def _request(self, method: str, path: str, body: Any) -> Any:
        """One call, retried (see the module docstring); raises `ApiError` when it gives up."""
        stops: list[stop_base] = [stop_after_delay(self.patience)]
        if self.retries is not None:
            stops.append(stop_after_attempt(1 + max(0, self.retries)))
        retrying = AsyncRetrying(
            retry=retry_if_exception(lambda e: isinstance(e, _Transient)),
            wait=AtLeastAsked(backoff(self.retry_delay, self.max_retry_delay), _asked_wait),
            stop=stop_any(*stops),
            before_sleep=lambda state: self._log_retry(method, path, state),
            reraise=True,
            sleep=self._sleep,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    return await self._once(method, path, body)
        except _Transient as exc:
            raise ApiError(exc.status, exc.body) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    def _log_retry(method: str, path: str, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        wait = state.next_action.sleep if state.next_action is not None else 0.0
        log.warning("%s %s: %s (try %d); retrying in %.1fs", method, path, exc, state.attempt_number, wait)

    async def _once(self, method: str, path: str, body: Any) -> Any:
        url = self.api_url + path
        headers = {"Authorization": f"Bearer {self._token}", "Accept": "application/json"}
        payload = None
        if body is not None:
            headers["Content-Type"] = "application/json"
            payload = body.model_dump_json(by_alias=True, exclude_none=True)
        try:
            session = self._get_session()
            async with session.request(method, url, data=payload, headers=headers) as resp:
                text = await resp.text()
                if resp.status < 400:
                    return _json_or_none(text)
                error = _error_body(resp.status, text)
                if resp.status in RETRYABLE_STATUSES:
                    raise _Transient(resp.status, error, retry_after_seconds(resp.headers.get("Retry-After")))
                raise ApiError(resp.status, error)
        except (TimeoutError, aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
            error = ErrorBody(error=f"cannot reach the operator API at {url}: {_describe(exc)}")
            raise _Transient(0, error) from exc


def _json_or_none(text: str) -> Any:
    import json

    if not text.strip():
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


def _error_body(status: int, text: str) -> ErrorBody:
    data = _json_or_none(text)
    if isinstance(data, dict):
        try:
            return ErrorBody.model_validate(data)
        except ValidationError:
            pass
    snippet = text.strip()[:500] or "(empty body)"
    return ErrorBody(error=f"HTTP {status}: {snippet}")


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


class EventReader:
    """Reads task event logs (`GET /v1/tasks/{id}/events`) with the operator's reader token.

    For `makima logs` and `makima dashboard` (which holds the token server-side): it never
    reaches a browser, a log line, an exception message or a repr. Errors are `ApiError` (status 0: unreachable).
    """

    def __init__(self, api_url: str, token: str, *, timeout: float = 30.0) -> None:
        self.api_url = api_url.rstrip("/")
        self._token = token
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return f"EventReader(api_url={self.api_url!r})"

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        self._session = None

    async def events(self, task_id: str, since: int = 0, limit: int = 1000) -> dict[str, Any]:
        """One EventPage as a dict: `events` (seq, at, type, payload) and `nextSince`."""
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        url = f"{self.api_url}/v1/tasks/{task_id}/events"
        headers = {"Authorization": f"Bearer {self._token}", "Accept": "application/json"}
        try:
            async with self._session.get(url, params={"since": since, "limit": limit}, headers=headers) as resp:
                text = await resp.text()
                if resp.status >= 400:
                    raise ApiError(resp.status, _error_body(resp.status, text))
                data = _json_or_none(text)
                return data if isinstance(data, dict) else {"events": [], "nextSince": since}
        except (TimeoutError, aiohttp.ClientConnectionError) as exc:
            raise ApiError(
                0, ErrorBody(error=f"cannot reach the operator API at {self.api_url}: {_describe(exc)}")
            ) from exc
