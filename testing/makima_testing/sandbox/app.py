"""HTTP face of the sandbox cluster (a test double): URL routing, watch streams, Tables, logs."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from makima_testing.sandbox import discovery, tables
from makima_testing.sandbox.cluster import Cluster
from makima_testing.sandbox.errors import ApiError, bad_request, gone, invalid
from makima_testing.sandbox.resources import ResourceType
from makima_testing.sandbox.selecting import field_selector, label_selector
from makima_testing.sandbox.store import Event

log = logging.getLogger(__name__)

# Returns the pod's log (and whether it may still grow); None when the pod has no log.
LogSource = Callable[[str, str], tuple[str, bool] | None]


class Api:
    def __init__(self, cluster: Cluster, bookmark_interval: float = 10.0) -> None:
        self.cluster = cluster
        self.bookmark_interval = bookmark_interval
        self.log_source: LogSource | None = None

    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024**2)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.StreamResponse:
        try:
            return await self._route(request)
        except ApiError as exc:
            return web.json_response(exc.status(), status=exc.code)
        except (ConnectionResetError, asyncio.CancelledError):
            raise
        except Exception as exc:
            log.exception("sandbox: %s %s failed", request.method, request.path)
            return web.json_response(ApiError(500, "InternalError", repr(exc)).status(), status=500)

    async def _route(self, request: web.Request) -> web.StreamResponse:
        parts = [p for p in request.path.split("/") if p]
        registry = self.cluster.registry
        if request.method == "GET":
            static: dict[str, Callable[[], Any]] = {
                "": lambda: {"paths": ["/api", "/api/v1", "/apis", "/openapi/v3", "/version"]},
                "version": lambda: discovery.VERSION,
                "api": discovery.api_versions,
                "apis": lambda: discovery.api_group_list(registry),
                "healthz": lambda: "ok",
                "livez": lambda: "ok",
                "readyz": lambda: "ok",
            }
            joined = "/".join(parts)
            if joined in static:
                payload = static[joined]()
                return web.Response(text=payload) if isinstance(payload, str) else web.json_response(payload)
            if parts[:2] == ["openapi", "v3"]:
                return self._openapi(parts[2:])
            if joined == "openapi/v2":
                # An empty protobuf Document: clients that fall back to v2 find no schema and
                # skip client-side validation, as they do for kinds a real server has no schema for.
                return web.Response(body=b"", content_type="application/com.github.proto-openapi.spec.v2.v1.0+protobuf")
            if parts[0] == "apis" and len(parts) == 2:
                return self._json_or_404(discovery.api_group(registry, parts[1]))
            if (parts[0] == "apis" and len(parts) == 3) or (parts[0] == "api" and len(parts) == 2):
                group, version = (parts[1], parts[2]) if parts[0] == "apis" else ("", parts[1])
                return self._json_or_404(discovery.resource_list(registry, group, version))
        return await self._resource(request, parts)

    @staticmethod
    def _json_or_404(payload: dict[str, Any] | None) -> web.Response:
        if payload is None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        return web.json_response(payload)

    def _openapi(self, rest: list[str]) -> web.Response:
        index, docs = discovery.openapi_v3(self.cluster.registry)
        if not rest:
            return web.json_response(index)
        return self._json_or_404(docs.get("/".join(rest)))

    # -- resources -----------------------------------------------------------------------------

    async def _resource(self, request: web.Request, parts: list[str]) -> web.StreamResponse:
        if parts[:1] == ["api"] and len(parts) >= 3:
            group, version, rest = "", parts[1], parts[2:]
        elif parts[:1] == ["apis"] and len(parts) >= 4:
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        namespace: str | None = None
        if (
            rest[0] == "namespaces"
            and len(rest) >= 3
            and not (group == "" and len(rest) == 3 and rest[2] in ("status", "finalize"))
        ):
            namespace, rest = rest[1], rest[2:]
        if len(rest) > 3:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        rt = self.cluster.resource(group, version, rest[0])
        if namespace is not None and not rt.namespaced:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else None
        if sub is not None and sub not in rt.subresources:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        q = request.query
        method = request.method
        cluster = self.cluster
        validation = q.get("fieldValidation")
        dry_run = _dry_run(q.getall("dryRun", []))

        if method == "GET" and name is None:
            if q.get("watch") in ("true", "1"):
                return await self._watch(request, rt, namespace)
            items, rv = cluster.list(rt, namespace, q.get("labelSelector"), q.get("fieldSelector"))
            return self._respond(request, rt, items, rv, listing=True)
        if method == "GET" and sub == "log":
            return await self._log(request, namespace or "", name or "")
        if method == "GET":
            obj = cluster.get(rt, namespace, name or "")
            return self._respond(request, rt, [obj], obj["metadata"]["resourceVersion"])
        if method == "POST" and name is None:
            made = cluster.create(rt, namespace, await self._body(request), validation, dry_run=dry_run)
            return web.json_response(made, status=201)
        if method == "PUT" and name is not None:
            body = await self._body(request)
            return web.json_response(cluster.update(rt, namespace, name, body, sub, validation, dry_run=dry_run))
        if method == "PATCH" and name is not None:
            body = await self._body(request)
            ctype = request.headers.get("Content-Type", "")
            return web.json_response(cluster.patch(rt, namespace, name, ctype, body, sub, validation, dry_run=dry_run))
        if method == "DELETE" and name is not None:
            options = await self._body(request, optional=True) or {}
            if q.get("propagationPolicy"):
                options["propagationPolicy"] = q["propagationPolicy"]
            dry_run = dry_run or _dry_run(options.get("dryRun") or [])
            return web.json_response(cluster.delete(rt, namespace, name, options, dry_run=dry_run))
        if method == "DELETE":
            options = await self._body(request, optional=True) or {}
            deleted = cluster.delete_collection(rt, namespace, q.get("labelSelector"), q.get("fieldSelector"), options)
            return web.json_response(self._list_body(rt, deleted, str(cluster.store.resource_version)))
        raise ApiError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")

    @staticmethod
    async def _body(request: web.Request, optional: bool = False) -> Any:
        ctype = request.headers.get("Content-Type", "")
        if "protobuf" in ctype or "cbor" in ctype or "yaml" in ctype:
            # 415 makes client-go retry in JSON; the sandbox decodes nothing else.
            raise ApiError(415, "UnsupportedMediaType", f"the sandbox accepts JSON bodies only, not {ctype}")
        raw = await request.read()
        if not raw:
            if optional:
                return None
            raise bad_request("the request has no body")
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise bad_request(f"the body is not JSON (the sandbox speaks JSON only): {exc}") from exc

    @staticmethod
    def _list_body(rt: ResourceType, items: list[dict[str, Any]], rv: str) -> dict[str, Any]:
        return {
            "apiVersion": rt.api_version,
            "kind": f"{rt.kind}List",
            "metadata": {"resourceVersion": rv},
            "items": items,
        }

    def _respond(
        self, request: web.Request, rt: ResourceType, items: list[dict[str, Any]], rv: str, listing: bool = False
    ) -> web.Response:
        if tables.wants_table(request.headers.get("Accept")):
            include = request.query.get("includeObject", "Metadata")
            return web.json_response(tables.table(rt, items, rv, include))
        return web.json_response(self._list_body(rt, items, rv) if listing else items[0])

    # -- watch ---------------------------------------------------------------------------------

    async def _watch(self, request: web.Request, rt: ResourceType, namespace: str | None) -> web.StreamResponse:
        q = request.query
        store = self.cluster.store
        by_label, by_field = label_selector(q.get("labelSelector")), field_selector(q.get("fieldSelector"))
        as_table = tables.wants_table(request.headers.get("Accept"))
        bookmarks = q.get("allowWatchBookmarks") in ("true", "1")
        timeout = float(q["timeoutSeconds"]) if q.get("timeoutSeconds") else None
        since = q.get("resourceVersion")

        def matches(obj: dict[str, Any] | None) -> bool:
            if obj is None:
                return False
            if rt.namespaced and namespace is not None and obj["metadata"].get("namespace") != namespace:
                return False
            return by_label(obj) and by_field(obj)

        # Subscribe and take the starting point in one synchronous step: nothing slips between.
        queue = store.subscribe(rt.key)
        initial: list[tuple[str, dict[str, Any]]] = []
        error: dict[str, Any] | None = None
        end_initial = False
        if since in (None, "", "0"):
            items, _ = self.cluster.list(rt, namespace, q.get("labelSelector"), q.get("fieldSelector"))
            initial = [("ADDED", obj) for obj in items]
            end_initial = q.get("sendInitialEvents") == "true"
        else:
            try:
                since_rv = int(since)
            except ValueError:
                store.unsubscribe(rt.key, queue)
                raise bad_request(f"invalid resource version: {since}") from None
            if since_rv < store.compacted_rv:
                error = gone(f"too old resource version: {since_rv} ({store.compacted_rv})").status()
            else:
                for past in store.history_since(rt.key, since_rv):
                    queue.put_nowait(past)  # replayed ahead of anything newer
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        try:
            await response.prepare(request)

            async def send(kind: str, obj: dict[str, Any]) -> None:
                if as_table and kind in ("ADDED", "MODIFIED", "DELETED"):
                    obj = tables.table(
                        rt, [obj], obj["metadata"]["resourceVersion"], q.get("includeObject", "Metadata")
                    )
                await response.write(json.dumps({"type": kind, "object": obj}).encode() + b"\n")

            def bookmark(extra: dict[str, Any] | None = None) -> dict[str, Any]:
                meta: dict[str, Any] = {"resourceVersion": str(store.resource_version), **(extra or {})}
                return {"kind": rt.kind, "apiVersion": rt.api_version, "metadata": meta}

            if error is not None:
                await send("ERROR", error)
                return response
            for kind, obj in initial:
                await send(kind, obj)
            if end_initial:
                await send("BOOKMARK", bookmark({"annotations": {"k8s.io/initial-events-end": "true"}}))
            deadline = time.monotonic() + timeout if timeout is not None else None
            while True:
                wait = self.bookmark_interval if bookmarks else None
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    wait = left if wait is None else min(wait, left)
                try:
                    event: Event | None = await asyncio.wait_for(queue.get(), wait)
                except TimeoutError:
                    if bookmarks and (deadline is None or time.monotonic() < deadline):
                        await send("BOOKMARK", bookmark())
                    continue
                if event is None:  # the sandbox is shutting down
                    break
                seen = _transition(event, matches)
                if seen is not None:
                    await send(seen, self.cluster.present(rt, event.obj))
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            store.unsubscribe(rt.key, queue)
        return response

    # -- pod logs ------------------------------------------------------------------------------

    async def _log(self, request: web.Request, namespace: str, name: str) -> web.StreamResponse:
        self.cluster.get(self.cluster.resource("", "v1", "pods"), namespace, name)
        source = self.log_source
        found = source(namespace, name) if source else None
        if found is None:
            raise bad_request(f'container for pod "{name}" has not started yet')
        text, running = found
        tail = request.query.get("tailLines")
        if request.query.get("follow") not in ("true", "1") or not running:
            if tail is not None:
                text = "".join(text.splitlines(keepends=True)[-int(tail) :]) if int(tail) else ""
            return web.Response(text=text, content_type="text/plain")
        response = web.StreamResponse(headers={"Content-Type": "text/plain"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        sent = 0
        try:
            while True:
                now = source(namespace, name) if source else None
                if now is None:
                    break
                text, running = now
                if len(text) > sent:
                    await response.write(text[sent:].encode())
                    sent = len(text)
                if not running:
                    break
                await asyncio.sleep(0.1)
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        return response


def _dry_run(values: list[str]) -> bool:
    """`dryRun=All`: validate and answer as if written, store nothing. Any other value: 422."""
    for value in values:
        if value != "All":
            cause = {
                "reason": "FieldValueNotSupported",
                "message": f'Unsupported value: "{value}": supported values: "All"',
                "field": "dryRun",
            }
            raise invalid("meta.k8s.io", "Options", "", [cause])
    return bool(values)


def _transition(event: Event, matches: Callable[[dict[str, Any] | None], bool]) -> str | None:
    """The event a filtered watch sees: objects entering or leaving the selection are ADDED/DELETED."""
    now, before = matches(event.obj), matches(event.old)
    if event.type == "DELETED":
        return "DELETED" if before or now else None
    if event.type == "ADDED":
        return "ADDED" if now else None
    if now and before:
        return "MODIFIED"
    if now:
        return "ADDED"
    return "DELETED" if before else None
