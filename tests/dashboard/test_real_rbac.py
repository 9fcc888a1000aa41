"""RBAC decides, on the real kube-apiserver (tests/realcluster, docs/realcluster.md).

Two ServiceAccounts in a fresh namespace: `editor` bound to the chart's user ClusterRole
(`kube.USER_RULES`, rendered by Helm's engine) and `viewer` bound to a read-only Role. Each gets
its own dashboard with its own kubeconfig. The editor's page follows the directive live (so the
user role's `watch` is enough) and pauses it; the viewer's page reads it, and its Pause is
refused by the API server's RBAC, with the server's own words on the page.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest

from makima.control.kube import KubeError, UserKube
from makima.core.naming import step_labels, step_object_name
from tests.ship.chart import render
from tests.support.wait import eventually

from .conftest import DashboardFactory
from .test_browser_views import directive

pytestmark = pytest.mark.slow

RBAC = "/apis/rbac.authorization.k8s.io/v1"
MAKIMA = "/apis/makima.dev/v1alpha1"


async def can_read(kubeconfig: Path, namespace: str) -> bool:
    """RBAC caches bindings: wait until the new ones are in force before acting."""

    def check() -> bool:
        kube = UserKube.from_kubeconfig(str(kubeconfig))
        try:
            kube.list_directives(namespace)
            return True
        except KubeError:
            return False
        finally:
            kube.close()

    return await asyncio.to_thread(check)


async def test_rbac_decides_what_the_dashboard_may_do(
    real_cluster: Any, dashboard: DashboardFactory, browser: Any, tmp_path: Path
) -> None:
    from tests.integration.realenv import install_crds

    real = real_cluster
    await asyncio.to_thread(install_crds, real)
    ns = f"dash-{uuid.uuid4().hex[:8]}"
    role_name = f"{ns}-makima-user"

    def admin(method: str, path: str, body: Any = None, ctype: str = "application/json") -> Any:
        return real.ok(method, path, body, ctype)

    await asyncio.to_thread(admin, "POST", "/api/v1/namespaces", {"metadata": {"name": ns}})
    try:
        (user_role,) = [d for d in render({}) if d["kind"] == "ClusterRole" and d["metadata"]["name"].endswith("-user")]
        user_role = {**user_role, "metadata": {"name": role_name}}  # the chart's rules, not aggregated here
        viewer_role = {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": "viewer", "namespace": ns},
            "rules": [
                {
                    "apiGroups": ["makima.dev"],
                    "resources": ["directives", "directivesteps"],
                    "verbs": ["get", "list", "watch"],
                },
                {"apiGroups": [""], "resources": ["events"], "verbs": ["list"]},
            ],
        }

        def binding(sa: str, kind: str, role: str) -> dict[str, Any]:
            return {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "RoleBinding",
                "metadata": {"name": sa, "namespace": ns},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": role},
                "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": ns}],
            }

        def setup() -> None:
            admin("POST", f"{RBAC}/clusterroles", user_role)
            admin("POST", f"{RBAC}/namespaces/{ns}/roles", viewer_role)
            for sa, kind, role in (("editor", "ClusterRole", role_name), ("viewer", "Role", "viewer")):
                admin("POST", f"/api/v1/namespaces/{ns}/serviceaccounts", {"metadata": {"name": sa}})
                admin("POST", f"{RBAC}/namespaces/{ns}/rolebindings", binding(sa, kind, role))
            admin("POST", f"{MAKIMA}/namespaces/{ns}/directives", directive("guarded", "RBAC decides"))
            for step, phase in (("a", "Succeeded"), ("b", "Pending")):
                name = step_object_name("guarded", step)
                body = {
                    "apiVersion": "makima.dev/v1alpha1",
                    "kind": "DirectiveStep",
                    "metadata": {"name": name, "labels": step_labels("guarded", step)},
                    "spec": {
                        "directive": "guarded",
                        "title": f"step {step}",
                        "dependsOn": ["a"] if step == "b" else [],
                    },
                }
                admin("POST", f"{MAKIMA}/namespaces/{ns}/directivesteps", body)
                status = {"status": {"phase": phase, "attempts": 1 if phase != "Pending" else 0}}
                admin(
                    "PATCH",
                    f"{MAKIMA}/namespaces/{ns}/directivesteps/{name}/status",
                    status,
                    "application/merge-patch+json",
                )

        await asyncio.to_thread(setup)
        editor_kc = await asyncio.to_thread(real.kubeconfig_for, tmp_path / "editor.kubeconfig", ns, "editor")
        viewer_kc = await asyncio.to_thread(real.kubeconfig_for, tmp_path / "viewer.kubeconfig", ns, "viewer")
        for kc in (editor_kc, viewer_kc):
            await eventually(lambda kc=kc: can_read(kc, ns), f"{kc.name} may read directives", 60, 0.2)

        # The editor: a live page (watch through the user role), and Pause is done.
        editor = await browser.new_page()
        await editor.goto(await dashboard(editor_kc, namespace=ns) + f"/#/d/{ns}/guarded")
        await editor.locator('g.node[data-step="b"][data-phase="Pending"]').wait_for()
        step_b = f"{MAKIMA}/namespaces/{ns}/directivesteps/{step_object_name('guarded', 'b')}/status"
        running = {"status": {"phase": "Running", "attempts": 1}}
        await asyncio.to_thread(admin, "PATCH", step_b, running, "application/merge-patch+json")
        await editor.locator('g.node[data-step="b"][data-phase="Running"]').wait_for()
        await editor.locator("#btn-pause").click()
        await editor.locator('#action-msg.ok:has-text("directive/guarded paused")').wait_for()
        got = await asyncio.to_thread(admin, "GET", f"{MAKIMA}/namespaces/{ns}/directives/guarded")
        assert got["spec"]["paused"] is True
        assert await editor.locator("#notice").is_hidden(), await editor.locator("#notice").inner_text()

        # The viewer: the same page reads fine, but Resume is refused by the API server.
        viewer = await browser.new_page()
        await viewer.goto(await dashboard(viewer_kc, namespace=ns) + f"/#/d/{ns}/guarded")
        await viewer.locator('g.node[data-step="b"][data-phase="Running"]').wait_for()
        await viewer.locator("#btn-resume").click()
        refusal = viewer.locator("#action-msg.err")
        await refusal.wait_for()
        text = await refusal.inner_text()
        assert text.startswith(f"Refused: Kubernetes refused to let you patch directive guarded in namespace {ns}"), (
            text
        )
        assert f'User "system:serviceaccount:{ns}:viewer" cannot patch resource "directives"' in text, text
        got = await asyncio.to_thread(admin, "GET", f"{MAKIMA}/namespaces/{ns}/directives/guarded")
        assert got["spec"]["paused"] is True
        assert await viewer.locator("#notice").is_hidden(), await viewer.locator("#notice").inner_text()
    finally:

        def cleanup() -> None:
            real.call("DELETE", f"{RBAC}/clusterroles/{role_name}")
            real.call("DELETE", f"/api/v1/namespaces/{ns}")

        await asyncio.to_thread(cleanup)
