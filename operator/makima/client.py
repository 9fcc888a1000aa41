"""Task-side client of the operator HTTP API (aiohttp), typed with the protocol messages.

Used by `makima task run`, the task-side `makima directive …` commands and the scripted
agent. Everything it sends or receives is a `makima.protocol` model; an error answer is
raised as `ApiError(status, body)` with the server's `ErrorBody` (every problem listed).

Idempotent calls (fetching the spec, posting events, the result and the pull-request
report) are retried a bounded number of times on connection errors and 5xx answers.
Step submissions are retried only on connection errors that happened before a reply.

The token never appears in a log line, an exception message or a repr.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping
from types import TracebackType
from typing import Any

import aiohttp
from pydantic import ValidationError

from .protocol import (
    ErrorBody,
    EventBatch,
    PullRequestReport,
    StepBatch,
    StepSubmission,
    TaskEvent,
    TaskResult,
    TaskSpec,
)

log = logging.getLogger(__name__)

ENV_API_URL = "MAKIMA_API_URL"
ENV_TASK_ID = "MAKIMA_TASK_ID"
ENV_TASK_TOKEN = "MAKIMA_TASK_TOKEN"


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
        retries: int = 3,
        retry_delay: float = 0.5,
        timeout: float = 30.0,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self.api_url = api_url.rstrip("/")
        self.task_id = task_id
        self._token = token
        self.retries = retries
        self.retry_delay = retry_delay
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

    # ---- calls -----------------------------------------------------------------------------

    async def get_task(self) -> TaskSpec:
        data = await self._request("GET", f"/v1/tasks/{self.task_id}", None, idempotent=True)
        return TaskSpec.model_validate(data)

    async def post_events(self, events: list[TaskEvent] | EventBatch) -> int | None:
        batch = events if isinstance(events, EventBatch) else EventBatch(events=events)
        data = await self._request("POST", f"/v1/tasks/{self.task_id}/events", batch, idempotent=True)
        last = data.get("lastSeq") if isinstance(data, dict) else None
        return last if isinstance(last, int) else None

    async def post_result(self, result: TaskResult) -> None:
        await self._request("POST", f"/v1/tasks/{self.task_id}/result", result, idempotent=True)

    async def submit_steps(self, steps: list[StepSubmission] | StepBatch, *, final: bool = False) -> int:
        batch = steps if isinstance(steps, StepBatch) else StepBatch(steps=steps, final=final)
        data = await self._request("POST", f"/v1/tasks/{self.task_id}/steps", batch, idempotent=False)
        accepted = data.get("accepted") if isinstance(data, dict) else None
        return accepted if isinstance(accepted, int) else len(batch.steps)

    async def report_pull_request(self, url: str, branch: str | None = None) -> None:
        report = PullRequestReport(url=url, branch=branch)
        await self._request("POST", f"/v1/tasks/{self.task_id}/pull-request", report, idempotent=True)

    # ---- plumbing --------------------------------------------------------------------------

    async def _request(self, method: str, path: str, body: Any, *, idempotent: bool) -> Any:
        url = self.api_url + path
        headers = {"Authorization": f"Bearer {self._token}", "Accept": "application/json"}
        payload = None
        if body is not None:
            headers["Content-Type"] = "application/json"
            payload = body.model_dump_json(by_alias=True, exclude_none=True)
        attempts = 1 + max(0, self.retries)
        for attempt in range(1, attempts + 1):
            sent = False
            try:
                session = self._get_session()
                async with session.request(method, url, data=payload, headers=headers) as resp:
                    sent = True
                    text = await resp.text()
                    if resp.status < 400:
                        return _json_or_none(text)
                    error = _error_body(resp.status, text)
                    if resp.status >= 500 and idempotent and attempt < attempts:
                        log.warning("%s %s: %s (attempt %d/%d)", method, path, resp.status, attempt, attempts)
                        await asyncio.sleep(self.retry_delay * attempt)
                        continue
                    raise ApiError(resp.status, error)
            except (TimeoutError, aiohttp.ClientConnectionError) as exc:
                retryable = idempotent or (not sent and isinstance(exc, aiohttp.ClientConnectorError))
                if retryable and attempt < attempts:
                    log.warning("%s %s: %s (attempt %d/%d)", method, path, _describe(exc), attempt, attempts)
                    await asyncio.sleep(self.retry_delay * attempt)
                    continue
                error = ErrorBody(error=f"cannot reach the operator API at {url}: {_describe(exc)}")
                raise ApiError(0, error) from exc
        raise AssertionError("unreachable")  # pragma: no cover


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

    For `makima dashboard`, which holds the token server-side: it never reaches a browser, a
    log line, an exception message or a repr. Errors are `ApiError` (status 0: unreachable).
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
