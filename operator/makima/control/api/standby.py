"""What a standby replica answers: 503 + Retry-After to task reports and daemon connections.

A standby is not ready, so the Service sends it nothing; a request that reaches it anyway
(before the endpoints follow readiness, or over a connection opened before) is refused,
not stored: runners and daemons retry honouring `Retry-After` and reach the active
replica, which handles the report at once (stored here, it would wait for the active
replica's next look). The refusal closes the connection, so the retry opens a new one for
the Service to route. Health, metrics and reading a task's events stay open.
"""

from __future__ import annotations

from aiohttp import web

from makima.control.api.errors import Handler, error_response
from makima.control.api.tasks import DEPS_KEY
from makima.core.protocol import ErrorBody

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
        body = ErrorBody(error="this operator replica is standing by; retry (the active replica takes reports)")
        response = error_response(503, body, {"Retry-After": str(RETRY_AFTER_SECONDS)})
        # Closed after the answer: a client reusing a kept-alive connection would come back
        # here forever, since a Service balances connections, not requests.
        response.force_close()
        return response
    return await handler(request)
