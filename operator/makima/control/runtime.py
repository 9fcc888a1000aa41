"""Assembles a running operator: store, Kubernetes gateway, executors, API server, kopf.

`run_operator` is what `makima operator` runs; tests and the quickstart call it in-process
with a stop flag. Nothing here decides anything: it builds the parts and connects them.

Importing this module is cheap: kopf, the Kubernetes client, aiohttp and the rest load
when an operator is built, and each start-up phase logs how long it took (imports, store,
Kubernetes client, API, kopf's watches).
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from makima.control.config import OperatorSettings

if TYPE_CHECKING:
    from makima.control.controller import Controller
    from makima.control.dispatch import AgentDefaults
    from makima.control.executors.daemons import DaemonHub
    from makima.control.executors.jobs import JobDefaults
    from makima.control.kube import Kube
    from makima.control.store import TaskStore
    from makima.core.protocol import Problem, StepSubmission
    from makima.core.tasks import Task

log = logging.getLogger(__name__)


class _Phases:
    """Logs each start-up phase with its own and the total time."""

    def __init__(self) -> None:
        self.start = self.last = time.perf_counter()

    def done(self, what: str, *args: Any) -> None:
        now = time.perf_counter()
        log.info("start-up: " + what + " in %.2f s (%.2f s since start)", *args, now - self.last, now - self.start)
        self.last = now


@dataclass
class Operator:
    """The parts of a running operator, for tests and the quickstart to look at."""

    settings: OperatorSettings
    store: TaskStore
    kube: Kube
    controller: Controller
    hub: DaemonHub
    api_url: str


def _split_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host or "0.0.0.0", int(port)


def job_defaults(settings: OperatorSettings) -> JobDefaults:
    """What every task Job gets from the operator's settings (image per agent profile, ...)."""
    from makima.control.executors.jobs import JobDefaults

    return JobDefaults(
        image=settings.agent_image,
        api_url=settings.api_url,
        ttl_seconds=settings.job_ttl_seconds,
        service_account=settings.job_service_account,
        profile=settings.agent_profile,
        images=settings.agent_images,
    )


def agent_defaults(settings: OperatorSettings) -> AgentDefaults:
    """The agent of Directives that name none."""
    from makima.control.dispatch import AgentDefaults

    return AgentDefaults(command=settings.agent_command, profile=settings.agent_profile)


async def build(
    settings: OperatorSettings, stack: AsyncExitStack, kubeconfig: str | None = None, phases: _Phases | None = None
) -> Operator:
    phases = phases or _Phases()
    from aiohttp import web

    from makima.control import metrics
    from makima.control.api import ApiDeps, build_app
    from makima.control.controller import Controller
    from makima.control.dispatch import TaskDispatcher
    from makima.control.executors.daemons import DaemonHub, DaemonSettings
    from makima.control.executors.jobs import JobExecutor
    from makima.control.kube import Kube, load_config
    from makima.control.resources import step_view
    from makima.control.store import open_store
    from makima.core import dag, validation
    from makima.core.reconcile import ReconcileConfig

    phases.done("imported the operator's modules")
    store = await open_store(settings)
    stack.push_async_callback(store.close)
    phases.done("store ready (pool open, migrations applied)")
    # Whatever time passed without an operator does not count against running tasks.
    adopted = await store.adopt_active_tasks()
    if adopted:
        log.info("adopted %d running task(s): each has a full heartbeat window from now", adopted)
    kube = Kube(load_config(kubeconfig))
    stack.callback(kube.close)
    phases.done("Kubernetes client configured for %s", kube.api.configuration.host)
    hub = DaemonHub(
        store,
        DaemonSettings(
            heartbeat_seconds=settings.daemon_heartbeat_seconds,
            lost_after_seconds=settings.daemon_lost_after_seconds,
        ),
    )
    jobs = JobExecutor(kube, job_defaults(settings))
    dispatcher = TaskDispatcher(store, jobs, hub, agent_defaults(settings), kube)
    config = ReconcileConfig(
        retry_base_seconds=settings.retry_base_seconds,
        retry_max_seconds=settings.retry_max_seconds,
        daemon_lost_after_seconds=settings.daemon_lost_after_seconds,
        heartbeat_timeout_seconds=settings.heartbeat_timeout_seconds,
    )
    controller = Controller(
        kube, store, dispatcher, config, steps_source=lambda key: [], daemons=hub, fast_path=not settings.poll_only
    )

    async def validate_steps(task: Task, submitted: list[StepSubmission]) -> list[Problem]:
        # `submitted` holds every step this planning task sent so far plus the new ones.
        existing = [step_view(s) for s in controller.steps_of((task.namespace, task.directive_name))]
        nodes = [
            dag.Node(s.name, tuple(s.spec.depends_on), s.spec.order_index, s.spec.generation, s.status.phase)
            for s in existing
        ]
        return validation.validate_submission(nodes, submitted, generation=task.generation)

    async def on_task_report(task: Task) -> None:
        controller.task_reported(task)

    async def ready() -> bool:
        # Ready = the store and the Kubernetes API both answer; one quick round-trip each, no retries.
        try:
            ok = await store.ping()
        except Exception:  # e.g. the pool gave up; not ready either way
            ok = False
        if not ok:
            metrics.STORE_ERRORS.labels(op="ping").inc()
        return ok and await kube.reachable()

    deps = ApiDeps(
        store=store,
        hub=hub,
        spec_for=dispatcher.spec_for,
        validate_steps=validate_steps,
        on_task_report=on_task_report,
        verify_daemon_token=kube.daemon_token_matches,
        ready=ready,
        reader_token=settings.reader_token,
    )
    runner = web.AppRunner(build_app(deps), access_log=None)
    await runner.setup()
    stack.push_async_callback(runner.cleanup)
    host, port = _split_listen(settings.api_listen)
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0][1] if runner.addresses else port
    log.info("operator API listening on %s:%s", host, bound)
    phases.done("API listening on %s:%s", host, bound)
    return Operator(settings, store, kube, controller, hub, f"http://127.0.0.1:{bound}")


async def run_operator(
    settings: OperatorSettings,
    *,
    kubeconfig: str | None = None,
    stop_flag: asyncio.Event | None = None,
    ready_flag: asyncio.Event | None = None,
    on_built: Any = None,
) -> None:
    """Run until `stop_flag` is set (or forever). `on_built(operator)` sees the parts."""
    phases = _Phases()
    async with AsyncExitStack() as stack:
        op = await build(settings, stack, kubeconfig, phases)
        if on_built is not None:
            on_built(op)
        import kopf

        from makima.control.handlers import configure, register

        registry = kopf.OperatorRegistry()
        register(registry, op.controller, op.kube, tick=settings.tick_seconds, fast_path=not settings.poll_only)

        @kopf.on.startup(registry=registry)
        def _configure(settings: kopf.OperatorSettings, **_: Any) -> None:
            configure(settings, peering=op.settings.peering)

        kopf_ready = asyncio.Event()

        async def announce() -> None:
            await kopf_ready.wait()
            phases.done("kopf ready, watching (%d directives seen so far)", len(op.controller.directives))
            if ready_flag is not None:
                ready_flag.set()

        announcer = asyncio.create_task(announce())
        namespaces = list(settings.namespaces)
        phases.done("kopf registry built; starting its watches")
        try:
            await kopf.operator(
                registry=registry,
                clusterwide=not namespaces,
                namespaces=namespaces,
                standalone=settings.peering is None,
                peering_name=settings.peering,
                stop_flag=stop_flag,
                ready_flag=kopf_ready,
            )
        finally:
            announcer.cancel()
