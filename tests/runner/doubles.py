"""Test doubles for the runner tests. None of this is production code.

- `RecordingReporter`: a `Reporter` that keeps every event and pull-request report in memory.
- `FakeOperatorApi`: a small aiohttp stand-in for the operator's task API (the real server is
  `makima.control.api`), run on its own event loop in a thread so both sync CLI tests and async
  runner tests can call it. It checks the bearer token and records everything it is sent.
"""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from makima.core.protocol import ErrorBody, EventBatch, EventType, PullRequestReport, StepBatch, TaskResult, TaskSpec


@dataclass
class RecordingReporter:
    """Test double: records events instead of sending them."""

    events: list[tuple[EventType, dict[str, Any]]] = field(default_factory=list)
    pull_requests: list[tuple[str, str | None]] = field(default_factory=list)
    flushes: int = 0

    async def event(self, type: EventType, payload: dict[str, Any]) -> None:
        self.events.append((type, payload))

    async def flush(self) -> None:
        self.flushes += 1

    async def submit_pull_request(self, url: str, branch: str | None) -> None:
        self.pull_requests.append((url, branch))

    def of(self, type: EventType) -> list[dict[str, Any]]:
        return [p for t, p in self.events if t == type]

    def output_lines(self) -> list[str]:
        return [line for p in self.of(EventType.OUTPUT) for line in p["lines"]]

    def dump(self) -> str:
        return json.dumps([[t.value, p] for t, p in self.events])


class FakeOperatorApi:
    """Test double of the operator task API (see module docstring)."""

    def __init__(self, token: str = "task-token-abc123") -> None:
        self.token = token
        self.specs: dict[str, TaskSpec] = {}
        self.events: dict[str, list[dict[str, Any]]] = {}
        self.results: dict[str, TaskResult] = {}
        self.steps: dict[str, list[dict[str, Any]]] = {}
        self.pull_requests: dict[str, list[PullRequestReport]] = {}
        self.requests: list[tuple[str, str]] = []
        self.reject_steps: ErrorBody | None = None
        self.final: set[str] = set()  # tasks whose planner marked the plan final
        self.fail_next: list[int] = []  # statuses to answer (in order) before behaving
        self.retry_after: str | None = None  # Retry-After sent with those answers
        self.url = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None

    # -- server ---------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._auth])
        app.router.add_get("/v1/tasks/{id}", self._get)
        app.router.add_post("/v1/tasks/{id}/events", self._events)
        app.router.add_post("/v1/tasks/{id}/result", self._result)
        app.router.add_post("/v1/tasks/{id}/steps", self._steps)
        app.router.add_post("/v1/tasks/{id}/pull-request", self._pr)
        return app

    def start(self) -> FakeOperatorApi:
        ready = threading.Event()

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            self._runner = web.AppRunner(self.app())
            loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            loop.run_until_complete(site.start())
            port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            self.url = f"http://127.0.0.1:{port}"
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=serve, daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)

    def env(self, task_id: str) -> dict[str, str]:
        return {"MAKIMA_API_URL": self.url, "MAKIMA_TASK_ID": task_id, "MAKIMA_TASK_TOKEN": self.token}

    # -- handlers -------------------------------------------------------------------------
    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests.append((request.method, request.path))
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return web.json_response(ErrorBody(error="unauthorized").model_dump(), status=401)
        if self.fail_next:
            headers = {"Retry-After": self.retry_after} if self.retry_after else None
            return web.json_response(
                ErrorBody(error="try again").model_dump(), status=self.fail_next.pop(0), headers=headers
            )
        return await handler(request)

    async def _get(self, request: web.Request) -> web.Response:
        spec = self.specs.get(request.match_info["id"])
        if spec is None:
            return web.json_response(ErrorBody(error="no such task").model_dump(), status=404)
        return web.json_response(json.loads(spec.model_dump_json()))

    async def _events(self, request: web.Request) -> web.Response:
        batch = EventBatch.model_validate(await request.json())
        seen = self.events.setdefault(request.match_info["id"], [])
        seen.extend(e.model_dump(mode="json") for e in batch.events)
        return web.json_response({"lastSeq": len(seen)})

    async def _result(self, request: web.Request) -> web.Response:
        self.results[request.match_info["id"]] = TaskResult.model_validate(await request.json())
        return web.json_response({})

    async def _steps(self, request: web.Request) -> web.Response:
        batch = StepBatch.model_validate(await request.json())
        if self.reject_steps is not None:
            return web.json_response(self.reject_steps.model_dump(exclude_none=True), status=422)
        got = self.steps.setdefault(request.match_info["id"], [])
        got.extend(s.model_dump(by_alias=True) for s in batch.steps)
        if batch.final:
            self.final.add(request.match_info["id"])
        return web.json_response({"accepted": len(batch.steps)})

    async def _pr(self, request: web.Request) -> web.Response:
        report = PullRequestReport.model_validate(await request.json())
        self.pull_requests.setdefault(request.match_info["id"], []).append(report)
        return web.json_response({})
