"""The app factory and a small server wrapper for the operator's process."""

from __future__ import annotations

import logging

from aiohttp import web

from makima.control.api import health, tasks
from makima.control.api.auth import bearer_token
from makima.control.api.deps import ApiDeps
from makima.control.api.errors import error_middleware
from makima.control.api.standby import standby_middleware
from makima.control.api.tasks import DEPS_KEY
from makima.core.protocol import MAX_BODY_BYTES

log = logging.getLogger(__name__)

DAEMON_CONNECT_PATH = "/v1/daemons/connect"


async def daemon_connect(request: web.Request) -> web.StreamResponse:
    deps = request.app[DEPS_KEY]
    token = bearer_token(request)  # 401 before the upgrade when missing or garbled
    return await deps.hub.handle(request, token, deps.verify_daemon_token)


def build_app(deps: ApiDeps) -> web.Application:
    """One aiohttp application: task reports, step submissions, the daemon socket, health, metrics."""
    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[error_middleware, standby_middleware])
    app[DEPS_KEY] = deps
    tasks.add_routes(app)
    health.add_routes(app)
    app.router.add_get(DAEMON_CONNECT_PATH, daemon_connect)

    async def close_daemons(app: web.Application) -> None:
        await deps.hub.close()

    app.on_shutdown.append(close_daemons)
    return app


class ApiServer:
    """Runs `build_app(deps)` on host:port; `start()`/`stop()` for the operator's lifecycle."""

    def __init__(self, deps: ApiDeps, host: str = "0.0.0.0", port: int = 8080) -> None:
        self.app = build_app(deps)
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None

    @classmethod
    def from_listen(cls, deps: ApiDeps, listen: str) -> ApiServer:
        """`listen` as in OperatorSettings.api_listen: "host:port"."""
        host, _, port = listen.rpartition(":")
        return cls(deps, host or "0.0.0.0", int(port))

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=5.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        if self.port == 0:  # an ephemeral port: report the one we got
            server = site._server
            sockets = getattr(server, "sockets", None) or []
            if sockets:
                self.port = int(sockets[0].getsockname()[1])
        log.info("operator API listening on %s:%d", self.host, self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
