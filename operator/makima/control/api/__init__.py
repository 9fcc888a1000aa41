"""The operator HTTP API (aiohttp, one server): task reports, planner step submissions,
the daemon WebSocket, `/metrics`, `/healthz`, `/readyz`.

Build it with `build_app(ApiDeps(...))` (or run it with `ApiServer`). Every body is a
`makima.core.protocol` model; unknown fields are 422, bodies over `MAX_BODY_BYTES` are 413,
every error is JSON `ErrorBody` (see `errors.py`).

Authentication:
- Task endpoints take `Authorization: Bearer <task token>`. The store keeps only the
  token's hash and accepts it only while the task is active, so the token is the fence:
  a report from a lost, cancelled or finished attempt is refused with 403 (and the same
  result re-sent by the attempt that finished the task is answered "accepted" again, so
  client retries after a lost reply are harmless).
- Reading a task's event log (`GET /v1/tasks/{id}/events`) takes either the
  operator-configured **reader token** (`ApiDeps.reader_token`, e.g. from a Secret the CLI
  and dashboards are given; it reads any task, finished or not, and can write nothing) or
  the task's own token (that task only, while it runs — the agent reading its own log).
  A reader token is separate from task tokens because task tokens die with the task while
  history is read long after, and it is separate from the daemon token so that reading
  logs never grants the right to register executors.
- The daemon socket (`/v1/daemons/connect`) takes the namespace's daemon token; see
  `makima.control.executors.daemons`.
"""

from __future__ import annotations

from makima.control.api.app import DAEMON_CONNECT_PATH, ApiServer, build_app
from makima.control.api.deps import ApiDeps
from makima.control.api.errors import ApiError

__all__ = ["DAEMON_CONNECT_PATH", "ApiDeps", "ApiError", "ApiServer", "build_app"]
