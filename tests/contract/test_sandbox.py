# mypy: disable-error-code="no-untyped-call"
"""Sandbox-only behaviour: in-loop use, bookmarks, bounded history, the kubernetes client, the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from makima_testing.sandbox import Sandbox, SandboxThread
from makima_testing.sandbox.patching import strategic_merge_patch


@pytest.fixture
async def in_loop() -> AsyncIterator[Sandbox]:
    """The sandbox in the test's own event loop (no thread)."""
    async with Sandbox(bookmark_interval=0.2, history=5) as sb:
        yield sb


async def _watch(url: str, params: dict[str, str], count: int) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    async with aiohttp.ClientSession() as session, session.get(url, params={"watch": "true", **params}) as rsp:
        async for line in rsp.content:
            events.append(json.loads(line))
            if len(events) >= count:
                break
    return events


async def test_bookmarks_and_initial_events(in_loop: Sandbox) -> None:
    in_loop.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}})
    url = f"{in_loop.url}/api/v1/namespaces/default/configmaps"
    events = await _watch(url, {"allowWatchBookmarks": "true", "sendInitialEvents": "true"}, 3)
    assert [e["type"] for e in events] == ["ADDED", "BOOKMARK", "BOOKMARK"]
    assert events[1]["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}
    assert int(events[2]["object"]["metadata"]["resourceVersion"]) >= int(
        events[0]["object"]["metadata"]["resourceVersion"]
    )


async def test_bounded_history_gives_410(in_loop: Sandbox) -> None:
    first = in_loop.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}})
    for i in range(10):
        in_loop.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}, "data": {"i": str(i)}})
    url = f"{in_loop.url}/api/v1/namespaces/default/configmaps"
    [event] = await _watch(url, {"resourceVersion": first["metadata"]["resourceVersion"]}, 1)
    assert event["type"] == "ERROR" and event["object"]["code"] == 410


def test_kubernetes_client_works(sandbox: SandboxThread) -> None:
    from kubernetes import client, config, watch

    api_client = config.new_client_from_config(config_file=str(sandbox.kubeconfig))
    core = client.CoreV1Api(api_client)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="k8s-client")))
    core.create_namespaced_secret(
        "k8s-client", client.V1Secret(metadata=client.V1ObjectMeta(name="s"), string_data={"k": "v"})
    )
    assert core.read_namespaced_secret("s", "k8s-client").data == {"k": "dg=="}
    seen = [
        e["object"].metadata.name
        for e in watch.Watch().stream(core.list_namespaced_secret, "k8s-client", timeout_seconds=1)
    ]
    assert seen == ["s"]
    with pytest.raises(client.ApiException) as exc:
        core.create_namespaced_secret("k8s-client", client.V1Secret(metadata=client.V1ObjectMeta(name="s")))
    assert exc.value.status == 409
    api_client.close()


def test_cli_up_background_and_down(tmp_path: Path) -> None:
    makima = [sys.executable, "-c", "from makima.cli.main import main; main()", "sandbox"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    up = subprocess.run(
        [*makima, "up", "--background", "--state-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )
    try:
        assert up.returncode == 0, up.stderr
        assert up.stdout.strip() == f"export KUBECONFIG={tmp_path / 'kubeconfig'}"
        assert (tmp_path / "sandbox.pid").exists()
        assert "server: http://127.0.0.1:" in (tmp_path / "kubeconfig").read_text()
    finally:
        down = subprocess.run(
            [*makima, "down", "--state-dir", str(tmp_path)], capture_output=True, text=True, timeout=30
        )
    assert down.returncode == 0, down.stderr
    assert not (tmp_path / "sandbox.pid").exists()


def test_strategic_merge_merges_lists_by_key() -> None:
    current = {
        "spec": {"versions": [{"name": "v1", "served": True}, {"name": "v2", "served": True}]},
        "metadata": {"finalizers": ["a"]},
    }
    patch = {
        "spec": {
            "$setElementOrder/versions": [{"name": "v1"}, {"name": "v2"}],
            "versions": [{"name": "v2", "served": False}],
        },
        "metadata": {"$setElementOrder/finalizers": ["a", "b"], "finalizers": ["b"]},
    }
    merged = strategic_merge_patch(current, patch)
    assert merged["spec"]["versions"] == [{"name": "v1", "served": True}, {"name": "v2", "served": False}]
    assert merged["metadata"]["finalizers"] == ["a", "b"]
