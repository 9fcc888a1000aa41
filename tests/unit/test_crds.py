"""The generated CRDs: in step with the models, structural, and accepting what the models accept."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from typer.testing import CliRunner

from makima.cli.main import app
from makima.core.crds import agent_crd, all_crds, directive_crd, render
from makima.core.models import AgentResourceSpec, DirectiveSpec

ROOT = Path(__file__).resolve().parents[2]

# Keys the API server forbids or restricts in a structural schema (apiextensions validation).
_FORBIDDEN = {"$ref", "definitions", "$defs", "additionalItems", "patternProperties", "dependencies", "id"}


def structural_problems(node: Any, path: str = "") -> list[str]:
    """The structural-schema rules of apiextensions.k8s.io/v1, as far as our schemas can hit them."""
    problems: list[str] = []
    if not isinstance(node, dict):
        return [f"{path}: not an object"]
    for key in _FORBIDDEN & node.keys():
        problems.append(f"{path}: forbidden key {key}")
    preserve = node.get("x-kubernetes-preserve-unknown-fields") is True
    if "type" not in node and not preserve and not node.get("x-kubernetes-int-or-string"):
        problems.append(f"{path}: missing type")
    if "properties" in node and "additionalProperties" in node:
        problems.append(f"{path}: additionalProperties beside properties")
    if node.get("type") == "array" and "items" not in node:
        problems.append(f"{path}: array without items")
    for key in ("anyOf", "oneOf", "allOf", "not"):
        for i, sub in enumerate(node.get(key, []) if key != "not" else [node[key]] if key in node else []):
            for banned in ("type", "default", "nullable", "description", "additionalProperties"):
                if banned in sub:
                    problems.append(f"{path}.{key}[{i}]: {banned} inside {key}")
    bare_object = node.get("type") == "object" and not node.get("properties") and "additionalProperties" not in node
    if bare_object and not preserve and path not in (".metadata",):
        problems.append(f"{path}: object with no properties must preserve unknown fields")
    for name, sub in node.get("properties", {}).items():
        problems += structural_problems(sub, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        problems += structural_problems(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        problems += structural_problems(node["additionalProperties"], f"{path}{{}}")
    return problems


def _schema(crd: dict[str, Any]) -> dict[str, Any]:
    schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


@pytest.mark.parametrize("name", sorted(all_crds()))
def test_committed_crds_match_the_models(name: str) -> None:
    committed = ROOT / "crds" / name
    assert committed.exists(), f"{committed} missing: run `make crds`"
    assert committed.read_text() == render(all_crds()[name]), f"{name} drifted from the models: run `make crds`"


@pytest.mark.parametrize("name", sorted(all_crds()))
def test_schemas_are_structural(name: str) -> None:
    assert structural_problems(_schema(all_crds()[name])) == []


def test_structural_checker_catches_violations() -> None:
    bad = {
        "type": "object",
        "properties": {"a": {"description": "untyped"}, "b": {"type": "array"}},
        "additionalProperties": {"type": "string"},
    }
    problems = structural_problems(bad)
    assert any("missing type" in p for p in problems)
    assert any("array without items" in p for p in problems)
    assert any("additionalProperties beside properties" in p for p in problems)


def test_crd_names_scope_and_columns() -> None:
    crds = all_crds()
    directive = crds["makima.dev_directives.yaml"]
    step = crds["makima.dev_directivesteps.yaml"]
    assert directive["metadata"]["name"] == "directives.makima.dev"
    assert step["metadata"]["name"] == "directivesteps.makima.dev"
    for crd, short in ((directive, "dir"), (step, "dstep")):
        assert crd["spec"]["scope"] == "Namespaced"
        assert crd["spec"]["names"]["shortNames"] == [short]
        version = crd["spec"]["versions"][0]
        assert version["name"] == "v1alpha1" and version["subresources"] == {"status": {}}

    def columns(crd: dict[str, Any], priority: int) -> list[str]:
        cols = crd["spec"]["versions"][0]["additionalPrinterColumns"]
        return [c["name"] for c in cols if c.get("priority", 0) == priority]

    assert columns(directive, 0) == ["Phase", "Progress", "PR", "Age"]
    # `kubectl get -o wide` shows more than the default
    assert columns(directive, 1) == ["Title", "Mode", "Agent", "Plan", "Started", "Completed"]
    assert columns(step, 0) == ["Directive", "Phase", "Order", "Attempts", "Age"]
    assert columns(step, 1) == ["Title", "Generation", "Branch"]


def _undescribed(node: dict[str, Any], path: str) -> list[str]:
    # metadata: the API server allows nothing there but its type and a restriction of
    # metadata.name (Directive: maxLength 63), and documents ObjectMeta itself
    missing = [] if node.get("description") or path == ".metadata" or path.startswith(".metadata.") else [path]
    for name, sub in node.get("properties", {}).items():
        missing += _undescribed(sub, f"{path}.{name}")
    if "items" in node and node["items"].get("properties"):
        missing += [m for m in _undescribed(node["items"], f"{path}[]") if m != f"{path}[]"]
    return missing


@pytest.mark.parametrize("name", sorted(all_crds()))
def test_kubectl_explain_has_a_description_for_every_field(name: str) -> None:
    schema = _schema(all_crds()[name])
    assert _undescribed(schema, "") == []


def test_bounds_and_defaults_reach_the_schema() -> None:
    spec = _schema(directive_crd())["properties"]["spec"]["properties"]
    execution = spec["execution"]["properties"]
    assert execution["maxParallelSteps"] == {**execution["maxParallelSteps"], "minimum": 1, "maximum": 64}
    assert execution["retries"]["minimum"] == 0 and execution["retries"]["maximum"] == 10
    assert execution["mode"]["enum"] == ["Auto", "Job", "Daemon"]
    assert execution["maxParallelSteps"]["default"] == 4
    assert spec["execution"]["default"] == {}
    assert spec["repository"]["properties"]["baseBranch"]["default"] == "main"
    assert spec["goal"]["maxLength"] == DirectiveSpec.model_fields["goal"].metadata[1].max_length


def test_crd_schema_and_models_agree_on_an_example() -> None:
    """What the CRD schema accepts, the model accepts too, and vice versa for a bad value."""
    schema = {**_schema(directive_crd())["properties"]["spec"]}
    good = {"title": "t", "goal": "g", "repository": {"url": "file:///tmp/r.git"}}
    jsonschema.validate(good, schema)
    DirectiveSpec.model_validate(good)
    bad = {**good, "execution": {"maxParallelSteps": 0}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)
    with pytest.raises(ValueError):
        DirectiveSpec.model_validate(bad)


def test_examples_validate_against_their_crd() -> None:
    examples = sorted((ROOT / "examples").glob("*.yaml"))
    assert examples, "examples/ has no directives"
    crds = {c["spec"]["names"]["kind"]: c for c in all_crds().values()}
    models: dict[str, Any] = {"Directive": DirectiveSpec, "Agent": AgentResourceSpec}
    kinds = set()
    for path in examples:
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc or doc.get("kind") not in crds:
                continue
            jsonschema.validate(doc, _schema(crds[doc["kind"]]))
            models[doc["kind"]].model_validate(doc["spec"])
            kinds.add(doc["kind"])
    assert kinds == {"Directive", "Agent"}


def test_cli_prints_every_crd() -> None:
    result = CliRunner().invoke(app, ["crds"])
    assert result.exit_code == 0, result.output
    docs = [d for d in yaml.safe_load_all(result.output) if d]
    assert {d["metadata"]["name"] for d in docs} == {
        "agents.makima.dev",
        "directives.makima.dev",
        "directivesteps.makima.dev",
    }


def test_agent_crd_names_columns_and_no_status() -> None:
    crd = agent_crd()
    assert crd["metadata"]["name"] == "agents.makima.dev"
    assert crd["spec"]["scope"] == "Namespaced"
    assert crd["spec"]["names"]["kind"] == "Agent" and crd["spec"]["names"]["plural"] == "agents"
    version = crd["spec"]["versions"][0]
    # the operator only reads Agents: nothing to observe, so no status and no status subresource
    assert "subresources" not in version
    assert set(version["schema"]["openAPIV3Schema"]["properties"]) == {"apiVersion", "kind", "metadata", "spec"}
    default = [(c["name"], c["jsonPath"]) for c in version["additionalPrinterColumns"] if not c.get("priority")]
    assert default == [
        ("Profile", ".spec.profile"),
        ("Image", ".spec.image"),
        ("Concurrency", ".spec.maxConcurrentTasks"),
        ("Age", ".metadata.creationTimestamp"),
    ]


def test_cel_rules_reach_the_schema_and_the_models_agree() -> None:
    """Each CEL rule has a twin in the models (the sandbox checks no CEL): same input refused."""
    spec = _schema(directive_crd())["properties"]["spec"]
    (rule,) = spec["x-kubernetes-validations"]
    assert "agentRef" in rule["rule"] and "exclude each other" in rule["message"]
    good = {"title": "t", "goal": "g", "repository": {"url": "file:///tmp/r.git"}}
    DirectiveSpec.model_validate({**good, "agentRef": {"name": "claude"}})
    DirectiveSpec.model_validate({**good, "agentRef": {"name": "claude"}, "agent": {}})  # the server's default
    with pytest.raises(ValueError, match="exclude each other"):
        DirectiveSpec.model_validate({**good, "agentRef": {"name": "claude"}, "agent": {"profile": "codex"}})

    agent = _schema(agent_crd())["properties"]["spec"]
    assert "allowedNamespaces" in agent["x-kubernetes-validations"][0]["rule"]
    assert agent["properties"]["secretRef"]["x-kubernetes-validations"][0]["message"].startswith("each environment")
    with pytest.raises(ValueError, match="only entry"):
        AgentResourceSpec.model_validate({"allowedNamespaces": ["team-a", "*"]})
    keys = [{"key": "a", "env": "X"}, {"key": "b", "env": "X"}]
    with pytest.raises(ValueError, match="one key only"):
        AgentResourceSpec.model_validate({"secretRef": {"name": "llm", "keys": keys}})


def test_agent_schema_refuses_bad_input_like_the_model() -> None:
    schema = _schema(agent_crd())["properties"]["spec"]
    good = {"profile": "claude-code", "maxConcurrentTasks": 2, "timeout": "30m", "allowedNamespaces": ["team-a"]}
    jsonschema.validate(good, schema)
    AgentResourceSpec.model_validate(good)
    for bad in (
        {"maxConcurrentTasks": 0},
        {"profile": "gpt"},
        {"timeout": "soon"},
        {"allowedNamespaces": ["Team_A"]},
        {"secretRef": {"name": "llm", "keys": [{"key": "k", "env": "1BAD"}]}},
    ):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)
        with pytest.raises(ValueError):
            AgentResourceSpec.model_validate(bad)
