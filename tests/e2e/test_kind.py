"""End to end on a real cluster (kind): helm install (bundled PostgreSQL), an in-cluster git
server, examples/directive.yaml with the scripted agent -> Completed -> a pull request
recorded in the repository as refs/makima/pulls/<n>/{head,meta}.

Run with `make e2e`. Skips with the reason when no container engine or kind is reachable.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.support.wait import eventually_sync

from .cluster import (
    GIT_REPO,
    GIT_ROOT,
    GIT_SERVER,
    OPERATOR_NAMESPACE,
    RELEASE,
    Cluster,
    directive_for,
    git_server_manifests,
    git_url,
    scripted_files,
)
from .conftest import E2E_NAMESPACE

pytestmark = pytest.mark.e2e

NAMESPACE = E2E_NAMESPACE  # the one namespace the chart is installed to watch (conftest)
TIMEOUT_SECONDS = 600


def _diagnostics(cluster: Cluster, directive: str) -> str:
    k = cluster.kubectl
    parts = []
    for args in (
        ("get", "directives,directivesteps,jobs,pods", "-n", NAMESPACE, "-o", "wide"),
        ("get", "directive", directive, "-n", NAMESPACE, "-o", "yaml"),
        ("get", "pods", "-n", OPERATOR_NAMESPACE, "-o", "wide"),
        ("logs", "-n", OPERATOR_NAMESPACE, f"deployment/{RELEASE}", "--tail=200"),
        ("logs", "-n", NAMESPACE, "-l", "app.kubernetes.io/managed-by=makima", "--tail=50", "--prefix"),
        ("get", "events", "-n", NAMESPACE, "--sort-by=.lastTimestamp"),
    ):
        parts.append(f"$ kubectl {' '.join(args)}\n{k(*args, check=False)}")
    return "\n".join(parts)


def _git(cluster: Cluster, *args: str) -> str:
    return cluster.kubectl(
        "exec", "-n", NAMESPACE, GIT_SERVER, "-c", "git-daemon", "--",
        "git", f"--git-dir={GIT_ROOT}/{GIT_REPO}", *args,
    )  # fmt: skip


def test_directive_goes_from_goal_to_pull_request(installed: Cluster) -> None:
    cluster = installed
    k = cluster.kubectl
    k("create", "namespace", NAMESPACE)
    k.apply(git_server_manifests(NAMESPACE, cluster.image))
    k("wait", "-n", NAMESPACE, "--for=condition=Ready", f"pod/{GIT_SERVER}", "--timeout=180s")

    directive = directive_for(NAMESPACE, git_url(NAMESPACE))
    name = directive["metadata"]["name"]
    k.apply([directive])

    def finished() -> dict[str, Any] | None:
        status: dict[str, Any] = k.json("get", "directive", name, "-n", NAMESPACE).get("status") or {}
        return status if status.get("phase") in {"Completed", "Failed"} else None

    status = eventually_sync(
        finished, f"directive {name} finished", TIMEOUT_SECONDS, 3.0, detail=lambda: _diagnostics(cluster, name)
    )
    assert status.get("phase") == "Completed", (
        f"directive ended {status.get('phase')!r}: {status.get('message')}\n{_diagnostics(cluster, name)}"
    )
    assert status["steps"]["succeeded"] == status["steps"]["total"] > 0

    # The pull request artefact: refs/makima/pulls/<n>/head and /meta on the git server.
    refs = _git(cluster, "for-each-ref", "--format=%(refname)", "refs/makima/pulls/").split()
    metas = [ref for ref in refs if ref.endswith("/meta")]
    assert len(metas) == 1, f"expected one pull request, refs: {refs}\n{_diagnostics(cluster, name)}"
    meta = json.loads(_git(cluster, "cat-file", "blob", metas[0]))
    assert meta["state"] == "open"
    assert meta["base"] == directive["spec"]["repository"].get("baseBranch", "main")
    assert meta["head"] == status["pullRequest"]["branch"]
    assert status["pullRequest"]["url"]
    head = metas[0].removesuffix("/meta") + "/head"
    assert _git(cluster, "rev-parse", head).strip() == meta["headCommit"]
    assert _git(cluster, "rev-parse", f"refs/heads/{meta['head']}").strip() == meta["headCommit"]
    files = set(_git(cluster, "ls-tree", "-r", "--name-only", meta["headCommit"]).split())
    expected = scripted_files(directive)
    assert expected and expected <= files, f"missing from the PR head: {sorted(expected - files)}"
    # the PR branch is on top of the base branch
    base = _git(cluster, "rev-parse", f"refs/heads/{meta['base']}").strip()
    _git(cluster, "merge-base", "--is-ancestor", base, meta["headCommit"])

    # Clean-up: deleting the directive removes its steps (ownerReferences + finalizer).
    k("delete", "directive", name, "-n", NAMESPACE, "--wait=true", "--timeout=120s")
    leftovers = k.json("get", "directivesteps", "-n", NAMESPACE, "-l", f"makima.dev/directive={name}")
    assert leftovers["items"] == [] or all(i["metadata"].get("deletionTimestamp") for i in leftovers["items"])
