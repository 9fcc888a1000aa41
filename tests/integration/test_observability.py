"""What an operator's operator sees: /metrics series, a quiet steady state, /readyz."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from makima.cli.demo.stack import free_port
from makima.control import metrics
from makima.control.runtime import Operator
from tests.support.wait import eventually

from .conftest import LOADED, Api, OperatorFactory, scripted

SERIES = {
    "makima_reconcile_duration_seconds": "histogram",
    "makima_reconciles": "counter",
    "makima_directives": "gauge",
    "makima_steps": "gauge",
    "makima_tasks_dispatched": "counter",
    "makima_handoff_latency_seconds": "histogram",
    "makima_kube_api_calls": "counter",
    "makima_store_errors": "counter",
}


def sample(name: str, **labels: str) -> float:
    value = metrics.REGISTRY.get_sample_value(name, labels)
    return value or 0.0


def api_calls() -> float:
    total = 0.0
    for family in metrics.REGISTRY.collect():
        if family.name == "makima_kube_api_calls":
            total += sum(s.value for s in family.samples if s.name.endswith("_total"))
    return total


async def scrape(url: str) -> dict[str, tuple[str, list[tuple[dict[str, str], float, str]]]]:
    async with aiohttp.ClientSession() as session, session.get(f"{url}/metrics") as resp:
        assert resp.status == 200
        text = await resp.text()
    return {
        f.name: (f.type, [(dict(s.labels), s.value, s.name) for s in f.samples])
        for f in text_string_to_metric_families(text)
    }


class Settling:
    """Records what the controller sees and runs, to tell when it has settled: the resource
    versions it observed (its own writes and the watch's events) and its reconciles in flight."""

    def __init__(self, op: Operator) -> None:
        self.versions: list[str] = []
        self.in_flight = 0
        controller = op.controller
        observe, reconcile = controller.observe_directive, controller.reconcile

        def observing(body: dict[str, Any]) -> Any:
            self.versions.append(body["metadata"]["resourceVersion"])
            return observe(body)

        async def reconciling(*args: Any, **kwargs: Any) -> Any:
            self.in_flight += 1
            try:
                return await reconcile(*args, **kwargs)
            finally:
                self.in_flight -= 1

        controller.observe_directive = observing  # type: ignore[method-assign]
        controller.reconcile = reconciling  # type: ignore[method-assign]

    def settled_at(self, version: str) -> bool:
        """`version` seen twice (the operator's own write, then the watch's event) and no reconcile running."""
        return self.versions.count(version) >= 2 and self.in_flight == 0


async def test_metrics_and_a_quiet_steady_state(api: Api, start_operator: OperatorFactory, origin: Path) -> None:
    op = await start_operator()
    settling = Settling(op)
    handoffs = sample("makima_handoff_latency_seconds_count")
    reports = sample("makima_reconciles_total", trigger="report")
    dispatched = sample("makima_tasks_dispatched_total", kind="step", route="job")
    script = {
        "plan": [{"name": "a", "title": "A"}, {"name": "b", "title": "B", "dependsOn": ["a"]}],
        "steps": {"a": {"files": {"a.txt": "a\n"}}, "b": {"files": {"b.txt": "b\n"}}},
    }
    await api.apply_directive(scripted("observed", origin, script))
    # a deadline for the condition, sized for a loaded machine (load 20+ on 2 cores here)
    done = await api.wait_for("observed", lambda d: (d.get("status") or {}).get("phase") == "Completed", timeout=180)

    families = await scrape(op.api_url)
    for name, kind in SERIES.items():
        assert name in families and families[name][0] == kind, (name, families.get(name))
    # Reports from the API trigger reconciles; the next step's dispatch follows a report.
    assert sample("makima_reconciles_total", trigger="report") > reports
    assert sample("makima_reconciles_total", trigger="event") > 0
    assert sample("makima_handoff_latency_seconds_count") > handoffs
    assert sample("makima_tasks_dispatched_total", kind="step", route="job") == dispatched + 2
    assert sample("makima_directives", phase="Completed") == 1
    assert sample("makima_steps", phase="Succeeded") == 2 and sample("makima_steps", phase="Running") == 0
    assert sample("makima_kube_api_calls_total", verb="create", resource="jobs") > 0
    assert sample("makima_reconcile_duration_seconds_count") > 0

    # Steady state: the safety-net timer costs no Kubernetes API call.
    key = ("default", "observed")
    # The watch's event of the final status patch has reached the operator and its reconcile ended.
    final = done["metadata"]["resourceVersion"]
    await eventually(lambda: settling.settled_at(final), "the operator settled on the Completed status", LOADED)
    assert await op.controller.reconcile(key) == []  # nothing left to do ...
    before, timers = api_calls(), sample("makima_reconciles_total", trigger="timer")
    queries: list[str] = []
    real_query = op.store.tasks_for_directive

    async def counting_query(uid: str) -> Any:
        queries.append(uid)
        return await real_query(uid)

    op.store.tasks_for_directive = counting_query  # type: ignore[method-assign]
    try:
        for _ in range(3):
            await op.controller.trigger(key, "timer")
    finally:
        op.store.tasks_for_directive = real_query  # type: ignore[method-assign]
    assert sample("makima_reconciles_total", trigger="timer") == timers + 3
    assert api_calls() == before  # ... and the timer does not even look:
    assert queries == []  # not at Kubernetes, not at the store
    assert (await api.directive("observed"))["metadata"]["resourceVersion"] == done["metadata"]["resourceVersion"]


class Proxy:
    """A TCP proxy in front of PostgreSQL that a test can cut, as a network outage would.

    It runs on a loop of its own (kopf, stopping, would wait for tasks born after it started).
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="pg-proxy", daemon=True)
        self.thread.start()

    async def run(self, coro: Coroutine[Any, Any, None]) -> None:
        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self.writers |= {writer, up_writer}
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def cut(self) -> None:
        assert self.server is not None
        self.server.close()
        for w in self.writers:
            w.close()
        self.writers.clear()
        await self.server.wait_closed()


async def readyz(url: str) -> int:
    async with aiohttp.ClientSession() as session, session.get(f"{url}/readyz") as resp:
        return resp.status


async def test_readyz_follows_the_store(start_operator: OperatorFactory, pg_dsn: str) -> None:
    parts = urlsplit(pg_dsn)
    proxy = Proxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    await proxy.run(proxy.start())
    user = f"{parts.username}{':' + parts.password if parts.password else ''}@" if parts.username else ""
    dsn = urlunsplit(parts._replace(netloc=f"{user}127.0.0.1:{proxy.port}"))
    op = await start_operator(database_url=dsn)
    try:
        assert await readyz(op.api_url) == 200
        errors = sample("makima_store_errors_total", op="ping")
        await proxy.run(proxy.cut())
        assert await readyz(op.api_url) == 503
        assert sample("makima_store_errors_total", op="ping") > errors
        await proxy.run(proxy.start())

        async def ready() -> bool:
            return await readyz(op.api_url) == 200

        await eventually(ready, "/readyz 200 once the database is back", 30)
    finally:
        await start_operator.stop_all()  # type: ignore[attr-defined]
        with contextlib.suppress(Exception):
            await proxy.run(proxy.cut())
        proxy.close()


async def test_readyz_follows_the_kubernetes_api(start_operator: OperatorFactory) -> None:
    op = await start_operator()
    assert await readyz(op.api_url) == 200
    cfg = op.kube.api.configuration
    real_host, cfg.host = cfg.host, f"http://127.0.0.1:{free_port()}"  # nothing listens there
    try:
        assert await readyz(op.api_url) == 503
    finally:
        cfg.host = real_host
    assert await readyz(op.api_url) == 200


async def test_a_step_not_yet_dispatched_shows_pending_and_zero_attempts(
    api: Api, start_operator: OperatorFactory, origin: Path
) -> None:
    """`kubectl get dstep` prints PHASE and ATTEMPTS from status: set from the start."""
    await start_operator()
    script = {
        "plan": [{"name": "first", "title": "First"}, {"name": "later", "title": "Later", "dependsOn": ["first"]}],
        "steps": {"first": {"sleep": 3, "files": {"a.txt": "a\n"}}},
    }
    await api.apply_directive(scripted("pend", origin, script))

    async def later_with_status() -> dict[str, Any] | None:
        later: dict[str, Any] = (await api.steps("pend")).get("later", {})
        return later if later.get("status") else None

    later = await eventually(later_with_status, "step later with a status", 60)
    assert later is not None and later.get("status") == {"phase": "Pending", "attempts": 0}, later
