"""The Dockerfile facts the chart and the e2e suite rely on (parsed, not built)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from dockerfile_parse import DockerfileParser

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def parsed() -> DockerfileParser:
    parser = DockerfileParser(path=str(ROOT / "Dockerfile"))
    return parser


def _stages(parser: DockerfileParser) -> list[list[dict]]:
    stages: list[list[dict]] = []
    for instr in parser.structure:
        if instr["instruction"] == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(instr)
    return stages


def test_multi_stage_slim_python(parsed: DockerfileParser) -> None:
    stages = _stages(parsed)
    assert len(stages) >= 2, "builder stage + runtime stage"
    assert parsed.is_multistage
    # ARGs declared before the first FROM parameterise the base images
    global_args: dict[str, str] = {}
    for instr in parsed.structure:
        if instr["instruction"] == "FROM":
            break
        if instr["instruction"] == "ARG" and "=" in instr["value"]:
            key, _, default = instr["value"].partition("=")
            global_args[key.strip()] = default.strip()
    for stage in stages:
        image = stage[0]["value"].split()[0]
        for key, default in global_args.items():
            image = image.replace("${" + key + "}", default).replace("$" + key, default)
        assert re.fullmatch(r"python:3\.1[12]-slim(-\w+)?", image), f"slim Python base, got {image!r}"
    # the wheel is built in the builder, and only the built result is copied over
    builder = " ".join(i["value"] for i in stages[0])
    assert "pip wheel" in builder
    final = stages[-1]
    copies = [i["value"] for i in final if i["instruction"] == "COPY"]
    assert copies and all(c.startswith("--from=builder") for c in copies), copies


def test_final_stage_runs_as_numeric_non_root_user(parsed: DockerfileParser) -> None:
    final = _stages(parsed)[-1]
    users = [i["value"].strip() for i in final if i["instruction"] == "USER"]
    assert users, "final stage must set USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit(), f"USER must be numeric so runAsNonRoot can be verified, got {users[-1]!r}"
    assert int(uid) >= 10000
    # The chart's pod security context uses the same UID.
    assert "runAsUser: 10001" in (ROOT / "charts/makima/templates/_helpers.tpl").read_text()
    assert uid == "10001"


def test_entrypoint_is_makima(parsed: DockerfileParser) -> None:
    final = _stages(parsed)[-1]
    entry = [i["value"] for i in final if i["instruction"] == "ENTRYPOINT"]
    assert entry, "final stage must set ENTRYPOINT"
    assert json.loads(entry[-1]) == ["makima"], 'exec-form ENTRYPOINT ["makima"]'


def test_git_and_ca_certificates_only(parsed: DockerfileParser) -> None:
    final = _stages(parsed)[-1]
    runs = " ".join(i["value"] for i in final if i["instruction"] == "RUN")
    assert "apt-get install" in runs and " git" in runs and "ca-certificates" in runs
    assert "--no-install-recommends" in runs
    for tool in ("build-essential", "gcc", "make ", "g++", "python3-dev", "libpq-dev"):
        assert tool not in runs, f"no build tools in the final stage: {tool}"
    assert "rm -rf /var/lib/apt/lists" in runs


def test_no_healthcheck(parsed: DockerfileParser) -> None:
    assert not [i for i in parsed.structure if i["instruction"] == "HEALTHCHECK"], (
        "Kubernetes probes /healthz and /readyz; a HEALTHCHECK would be ignored or misleading"
    )


def test_oci_labels(parsed: DockerfileParser) -> None:
    labels = parsed.labels
    for key in ("title", "source", "version", "licenses", "revision"):
        assert f"org.opencontainers.image.{key}" in labels


def test_dockerignore_keeps_context_small() -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    assert "*" in lines, "whitelist: ignore everything, then allow what the build copies"
    for needed in ("!pyproject.toml", "!operator/"):
        assert needed in lines


def test_home_is_writable_under_a_read_only_root(parsed: DockerfileParser) -> None:
    # Operator, daemon and Job pods mount an emptyDir on /tmp and nothing else writable.
    assert parsed.envs.get("HOME") == "/tmp"
    assert parsed.envs["PATH"].startswith("/opt/makima/bin")
