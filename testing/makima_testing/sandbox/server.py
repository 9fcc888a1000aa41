"""Start and stop the sandbox cluster (a test double) in the current loop or in a thread of its own."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml
from aiohttp import web

from makima_testing.sandbox.app import Api
from makima_testing.sandbox.cluster import Cluster
from makima_testing.sandbox.errors import ApiError
from makima_testing.sandbox.jobs import JobController
from makima_testing.sandbox.resources import ResourceType
from makima_testing.sandbox.store import Store

T = TypeVar("T")
CONTEXT = "makima-sandbox"


def kubeconfig_text(url: str, namespace: str = "default") -> str:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": CONTEXT, "cluster": {"server": url}}],
        "users": [{"name": CONTEXT, "user": {}}],
        "contexts": [{"name": CONTEXT, "context": {"cluster": CONTEXT, "user": CONTEXT, "namespace": namespace}}],
        "current-context": CONTEXT,
        "preferences": {},
    }
    return yaml.safe_dump(config, sort_keys=False)


class Sandbox:
    """The sandbox cluster in the running event loop: `async with Sandbox() as sb: ...`."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        workdir: Path | None = None,
        kubeconfig: Path | None = None,
        bookmark_interval: float = 10.0,
        history: int = 2000,
        job_env: dict[str, str] | None = None,
        job_retry_delay: float = 0.2,
    ) -> None:
        self.host = host
        self.port = port
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._workdir = workdir
        self._kubeconfig = kubeconfig
        self.cluster = Cluster(Store(history=history))
        self.api = Api(self.cluster, bookmark_interval=bookmark_interval)
        self._job_env = job_env
        self._job_retry_delay = job_retry_delay
        self.jobs: JobController | None = None
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def kubeconfig(self) -> Path:
        assert self._kubeconfig is not None, "the sandbox is not started"
        return self._kubeconfig

    @property
    def workdir(self) -> Path:
        assert self._workdir is not None, "the sandbox is not started"
        return self._workdir

    async def start(self) -> Sandbox:
        if self._workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="makima-sandbox-")
            self._workdir = Path(self._tmp.name)
        self.jobs = JobController(self.cluster, self._workdir / "pods", self._job_env, self._job_retry_delay)
        self.api.log_source = self.jobs.log
        self._runner = web.AppRunner(self.api.make_app(), handle_signals=False, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        server = site._server
        assert server is not None and isinstance(server, asyncio.Server)
        self.port = server.sockets[0].getsockname()[1]
        if self._kubeconfig is None:
            self._kubeconfig = self._workdir / "kubeconfig"
        self._kubeconfig.parent.mkdir(parents=True, exist_ok=True)
        self._kubeconfig.write_text(kubeconfig_text(self.url))
        return self

    async def stop(self) -> None:
        if self.jobs is not None:
            await self.jobs.stop()
        self.cluster.store.close_watches()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    async def __aenter__(self) -> Sandbox:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- helpers for tests: direct access, no HTTP (call them on the sandbox's loop) -----------

    def resource_for(self, api_version: str, kind: str) -> ResourceType:
        group, _, version = api_version.rpartition("/")
        for rt in self.cluster.registry.all():
            if rt.group == group and rt.version == version and rt.kind == kind:
                return rt
        raise ApiError(404, "NotFound", f"no resource for {api_version} {kind}")

    def apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """Create the object, or replace its spec-side fields if it exists (a plain test helper)."""
        rt = self.resource_for(manifest["apiVersion"], manifest["kind"])
        meta = manifest.get("metadata", {})
        namespace = meta.get("namespace") or ("default" if rt.namespaced else None)
        try:
            return self.cluster.create(rt, namespace, manifest)
        except ApiError as exc:
            if exc.code != 409:
                raise
        return self.cluster.update(rt, namespace, meta["name"], manifest)

    def get(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> dict[str, Any]:
        return self.cluster.get(self.resource_for(api_version, kind), namespace, name)

    def list(self, api_version: str, kind: str, namespace: str | None = None) -> list[dict[str, Any]]:
        return self.cluster.list(self.resource_for(api_version, kind), namespace)[0]

    def delete(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> dict[str, Any]:
        rt = self.resource_for(api_version, kind)
        return self.cluster.delete(rt, namespace, name, {"propagationPolicy": "Background"})

    def connection_info(self) -> Any:
        """A `kopf.ConnectionInfo` for a login handler (see docs/sandbox.md)."""
        import kopf

        return kopf.ConnectionInfo(server=self.url, insecure=True, default_namespace="default")


class SandboxThread:
    """The sandbox cluster on its own event loop in a daemon thread, for synchronous callers.

    Helpers (`apply`, `get`, `list`, `delete`) hop onto the sandbox's loop and wait.
    """

    def __init__(self, **kwargs: Any) -> None:
        self.sandbox = Sandbox(**kwargs)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return self.sandbox.url

    @property
    def kubeconfig(self) -> Path:
        return self.sandbox.kubeconfig

    def start(self) -> SandboxThread:
        started: concurrent.futures.Future[None] = concurrent.futures.Future()

        def main() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self.sandbox.start())
            except BaseException as exc:
                started.set_exception(exc)
                return
            started.set_result(None)
            loop.run_forever()
            with contextlib.suppress(Exception):
                loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        self._thread = threading.Thread(target=main, name="makima-sandbox", daemon=True)
        self._thread.start()
        started.result(timeout=30)
        return self

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return
        asyncio.run_coroutine_threadsafe(self.sandbox.stop(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        self._loop = self._thread = None

    def __enter__(self) -> SandboxThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run `fn(*args, **kwargs)` on the sandbox's loop and return its result."""
        assert self._loop is not None, "the sandbox is not started"

        async def run() -> T:
            return fn(*args, **kwargs)

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout=30)

    def apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        return self.call(self.sandbox.apply, manifest)

    def get(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> dict[str, Any]:
        return self.call(self.sandbox.get, api_version, kind, name, namespace)

    def list(self, api_version: str, kind: str, namespace: str | None = None) -> list[dict[str, Any]]:
        return self.call(self.sandbox.list, api_version, kind, namespace)

    def delete(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> dict[str, Any]:
        return self.call(self.sandbox.delete, api_version, kind, name, namespace)

    def connection_info(self) -> Any:
        return self.sandbox.connection_info()
