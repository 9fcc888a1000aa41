"""What a standby replica answers: 503 + Retry-After to task reports and daemon connections.

A standby is not ready, so the Service sends it nothing; a request that reaches it anyway
(in the seconds before the endpoints follow readiness, or a client holding an old
connection) is refused, not stored: the runners and daemons retry honouring
`Retry-After` and reach the active replica, which handles the report at once. Storing it
here instead would leave it waiting for the active replica to look. Health, metrics and
reading a task's events stay open.
"""

from __future__ import annotations

from aiohttp import web

from makima.control.api.errors import ApiError, Handler
from makima.control.api.tasks import DEPS_KEY

RETRY_AFTER_SECONDS = 2  # about one readiness period: by then the Service routes to the active replica
_OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


def _open_on_standby(request: web.Request) -> bool:
    if request.path in _OPEN_PATHS:
        return True
    # GET /v1/tasks/{id}/events: readers (`makima logs`, the dashboard), read-only
    return request.method == "GET" and request.path.startswith("/v1/tasks/") and request.path.endswith("/events")


@web.middleware
async def standby_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if not request.app[DEPS_KEY].active() and not _open_on_standby(request):
        raise ApiError(
            503,
            "this operator replica is standing by; retry (the active replica takes reports)",
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )
    return await handler(request)
