"""kopf, in-process, against the sandbox: create -> update -> delete with no errors logged."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf
import yaml

from makima.sandbox import SandboxThread
from tests.support.sandbox import kopf_operator

from .conftest import MANIFESTS


async def test_kopf_handles_a_custom_object_lifecycle(sandbox: SandboxThread) -> None:
    sandbox.apply(yaml.safe_load((MANIFESTS / "widgets-crd.yaml").read_text()))
    seen: list[str] = []
    registry = kopf.OperatorRegistry()

    @kopf.on.create("contract.makima.dev", "v1", "widgets", registry=registry)
    async def created(patch: kopf.Patch, **_: Any) -> None:
        seen.append("create")
        patch.status["phase"] = "Created"

    @kopf.on.update("contract.makima.dev", "v1", "widgets", registry=registry)
    async def updated(**_: Any) -> None:
        seen.append("update")

    @kopf.on.delete("contract.makima.dev", "v1", "widgets", registry=registry)
    async def deleted(**_: Any) -> None:
        seen.append("delete")

    settings = kopf.OperatorSettings()
    settings.watching.server_timeout = 5
    async with kopf_operator(sandbox.url, registry, namespaces=["default"], settings=settings) as records:
        sandbox.apply(yaml.safe_load((MANIFESTS / "widget.yaml").read_text()))
        await _until(lambda: "create" in seen)
        await _until(
            lambda: (
                sandbox.get("contract.makima.dev/v1", "Widget", "alpha", "default").get("status", {}).get("phase")
                == "Created"
            )
        )
        obj = sandbox.get("contract.makima.dev/v1", "Widget", "alpha", "default")
        obj["spec"]["size"] = 9
        sandbox.apply(obj)
        await _until(lambda: "update" in seen)
        sandbox.delete("contract.makima.dev/v1", "Widget", "alpha", "default")
        await _until(lambda: "delete" in seen)
        await _until(lambda: not sandbox.list("contract.makima.dev/v1", "Widget", "default"))
    problems = [r for r in records if r.levelno >= logging.WARNING]
    assert not problems, [r.getMessage() for r in problems]
    assert seen == ["create", "update", "delete"]


async def _until(check: Any, timeout: float = 10) -> None:
    """Poll: the handlers and the sandbox run elsewhere, there is no event to wait on."""
    async with asyncio.timeout(timeout):
        while not check():  # noqa: ASYNC110
            await asyncio.sleep(0.05)
