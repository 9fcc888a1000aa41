"""The dashboard in a real headless Chromium against the sandbox, without an operator: the
objects are written directly (as the operator would), so the page's reading, drawing and
refusals are what is under test.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from makima.core.naming import step_labels, step_object_name
from makima_testing.sandbox.server import SandboxThread

from ..integration.conftest import GROUP_PATH, Api
from .conftest import DashboardFactory
from .rbac_proxy import ReadOnlyProxy
from .test_browser import keep_screenshots

pytestmark = pytest.mark.slow


def directive(name: str, title: str) -> dict[str, Any]:
    return {
        "apiVersion": "makima.dev/v1alpha1",
        "kind": "Directive",
        "metadata": {"name": name},
        "spec": {"title": title, "goal": f"the goal of {name}", "repository": {"url": "file:///nowhere.git"}},
    }


def big_plan(layers: int = 10, width: int = 20, seed: int = 7) -> list[dict[str, Any]]:
    """layers x width steps; each depends on one to three steps of the layer before."""
    rng = random.Random(seed)
    steps = []
    for layer in range(layers):
        for i in range(width):
            deps = [] if layer == 0 else sorted(rng.sample(range(width), rng.randint(1, 3)))
            steps.append(
                {
                    "name": f"s{layer:02d}-{i:02d}",
                    "dependsOn": [f"s{layer - 1:02d}-{d:02d}" for d in deps],
                    "orderIndex": layer,
                    "phase": "Succeeded"
                    if layer < 4
                    else ("Failed" if i == 3 else "Running")
                    if layer == 4
                    else "Pending",
                }
            )
    return steps


async def put_steps(api: Api, owner: str, plan: list[dict[str, Any]]) -> None:
    base = f"{GROUP_PATH}/namespaces/{api.namespace}/directivesteps"
    for s in plan:
        body = {
            "apiVersion": "makima.dev/v1alpha1",
            "kind": "DirectiveStep",
            "metadata": {"name": step_object_name(owner, s["name"]), "labels": step_labels(owner, s["name"])},
            "spec": {
                "directive": owner,
                "title": f"step {s['name']}",
                "dependsOn": s["dependsOn"],
                "orderIndex": s["orderIndex"],
            },
        }
        await api.request("POST", base, body)
        await set_phase(api, owner, s["name"], s["phase"])


async def set_phase(api: Api, owner: str, step: str, phase: str) -> None:
    path = f"{GROUP_PATH}/namespaces/{api.namespace}/directivesteps/{step_object_name(owner, step)}/status"
    status: dict[str, Any] = {"phase": phase, "attempts": 0 if phase == "Pending" else 1}
    await api.request("PATCH", path, {"status": status}, "application/merge-patch+json")


async def test_a_200_step_dag_is_drawn_and_follows_changes(
    sandbox: SandboxThread, api: Api, dashboard: DashboardFactory, browser: Any, shots: Path
) -> None:
    await api.apply_directive(directive("big", "Two hundred steps"))
    await api.apply_directive(directive("small", "Another one"))
    plan = big_plan()
    await put_steps(api, "big", plan)
    url = await dashboard(sandbox.kubeconfig)
    page = await browser.new_page()

    await page.goto(url + "/")
    await page.locator('#directives tr[data-name="small"]').wait_for()
    await page.locator('#directives tr[data-name="big"]').wait_for()
    # The phase filter narrows the list without asking the server.
    await page.select_option("#phase-filter", "Completed")
    await page.locator("#directives tr.empty").wait_for()
    await page.select_option("#phase-filter", "")
    await page.locator('#directives tr[data-name="big"]').wait_for()

    await page.goto(url + "/#/d/default/big")
    await page.locator('g.node[data-step="s09-19"]').wait_for()
    assert await page.locator("g.node").count() == 200
    assert await page.locator("path.edge").count() == sum(len(s["dependsOn"]) for s in plan)
    assert await page.locator('g.node[data-phase="Failed"]').count() == 1
    # No two nodes overlap, and every edge runs left to right (columns by dependency depth).
    boxes = await page.evaluate(
        "[...document.querySelectorAll('g.node')].map(g => { const r = g.getBoundingClientRect();"
        " return [g.dataset.step, r.x, r.y, r.width, r.height]; })"
    )
    where = {b[0]: b[1:] for b in boxes}
    rects = sorted(boxes, key=lambda b: (b[1], b[2]))
    for i, a in enumerate(rects):
        for b in rects[i + 1 : i + 30]:
            overlap = a[1] < b[1] + b[3] and b[1] < a[1] + a[3] and a[2] < b[2] + b[4] and b[2] < a[2] + a[4]
            assert not overlap, (a, b)
    for s in plan:
        for dep in s["dependsOn"]:
            assert where[dep][0] + where[dep][2] <= where[s["name"]][0], (dep, s["name"])
    await page.screenshot(path=str(shots / "dag-200.png"), full_page=True)

    # A step changes in the cluster: its node follows, without a reload.
    await page.evaluate("window.__noReload = 'same page'")
    await set_phase(api, "big", "s05-00", "Running")
    await page.locator('g.node[data-step="s05-00"][data-phase="Running"]').wait_for()
    await set_phase(api, "big", "s05-00", "Succeeded")
    await page.locator('g.node[data-step="s05-00"][data-phase="Succeeded"]').wait_for()
    assert await page.evaluate("window.__noReload") == "same page"
    await page.goto(url + "/")
    await page.locator('#directives tr[data-name="big"]').wait_for()
    await page.screenshot(path=str(shots / "list-views.png"), full_page=True)
    keep_screenshots(shots)


async def test_a_user_without_the_rights_is_told_so(
    sandbox: SandboxThread, api: Api, dashboard: DashboardFactory, browser: Any, tmp_path: Path
) -> None:
    """The refusal comes from a read-only proxy, a TEST DOUBLE of the API server's authorizer
    (the sandbox has no RBAC): its 403 goes through UserKube and the dashboard to the page."""
    await api.apply_directive(directive("guarded", "Only editors may pause it"))
    await put_steps(api, "guarded", [{"name": "a", "dependsOn": [], "orderIndex": 0, "phase": "Failed"}])
    proxy = await ReadOnlyProxy(sandbox.url, {"viewer-token": "viewer"}).start()
    try:
        url = await dashboard(proxy.kubeconfig(tmp_path / "viewer.kubeconfig", "viewer-token"))
        page = await browser.new_page()
        await page.goto(url + "/#/d/default/guarded")
        await page.locator('g.node[data-step="a"][data-phase="Failed"]').wait_for()  # reading is allowed

        await page.locator("#btn-pause").click()
        refusal = page.locator("#action-msg.err")
        await refusal.wait_for()
        text = await refusal.inner_text()
        assert text.startswith("Refused: Kubernetes refused to let you patch directive guarded"), text
        assert 'User "viewer" cannot patch resource "directives"' in text
        assert (await api.directive("guarded"))["spec"].get("paused") is not True

        await page.locator("#btn-retry").click()
        await page.locator('#action-msg.err:has-text("patch directive guarded (a retry request)")').wait_for()
        assert "user role" in await page.locator("#action-msg.err").inner_text()
        assert (await api.steps("guarded"))["a"]["status"]["phase"] == "Failed"
        assert proxy.refused == [f"PATCH {GROUP_PATH}/namespaces/default/directives/guarded"] * 2
    finally:
        await proxy.stop()
