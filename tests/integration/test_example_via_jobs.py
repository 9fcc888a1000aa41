"""The example directive end to end: kopf + API + store + Jobs running the real runner, on the
sandbox and on the real control plane (kube-apiserver, the real Job controller and garbage
collector, the node agent running pods; the operator with the chart's RBAC)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.support.wait import eventually

from .conftest import LOADED, Api, OperatorFactory, Target, example_directive, git

pytestmark = pytest.mark.parametrize("cluster", ["sandbox", "real"], indirect=True)


async def test_example_directive_completes_with_a_pull_request(
    api: Api, start_operator: OperatorFactory, origin: Path, tmp_path: Path, cluster: Target
) -> None:
    await start_operator()
    await api.apply_directive(example_directive(origin))
    done = await api.wait_for(
        "greeter", lambda d: d.get("status", {}).get("phase") in ("Completed", "Failed", "Paused")
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
    secrets: list[dict[str, Any]] = []

    async def no_token_secrets() -> bool:
        path = f"/api/v1/namespaces/{api.namespace}/secrets?labelSelector=makima.dev/task"
        secrets[:] = (await api.request("GET", path))["items"]
        return not secrets

    await eventually(no_token_secrets, "every task's token Secret deleted", LOADED)
    refs = git("-C", str(origin), "for-each-ref", "--format=%(refname)", "refs/makima/pulls")
    assert refs, "no pull request recorded in the repository"
    # Events a person reads in `kubectl describe` (posted right after the status patch).
    wanted = {"Planned", "StepStarted", "StepSucceeded", "PullRequestOpened"}

    async def events_posted() -> bool:
        return wanted <= {e["reason"] for e in await api.events()}

    await eventually(events_posted, f"events {sorted(wanted)} posted", LOADED)
    assert_calls_have_rbac_rules()

    # Deleting the directive takes its steps, Jobs and pods with it (ownerReferences, the
    # garbage collector) once the finalizer has cancelled what still runs.
    await api.delete_directive("greeter")

    async def all_gone() -> bool:
        return not (await api.steps("greeter")) and not (await api.jobs()) and not (await api.pods())

    await eventually(all_gone, "steps, Jobs and pods garbage-collected", LOADED)


def assert_calls_have_rbac_rules() -> None:
    """The Kubernetes calls kube.py made (counted by the operator, in this process: earlier tests'
    daemons included) all have a rule in OPERATOR_RULES or NAMED_RULES (the counter does not see
    names; on the real cluster the chart's RBAC, names included, is enforced for real)."""
    from makima.control.kube_calls import NAMED_RULES, OPERATOR_RULES
    from makima.control.metrics import API_CALLS

    allowed = {(resource, verb) for _group, resource, verbs in OPERATOR_RULES for verb in verbs}
    allowed |= {(resource, verb) for _group, resource, verbs, _names in NAMED_RULES for verb in verbs}
    made = {
        (s.labels["resource"], s.labels["verb"])
        for metric in API_CALLS.collect()
        for s in metric.samples
        if s.name.endswith("_total") and s.value > 0
    }
    assert made <= allowed, f"calls without an RBAC rule: {sorted(made - allowed)}"
    assert {("jobs", "create"), ("secrets", "create"), ("directivesteps/status", "patch")} <= made
