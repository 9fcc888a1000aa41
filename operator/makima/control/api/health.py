"""`/healthz` (the process answers), `/readyz` (the active replica and deps.ready()), `/metrics`."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from makima.control import metrics
from makima.control.api.errors import json_response
from makima.control.api.tasks import DEPS_KEY

log = logging.getLogger(__name__)

READY_TIMEOUT = 2.0  # below the chart's readiness probe timeout (3 s)


class _Pending:
    """The readiness check still running, if any (one per app, set up with the routes)."""

    check: asyncio.Future[bool] | None = None


_CHECK_KEY: web.AppKey[_Pending] = web.AppKey("makima_ready_check", _Pending)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def _consume(check: asyncio.Future[bool]) -> None:
    if not check.cancelled():
        check.exception()  # retrieved here, so a check that failed after its probe answered is not logged as lost


async def readyz(request: web.Request) -> web.Response:
    """503 on a standby replica, and unless `deps.ready()` says yes within READY_TIMEOUT.

    The check runs as its own task and the answer does not wait for it to be cancelled: a
    database that stops answering can make a cancelled query slow to unwind, and a probe
    must get its answer in time anyway. A check still running is reused by the next probe.
    """
    deps = request.app[DEPS_KEY]
    if not deps.active():  # a standby: the Service must not send it reports or daemons
        return json_response({"error": "standing by: another replica is active"}, status=503)
    pending = request.app[_CHECK_KEY]
    check = pending.check
    if check is None or check.done():
        check = pending.check = asyncio.ensure_future(deps.ready())
        check.add_done_callback(_consume)
    done, _ = await asyncio.wait({check}, timeout=READY_TIMEOUT)
    ready = False
    if check in done:
        pending.check = None
        exc = check.exception()
        if exc is not None:
            log.warning("readiness check failed: %s", type(exc).__name__)
        else:
            ready = bool(check.result())
    else:
        log.warning("readiness check did not answer within %.1fs", READY_TIMEOUT)
    if ready:
        return web.json_response({"status": "ready"})
    return json_response({"error": "not ready"}, status=503)


async def metrics_endpoint(request: web.Request) -> web.Response:
    body = generate_latest(metrics.REGISTRY)
    # CONTENT_TYPE_LATEST carries a charset parameter, which aiohttp wants in its own argument.
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def add_routes(app: web.Application) -> None:
    app[_CHECK_KEY] = _Pending()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_endpoint)
