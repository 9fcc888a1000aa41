"""checkov (pinned, tests/ship/checkov.py) over the chart rendered by Helm's engine in every
values scenario the chart tests use, and over the Dockerfile. A failed check fails this test
unless it is accepted below with its reason (the same list, with the same reasons, is in
docs/operations.md); an accepted failure that no longer happens fails it too, so the list
stays true."""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from dockerfile_parse import DockerfileParser

from . import checkov
from .chart import SCENARIOS, render_files

ROOT = Path(__file__).resolve().parents[2]
OPERATOR = "Deployment/demo-makima"
DAEMON = "Deployment/demo-makima-daemon"
POSTGRESQL = "StatefulSet/demo-makima-postgresql"


@dataclass(frozen=True)
class Accepted:
    check_id: str
    resources: frozenset[str]
    reason: str
    scenarios: frozenset[str] | None = None  # None: in any scenario


ACCEPTED = [
    Accepted(
        "CKV_K8S_11",  # CPU limits should be set
        frozenset({OPERATOR, DAEMON, POSTGRESQL}),
        "CPU requests, no CPU limits: a limit throttles a busy pod even on an idle node and protects "
        "nothing that requests do not; memory limits are set",
    ),
    Accepted(
        "CKV_K8S_15",  # Image Pull Policy should be Always
        frozenset({OPERATOR, DAEMON, POSTGRESQL}),
        "images are release tags, pulled IfNotPresent; image.pullPolicy=Always is one value away where tags may move",
    ),
    Accepted(
        "CKV_K8S_43",  # Image should use digest
        frozenset({OPERATOR, DAEMON, POSTGRESQL}),
        "the chart names release tags: it cannot know the digest of an image built from the Dockerfile; "
        "immutable tags in the registry pin them",
    ),
    Accepted(
        "CKV_K8S_35",  # Prefer using secrets as files over secrets as environment variables
        frozenset({DAEMON}),
        "the daemon token stays in the environment: the daemon runs agents as its own user in its own "
        "container, so a mounted file would stay readable to them, while its environment is hidden once "
        "the daemon is non-dumpable",
    ),
    Accepted(
        "CKV_K8S_38",  # Ensure that Service Account Tokens are only mounted where necessary
        frozenset({OPERATOR}),
        "the operator is the one pod that calls the Kubernetes API; its token is what the RBAC scopes "
        "(every other pod has automountServiceAccountToken: false)",
    ),
    Accepted(
        "CKV_K8S_40",  # Containers should run as a high UID to avoid host conflict
        frozenset({POSTGRESQL}),
        "the bundled PostgreSQL runs as the postgres image's own user (UID 70), which owns its data "
        "files; it is for trying makima out",
    ),
    Accepted(
        "CKV2_K8S_6",  # Minimize the admission of pods which lack an associated NetworkPolicy
        frozenset({"Pod/demo-makima"}),
        "networkPolicy.enabled=false is the explicit choice to install without NetworkPolicies",
        scenarios=frozenset({"network-policy-off"}),
    ),
    Accepted(
        "CKV_DOCKER_2",  # Ensure that HEALTHCHECK instructions have been added to container images
        frozenset({"Dockerfile"}),
        "one image serves the operator, the daemon and task pods; Kubernetes probes each role "
        "(/healthz and /readyz, the daemon's files), a HEALTHCHECK could fit only one",
    ),
    Accepted(
        "CKV_DOCKER_7",  # Ensure the base image uses a non latest version tag
        frozenset({"Dockerfile FROM"}),
        "checkov does not resolve `FROM ${PYTHON_IMAGE}`; the ARG defaults are pinned tags "
        "(test_base_images_are_pinned_tags checks them)",
    ),
]


def _accepted(finding: checkov.Finding) -> bool:
    return any(
        a.check_id == finding.check_id
        and finding.resource in a.resources
        and (a.scenarios is None or finding.scenario in a.scenarios)
        for a in ACCEPTED
    )


@pytest.fixture(scope="module")
def scanned(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[checkov.Finding], dict[str, int]]:
    try:
        python = checkov.install()
    except checkov.Unavailable as exc:
        pytest.skip(f"checkov could not be installed into its own environment: {exc}")
    root = tmp_path_factory.mktemp("checkov")
    dirs: dict[str, Path] = {}
    for name, values in SCENARIOS.items():
        dirs[name] = root / name
        dirs[name].mkdir()
        files = render_files(values)
        text = "\n---\n".join(t for path, t in sorted(files.items()) if not path.endswith("NOTES.txt"))
        (dirs[name] / "manifests.yaml").write_text(text)
    dirs["dockerfile"] = root / "dockerfile"
    dirs["dockerfile"].mkdir()
    shutil.copy(ROOT / "Dockerfile", dirs["dockerfile"] / "Dockerfile")
    return checkov.scan(python, dirs)


def test_checkov_finds_nothing_beyond_the_accepted_failures(
    scanned: tuple[list[checkov.Finding], dict[str, int]],
) -> None:
    failed, passed = scanned
    assert [name for name, count in passed.items() if count == 0] == []  # every scenario was scanned
    unexpected = [f for f in failed if not _accepted(f)]
    assert unexpected == [], "\n".join(f"{f.check_id} {f.resource} ({f.scenario}): {f.name}" for f in unexpected)


def test_every_accepted_failure_still_happens(scanned: tuple[list[checkov.Finding], dict[str, int]]) -> None:
    failed, _ = scanned
    stale = [
        (a.check_id, resource)
        for a in ACCEPTED
        for resource in sorted(a.resources)
        if not any(f.check_id == a.check_id and f.resource == resource for f in failed)
    ]
    assert stale == [], f"no longer failing, drop them here and in docs/operations.md: {stale}"


def test_the_accepted_failures_are_documented() -> None:
    """docs/operations.md lists exactly these checks, one row each, and the pinned version."""
    text = (ROOT / "docs" / "operations.md").read_text()
    section = text[text.index("### checkov") :]
    section = section[: section.find("\n#", 1)]
    documented = re.findall(r"^\| `(CKV\w+)`", section, flags=re.MULTILINE)
    assert sorted(documented) == sorted(a.check_id for a in ACCEPTED)
    assert checkov.requirement() in section


def test_base_images_are_pinned_tags() -> None:
    """What CKV_DOCKER_7 cannot see through the ARGs: every FROM is a stage or a tagged image."""
    parser = DockerfileParser(path=str(ROOT / "Dockerfile"))
    args = {}
    stages: set[str] = set()
    for instr in parser.structure:
        if instr["instruction"] == "ARG" and "=" in instr["value"] and not stages:
            key, value = instr["value"].split("=", 1)
            args[key] = value
        if instr["instruction"] == "FROM":
            words = instr["value"].split()
            image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], words[0])
            if image not in stages:
                name, _, tag = image.rpartition(":")
                assert name and tag and tag != "latest" and "/" not in tag, image
            if len(words) == 3:
                stages.add(words[2])
