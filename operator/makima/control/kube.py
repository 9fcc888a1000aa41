"""The Kubernetes API gateway: the only module that calls the API.

Every call made here has an RBAC rule in `kube_calls.OPERATOR_RULES` (a test compares
the chart's Role with that list). The official client is synchronous; calls run on a
thread pool of this gateway's own (KUBE_THREADS workers, matched by the client's HTTP
connection pool) so the kopf loop never blocks and a wave of creates runs side by side
instead of queueing on asyncio's small default pool. (An asyncio client would remove the
threads but means a second client stack beside kopf's and rewriting every call and test
double of this module; a sized pool gets the concurrency with neither.) Creates are
create-if-absent (409 means "already done"), status patches are merge patches of only
what changed.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, TypeVar

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from makima.control import metrics
from makima.core import naming
from makima.core.models import GROUP, VERSION

log = logging.getLogger(__name__)
T = TypeVar("T")

DIRECTIVES = "directives"
STEPS = "directivesteps"
DAEMON_TOKEN_SECRET = "makima-daemon-token"
# Threads for API calls (and HTTP connections to the API server). Each call mostly waits on
# the network, so this is sized for concurrency, not for cores; but each also holds the GIL
# while it encodes and decodes, so a much larger pool starves the event loop.
KUBE_THREADS = int(os.environ.get("MAKIMA_KUBE_THREADS", "16"))


class KubeError(RuntimeError):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"Kubernetes API error {status}: {reason}")
        self.status = status
        self.reason = reason


def load_config(kubeconfig: str | None = None) -> client.ApiClient:
    """A client from KUBECONFIG / ~/.kube/config, or the in-cluster service account."""
    try:
        cfg = client.Configuration()
        config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
        cfg.connection_pool_maxsize = KUBE_THREADS
        return client.ApiClient(cfg)
    except config.ConfigException:
        return load_kubeconfig(kubeconfig)


def load_kubeconfig(kubeconfig: str | None) -> client.ApiClient:
    """A client from a kubeconfig file only (never the in-cluster account)."""
    cfg = client.Configuration()
    config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)  # type: ignore[no-untyped-call]
    cfg.connection_pool_maxsize = KUBE_THREADS
    return client.ApiClient(cfg)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Kube:
    def __init__(self, api: client.ApiClient, threads: int = KUBE_THREADS) -> None:
        # The client's typed models are bypassed on purpose: we speak plain dicts (manifests).
        self.api: Any = api
        self.custom: Any = client.CustomObjectsApi(api)
        self.batch: Any = client.BatchV1Api(api)
        self.core: Any = client.CoreV1Api(api)
        self.threads = threads
        self._pool: ThreadPoolExecutor | None = None  # made on first use (no threads for tools)
        self._lease_pool: ThreadPoolExecutor | None = None
        # False on a replica that is not (or no longer) the active one: its writes are refused here.
        self.may_write: Callable[[], bool] = lambda: True

    def _run(self, fn: Callable[[], T]) -> asyncio.Future[T]:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="kube")
        return asyncio.get_running_loop().run_in_executor(self._pool, fn)

    def close(self) -> None:
        """Let the worker threads go (calls in flight finish first)."""
        for pool in (self._pool, self._lease_pool):
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)
        self._pool = self._lease_pool = None

    async def reachable(self, timeout: float = 3.0) -> bool:
        """GET /version (open to every authenticated client; no RBAC rule needed): for /readyz."""
        try:
            await self._run(lambda: client.VersionApi(self.api).get_code(_request_timeout=timeout))
        except Exception:  # any failure means "not reachable now"; the probe says so
            return False
        return True

    async def _call(self, verb: str, resource: str, fn: Callable[[], T]) -> T:
        if verb != "get" and not self.may_write():
            raise KubeError(503, "this replica is not the active one; it does not write")
        metrics.API_CALLS.labels(verb=verb, resource=resource).inc()
        try:
            return await self._run(fn)
        except ApiException as exc:
            raise KubeError(exc.status or 0, str(exc.reason)) from exc

    async def _create(self, verb_resource: str, fn: Callable[[], T]) -> T | None:
        """Create-if-absent: None when the object already exists (idempotent re-apply)."""
        try:
            return await self._call("create", verb_resource, fn)
        except KubeError as exc:
            if exc.status == 409:
                return None
            raise

    # ---- directives and steps ----------------------------------------------------------

    async def create_step(self, namespace: str, body: dict[str, Any]) -> dict[str, Any] | None:
        return await self._create(
            STEPS, lambda: self.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, STEPS, body)
        )

    async def patch_status(self, plural: str, namespace: str, name: str, status: dict[str, Any]) -> dict[str, Any]:
        """Merge-patch the status subresource with only the changed fields; returns the new object."""
        obj: dict[str, Any] = await self._call(
            "patch",
            f"{plural}/status",
            lambda: self.custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, plural, name, {"status": status}
            ),
        )
        return obj

    async def delete_directive(self, namespace: str, name: str) -> None:
        """Delete a directive (a finished one past its TTL); its steps go by owner reference."""
        body = client.V1DeleteOptions(propagation_policy="Background")
        await self._delete(
            DIRECTIVES,
            lambda: self.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, DIRECTIVES, name, body=body),
        )

    async def patch_directive(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        obj: dict[str, Any] = await self._call(
            "patch",
            DIRECTIVES,
            lambda: self.custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, DIRECTIVES, name, patch),
        )
        return obj

    # ---- Jobs and their token Secrets ---------------------------------------------------

    async def create_secret(self, namespace: str, body: dict[str, Any]) -> None:
        await self._create("secrets", lambda: self.core.create_namespaced_secret(namespace, body))

    async def get_secret_data(self, namespace: str, name: str) -> dict[str, str] | None:
        """Decoded data of a Secret (for a daemon task's repository credentials)."""
        import base64

        try:
            secret = await self._call("get", "secrets", lambda: self.core.read_namespaced_secret(name, namespace))
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise
        return {k: base64.b64decode(v).decode() for k, v in (secret.data or {}).items()}

    async def daemon_token_matches(self, namespace: str, token: str) -> bool:
        """A daemon's bearer token against the namespace's `makima-daemon-token` Secret."""
        import hmac

        data = await self.get_secret_data(namespace, DAEMON_TOKEN_SECRET)
        expected = (data or {}).get("token", "")
        return bool(expected) and hmac.compare_digest(expected.encode(), token.encode())

    async def delete_secret(self, namespace: str, name: str) -> None:
        await self._delete("secrets", lambda: self.core.delete_namespaced_secret(name, namespace))

    async def create_job(self, namespace: str, body: dict[str, Any]) -> dict[str, Any] | None:
        created = await self._create("jobs", lambda: self.batch.create_namespaced_job(namespace, body))
        return self.api.sanitize_for_serialization(created) if created is not None else None

    async def delete_job(self, namespace: str, name: str) -> None:
        body = client.V1DeleteOptions(propagation_policy="Background")
        await self._delete("jobs", lambda: self.batch.delete_namespaced_job(name, namespace, body=body))

    async def _delete(self, resource: str, fn: Callable[[], Any]) -> None:
        try:
            await self._call("delete", resource, fn)
        except KubeError as exc:
            if exc.status != 404:
                raise

    # ---- Events -------------------------------------------------------------------------

    async def emit_event(self, obj: dict[str, Any], type_: str, reason: str, message: str) -> None:
        """A core/v1 Event on `obj`, shown by `kubectl describe`. Never fails the caller."""
        meta = obj["metadata"]
        body = {
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": obj.get("apiVersion", f"{GROUP}/{VERSION}"),
                "kind": obj.get("kind", "Directive"),
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion"),
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": "makima-operator"},
            "firstTimestamp": _now(),
            "lastTimestamp": _now(),
            "count": 1,
            "reportingComponent": "makima.dev/operator",
            "reportingInstance": "makima-operator",
        }
        try:
            await self._call(
                "create",
                "events",
                lambda: self.core.create_namespaced_event(meta["namespace"], body),
            )
        except KubeError as exc:
            log.warning("could not emit event %s on %s: %s", reason, meta["name"], exc)

    # ---- the leader Lease (control/leadership.py) ------------------------------------------
    # On a thread of its own, so a renewal never queues behind a wave of other calls, and
    # not fenced by `may_write`: taking the Lease is how a replica may write at all.

    async def _lease_call(self, verb: str, fn: Callable[[], Any]) -> dict[str, Any] | None:
        """The Lease as a dict; None on 404 (get) or 409 (someone else wrote first)."""
        if self._lease_pool is None:
            self._lease_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kube-lease")
        metrics.API_CALLS.labels(verb=verb, resource="leases").inc()
        try:
            obj = await asyncio.get_running_loop().run_in_executor(self._lease_pool, fn)
        except ApiException as exc:
            if exc.status in (404, 409):
                return None
            raise KubeError(exc.status or 0, str(exc.reason)) from exc
        lease: dict[str, Any] = self.api.sanitize_for_serialization(obj)
        return lease

    async def get_lease(self, namespace: str, name: str, timeout: float) -> dict[str, Any] | None:
        api: Any = client.CoordinationV1Api(self.api)
        return await self._lease_call(
            "get", lambda: api.read_namespaced_lease(name, namespace, _request_timeout=timeout)
        )

    async def create_lease(self, namespace: str, body: dict[str, Any], timeout: float) -> dict[str, Any] | None:
        api: Any = client.CoordinationV1Api(self.api)
        return await self._lease_call(
            "create", lambda: api.create_namespaced_lease(namespace, body, _request_timeout=timeout)
        )

    async def replace_lease(
        self, namespace: str, name: str, body: dict[str, Any], timeout: float
    ) -> dict[str, Any] | None:
        """PUT with the body's resourceVersion: None when the Lease changed since it was read."""
        api: Any = client.CoordinationV1Api(self.api)
        return await self._lease_call(
            "update", lambda: api.replace_namespaced_lease(name, namespace, body, _request_timeout=timeout)
        )


# ---- the people CLI (`makima get/describe/retry/pause/resume`) ------------------------------

# What a person's kubeconfig needs for the people CLI, as RBAC rules (same shape as
# `kube_calls.OPERATOR_RULES`); `makima logs` needs none of them beyond `get`.
USER_RULES: list[tuple[str, str, tuple[str, ...]]] = [
    # get, describe; pause/resume patch spec.paused; retry sets an annotation (the operator moves
    # the steps: a step's status is the operator's record); `makima demo --cluster` replaces the example
    ("makima.dev", "directives", ("get", "list", "watch", "patch", "create", "delete")),
    ("makima.dev", "directivesteps", ("get", "list", "watch")),  # watch: `makima dashboard`
    # read the Agents a directive may name (`kubectl get agents`); writing them is the platform team's
    ("makima.dev", "agents", ("get", "list", "watch")),
    ("", "events", ("list",)),  # describe
]
# Cluster-scoped, so not part of the chart's aggregated user role: `makima demo --cluster`
# checks that the CRDs are installed (cluster admins and developers have it anyway).
DEMO_CLUSTER_RULES: list[tuple[str, str, tuple[str, ...]]] = [
    ("apiextensions.k8s.io", "customresourcedefinitions", ("get",)),
]

# The platform team's: define Agents (profile, image, the Secret with the model key, concurrency).
# A ClusterRole of the chart aggregated into nothing: a cluster admin binds it (a ClusterRoleBinding
# for every namespace, a RoleBinding for one), because an Agent decides which key and image the
# tasks of every directive using it run with.
AGENT_ADMIN_RULES: list[tuple[str, str, tuple[str, ...]]] = [
    ("makima.dev", "agents", ("get", "list", "watch", "create", "update", "patch", "delete")),
]

RETRYABLE_STEP_PHASES = ("Failed", "Skipped")


def context_namespace(kubeconfig: str | None = None) -> str:
    """The namespace of the kubeconfig's current context, else the pod's, else "default"."""
    try:
        _, active = config.list_kube_config_contexts(config_file=kubeconfig)  # type: ignore[no-untyped-call]
        namespace = (active or {}).get("context", {}).get("namespace")
        if namespace:
            return str(namespace)
    except (config.ConfigException, OSError):
        pass
    try:
        with open("/var/run/secrets/kubernetes.io/serviceaccount/namespace") as f:
            return f.read().strip() or "default"
    except OSError:
        return "default"


class UserKube:
    """Synchronous reads and writes for the people CLI, with the person's own credentials.

    Separate from `Kube` (the operator's gateway, whose calls are the operator's RBAC list):
    these calls are the ones in `USER_RULES`. Errors are `KubeError`; "not found" is None.
    """

    def __init__(self, api: client.ApiClient) -> None:
        self.api: Any = api
        self.custom: Any = client.CustomObjectsApi(api)
        self.core: Any = client.CoreV1Api(api)

    @classmethod
    def from_kubeconfig(cls, kubeconfig: str | None = None) -> UserKube:
        return cls(load_config(kubeconfig))

    def close(self) -> None:
        self.api.close()

    @staticmethod
    def _call(fn: Callable[[], T]) -> T:
        try:
            return fn()
        except ApiException as exc:
            raise KubeError(exc.status or 0, _api_message(exc)) from exc

    def _get(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            obj: dict[str, Any] = self._call(
                lambda: self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, plural, name)
            )
            return obj
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise

    @property
    def host(self) -> str:
        return str(self.api.configuration.host)

    def ensure_crds(self, crds: list[dict[str, Any]]) -> None:
        """Create-if-absent (the sandbox in `makima demo`; on a cluster the chart installs them)."""
        ext = client.ApiextensionsV1Api(self.api)
        for crd in crds:
            try:
                self._call(lambda crd=crd: ext.create_custom_resource_definition(crd))  # type: ignore[misc]
            except KubeError as exc:
                if exc.status != 409:
                    raise

    def missing_crds(self, names: list[str]) -> list[str]:
        ext = client.ApiextensionsV1Api(self.api)
        missing = []
        for name in names:
            try:
                self._call(lambda name=name: ext.read_custom_resource_definition(name))  # type: ignore[misc]
            except KubeError as exc:
                if exc.status != 404:
                    raise
                missing.append(name)
        return missing

    def create_directive(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        obj: dict[str, Any] = self._call(
            lambda: self.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, DIRECTIVES, body)
        )
        return obj

    def delete_directive(self, namespace: str, name: str) -> bool:
        """False when it did not exist."""
        try:
            self._call(lambda: self.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, DIRECTIVES, name))
        except KubeError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def list_directives(self, namespace: str) -> list[dict[str, Any]]:
        result: dict[str, Any] = self._call(
            lambda: self.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, DIRECTIVES)
        )
        items: list[dict[str, Any]] = result.get("items", [])
        return items

    def get_directive(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._get(DIRECTIVES, namespace, name)

    def get_step(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._get(STEPS, namespace, name)

    def list_steps(self, namespace: str, directive: str) -> list[dict[str, Any]]:
        from makima.core.naming import LABEL_DIRECTIVE

        result: dict[str, Any] = self._call(
            lambda: self.custom.list_namespaced_custom_object(
                GROUP, VERSION, namespace, STEPS, label_selector=f"{LABEL_DIRECTIVE}={directive}"
            )
        )
        items: list[dict[str, Any]] = result.get("items", [])
        return items

    def list_events(self, namespace: str, name: str, kind: str | None = None) -> list[dict[str, Any]]:
        """core/v1 Events whose involvedObject is `name` (and `kind`, when given), as dicts."""
        selector = f"involvedObject.name={name}"
        if kind:
            selector += f",involvedObject.kind={kind}"
        result = self._call(lambda: self.core.list_namespaced_event(namespace, field_selector=selector))
        items: list[dict[str, Any]] = self.api.sanitize_for_serialization(result).get("items", [])
        return items

    # ---- the dashboard: lists with their resourceVersion, then watches from it ------------

    def list_versioned(
        self, plural: str, namespace: str, label_selector: str | None = None, field_selector: str | None = None
    ) -> tuple[list[dict[str, Any]], str]:
        """Items and the list's resourceVersion (where a watch starts). `plural` is
        `directives` or `directivesteps` (both `list` in USER_RULES)."""
        kwargs = _selectors(label_selector, field_selector)
        result: dict[str, Any] = self._call(
            lambda: self.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, plural, **kwargs)
        )
        items: list[dict[str, Any]] = result.get("items", [])
        return items, str((result.get("metadata") or {}).get("resourceVersion") or "")

    def watch(
        self,
        plural: str,
        namespace: str,
        resource_version: str,
        label_selector: str | None = None,
        field_selector: str | None = None,
        timeout_seconds: int = 30,
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """(type, object) changes after `resource_version`, until the server ends the watch
        (`timeout_seconds`). Blocking: run it in a thread of its own. BOOKMARK events are
        passed on (their object carries only the new resourceVersion); an expired
        resourceVersion is `KubeError(410)` (list again). Needs `watch` (USER_RULES)."""
        from kubernetes import watch as k8s_watch

        kwargs: dict[str, Any] = {
            "resource_version": resource_version,
            "timeout_seconds": timeout_seconds,
            "allow_watch_bookmarks": True,
            "_request_timeout": timeout_seconds + 15,
            **_selectors(label_selector, field_selector),
        }
        w = k8s_watch.Watch()  # type: ignore[no-untyped-call]
        stream = w.stream(  # type: ignore[no-untyped-call]
            self.custom.list_namespaced_custom_object, GROUP, VERSION, namespace, plural, **kwargs
        )
        try:
            while True:
                event = self._call(lambda: next(stream, None))
                if event is None:
                    return
                kind, obj = str(event.get("type")), event.get("object")
                if kind == "ERROR":
                    code = int((obj or {}).get("code") or 500) if isinstance(obj, dict) else 500
                    message = (obj or {}).get("message", "watch error") if isinstance(obj, dict) else "watch error"
                    raise KubeError(code, str(message))
                if isinstance(obj, dict):
                    yield kind, obj
        finally:
            w.stop()  # type: ignore[no-untyped-call]

    def set_paused(self, namespace: str, name: str, paused: bool) -> dict[str, Any] | None:
        """Merge-patch `spec.paused`; None when the directive does not exist."""
        try:
            obj: dict[str, Any] = self._call(
                lambda: self.custom.patch_namespaced_custom_object(
                    GROUP, VERSION, namespace, DIRECTIVES, name, {"spec": {"paused": paused}}
                )
            )
            return obj
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise

    def request_retry(self, namespace: str, name: str, value: str) -> dict[str, Any] | None:
        """Set the Directive's retry annotation (`naming.RETRY_ANNOTATION`); the operator moves
        the requested Failed/Skipped steps back to Pending. None when the directive is gone.
        An editor may do this: it writes metadata, never a step's status."""
        patch = {"metadata": {"annotations": {naming.RETRY_ANNOTATION: value}}}
        try:
            obj: dict[str, Any] = self._call(
                lambda: self.custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, DIRECTIVES, name, patch)
            )
            return obj
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise


def _selectors(label_selector: str | None, field_selector: str | None) -> dict[str, str]:
    found = {"label_selector": label_selector, "field_selector": field_selector}
    return {k: v for k, v in found.items() if v}


def _api_message(exc: ApiException) -> str:
    """The API server's own message (Status.message) when there is one, else the reason."""
    import json

    try:
        body = json.loads(exc.body or "")
        if isinstance(body, dict) and body.get("message"):
            return str(body["message"])
    except ValueError:
        pass
    return str(exc.reason)
