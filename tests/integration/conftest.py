"""The operator running for real (kopf, API, store) against the sandbox cluster.

Each test gets a fresh sandbox (a test double of the Kubernetes API, see docs/sandbox.md),
a fresh PostgreSQL schema and its own operator; the operator does not know it talks to
the sandbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from makima.control.config import OperatorSettings
from makima.control.runtime import Operator, run_operator
from makima.core.crds import all_crds
from makima_testing.sandbox.server import SandboxThread

GROUP_PATH = "/apis/makima.dev/v1alpha1"
# A deadline for a condition on a loaded machine (a CPU hog beside the suite, several suites at
# once), not an expected duration: the scenarios take seconds on an idle machine.
LOADED = 300.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Api:
    """A small raw client of the sandbox for assertions (what kubectl would see)."""

    def __init__(
        self,
        url: str,
        session: aiohttp.ClientSession,
        namespace: str = "default",
        ssl_context: ssl.SSLContext | bool = False,
    ) -> None:
        self.url = url
        self.session = session
        self.namespace = namespace
        self.ssl = ssl_context

    async def request(self, method: str, path: str, body: Any = None, content_type: str | None = None) -> Any:
        headers = {"Content-Type": content_type} if content_type else {}
        async with self.session.request(method, self.url + path, json=body, headers=headers, ssl=self.ssl) as resp:
            data = await resp.json()
            if resp.status >= 400:
                raise AssertionError(f"{method} {path}: {resp.status} {data}")
            return data

    def _ns(self, plural: str) -> str:
        return f"{GROUP_PATH}/namespaces/{self.namespace}/{plural}"

    async def apply_directive(self, manifest: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("POST", self._ns("directives"), manifest)
        return result

    async def directive(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("GET", f"{self._ns('directives')}/{name}")
        return result

    async def patch_directive(self, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        ctype = "application/merge-patch+json"
        result: dict[str, Any] = await self.request("PATCH", f"{self._ns('directives')}/{name}", patch, ctype)
        return result

    async def delete_directive(self, name: str) -> None:
        await self.request("DELETE", f"{self._ns('directives')}/{name}")

    async def steps(self, directive: str) -> dict[str, dict[str, Any]]:
        data = await self.request("GET", f"{self._ns('directivesteps')}?labelSelector=makima.dev/directive={directive}")
        return {i["metadata"]["labels"]["makima.dev/step"]: i for i in data["items"]}

    async def jobs(self) -> list[dict[str, Any]]:
        data = await self.request("GET", f"/apis/batch/v1/namespaces/{self.namespace}/jobs")
        items: list[dict[str, Any]] = data["items"]
        return items

    async def events(self) -> list[dict[str, Any]]:
        data = await self.request("GET", f"/api/v1/namespaces/{self.namespace}/events")
        items: list[dict[str, Any]] = data["items"]
        return items

    async def pods(self) -> list[dict[str, Any]]:
        data = await self.request("GET", f"/api/v1/namespaces/{self.namespace}/pods")
        items: list[dict[str, Any]] = data["items"]
        return items

    async def eventually(self, check: Callable[[], Awaitable[bool]], what: str, timeout: float = LOADED) -> None:
        """Poll `check` until it holds; fail with `what` after `timeout` seconds."""
        deadline = asyncio.get_running_loop().time() + timeout
        while not await check():
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"not true after {timeout:.0f} s: {what}")
            await asyncio.sleep(0.1)

    async def wait_for(
        self, name: str, predicate: Callable[[dict[str, Any]], bool], timeout: float = LOADED, what: str = ""
    ) -> dict[str, Any]:
        deadline = asyncio.get_running_loop().time() + timeout
        obj: dict[str, Any] = {}
        while asyncio.get_running_loop().time() < deadline:
            obj = await self.directive(name)
            if predicate(obj):
                return obj
            await asyncio.sleep(0.1)
        steps = await self.steps(name)
        summary = {k: v.get("status") for k, v in steps.items()}
        raise AssertionError(f"timed out waiting for {what or predicate}: status={obj.get('status')} steps={summary}")


@pytest.fixture
def sandbox() -> Iterator[SandboxThread]:
    # On its own loop, as a real API server would be: kopf, on stopping, waits for (and then
    # cancels) every task created after its start, which would include the sandbox's own.
    sb = SandboxThread(bookmark_interval=2.0)
    sb.start()
    try:
        for crd in all_crds().values():
            sb.apply(crd)
        yield sb
    finally:
        sb.stop()


@dataclasses.dataclass
class Target:
    """Where a scenario runs: the sandbox, or the real control plane with the chart's RBAC."""

    kind: str
    url: str
    kubeconfig: Path  # the operator's credentials
    namespace: str
    ssl: ssl.SSLContext | bool = False
    watch: list[str] = dataclasses.field(default_factory=list)  # the operator's namespaces (empty: all)


