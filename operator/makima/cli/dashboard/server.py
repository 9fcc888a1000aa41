"""`makima dashboard`: an aiohttp server for one person, on 127.0.0.1 by default.

Kubernetes is reached only through `kube.UserKube` with the person's kubeconfig, so their
RBAC decides what the page shows and which actions succeed. Live updates come from watches
(`dashboard.watch`) relayed to the page as server-sent events. Task logs come from the
operator API with the reader token, which stays in this process: the page only ever asks
this server for a step's log.

HTTP surface (JSON unless said otherwise):

    GET  /                                      the page (static/index.html)
    GET  /static/{file}                         its CSS and JS
    GET  /api/config                            default namespace, whether logs are available
    GET  /api/watch/directives?namespace=       SSE: directives, directive, removed, problem
    GET  /api/watch/directive?namespace=&name=  SSE: directive, graph, step, events, problem
    GET  /api/step?namespace=&name=&step=       a step: node, attempts (from the task logs), events
    GET  /api/watch/log?namespace=&name=&task=[&step=]   SSE: lines, end, problem
    POST /api/action?namespace=&name=&action=pause|resume|retry[&step=]

Requests must name this server in `Host` (no DNS rebinding); POSTs must carry
`X-Makima-Dashboard: 1` (a header no other site's page can add without a CORS preflight,
which this server never answers), so another page in the browser cannot act with the
person's credentials.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web

from makima.cli.dashboard import shape
from makima.cli.dashboard.watch import Change, Watch
from makima.control.kube import DIRECTIVES, RETRYABLE_STEP_PHASES, STEPS, KubeError, UserKube
from makima.core.naming import LABEL_DIRECTIVE, step_object_name
from makima.dataplane.client import ApiError, EventReader

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
ACTION_HEADER = "X-Makima-Dashboard"
PING_SECONDS = 15.0
LOG_POLL_SECONDS = 0.5
EVENTS_REFRESH_SECONDS = 2.0
LOOPBACK = ("127.0.0.1", "localhost", "[::1]", "::1")
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)


@dataclass
class DashboardSettings:
    namespace: str = "default"
    host: str = "127.0.0.1"
    port: int = 8765
    api_url: str | None = None
    reader_token: str | None = None
    watch_timeout: int = 30


def _fail(status: int, message: str) -> web.HTTPException:
    body = json.dumps({"error": message})
    cls: type[web.HTTPException] = {
        400: web.HTTPBadRequest,
        403: web.HTTPForbidden,
        404: web.HTTPNotFound,
        409: web.HTTPConflict,
        421: web.HTTPMisdirectedRequest,
    }.get(status, web.HTTPBadGateway)
    return cls(text=body, content_type="application/json")


def kube_message(exc: KubeError, verb: str, what: str, namespace: str) -> str:
    """A refusal or failure from the Kubernetes API, in words a person can act on."""
    act = " ".join(x for x in (verb, what) if x)
    if exc.status in (401, 403):
        role = "the makima user role (kube.USER_RULES, aggregated into edit and admin)"
        return (
            f"Kubernetes refused to let you {act} in namespace {namespace} "
            f"(HTTP {exc.status}: {exc.reason}). Your kubeconfig's user needs {role}."
        )
    return f"Kubernetes API error while trying to {act}: {exc.reason} (HTTP {exc.status})"


class Dashboard:
    def __init__(self, kube: UserKube, settings: DashboardSettings) -> None:
        self.kube = kube
        self.settings = settings
        self.reader = (
            EventReader(settings.api_url, settings.reader_token) if settings.api_url and settings.reader_token else None
        )

    # ---- the application -------------------------------------------------------------------

    def make_app(self) -> web.Application:
        app = web.Application(middlewares=[self._guard])
        app.router.add_get("/", self.index)
        app.router.add_get("/static/{file}", self.static)
        app.router.add_get("/api/config", self.config)
        app.router.add_get("/api/watch/directives", self.watch_directives)
        app.router.add_get("/api/watch/directive", self.watch_directive)
        app.router.add_get("/api/step", self.step)
        app.router.add_get("/api/watch/log", self.watch_log)
        app.router.add_post("/api/action", self.action)
        app.on_cleanup.append(self._cleanup)
        return app

    async def _cleanup(self, _app: web.Application) -> None:
        if self.reader is not None:
            await self.reader.close()

    def allowed_hosts(self) -> set[str] | None:
        """Host header values accepted; None (any) only when bound to a non-loopback address."""
        host, port = self.settings.host, self.settings.port
        if host not in LOOPBACK:
            return None
        return {f"{h}:{port}" for h in LOOPBACK if h != "::1"}

    @web.middleware
    async def _guard(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        allowed = self.allowed_hosts()
        if allowed is not None and request.host not in allowed:
            raise _fail(421, f"this dashboard answers only as {sorted(allowed)[0]}")
        if request.method == "POST":
            if request.headers.get(ACTION_HEADER) != "1":
                raise _fail(403, f"actions need the {ACTION_HEADER} header (sent by the dashboard's own page)")
            origin = request.headers.get("Origin")
            if origin and origin.split("://", 1)[-1] != request.host:
                raise _fail(403, "cross-origin action refused")
        response = await handler(request)
        response.headers.setdefault("Content-Security-Policy", CSP)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    async def index(self, _request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC / "index.html", headers={"Content-Type": "text/html; charset=utf-8"})

    async def static(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["file"]
        path = STATIC / name
        if "/" in name or name.startswith(".") or not path.is_file():
            raise _fail(404, f"no static file {name}")
        return web.FileResponse(path)

    async def config(self, _request: web.Request) -> web.Response:
        return web.json_response(
            {
                "namespace": self.settings.namespace,
                "server": self.kube.host,
                "logs": self.reader is not None,
                "logsHint": None
                if self.reader is not None
                else "logs need the operator API and its reader token: "
                "makima dashboard --api-url URL with MAKIMA_READER_TOKEN (or --reader-token-file)",
            }
        )

    # ---- helpers ---------------------------------------------------------------------------

    def _query(self, request: web.Request, name: str, required: bool = True) -> str:
        value = request.query.get(name, "")
        if required and not value:
            raise _fail(400, f"query parameter {name!r} is required")
        return value

    def _namespace(self, request: web.Request) -> str:
        return request.query.get("namespace") or self.settings.namespace

    async def _kube(self, fn: Callable[[], Any], verb: str, what: str, namespace: str) -> Any:
        try:
            return await asyncio.to_thread(fn)
        except KubeError as exc:
            status = 403 if exc.status == 401 else exc.status if exc.status in (403, 404, 409) else 502
            raise _fail(status, kube_message(exc, verb, what, namespace)) from exc
        except Exception as exc:  # urllib3 errors: the API server is unreachable
            raise _fail(502, f"cannot reach the Kubernetes API: {exc}") from exc

    # ---- server-sent events ---------------------------------------------------------------

    async def _sse(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-store",
                "X-Accel-Buffering": "no",
                "Content-Security-Policy": CSP,
            }
        )
        await resp.prepare(request)
        return resp

    @staticmethod
    async def _send(resp: web.StreamResponse, event: str, data: Any) -> None:
        await resp.write(f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode())

    @staticmethod
    async def _drain(queue: asyncio.Queue[Change], first: Change) -> list[Change]:
        """`first` and whatever else is already waiting: one update for a burst of changes."""
        batch = [first]
        while not queue.empty():
            batch.append(queue.get_nowait())
        return batch

    async def _next(self, resp: web.StreamResponse, queue: asyncio.Queue[Change]) -> list[Change]:
        """The next batch of changes, sending a comment line every PING_SECONDS meanwhile (which
        is how a closed page is noticed: the write fails)."""
        while True:
            try:
                first = await asyncio.wait_for(queue.get(), PING_SECONDS)
            except TimeoutError:
                await resp.write(b": ping\n\n")
                continue
            return await self._drain(queue, first)

    async def watch_directives(self, request: web.Request) -> web.StreamResponse:
        namespace = self._namespace(request)
        resp = await self._sse(request)
        queue: asyncio.Queue[Change] = asyncio.Queue()
        watch = Watch(self.kube, queue, "d", DIRECTIVES, namespace, timeout_seconds=self.settings.watch_timeout)
        watch.start()
        try:
            while True:
                for change in await self._next(resp, queue):
                    if change.kind == "snapshot":
                        rows = [shape.directive_row(d) for d in change.items]
                        await self._send(resp, "directives", {"namespace": namespace, "items": rows})
                    elif change.kind == "DELETED":
                        await self._send(resp, "removed", shape.directive_row(change.obj))
                    elif change.kind == "problem":
                        await self._send(resp, "problem", self._problem(change, "list directives", namespace))
                    else:
                        await self._send(resp, "directive", shape.directive_row(change.obj))
        except ConnectionResetError:  # the page went away (a cancellation ends the handler too)
            pass
        finally:
            watch.stop()
        return resp

    @staticmethod
    def _problem(change: Change, verb: str, namespace: str) -> dict[str, Any]:
        if change.status:
            message = kube_message(KubeError(change.status, change.message), verb, "", namespace)
        else:
            message = change.message
        return {"status": change.status, "message": message}

    async def watch_directive(self, request: web.Request) -> web.StreamResponse:
        namespace = self._namespace(request)
        name = self._query(request, "name")
        resp = await self._sse(request)
        queue: asyncio.Queue[Change] = asyncio.Queue()
        timeout = self.settings.watch_timeout
        watches = [
            Watch(
                self.kube,
                queue,
                "d",
                DIRECTIVES,
                namespace,
                field_selector=f"metadata.name={name}",
                timeout_seconds=timeout,
            ),
            Watch(
                self.kube,
                queue,
                "s",
                STEPS,
                namespace,
                label_selector=f"{LABEL_DIRECTIVE}={name}",
                timeout_seconds=timeout,
            ),
        ]
        for w in watches:
            w.start()
        steps: dict[str, dict[str, Any]] = {}  # by object name
        structure: Any = None
        events_at = 0.0
        refresh: asyncio.Task[None] | None = None

        async def send_events() -> None:
            nonlocal events_at
            events_at = time.monotonic()
            try:
                found = await asyncio.to_thread(self.kube.list_events, namespace, name, "Directive")
            except KubeError as exc:
                await self._send(
                    resp, "events", {"items": [], "problem": kube_message(exc, "list", "events", namespace)}
                )
                return
            except Exception:
                return
            await self._send(resp, "events", {"items": shape.recent_events(found)})

        try:
            while True:
                batch = await self._next(resp, queue)
                directive: dict[str, Any] | None = None
                steps_changed: list[str] = []
                regraph = False
                for change in batch:
                    if change.kind == "problem":
                        what = "watch directives" if change.tag == "d" else "watch directive steps"
                        await self._send(resp, "problem", self._problem(change, what, namespace))
                        continue
                    if change.tag == "d":
                        if change.kind == "snapshot":
                            directive = change.items[0] if change.items else {"deleted": True}
                        elif change.kind == "DELETED":
                            directive = {"deleted": True}
                        else:
                            directive = change.obj
                        continue
                    if change.kind == "snapshot":
                        steps = {s["metadata"]["name"]: s for s in change.items}
                        regraph = True
                    elif change.kind == "DELETED":
                        steps.pop(change.obj["metadata"]["name"], None)
                        regraph = True
                    else:
                        steps[change.obj["metadata"]["name"]] = change.obj
                        steps_changed.append(change.obj["metadata"]["name"])
                if directive is not None:
                    if directive.get("deleted"):
                        await self._send(resp, "directive", {"name": name, "namespace": namespace, "deleted": True})
                    else:
                        await self._send(resp, "directive", shape.directive_detail(directive))
                        if time.monotonic() - events_at >= EVENTS_REFRESH_SECONDS:
                            await send_events()
                        elif refresh is None or refresh.done():
                            refresh = asyncio.create_task(self._later(send_events))
                if regraph or steps_changed:
                    nodes = sorted((shape.step_node(s) for s in steps.values()), key=lambda n: n["name"])
                    key = shape.structure_key(nodes)
                    if regraph or key != structure:
                        structure = key
                        await self._send(
                            resp,
                            "graph",
                            {"steps": nodes, "layout": shape.layout(nodes), "generations": shape.generations(nodes)},
                        )
                    else:
                        for obj_name in dict.fromkeys(steps_changed):
                            if obj_name in steps:
                                await self._send(resp, "step", shape.step_node(steps[obj_name]))
        except ConnectionResetError:  # the page went away (a cancellation ends the handler too)
            pass
        finally:
            for w in watches:
                w.stop()
            if refresh is not None:
                refresh.cancel()
        return resp

    @staticmethod
    async def _later(fn: Callable[[], Awaitable[None]]) -> None:
        await asyncio.sleep(EVENTS_REFRESH_SECONDS)
        with contextlib.suppress(ConnectionResetError):
            await fn()

    # ---- a step ----------------------------------------------------------------------------

    async def _step_object(self, namespace: str, directive: str, step: str) -> dict[str, Any]:
        name = step_object_name(directive, step)
        found = await self._kube(lambda: self.kube.get_step(namespace, name), "get", f"step {step}", namespace)
        if found is None:
            raise _fail(404, f"directive {directive} has no step {step} in namespace {namespace}")
        obj: dict[str, Any] = found
        return obj

    async def _task_events(self, task_id: str, limit_pages: int = 5) -> list[dict[str, Any]]:
        assert self.reader is not None
        events: list[dict[str, Any]] = []
        since = 0
        for _ in range(limit_pages):
            page = await self.reader.events(task_id, since)
            got = page.get("events") or []
            events += got
            since = int(page.get("nextSince", since))
            if len(got) < 1000:
                break
        return events

    async def step(self, request: web.Request) -> web.Response:
        namespace = self._namespace(request)
        directive = self._query(request, "name")
        step = self._query(request, "step")
        obj = await self._step_object(namespace, directive, step)
        attempts: list[dict[str, Any]] = []
        problem = None
        if self.reader is None:
            problem = "attempt history and logs need the operator API's reader token (see makima dashboard --help)"
        else:
            for number, task_id in shape.attempt_task_ids(obj):
                try:
                    events = await self._task_events(task_id)
                except ApiError as exc:
                    if exc.status == 404:  # not launched yet
                        attempts.append(shape.attempt_summary(number, task_id, []))
                        continue
                    problem = f"operator API: {exc.body.error}"
                    break
                attempts.append(shape.attempt_summary(number, task_id, events))
        events_found: list[dict[str, Any]] = []
        try:
            events_found = await asyncio.to_thread(
                self.kube.list_events, namespace, obj["metadata"]["name"], "DirectiveStep"
            )
        except KubeError:
            pass
        return web.json_response(
            {
                "step": shape.step_node(obj),
                "attempts": attempts,
                "events": shape.recent_events(events_found, 20),
                "problem": problem,
            }
        )

    async def _allowed_task(self, namespace: str, directive: str, step: str, task: str) -> None:
        """The task must be one of this step's attempts, or the directive's planning or
        completion task, as the person's own credentials read them."""
        if step:
            obj = await self._step_object(namespace, directive, step)
            if task in {t for _, t in shape.attempt_task_ids(obj)}:
                return
        else:
            d = await self._kube(
                lambda: self.kube.get_directive(namespace, directive), "get", f"directive {directive}", namespace
            )
            status = (d or {}).get("status") or {}
            if task in (status.get("planningTask"), status.get("completionTask")):
                return
        raise _fail(404, f"task {task} is not a task of {directive}{'/' + step if step else ''}")

    async def watch_log(self, request: web.Request) -> web.StreamResponse:
        namespace = self._namespace(request)
        directive = self._query(request, "name")
        task = self._query(request, "task")
        step = self._query(request, "step", required=False)
        if self.reader is None:
            raise _fail(404, "logs need the operator API's reader token (see makima dashboard --help)")
        await self._allowed_task(namespace, directive, step, task)
        resp = await self._sse(request)
        since = int(request.query.get("since") or 0)
        idle = 0.0
        try:
            while True:
                try:
                    page = await self.reader.events(task, since)
                except ApiError as exc:
                    if exc.status == 404:  # the task row is not there yet
                        page = {"events": [], "nextSince": since}
                    else:
                        await self._send(resp, "problem", {"status": exc.status, "message": exc.body.error})
                        await asyncio.sleep(2.0)
                        continue
                events = page.get("events") or []
                if events:
                    idle = 0.0
                    lines = [line for e in events for line in shape.log_lines(e)]
                    since = int(page.get("nextSince", since))
                    await self._send(resp, "lines", {"lines": lines, "since": since})
                    if any(e.get("type") == "result" for e in events):
                        await self._send(resp, "end", {"since": since})
                        break
                    continue
                await asyncio.sleep(LOG_POLL_SECONDS)
                idle += LOG_POLL_SECONDS
                if idle >= PING_SECONDS:
                    idle = 0.0
                    await resp.write(b": ping\n\n")
        except ConnectionResetError:  # the page went away (a cancellation ends the handler too)
            pass
        return resp

    # ---- actions ---------------------------------------------------------------------------

    async def action(self, request: web.Request) -> web.Response:
        namespace = self._namespace(request)
        name = self._query(request, "name")
        action = self._query(request, "action")
        if action in ("pause", "resume"):
            paused = action == "pause"
            done = await self._kube(
                lambda: self.kube.set_paused(namespace, name, paused), "patch", f"directive {name}", namespace
            )
            if done is None:
                raise _fail(404, f'directive "{name}" not found in namespace "{namespace}"')
            return web.json_response({"message": f"directive/{name} {'paused' if paused else 'resumed'}"})
        if action == "retry":
            return await self._retry(namespace, name, request.query.get("step") or None)
        raise _fail(400, f"unknown action {action!r}: pause, resume or retry")

    async def _retry(self, namespace: str, name: str, only: str | None) -> web.Response:
        """Ask the operator to retry (the Directive's retry annotation): an editor may do that."""
        steps = await self._kube(lambda: self.kube.list_steps(namespace, name), "list", "steps", namespace)
        chosen = sorted(
            (
                shape.step_name(s)
                for s in steps
                if (s.get("status") or {}).get("phase") in RETRYABLE_STEP_PHASES
                and (only is None or shape.step_name(s) == only)
            ),
        )
        if not chosen:
            return web.json_response({"message": f"directive/{name}: no Failed or Skipped steps to retry"})
        request = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ") + (f":{only}" if only else "")
        done = await self._kube(
            lambda: self.kube.request_retry(namespace, name, request),
            "patch",
            f"directive {name} (a retry request)",
            namespace,
        )
        if done is None:
            raise _fail(404, f'directive "{name}" not found in namespace "{namespace}"')
        return web.json_response(
            {"message": f"directive/{name}: retry requested for {', '.join(chosen)}", "steps": chosen}
        )


async def start(kube: UserKube, settings: DashboardSettings) -> tuple[web.AppRunner, str]:
    """Serve the dashboard in the running loop; returns the runner (cleanup() stops it) and URL.
    Port 0 picks a free port (settings.port is updated)."""
    dashboard = Dashboard(kube, settings)
    # handler_cancellation: a page that goes away cancels its stream's handler at once, which
    # stops its watches (otherwise only the next write would notice).
    runner = web.AppRunner(
        dashboard.make_app(), handle_signals=False, access_log=None, shutdown_timeout=1.0, handler_cancellation=True
    )
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port)
    await site.start()
    server = site._server
    if isinstance(server, asyncio.Server) and server.sockets:
        settings.port = int(server.sockets[0].getsockname()[1])
    host = settings.host if settings.host not in ("0.0.0.0", "::") else "127.0.0.1"
    return runner, f"http://{host}:{settings.port}"
