# mypy: disable-error-code="arg-type"
# (kopf types handler callbacks as full-signature protocols; ours take **kwargs by design.)
"""kopf registration: thin wiring from Kubernetes events to the controller. No logic here.

The reconcile path uses `on.event` and an index only: none of kopf's change-tracking
handlers, so kopf writes no progress annotations per change. The one change-tracking
handler is the deletion finalizer, which needs kopf's retry semantics. The safety-net
timer is one loop of the controller's (started and stopped with kopf), not a kopf timer
per object: with thousands of directives, a handler invocation per object per tick is
the cost that dominates when nothing happens.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import kopf

from makima.control.controller import Controller
from makima.control.executors.jobs import job_outcome
from makima.control.kube import Kube
from makima.core import naming
from makima.core.models import GROUP, VERSION

DIRECTIVE_RESOURCE = (GROUP, VERSION, "directives")
STEP_RESOURCE = (GROUP, VERSION, "directivesteps")
AGENT_RESOURCE = (GROUP, VERSION, "agents")


def register(
    registry: kopf.OperatorRegistry, controller: Controller, kube: Kube, *, tick: float, fast_path: bool
) -> None:
    """Attach the operator's handlers to `registry` (one registry per running operator)."""

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        # kopf and kube.py authenticate with the very same client configuration.
        return connection_info(kube.api.configuration)

    @kopf.index(*STEP_RESOURCE, id="steps_by_directive", registry=registry)
    def steps_by_directive(namespace: str, labels: dict[str, str], body: kopf.Body, **_: Any) -> dict[Any, Any]:
        return {(namespace, labels.get(naming.LABEL_DIRECTIVE, "")): _plain(body)}

    # Agents by (namespace, name): read by the reconcile (agent_ref), never fetched per directive.
    @kopf.index(*AGENT_RESOURCE, id="agents_by_name", registry=registry)
    def agents_by_name(namespace: str, name: str, body: kopf.Body, **_: Any) -> dict[Any, Any]:
        return {(namespace, name): _plain(body)}

    def _bind(steps_by_directive: kopf.Index[Any, Any], agents_by_name: kopf.Index[Any, Any]) -> None:
        controller.steps_source = lambda key: steps_by_directive.get(key, [])
        controller.steps_index = steps_by_directive
        controller.agents.lookup = lambda key: next(iter(agents_by_name.get(key, [])), None)

    @kopf.on.event(*AGENT_RESOURCE, id="agent_event", registry=registry)
    async def agent_event(
        body: kopf.Body, steps_by_directive: kopf.Index[Any, Any], agents_by_name: kopf.Index[Any, Any], **_: Any
    ) -> None:
        _bind(steps_by_directive, agents_by_name)
        if fast_path:  # the directives using it (or waiting for it) see the change now
            for key in controller.agents.users_of((body.metadata.namespace or "", body.metadata.name or "")):
                controller.trigger_soon(key, "agent")

    @kopf.on.event(*DIRECTIVE_RESOURCE, id="directive_event", registry=registry)
    async def directive_event(
        type: str | None,
        body: kopf.Body,
        steps_by_directive: kopf.Index[Any, Any],
        agents_by_name: kopf.Index[Any, Any],
        **_: Any,
    ) -> None:
        _bind(steps_by_directive, agents_by_name)
        key = (body.metadata.namespace or "", body.metadata.name or "")
        if type == "DELETED":
            controller.forget_directive(key)
            return
        controller.observe_directive(_plain(body))
        if fast_path:
            await controller.trigger(key, "event")

    timer: list[asyncio.Task[None]] = []

    @kopf.on.startup(id="start_timer", registry=registry)
    async def start_timer(**_: Any) -> None:
        timer.append(asyncio.get_running_loop().create_task(controller.run_timer(tick), name="makima-timer"))

    @kopf.on.cleanup(id="stop_timer", registry=registry)
    async def stop_timer(**_: Any) -> None:
        while timer:
            job = timer.pop()
            job.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await job

    @kopf.on.event(*STEP_RESOURCE, id="step_event", registry=registry)
    async def step_event(
        type: str | None,
        body: kopf.Body,
        steps_by_directive: kopf.Index[Any, Any],
        agents_by_name: kopf.Index[Any, Any],
        **_: Any,
    ) -> None:
        _bind(steps_by_directive, agents_by_name)
        controller.step_seen(body, deleted=type == "DELETED")
        if fast_path and type != "DELETED":
            directive = body.get("spec", {}).get("directive")
            if directive:
                await controller.trigger((body.metadata.namespace or "", directive), "event")

    @kopf.on.event(
        "batch", "v1", "jobs", id="job_event", labels={naming.LABEL_MANAGED_BY: naming.MANAGED_BY}, registry=registry
    )
    async def job_event(type: str | None, body: kopf.Body, **_: Any) -> None:
        task_id = (body.metadata.labels or {}).get(naming.LABEL_TASK)
        if not task_id:
            return
        outcome = ("lost", "Job deleted before the task reported") if type == "DELETED" else job_outcome(_plain(body))
        if outcome is not None:
            await controller.job_finished(task_id, *outcome)

    @kopf.on.delete(*DIRECTIVE_RESOURCE, id="cancel_tasks", registry=registry)
    async def directive_deleted(body: kopf.Body, logger: logging.Logger, **_: Any) -> None:
        cancelled = await controller.cancel_all(body.metadata.namespace or "", body.metadata.uid or "")
        logger.info("cancelled %d running task(s) before deletion", cancelled)


def connection_info(cfg: Any) -> kopf.ConnectionInfo:
    """kopf credentials from a `kubernetes.client.Configuration`."""
    auth = (cfg.api_key or {}).get("authorization") or (cfg.api_key or {}).get("BearerToken") or ""
    token = auth.split(" ", 1)[1] if auth.lower().startswith("bearer ") else (auth or None)
    return kopf.ConnectionInfo(
        server=cfg.host,
        ca_path=cfg.ssl_ca_cert,
        insecure=not cfg.verify_ssl,
        token=token,
        certificate_path=cfg.cert_file,
        private_key_path=cfg.key_file,
        username=cfg.username or None,
        password=cfg.password or None,
    )


def _plain(body: kopf.Body) -> dict[str, Any]:
    """A plain-dict copy of a kopf body (kopf's views are live; the controller keeps copies)."""
    import copy

    return copy.deepcopy(dict(body))


def configure(settings: kopf.OperatorSettings) -> None:
    settings.persistence.finalizer = naming.FINALIZER
    settings.posting.level = logging.WARNING  # kopf's own k8s Events only for problems; ours are explicit
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.request_timeout = 60
    settings.peering.standalone = True  # one active replica is the Lease's decision (control/leadership.py)
