"""kopf, in-process, against the sandbox: create -> update -> delete with no errors logged."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import kopf
import pytest
import yaml

from makima_testing.sandbox import SandboxThread
from tests.support.sandbox import kopf_operator
from tests.support.wait import eventually

from .conftest import MANIFESTS

PROJECT = Path(__file__).parents[2]
CASES = [
    pytest.param([MANIFESTS / "widgets-crd.yaml"], MANIFESTS / "widget.yaml", "widgets", "size", 9, id="widget"),
    pytest.param(
        sorted((PROJECT / "crds").glob("*.yaml")),
        PROJECT / "examples" / "directive.yaml",
        "directives",
        "title",
        "x",
        id="directive",
        marks=pytest.mark.skipif(not (PROJECT / "examples" / "directive.yaml").exists(), reason="no example"),
    ),
]


@pytest.mark.parametrize(("crds", "manifest", "plural", "field", "value"), CASES)
async def test_kopf_handles_a_custom_object_lifecycle(
    sandbox: SandboxThread, crds: list[Path], manifest: Path, plural: str, field: str, value: Any
) -> None:
    for crd in crds:
        sandbox.apply(_load(crd))
    body = _load(manifest)
    group, version = body["apiVersion"].split("/")
    api, kind, name = body["apiVersion"], body["kind"], body["metadata"]["name"]
    seen: list[str] = []
    registry = kopf.OperatorRegistry()

    @kopf.on.create(group, version, plural, registry=registry)
    async def created(patch: kopf.Patch, **_: Any) -> None:
        seen.append("create")
        patch.status["message"] = "Created"

    @kopf.on.update(group, version, plural, registry=registry)
    async def updated(**_: Any) -> None:
        seen.append("update")

    @kopf.on.delete(group, version, plural, registry=registry)
    async def deleted(**_: Any) -> None:
        seen.append("delete")

    settings = kopf.OperatorSettings()
    settings.watching.server_timeout = 5
    async with kopf_operator(sandbox.url, registry, namespaces=["default"], settings=settings) as records:
        sandbox.apply(body)
        await eventually(lambda: "create" in seen, "the create handler ran", 10)
        await eventually(
            lambda: sandbox.get(api, kind, name, "default").get("status", {}).get("message") == "Created",
            "the handler's status written",
            10,
        )
        obj = sandbox.get(api, kind, name, "default")
        obj["spec"][field] = value
        sandbox.apply(obj)
        await eventually(lambda: "update" in seen, "the update handler ran", 10)
        sandbox.delete(api, kind, name, "default")
        await eventually(lambda: "delete" in seen, "the delete handler ran", 10)
        await eventually(lambda: not sandbox.list(api, kind, "default"), "the object gone", 10)
    problems = [r for r in records if r.levelno >= logging.WARNING]
    assert not problems, [r.getMessage() for r in problems]
    assert seen == ["create", "update", "delete"]


def _load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())
