"""Prompt snapshots: the exact text agents read. Regenerate deliberately with
MAKIMA_UPDATE_SNAPSHOTS=1 pytest tests/unit/test_prompts.py, then review the diff."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from makima.core import prompts
from makima.core.models import StepPhase
from makima.core.reconcile import CreatePlanningTask, DispatchStep, Snapshot, decide
from tests.unit.sim import T0, directive, step
from tests.unit.test_reconcile import CFG, planned

SNAPSHOTS = Path(__file__).parent / "snapshots"
UPDATE = os.environ.get("MAKIMA_UPDATE_SNAPSHOTS") == "1"


def check(name: str, text: str) -> None:
    path = SNAPSHOTS / f"{name}.txt"
    if UPDATE or not path.exists():
        if not UPDATE:
            pytest.fail(f"missing snapshot {path}; run with MAKIMA_UPDATE_SNAPSHOTS=1 to create it")
        path.write_text(text)
        return
    assert text == path.read_text(), f"{name} changed; rerun with MAKIMA_UPDATE_SNAPSHOTS=1 if intended"


def test_planning_prompt_first_plan() -> None:
    check(
        "planning_first",
        prompts.planning_prompt(
            title="Add dark mode",
            goal="Add a dark theme to the settings page.\nKeep the light theme the default.",
            repo_url="https://git.example/app.git",
            base_branch="main",
            generation=1,
        ),
    )


def test_planning_prompt_replan_lists_existing_steps() -> None:
    existing = [
        prompts.PromptStep(
            name="add-theme-tokens",
            uid="0b5c-uid",
            title="Add theme tokens",
            phase="Succeeded",
            generation=1,
            order_index=0,
            branch="makima/step-add-theme-tokens-1a2b3c4d",
            description="Colour tokens for both themes.",
        ),
        prompts.PromptStep(
            name="toggle",
            uid="77aa-uid",
            title="Settings toggle",
            phase="Running",
            generation=1,
            order_index=1,
            depends_on=("add-theme-tokens",),
        ),
    ]
    check(
        "planning_replan",
        prompts.planning_prompt(
            title="Add dark mode",
            goal="Add a dark theme, and remember the choice per user.",
            repo_url="https://git.example/app.git",
            base_branch="main",
            generation=2,
            existing=existing,
            pr_branch="makima/add-dark-mode-9f8e7d6c",
        ),
    )


def test_step_prompt_with_merged_dependencies() -> None:
    ws = prompts.StepWorkspace(
        base_branch="main",
        start_step=prompts.MergedStep("api", "Add the API", "makima/step-api-11111111"),
        merged=(prompts.MergedStep("ui", "Add the UI", "makima/step-ui-22222222"),),
    )
    check(
        "step_diamond",
        prompts.step_prompt(
            directive_title="Add dark mode",
            goal="Add a dark theme.",
            name="wire-up",
            title="Wire the API to the UI",
            description="The toggle calls the API.",
            task_plan="1. Edit settings.tsx\n2. Run npm test",
            workspace=ws,
            attempt=2,
        ),
    )


def test_step_prompt_root_steps() -> None:
    base = prompts.StepWorkspace(base_branch="main")
    pr = prompts.StepWorkspace(base_branch="main", pr_branch="makima/add-dark-mode-9f8e7d6c")
    common = dict(directive_title="D", goal="G", name="s", title="T", description="", task_plan="")
    check("step_root_base", prompts.step_prompt(workspace=base, **common))
    check("step_root_pr", prompts.step_prompt(workspace=pr, **common))


def test_conflict_prompt() -> None:
    check(
        "conflict",
        prompts.conflict_prompt(
            target="makima/step-wire-up-33333333",
            merging="makima/step-ui-22222222",
            files=["src/theme.ts", "src/settings.tsx"],
            title="Wire the API to the UI",
            purpose="preparing the workspace of step 'wire-up'",
            merging_intent="Add the UI",
            target_intent="Add the API",
        ),
    )


def test_pull_request_body() -> None:
    check("pr_body", prompts.pull_request_body(goal="Add a dark theme.", steps=[("api", "Add the API")]))


def test_prompts_built_by_decide_match_the_workspace() -> None:
    actions = decide(Snapshot(directive(), [], []), T0, CFG)
    (create,) = [a for a in actions if isinstance(a, CreatePlanningTask)]
    assert "makima directive batch-add-steps --json" in create.prompt
    a = step("a", phase=StepPhase.SUCCEEDED, attempts=1, branch="br-a")
    b = step("b", ["a"])
    (dispatch,) = [x for x in decide(planned([a, b]), T0, CFG) if isinstance(x, DispatchStep)]
    assert "br-a" in dispatch.prompt and dispatch.workspace.start_from == "br-a"
