"""Bearer-token checks for task endpoints.

- Task endpoints (`GET /v1/tasks/{id}`, the POSTs): `Authorization: Bearer <task token>`,
  checked with `TaskStore.verify_token`, which is true only while the task is active
  (pending, dispatched, running). So a report from a lost or finished attempt is refused
  (403, saying why), and task A's token never opens task B.
- Readers of the event log (`GET /v1/tasks/{id}/events`): the operator-configured reader
  token (`ApiDeps.reader_token`, any task, also after it finished) or the task's own token
  (that task, while active). See `makima.control.api` for the rationale.
- A missing or garbled header is 401 (with `WWW-Authenticate: Bearer`); a well-formed
  token that does not open this task is 403. Tokens are compared in constant time and
  never logged or echoed.
"""

from __future__ import annotations

import hmac
import re

from aiohttp import web

from makima.control.api.errors import ApiError
from makima.control.config import TOKEN_PATTERN
from makima.control.store import TaskStore, token_matches
from makima.core.tasks import Task

_BEARER = re.compile(rf"^Bearer ({TOKEN_PATTERN})$")
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="makima"'}


def bearer_token(request: web.Request) -> str:
    """The bearer token of the request, or 401."""
    header = request.headers.get("Authorization")
    if header is None:
        raise ApiError(401, "missing Authorization header (expected: Bearer <task token>)", headers=_CHALLENGE)
    match = _BEARER.match(header.strip())
    if match is None:
        raise ApiError(401, "malformed Authorization header (expected: Bearer <token>)", headers=_CHALLENGE)
    return match.group(1)


async def authorize_task(store: TaskStore, task_id: str, token: str) -> Task:
    """The task if `token` is its token and it is still active; else 403 with the reason."""
    if await store.verify_token(task_id, token):
        task = await store.get_task(task_id)
        if task is not None:
            return task
    task = await store.get_task(task_id)
    if task is not None and token_matches(token, task.token_hash) and task.state.terminal:
        # Only someone holding this task's token learns its state.
        raise ApiError(
            403,
            f"task {task_id} is {task.state.value}: reports from this attempt are no longer accepted",
        )
    raise ApiError(403, f"token is not valid for task {task_id}")


async def authorize_reader(store: TaskStore, task_id: str, token: str, reader_token: str | None) -> None:
    """Reader token (any task) or the task's own token (while active); else 403."""
    if reader_token and hmac.compare_digest(token.encode(), reader_token.encode()):
        return
    if await store.verify_token(task_id, token):
        return
    raise ApiError(403, f"token may not read the events of task {task_id}")
