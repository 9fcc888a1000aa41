"""`/healthz` (the process answers), `/readyz` (deps.ready()), `/metrics` (Prometheus)."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .. import metrics
from .errors import json_response
from .tasks import DEPS_KEY

log = logging.getLogger(__name__)

READY_TIMEOUT = 5.0


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    deps = request.app[DEPS_KEY]
    try:
        ready = await asyncio.wait_for(deps.ready(), timeout=READY_TIMEOUT)
    except Exception as exc:
        log.warning("readiness check failed: %s", type(exc).__name__)
        ready = False
    if ready:
        return web.json_response({"status": "ready"})
    return json_response({"error": "not ready"}, status=503)


async def metrics_endpoint(request: web.Request) -> web.Response:
    body = generate_latest(metrics.REGISTRY)
    # CONTENT_TYPE_LATEST carries a charset parameter, which aiohttp wants in its own argument.
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_endpoint)
