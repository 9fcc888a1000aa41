"""The dashboard in a real headless Chromium against the sandbox and the real operator.

The directive is the example (six steps, a diamond), run by the scripted agent in sandbox
Jobs. Its `core` step is held by a gate file the test creates, so the page is seen showing
it Running — and its log line — before it goes on: no timing guesses.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from makima_testing.sandbox.server import SandboxThread

from ..integration.conftest import Api, OperatorFactory, example_directive
from .conftest import READER_TOKEN, DashboardFactory

pytestmark = pytest.mark.slow


def keep_screenshots(shots: Path) -> None:
    """Also copy the screenshots to $MAKIMA_SCREENSHOTS_DIR when set (how docs/images/ is refreshed)."""
    target = os.environ.get("MAKIMA_SCREENSHOTS_DIR")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        for shot in shots.iterdir():
            shutil.copy(shot, Path(target) / shot.name)


# The agent: say which step it is, hold `core` until the test's gate file exists, then run
# the scripted agent (which reads the example's script from MAKIMA_AGENT_SCRIPT).
GATED_AGENT = (
    'echo "agent: step ${MAKIMA_STEP:-none} starting"\n'
    'if [ "$MAKIMA_STEP" = core ]; then\n'
    '  echo "core: waiting for the gate"\n'
    '  while [ ! -e "$DASHBOARD_TEST_GATE" ]; do sleep 0.05; done\n'
    '  echo "core: gate open"\n'
    "fi\n"
    "exec makima agent scripted\n"
)


def gated_example(origin: Path, gate: Path) -> dict[str, Any]:
    doc = example_directive(origin)
    agent = doc["spec"]["agent"]
    agent["command"] = ["sh", "-c", GATED_AGENT]
    agent["env"].append({"name": "DASHBOARD_TEST_GATE", "value": str(gate)})
    doc["spec"]["execution"]["mode"] = "Job"
    return doc


async def test_a_directive_runs_live_in_the_browser(
    start_operator: OperatorFactory,
    sandbox: SandboxThread,
    api: Api,
    origin: Path,
    dashboard: DashboardFactory,
    browser: Any,
    shots: Path,
    tmp_path: Path,
) -> None:
    operator = await start_operator(reader_token=READER_TOKEN)
    url = await dashboard(sandbox.kubeconfig, api_url=operator.settings.api_url, reader_token=READER_TOKEN)
    gate = tmp_path / "gate"
    await api.apply_directive(gated_example(origin, gate))
    page = await browser.new_page()
    messages: list[str] = []
    page.on("console", lambda m: messages.append(m.text))

    # The list: the directive appears with its phase and, once planned, its progress.
    await page.goto(url + "/")
    row = page.locator('#directives tr[data-name="greeter"]')
    await row.wait_for()
    await page.locator('#directives tr[data-name="greeter"] .phase[data-phase="Executing"]').wait_for(timeout=60_000)
    assert "Add a greeter module" in await row.inner_text()
    await page.screenshot(path=str(shots / "list.png"), full_page=True)
    await page.evaluate("window.__noReload = 'same page'")

    # The directive: six nodes, `core` Running (held by the gate).
    await row.locator("a").click()
    core = page.locator('g.node[data-step="core"]')
    await page.locator('g.node[data-step="core"][data-phase="Running"]').wait_for(timeout=60_000)
    assert await page.locator("g.node").count() == 6
    assert await page.locator("path.edge").count() == 7  # the example's dependsOn edges

    # Its log arrives while it runs (operator API, reader token held by the server).
    await core.click()
    await page.locator('#log:has-text("core: waiting for the gate")').wait_for(timeout=30_000)

    # Pause from the page: the directive is Paused, in the cluster and on the page.
    await page.locator("#btn-pause").click()
    await page.locator('#action-msg:has-text("directive/greeter paused")').wait_for()
    await page.locator('#d-phase[data-phase="Paused"]').wait_for(timeout=30_000)
    assert (await api.directive("greeter"))["spec"]["paused"] is True

    # The gate opens: `core` turns Succeeded without a reload, and the rest of the log arrives.
    gate.touch()
    await page.locator('g.node[data-step="core"][data-phase="Succeeded"]').wait_for(timeout=60_000)
    await page.locator('#log:has-text("core: gate open")').wait_for(timeout=30_000)
    # Paused: nothing new was dispatched after core (docs depends only on core).
    assert await page.locator('g.node[data-step="docs"]').get_attribute("data-phase") in ("Pending", "Ready")

    # Resume from the page: the directive runs to completion, live.
    await page.locator("#btn-resume").click()
    await page.locator('#action-msg:has-text("directive/greeter resumed")').wait_for()
    await page.locator('#d-phase[data-phase="Completed"]').wait_for(timeout=120_000)
    assert await page.locator('g.node[data-phase="Succeeded"]').count() == 6
    assert (await api.directive("greeter"))["spec"]["paused"] is False
    pr_url = (await api.directive("greeter"))["status"]["pullRequest"]["url"]
    await page.locator(f'#pr-panel a:has-text("{pr_url}")').wait_for(timeout=30_000)
    # The attempts table was read from the task log: one succeeded attempt for core.
    await page.locator('#attempts tr[data-attempt="1"] .phase[data-phase="Succeeded"]').wait_for(timeout=30_000)

    # The planning task's log opens from the plan panel (the agent said which step it ran: none).
    await page.locator("#planning-task").click()
    await page.locator('#task-heading:has-text("planning task")').wait_for()
    await page.locator('#log:has-text("agent: step none starting")').wait_for(timeout=30_000)
    await core.click()
    await page.locator('#log:has-text("core: gate open")').wait_for(timeout=30_000)

    assert await page.evaluate("window.__noReload") == "same page", "the page was reloaded"
    assert READER_TOKEN not in await page.content()
    await page.screenshot(path=str(shots / "dag-6.png"))
    keep_screenshots(shots)
    assert not [m for m in messages if "error" in m.lower()], messages
