"""The example directive end to end: kopf + API + store + sandbox Jobs running the real runner."""

from __future__ import annotations

import asyncio
from pathlib import Path

from .conftest import Api, OperatorFactory, example_directive, git


async def test_example_directive_completes_with_a_pull_request(
    api: Api, start_operator: OperatorFactory, origin: Path, tmp_path: Path
) -> None:
    await start_operator()
    await api.apply_directive(example_directive(origin))
    done = await api.wait_for(
        "greeter", lambda d: d.get("status", {}).get("phase") in ("Completed", "Failed", "Paused"), timeout=120
    )
    assert done["status"]["phase"] == "Completed", done["status"]
    assert done["status"]["progress"] == "6/6"
    pr = done["status"]["pullRequest"]
    assert pr["url"] and pr["branch"].startswith("makima/greeter-")

    # The PR branch holds every step's file; each step ran exactly once, as a Job.
    clone = tmp_path / "check"
    git("clone", "-q", "-b", pr["branch"], str(origin), str(clone))
    for path in (
        "greeter/__init__.py",
        "greeter/core.py",
        "greeter/__main__.py",
        "tests/test_greeter.py",
        "docs/greeter.md",
        "CHANGELOG.md",
    ):
        assert (clone / path).exists(), path
    steps = await api.steps("greeter")
    assert {s["status"]["attempts"] for s in steps.values()} == {1}
    # A step's commit is named after the step, not the directive.
    core = steps["core"]["status"]
    assert git("-C", str(origin), "log", "-1", "--format=%s", core["commit"]) == "Write the greeting function"
    assert len(await api.jobs()) == 6 + 2  # planning + six steps + completion
    # Each finished Job's token Secret is gone (the token died with its task anyway).
    for _ in range(50):
        secrets = await api.request("GET", "/api/v1/namespaces/default/secrets?labelSelector=makima.dev/task")
        if not secrets["items"]:
            break
        await asyncio.sleep(0.1)
    assert [s["metadata"]["name"] for s in secrets["items"]] == []
    refs = git("-C", str(origin), "for-each-ref", "--format=%(refname)", "refs/makima/pulls")
    assert refs, "no pull request recorded in the repository"
    # Events a person reads in `kubectl describe` (posted right after the status patch).
    for _ in range(50):
        reasons = [e["reason"] for e in await api.events()]
        if "PullRequestOpened" in reasons:
            break
        await asyncio.sleep(0.1)
    assert {"Planned", "StepStarted", "StepSucceeded", "PullRequestOpened"} <= set(reasons), reasons

    assert_calls_have_rbac_rules()


def assert_calls_have_rbac_rules() -> None:
    """The Kubernetes calls kube.py made (counted by the operator) all have a rule in OPERATOR_RULES."""
    from makima.kube_calls import OPERATOR_RULES
    from makima.metrics import API_CALLS

    allowed = {(resource, verb) for _group, resource, verbs in OPERATOR_RULES for verb in verbs}
    made = {
        (s.labels["resource"], s.labels["verb"])
        for metric in API_CALLS.collect()
        for s in metric.samples
        if s.name.endswith("_total") and s.value > 0
    }
    assert made <= allowed, f"calls without an RBAC rule: {sorted(made - allowed)}"
    assert {("jobs", "create"), ("secrets", "create"), ("directivesteps/status", "patch")} <= made
