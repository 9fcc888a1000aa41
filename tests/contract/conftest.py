"""Contract tests: the same scenarios against the sandbox and, when asked, a real cluster.

The real cluster is used when MAKIMA_CONTRACT_REAL=1 and KUBECONFIG points at it; otherwise
its variants are skipped with the reason. Every scenario runs in a fresh namespace.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import ssl
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from makima_testing.sandbox import SandboxThread
from tests.support.wait import eventually

MANIFESTS = Path(__file__).parent / "manifests"
WIDGETS = "/apis/contract.makima.dev/v1"
TABLE = "application/json;as=Table;g=meta.k8s.io;v=v1"


@dataclasses.dataclass
class Endpoint:
    url: str
    real: bool
    local_pods: bool = True  # pods run as processes of this machine (sandbox, node agent)
    ssl: ssl.SSLContext | bool = False
    headers: dict[str, str] = dataclasses.field(default_factory=dict)


def _real_endpoint() -> Endpoint:
    from kubernetes import client, config

    cfg = client.Configuration()
    config.load_kube_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
    ctx: ssl.SSLContext | bool = False
    if cfg.host.startswith("https"):
        ctx = ssl.create_default_context(cafile=cfg.ssl_ca_cert) if cfg.verify_ssl else ssl._create_unverified_context()
        if cfg.cert_file:
            ctx.load_cert_chain(cfg.cert_file, cfg.key_file)
    headers = {}
    token = cfg.api_key.get("authorization") or cfg.api_key.get("BearerToken")
    if token:
        headers["Authorization"] = token if token.startswith("Bearer") else f"Bearer {token}"
    return Endpoint(cfg.host, True, ssl=ctx, headers=headers)


@pytest.fixture(scope="session", params=["sandbox", "real"])
def endpoint(request: pytest.FixtureRequest, sandbox_session: SandboxThread) -> Iterator[Endpoint]:
    """The sandbox, or a real API server: the one KUBECONFIG names when MAKIMA_CONTRACT_REAL=1,
    else the upstream control plane built and started by the suite (tests/realcluster)."""
    if request.param == "sandbox":
        yield Endpoint(sandbox_session.url, False)
        return
    if os.environ.get("MAKIMA_CONTRACT_REAL") == "1" and os.environ.get("KUBECONFIG"):
        endpoint = _real_endpoint()
        endpoint.local_pods = False
        yield endpoint
        return
    cluster = request.getfixturevalue("real_cluster")
    yield Endpoint(cluster.url, True, ssl=cluster.ssl_context())


class ApiFailure(Exception):
    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"{status}: {body}")
        self.status = status
        self.body = body


@dataclasses.dataclass
class Kube:
    """A raw HTTP client: the tests see exactly what the server answers."""

    endpoint: Endpoint
    session: aiohttp.ClientSession
    namespace: str

    @property
    def real(self) -> bool:
        return self.endpoint.real

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        ctype: str = "application/json",
        accept: str = "application/json",
        params: dict[str, str] | None = None,
        ok: bool = True,
    ) -> tuple[int, Any]:
        headers = {"Accept": accept, **self.endpoint.headers}
        data = None
        if body is not None:
            headers["Content-Type"] = ctype
            data = json.dumps(body)
        async with self.session.request(
            method, self.endpoint.url + path, data=data, headers=headers, params=params, ssl=self.endpoint.ssl
        ) as rsp:
            text = await rsp.text()
            payload = json.loads(text) if text and rsp.content_type == "application/json" else text
            if ok and rsp.status >= 400:
                raise ApiFailure(rsp.status, payload)
            return rsp.status, payload

    async def get(self, path: str, **kw: Any) -> Any:
        return (await self.call("GET", path, **kw))[1]

    async def post(self, path: str, body: Any, **kw: Any) -> Any:
        return (await self.call("POST", path, body, **kw))[1]

    async def put(self, path: str, body: Any, **kw: Any) -> Any:
        return (await self.call("PUT", path, body, **kw))[1]

    async def patch(self, path: str, body: Any, ctype: str = "application/merge-patch+json", **kw: Any) -> Any:
        return (await self.call("PATCH", path, body, ctype=ctype, **kw))[1]

    async def delete(self, path: str, body: Any = None, **kw: Any) -> Any:
        return (await self.call("DELETE", path, body, **kw))[1]

    def ns(self, plural: str, name: str = "", group_version: str = WIDGETS) -> str:
        base = f"{group_version}/namespaces/{self.namespace}/{plural}"
        return f"{base}/{name}" if name else base

    async def watch(
        self,
        path: str,
        params: dict[str, str],
        until: Callable[[list[dict[str, Any]]], bool],
        timeout: float = 10,
        opened: asyncio.Event | None = None,
    ) -> list[dict[str, Any]]:
        """Collect watch events until `until(events)` or the server closes the stream. `opened`
        is set once the server has answered (it sends its headers when the watch is in place)."""
        events: list[dict[str, Any]] = []
        url = self.endpoint.url + path
        async with (
            asyncio.timeout(timeout),
            self.session.get(
                url, params={"watch": "true", **params}, headers=self.endpoint.headers, ssl=self.endpoint.ssl
            ) as rsp,
        ):
            assert rsp.status == 200, await rsp.text()
            if opened is not None:
                opened.set()
            async for line in rsp.content:
                if line.strip():
                    events.append(json.loads(line))
                    if until(events):
                        break
        return events

    async def gone(self, path: str) -> bool:
        status, _ = await self.call("GET", path, ok=False)
        return status == 404


_crd_ready: set[str] = set()


async def _ensure_crd(kube: Kube) -> None:
    if kube.endpoint.url in _crd_ready:
        return
    crd = yaml.safe_load((MANIFESTS / "widgets-crd.yaml").read_text())
    path = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
    status, _ = await kube.call("POST", path, crd, ok=False)
    assert status in (201, 409)

    async def established() -> bool:
        got = await kube.get(f"{path}/{crd['metadata']['name']}")
        conditions = got.get("status", {}).get("conditions", [])
        served = (await kube.call("GET", WIDGETS, ok=False))[0] == 200
        return served and any(c["type"] == "Established" and c["status"] == "True" for c in conditions)

    await eventually(established, "the widgets CRD established and served", 30)
    _crd_ready.add(kube.endpoint.url)


@pytest.fixture
async def kube(endpoint: Endpoint) -> AsyncIterator[Kube]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        client = Kube(endpoint, session, f"ct-{uuid.uuid4().hex[:8]}")
        await _ensure_crd(client)
        await client.post("/api/v1/namespaces", {"metadata": {"name": client.namespace}})
        try:
            yield client
        finally:
            await client.call("DELETE", f"/api/v1/namespaces/{client.namespace}", ok=False)


def widget(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "contract.makima.dev/v1",
        "kind": "Widget",
        "metadata": {"name": name},
        "spec": {"title": f"widget {name}", **spec},
    }
