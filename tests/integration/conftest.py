"""The operator running for real (kopf, API, store) against the sandbox cluster.

Each test gets a fresh sandbox (a test double of the Kubernetes API, see docs/sandbox.md),
a fresh PostgreSQL schema and its own operator; the operator does not know it talks to
the sandbox.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from makima.cli.demo import stack
from makima.cli.demo.origin import create_origin
from makima.cli.demo.stack import RunningOperator, operator_settings, sandbox_cluster
from makima.control.runtime import Operator
from makima_testing.sandbox.server import SandboxThread
from tests.support.wait import eventually

GROUP_PATH = "/apis/makima.dev/v1alpha1"
# A deadline for a condition on a loaded machine (a CPU hog beside the suite, several suites at
# once), not an expected duration: the scenarios take seconds on an idle machine.
LOADED = 300.0
POLL = 0.1  # seconds between reads of the sandbox's objects


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

    async def wait_for(
        self, name: str, predicate: Callable[[dict[str, Any]], bool], timeout: float = LOADED, what: str = ""
    ) -> dict[str, Any]:
        """The directive `name` once `predicate` holds for it (the failure shows its status and steps')."""

        async def matching() -> dict[str, Any] | None:
            obj = await self.directive(name)
            return obj if predicate(obj) else None

        async def state() -> str:
            steps = await self.steps(name)
            status = (await self.directive(name)).get("status")
            return f"status={status} steps={ {k: v.get('status') for k, v in steps.items()} }"

        found = await eventually(matching, what or f"directive {name} as wanted", timeout, POLL, state)
        assert found is not None
        return found


@pytest.fixture
def sandbox() -> Iterator[SandboxThread]:
    """The demo's sandbox (`stack.sandbox_cluster`: on its own loop, with the CRDs)."""
    with sandbox_cluster(bookmark_interval=2.0) as sb:
        yield sb


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
    """Start (and, for restart tests, stop and start again) an operator in this loop, as the
    demo does (`stack.start_operator`), with short retries and a 15 s tick unless overridden."""
    monkeypatch.setenv("KUBECONFIG", str(cluster.kubeconfig))
    running: list[RunningOperator] = []

    async def start(**overrides: Any) -> Operator:
        values: dict[str, Any] = {"tick_seconds": 15.0, "retry_base_seconds": 0.2, "retry_max_seconds": 1.0}
        if cluster.watch:
            values["namespaces"] = cluster.watch
        values.update(overrides)
        settings = operator_settings(values.pop("database_url", pg_dsn), tmp_path / "state", **values)
        operator = await stack.start_operator(settings, cluster.kubeconfig, ready_timeout=LOADED)
        running.append(operator)
        return operator.parts

    async def stop_all() -> None:
        for operator in running:
            operator.stop_flag.set()
        while running:
            await running.pop(0).stop()

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
async def origin(tmp_path: Path) -> Path:
    """A bare repository with one commit on main: the remote the directive works on (the
    demo's `create_origin`, seeded with a README)."""
    seed = tmp_path / "seed"
    seed.mkdir()
    (seed / "README.md").write_text("# demo project\n")
    return await create_origin(tmp_path / "origin.git", seed, "main", "initial")


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
