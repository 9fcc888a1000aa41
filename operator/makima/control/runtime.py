"""Assembles a running operator: store, Kubernetes gateway, executors, API server, kopf.

`run_operator` is what `makima operator` runs; tests and the quickstart call it in-process
with a stop flag. Nothing here decides anything: it builds the parts and connects them.
With a Lease (replicas > 1) every part but the controller and kopf runs on a standby too;
those start when this replica becomes the active one (control/leadership.py).

Importing this module is cheap: kopf, the Kubernetes client, aiohttp and the rest load
when an operator is built, and each start-up phase logs how long it took (imports, store,
Kubernetes client, API, kopf's watches).
"""

from __future__ import annotations

import asyncio
import contextlib
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
    from makima.control.leadership import Leadership
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
    leadership: Leadership


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
    # kopf and the handlers too, now: imported later, after this replica took the Lease,
    # their seconds of import blocked the loop past the renew deadline on a busy machine.
    import kopf  # noqa: F401
    from aiohttp import web

    from makima.control import handlers, metrics  # noqa: F401
    from makima.control.api import ApiDeps, build_app
    from makima.control.controller import Controller
    from makima.control.dispatch import TaskDispatcher
    from makima.control.executors.daemons import DaemonHub, DaemonSettings
    from makima.control.executors.jobs import JobExecutor
    from makima.control.kube import Kube, load_config
    from makima.control.leadership import Leadership
    from makima.control.resources import step_view
    from makima.control.store import open_store
    from makima.core import dag, validation
    from makima.core.reconcile import ReconcileConfig

    phases.done("imported the operator's modules")
    store = await open_store(settings)
    stack.push_async_callback(store.close)
    phases.done("store ready (pool open, migrations applied)")
    kube = Kube(load_config(kubeconfig))
    stack.callback(kube.close)
    phases.done("Kubernetes client configured for %s", kube.api.configuration.host)
    leadership = Leadership(replica_identity(settings), active=settings.lease_name is None)
    kube.may_write = lambda: leadership.active  # a replica that is not active writes nothing
    hub = DaemonHub(
        store,
        DaemonSettings(
            heartbeat_seconds=settings.daemon_heartbeat_seconds,
            lost_after_seconds=settings.daemon_lost_after_seconds,
        ),
    )

    def disconnect_daemons() -> None:  # they reconnect, through the Service, to the active replica
        asyncio.get_running_loop().create_task(hub.close("this operator replica is no longer the active one"))

    leadership.on_lost(disconnect_daemons)
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
        active=lambda: leadership.active,
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
    if settings.lease_name is not None:
        await _elect(settings, kube, leadership, stack, kubeconfig)
    return Operator(settings, store, kube, controller, hub, f"http://127.0.0.1:{bound}", leadership)


def replica_identity(settings: OperatorSettings) -> str:
    """This process's name in the Lease: the pod (or host) name and a suffix of its own, so a
    restarted container is a new candidate, never mistaken for the holder it replaces."""
    import socket
    import uuid

    return f"{settings.pod_name or socket.gethostname()}-{uuid.uuid4().hex[:6]}"


async def _elect(
    settings: OperatorSettings, kube: Kube, leadership: Leadership, stack: AsyncExitStack, kubeconfig: str | None
) -> None:
    """Run the Lease election in the background for as long as the operator runs."""
    from makima.control.kube import context_namespace
    from makima.control.leadership import LeaseElector
    from makima.core.lease import LeaseTimings

    assert settings.lease_name is not None
    namespace = settings.lease_namespace or context_namespace(kubeconfig)
    timings = LeaseTimings.for_duration(settings.lease_seconds)
    elector = LeaseElector(kube, leadership, namespace, settings.lease_name, timings)
    election = asyncio.create_task(elector.run(), name="makima-lease")

    async def stop() -> None:
        election.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await election
        await elector.release()  # stopped cleanly: a standby takes over at its next look

    stack.push_async_callback(stop)
    log.info(
        "leader election: lease %s/%s as %s (duration %ds, renewed every %.1fs)",
        namespace,
        settings.lease_name,
        leadership.identity,
        timings.duration,
        timings.retry_period,
    )


async def run_operator(
    settings: OperatorSettings,
    *,
    kubeconfig: str | None = None,
    stop_flag: asyncio.Event | None = None,
    ready_flag: asyncio.Event | None = None,
    on_built: Any = None,
) -> None:
    """Run until `stop_flag` is set (or forever). `on_built(operator)` sees the parts.

    With a Lease (`settings.lease_name`) the controller starts only once this replica is the
    active one (until then it stands by: API up, not ready). Raises `LeadershipLost` when an
    active replica could not renew its Lease: the caller ends the process, which starts again
    as a standby.
    """
    from makima.control.leadership import LeadershipLost

    phases = _Phases()
    stop = stop_flag or asyncio.Event()
    async with AsyncExitStack() as stack:
        op = await build(settings, stack, kubeconfig, phases)
        if on_built is not None:
            on_built(op)
        if not await _first_of(op.leadership.wait_active(), stop.wait()):
            return  # stopped while standing by
        if settings.lease_name is not None:
            phases.done("active: this replica holds the lease")
        # Whatever time passed without an active operator does not count against running tasks.
        adopted = await op.store.adopt_active_tasks()
        if adopted:
            log.info("adopted %d running task(s): each has a full heartbeat window from now", adopted)
        await _run_kopf(op, settings, phases, stop, ready_flag)
        if op.leadership.lost.is_set():
            raise LeadershipLost("this replica lost its lease; it stopped acting")


async def _first_of(wanted: Any, stop: Any) -> bool:
    """Await `wanted` unless `stop` finishes first; True if `wanted` did."""
    want, halt = asyncio.ensure_future(wanted), asyncio.ensure_future(stop)
    try:
        await asyncio.wait({want, halt}, return_when=asyncio.FIRST_COMPLETED)
        return want.done() and not halt.done()
    finally:
        for f in (want, halt):
            f.cancel()


async def _run_kopf(
    op: Operator, settings: OperatorSettings, phases: _Phases, stop: asyncio.Event, ready_flag: asyncio.Event | None
) -> None:
    """kopf's watches and the controller's handlers, until `stop` or until leadership is lost."""
    import kopf

    from makima.control.handlers import configure, register

    registry = kopf.OperatorRegistry()
    register(registry, op.controller, op.kube, tick=settings.tick_seconds, fast_path=not settings.poll_only)

    @kopf.on.startup(registry=registry)
    def _configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        configure(settings)

    kopf_ready = asyncio.Event()
    kopf_stop = asyncio.Event()

    async def announce() -> None:
        await kopf_ready.wait()
        phases.done("kopf ready, watching (%d directives seen so far)", len(op.controller.directives))
        if ready_flag is not None:
            ready_flag.set()

    async def stop_when_told() -> None:
        await _first_of(stop.wait(), op.leadership.lost.wait())
        kopf_stop.set()

    helpers = [asyncio.create_task(announce()), asyncio.create_task(stop_when_told())]
    namespaces = list(settings.namespaces)
    phases.done("kopf registry built; starting its watches")
    try:
        # Standalone: which replica acts is the Lease's decision (control/leadership.py), not
        # kopf peering's, which pauses every replica when two have the same priority.
        await kopf.operator(
            registry=registry,
            clusterwide=not namespaces,
            namespaces=namespaces,
            standalone=True,
            stop_flag=kopf_stop,
            ready_flag=kopf_ready,
        )
    finally:
        for helper in helpers:
            helper.cancel()
