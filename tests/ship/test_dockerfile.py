"""The Dockerfile facts the chart and the e2e suite rely on (parsed, not built)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from dockerfile_parse import DockerfileParser

ROOT = Path(__file__).resolve().parents[2]


RUNTIME = "runtime"  # the stage every role runs from; the default (last) target re-exports it
AGENT_TARGETS = ("agent-claude", "agent-codex", "agent-gemini", "agent-opencode", "agent-aider")


def _stages(parser: DockerfileParser) -> list[list[dict]]:
    stages: list[list[dict]] = []
    for instr in parser.structure:
        if instr["instruction"] == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(instr)
    return stages


def _stage_name(stage: list[dict]) -> str | None:
    words = stage[0]["value"].split()
    return words[2] if len(words) == 3 and words[1].upper() == "AS" else None


def _named(parser: DockerfileParser) -> dict[str, list[dict]]:
    return {name: st for st in _stages(parser) if (name := _stage_name(st))}


@pytest.fixture(scope="module")
def whole() -> DockerfileParser:
    return DockerfileParser(path=str(ROOT / "Dockerfile"))


@pytest.fixture(scope="module")
def parsed(whole: DockerfileParser, tmp_path_factory: pytest.TempPathFactory) -> DockerfileParser:
    """The Dockerfile up to the end of the runtime stage (envs, labels, USER of that stage)."""
    stage = _named(whole)[RUNTIME]
    lines = (ROOT / "Dockerfile").read_text().splitlines(keepends=True)
    path = tmp_path_factory.mktemp("dockerfile") / "Dockerfile"
    path.write_text("".join(lines[: stage[-1]["endline"] + 1]))
    return DockerfileParser(path=str(path))


def _global_args(parser: DockerfileParser) -> dict[str, str]:
    """ARGs declared before the first FROM (they parameterise the base images and versions)."""
    out: dict[str, str] = {}
    for instr in parser.structure:
        if instr["instruction"] == "FROM":
            break
        if instr["instruction"] == "ARG" and "=" in instr["value"]:
            key, _, default = instr["value"].partition("=")
            out[key.strip()] = default.strip()
    return out


def test_multi_stage_slim_python(parsed: DockerfileParser) -> None:
    stages = _stages(parsed)
    assert len(stages) >= 2, "builder stage + runtime stage"
    assert parsed.is_multistage
    global_args = _global_args(parsed)
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


def test_default_target_is_the_plain_runtime(whole: DockerfileParser) -> None:
    last = _stages(whole)[-1]
    assert last[0]["value"].split()[0] == RUNTIME, "a build without --target must give the operator image"
    assert len(last) == 1, f"the default target adds nothing to the runtime: {last[1:]}"


def test_each_profile_has_an_agent_target_with_its_pinned_cli(whole: DockerfileParser) -> None:
    from makima.core.agents import PROFILES

    named = _named(whole)
    global_args = _global_args(whole)
    text = (ROOT / "Dockerfile").read_text()
    targets = {p.image_target: p for p in PROFILES.values() if p.image_target}
    assert sorted(targets) == sorted(AGENT_TARGETS)
    for target, profile in targets.items():
        assert profile.package is not None
        stage = named.get(target)
        assert stage is not None, f"no Dockerfile target {target} for profile {profile.name}"
        assert stage[0]["value"].split()[0] == RUNTIME, f"{target} builds on the runtime stage"
        users = [i["value"].strip() for i in stage if i["instruction"] == "USER"]
        assert users and users[-1] == "10001:10001", f"{target} runs as the non-root runtime user"
        # the CLI comes from a stage that installs exactly the pinned package
        sources = [i["value"].split()[0].removeprefix("--from=") for i in stage if i["instruction"] == "COPY"]
        installers = [named[s] for s in sources if s in named and s != "node"]
        assert len(installers) == 1, f"{target}: one installer stage, got {sources}"
        install = " ".join(i["value"] for i in installers[0] if i["instruction"] == "RUN")
        version_arg = next(k for k, v in global_args.items() if v == profile.package.version and k.endswith("VERSION"))
        sep = "@" if profile.package.registry == "npm" else "=="
        assert f"{profile.package.name}{sep}${{{version_arg}}}" in install, (target, install)
        assert ("npm install" if profile.package.registry == "npm" else "pip install") in install
        # and its binary is on the stage's PATH
        path_env = " ".join(i["value"] for i in stage if i["instruction"] == "ENV")
        assert "PATH=" in path_env, f"{target} puts the CLI on PATH"
    node = global_args["NODE_IMAGE"]
    assert re.fullmatch(r"node:\d+-bookworm-slim", node), "node from the runtime's Debian release"
    assert "bookworm" in global_args["PYTHON_IMAGE"]
    assert text.count("--target agent-claude") >= 1, "the header says how to build an agent image"