@pytest.fixture(params=["sandbox"])
def cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    """The sandbox by default; tests parametrised with `cluster=["sandbox", "real"]` (indirect)
    also run against kube-apiserver, kube-controller-manager and the node agent."""
    if request.param == "sandbox":
        sb: SandboxThread = request.getfixturevalue("sandbox")
        yield Target("sandbox", sb.url, sb.kubeconfig, "default")
        return
    from .realenv import operator_install

    real = request.getfixturevalue("real_cluster")
    with operator_install(real, tmp_path) as (namespace, kubeconfig):
        yield Target("real", real.url, kubeconfig, namespace, real.ssl_context(), [namespace])


@pytest.fixture
async def api(cluster: Target) -> AsyncIterator[Api]:
    async with aiohttp.ClientSession() as session:
        yield Api(cluster.url, session, cluster.namespace, cluster.ssl)


OperatorFactory = Callable[..., Awaitable[Operator]]


@pytest.fixture
async def start_operator(
    cluster: Target,
    pg_dsn: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> AsyncIterator[OperatorFactory]:
    """Start (and, for restart tests, stop and start again) an operator in this loop."""
    monkeypatch.setenv("KUBECONFIG", str(cluster.kubeconfig))
    running: list[tuple[asyncio.Event, asyncio.Task[None]]] = []

    async def start(**overrides: Any) -> Operator:
        port = free_port()
        values: dict[str, Any] = {
            "database_url": pg_dsn,
            "api_listen": f"127.0.0.1:{port}",
            "api_url": f"http://127.0.0.1:{port}",
            "tick_seconds": 15.0,
            "retry_base_seconds": 0.2,
            "retry_max_seconds": 1.0,
            "state_dir": tmp_path / "state",
        }
        if cluster.watch:
            values["namespaces"] = cluster.watch
        values.update(overrides)
        settings = OperatorSettings(**values)
        stop, ready = asyncio.Event(), asyncio.Event()
        built: list[Operator] = []
        task = asyncio.create_task(
            run_operator(
                settings, kubeconfig=str(cluster.kubeconfig), stop_flag=stop, ready_flag=ready, on_built=built.append
            )
        )
        running.append((stop, task))
        waiter = asyncio.create_task(ready.wait())
        done, _ = await asyncio.wait({waiter, task}, timeout=LOADED, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            task.result()  # raises the start-up error
        assert waiter in done, f"operator did not become ready in {LOADED:.0f} s"
        return built[0]

    async def stop_all() -> None:
        for stop, _task in running:
            stop.set()
        for _stop, task in running:
            # kopf ends its own tasks by cancellation when the stop flag is set.
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(task, 30)
        running.clear()

    # kopf, when stopping, waits up to 5 s for every task created after it started (then
    # cancels them), and this fixture's own teardown runs in such a task. So the final stop
    # runs in a task that predates every operator, driven from a plain finalizer.
    loop = asyncio.get_running_loop()
    go = asyncio.Event()

    async def janitor() -> None:
        await go.wait()
        await stop_all()

    janitor_task = loop.create_task(janitor())

    def finalize() -> None:
        go.set()
        loop.run_until_complete(janitor_task)

    request.addfinalizer(finalize)
    start.stop_all = stop_all  # type: ignore[attr-defined]
    yield start


def git(*args: str, cwd: Path | None = None) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def origin(tmp_path: Path) -> Path:
    """A bare repository with one commit on main: the remote the directive works on."""
    bare = tmp_path / "origin.git"
    git("init", "--bare", "-b", "main", str(bare))
    work = tmp_path / "seed"
    git("clone", str(bare), str(work))
    (work / "README.md").write_text("# demo project\n")
    git("-c", "user.name=t", "-c", "user.email=t@t", "-C", str(work), "add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "-C", str(work), "commit", "-m", "initial")
    git("-C", str(work), "push", "origin", "HEAD:main")
    return bare


EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "directive.yaml"


def example_directive(repo: Path, **spec_overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    doc["spec"]["repository"]["url"] = f"file://{repo}"
    for key, value in spec_overrides.items():
        doc["spec"][key] = value
    return doc


def scripted(name: str, repo: Path, script: dict[str, Any], **spec: Any) -> dict[str, Any]:
    """A directive whose agent is the scripted agent running `script`."""
    body: dict[str, Any] = {
        "apiVersion": "makima.dev/v1alpha1",
        "kind": "Directive",
        "metadata": {"name": name},
        "spec": {
            "title": f"test {name}",
            "goal": f"goal of {name}",
            "repository": {"url": f"file://{repo}"},
            "execution": {"mode": "Job", "retries": 1, "stepTimeout": "2m"},
            "agent": {
                "command": ["makima", "agent", "scripted"],
                "env": [{"name": "MAKIMA_AGENT_SCRIPT", "value": yaml.safe_dump(script)}],
            },
        },
    }
    for key, value in spec.items():
        if isinstance(value, dict) and isinstance(body["spec"].get(key), dict):
            body["spec"][key].update(value)
        else:
            body["spec"][key] = value
    return body
