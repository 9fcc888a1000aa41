"""What the kind suite applies is valid without a cluster: the git server manifests and the
example directive pointed at it. (The kind suite itself is tests/e2e, `make e2e`.)"""

from __future__ import annotations

import kubernetes_validate

from tests.e2e.cluster import IMAGE, SEED_FILES, directive_for, git_server_manifests, git_url, scripted_files

from .chart import KUBE_VERSION


def test_git_server_manifests_are_valid() -> None:
    docs = git_server_manifests("makima-e2e", IMAGE)
    assert [d["kind"] for d in docs] == ["Pod", "Service"]
    for doc in docs:
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
    seed = docs[0]["spec"]["initContainers"][0]["command"][-1]
    for path in SEED_FILES:
        assert path in seed


def test_example_directive_is_pointed_at_the_git_server() -> None:
    url = git_url("makima-e2e")
    assert url == "git://makima-git.makima-e2e.svc.cluster.local:9418/origin.git"
    directive = directive_for("makima-e2e", url)
    assert directive["kind"] == "Directive"
    assert directive["metadata"]["namespace"] == "makima-e2e"
    assert directive["spec"]["repository"]["url"] == url
    assert "greeter/core.py" in scripted_files(directive)
