"""A TEST DOUBLE of the Kubernetes API server's authorizer, in front of the sandbox.

The sandbox has no authentication or RBAC (docs/sandbox.md), so a user without rights is
made here: an HTTP proxy that forwards every request to the sandbox, except that a bearer
token listed as read-only may only GET (list, get, watch). Anything else is answered as a
real API server answers an RBAC denial: 403 with a `Status` of reason `Forbidden` and the
same message shape. It is not Kubernetes RBAC; it exists so the browser can be shown a real
403 coming back through `UserKube`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web

HOP_HEADERS = {"host", "content-length", "transfer-encoding", "connection", "authorization"}


def _forbidden(request: web.Request, user: str) -> web.Response:
    parts = [p for p in request.path.split("/") if p]
    # /apis/<group>/<version>/namespaces/<ns>/<plural>/<name>[/<sub>]
    group = parts[1] if parts and parts[0] == "apis" else ""
    ns = parts[parts.index("namespaces") + 1] if "namespaces" in parts else ""
    after = parts[parts.index("namespaces") + 2 :] if "namespaces" in parts else parts[-1:]
    plural = after[0] if after else ""
    name = after[1] if len(after) > 1 else ""
    sub = f"/{after[2]}" if len(after) > 2 else ""
    verb = {"PATCH": "patch", "PUT": "update", "POST": "create", "DELETE": "delete"}.get(request.method, "get")
    subject = f'{plural}.{group} "{name}"' if name else f"{plural}.{group}"
    message = (
        f'{subject} is forbidden: User "{user}" cannot {verb} resource "{plural}{sub}" '
        f'in API group "{group}" in the namespace "{ns}"'
    )
    status = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": "Forbidden",
        "details": {"name": name, "group": group, "kind": plural},
        "code": 403,
    }
    return web.json_response(status, status=403)


class ReadOnlyProxy:
    def __init__(self, upstream: str, read_only: dict[str, str]) -> None:
        self.upstream = upstream.rstrip("/")
        self.read_only = read_only  # bearer token -> user name
        self.refused: list[str] = []
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self.url = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        token = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        user = self.read_only.get(token)
        if user is not None and request.method not in ("GET", "HEAD"):
            self.refused.append(f"{request.method} {request.path}")
            return _forbidden(request, user)
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
        body = await request.read()
        async with self._session.request(
            request.method, self.upstream + request.path_qs, headers=headers, data=body or None
        ) as upstream:
            resp = web.StreamResponse(status=upstream.status)
            if "Content-Type" in upstream.headers:
                resp.headers["Content-Type"] = upstream.headers["Content-Type"]
            await resp.prepare(request)
            async for chunk in upstream.content.iter_any():  # watches stream
                await resp.write(chunk)
            await resp.write_eof()
            return resp

    async def start(self) -> ReadOnlyProxy:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server: Any = site._server
        self.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    def kubeconfig(self, path: Path, token: str) -> Path:
        """A kubeconfig for the user of `token`, pointing at this proxy."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "proxy", "cluster": {"server": self.url}}],
            "users": [{"name": "u", "user": {"token": token}}],
            "contexts": [{"name": "proxy", "context": {"cluster": "proxy", "user": "u", "namespace": "default"}}],
            "current-context": "proxy",
        }
        path.write_text(yaml.safe_dump(config))
        return path
