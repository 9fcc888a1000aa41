"""Models -> CustomResourceDefinitions.

The CRD YAML in `crds/` is an output of this module; a test fails when it drifts.
Pydantic's JSON Schema is turned into a *structural* OpenAPI v3 schema, the form the
API server requires: every node typed, no `$ref`, no `anyOf` around types, and
`x-kubernetes-preserve-unknown-fields` only for free-form maps.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from makima.core.models import (
    GROUP,
    VERSION,
    AgentResourceSpec,
    DirectiveSpec,
    DirectiveStatus,
    DirectiveStepSpec,
    DirectiveStepStatus,
)

# Keys of JSON Schema that OpenAPI v3 (as the API server accepts it) carries over.
_KEEP = {
    "type",
    "format",
    "description",
    "enum",
    "default",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "pattern",
    "minItems",
    "maxItems",
    "minProperties",
    "maxProperties",
    "x-kubernetes-validations",  # CEL rules (a model's json_schema_extra)
}


def _resolve(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, dict) and "$ref" in node:
        target = defs[node["$ref"].rsplit("/", 1)[-1]]
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return _resolve(merged, defs)
    return node


def _structural(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """Translate one pydantic JSON Schema node into a structural OpenAPI node."""
    node = _resolve(node, defs)
    if node.get("anyOf") or node.get("oneOf"):
        return _structural(_the_type_of_optional(node, defs), defs)
    out: dict[str, Any] = {k: v for k, v in node.items() if k in _KEEP}
    if "const" in node:
        out["enum"] = [node["const"]]
    kind = node.get("type")
    if kind == "object" or "properties" in node:
        out.update(_object(node, defs))
    elif kind == "array":
        out["items"] = _structural(node.get("items", {}), defs)
    elif kind is None:
        raise ValueError(f"schema node without a type: {node}")
    out.pop("title", None)
    return out


def _the_type_of_optional(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """Optional[X] comes as anyOf [X, null]: an absent field is how Kubernetes says "null"."""
    variants = node.get("anyOf") or node.get("oneOf") or []
    non_null = [v for v in variants if _resolve(v, defs).get("type") != "null"]
    if len(non_null) != 1:
        raise ValueError(f"cannot express a union of {len(non_null)} types structurally: {node}")
    outer = {k: v for k, v in node.items() if k not in ("anyOf", "oneOf")}
    if outer.get("default", ...) is None:
        outer.pop("default")
    return {**_resolve(non_null[0], defs), **outer}


def _object(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """An object's properties, or, without any, its value type or free-form content."""
    out: dict[str, Any] = {"type": "object"}
    props = node.get("properties", {})
    if props:
        out["properties"] = {name: _structural(sub, defs) for name, sub in props.items()}
        if node.get("required"):
            out["required"] = list(node["required"])
        return out
    extra = node.get("additionalProperties")
    if isinstance(extra, dict) and extra:
        out["additionalProperties"] = _structural(extra, defs)
    else:
        out["x-kubernetes-preserve-unknown-fields"] = True
    return out


def openapi_schema(model: type[BaseModel]) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    schema = _structural(raw, defs)
    # Pydantic omits defaults made by default_factory; an empty object lets the API server
    # apply the nested defaults (execution.maxParallelSteps etc.) to objects written without them.
    for name, field in model.model_fields.items():
        factory = field.default_factory
        alias = field.alias or name
        if factory is not None and isinstance(factory, type) and issubclass(factory, BaseModel):
            schema["properties"][alias]["default"] = {}
    return schema


def _list_maps(status: dict[str, Any]) -> dict[str, Any]:
    """Conditions are a map keyed by type, so server-side apply and merges treat them per entry."""
    conditions = status.get("properties", {}).get("conditions")
    if conditions:
        conditions["x-kubernetes-list-type"] = "map"
        conditions["x-kubernetes-list-map-keys"] = ["type"]
        conditions.pop("default", None)
    return status


def _crd(
    kind: str,
    plural: str,
    short: str,
    spec: type[BaseModel],
    status: type[BaseModel] | None,
    columns: list[dict[str, Any]],
    description: str,
    max_name_length: int | None = None,
) -> dict[str, Any]:
    """A CRD of one served version; without `status`, no status field and no status subresource."""
    metadata: dict[str, Any] = {"type": "object"}
    if max_name_length is not None:
        # The only metadata restriction a CRD may make (besides generateName).
        metadata["properties"] = {"name": {"type": "string", "maxLength": max_name_length}}
    spec_schema = openapi_schema(spec)
    spec_schema.setdefault("description", f"What the {kind} should be (written by people or the operator).")
    properties: dict[str, Any] = {
        "apiVersion": {"type": "string", "description": _API_VERSION_TEXT},
        "kind": {"type": "string", "description": _KIND_TEXT},
        # the API server refuses anything else here (it documents ObjectMeta
        # itself) but a restriction of metadata.name / generateName
        "metadata": metadata,
        "spec": spec_schema,
    }
    if status is not None:
        status_schema = _list_maps(openapi_schema(status))
        # The operator owns status; defaults there would make the server write it on create.
        _strip_defaults(status_schema)
        status_schema.setdefault("description", f"What the operator observed about the {kind} (read-only).")
        properties["status"] = status_schema
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}", "labels": {"app.kubernetes.io/part-of": "makima"}},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": [short],
                "categories": ["makima"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    **({"subresources": {"status": {}}} if status is not None else {}),
                    "additionalPrinterColumns": columns,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": description,
                            "required": ["spec"],
                            "properties": properties,
                        }
                    },
                }
            ],
        },
    }


_API_VERSION_TEXT = f"The versioned schema of this object: {GROUP}/{VERSION}."
_KIND_TEXT = "The REST resource this object represents."


def _strip_defaults(node: Any) -> None:
    if isinstance(node, dict):
        node.pop("default", None)
        for value in node.values():
            _strip_defaults(value)
    elif isinstance(node, list):
        for value in node:
            _strip_defaults(value)


_AGE = {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}


def directive_crd() -> dict[str, Any]:
    return _crd(
        "Directive",
        "directives",
        "dir",
        DirectiveSpec,
        DirectiveStatus,
        [
            {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
            {"name": "Progress", "type": "string", "jsonPath": ".status.progress"},
            {"name": "PR", "type": "string", "jsonPath": ".status.pullRequest.url"},
            _AGE,
            # `kubectl get -o wide` adds these (priority 1)
            {"name": "Title", "type": "string", "jsonPath": ".spec.title", "priority": 1},
            {"name": "Mode", "type": "string", "jsonPath": ".spec.execution.mode", "priority": 1},
            {"name": "Agent", "type": "string", "jsonPath": ".spec.agentRef.name", "priority": 1},
            {"name": "Plan", "type": "integer", "jsonPath": ".status.planGeneration", "priority": 1},
            {"name": "Started", "type": "date", "jsonPath": ".status.startedAt", "priority": 1},
            {"name": "Completed", "type": "date", "jsonPath": ".status.completedAt", "priority": 1},
        ],
        "A goal plus a git repository; makima plans it into steps and opens a pull request.",
        # The name becomes label values (at most 63 characters): refuse longer ones at the door.
        max_name_length=63,
    )


def directive_step_crd() -> dict[str, Any]:
    return _crd(
        "DirectiveStep",
        "directivesteps",
        "dstep",
        DirectiveStepSpec,
        DirectiveStepStatus,
        [
            {"name": "Directive", "type": "string", "jsonPath": ".spec.directive"},
            {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
            {"name": "Order", "type": "integer", "jsonPath": ".spec.orderIndex"},
            {"name": "Attempts", "type": "integer", "jsonPath": ".status.attempts"},
            _AGE,
            {"name": "Title", "type": "string", "jsonPath": ".spec.title", "priority": 1},
            {"name": "Generation", "type": "integer", "jsonPath": ".spec.generation", "priority": 1},
            {"name": "Branch", "type": "string", "jsonPath": ".status.branch", "priority": 1},
        ],
        "One step of a directive's plan, run as a task on its own git branch.",
    )


def agent_crd() -> dict[str, Any]:
    return _crd(
        "Agent",
        "agents",
        "ag",
        AgentResourceSpec,
        None,  # nothing to observe: the operator only reads Agents
        [
            {"name": "Profile", "type": "string", "jsonPath": ".spec.profile"},
            {"name": "Image", "type": "string", "jsonPath": ".spec.image"},
            {"name": "Concurrency", "type": "integer", "jsonPath": ".spec.maxConcurrentTasks"},
            _AGE,
            {"name": "Secret", "type": "string", "jsonPath": ".spec.secretRef.name", "priority": 1},
            {"name": "Timeout", "type": "string", "jsonPath": ".spec.timeout", "priority": 1},
        ],
        "A coding agent the platform team defines: profile, image, resources, the Secret with the model key, "
        "concurrency. Directives name it with spec.agentRef; the one named `default` applies to its namespace.",
    )


def all_crds() -> dict[str, dict[str, Any]]:
    """File name -> CRD manifest."""
    return {
        "makima.dev_agents.yaml": agent_crd(),
        "makima.dev_directives.yaml": directive_crd(),
        "makima.dev_directivesteps.yaml": directive_step_crd(),
    }


_HEADER = "# Generated by `makima crds` from makima.core.models; do not edit by hand.\n"


def render(crd: dict[str, Any]) -> str:
    return _HEADER + yaml.safe_dump(crd, sort_keys=False, width=100)


def render_all() -> str:
    return "---\n".join(render(crd) for crd in all_crds().values())


def write_all(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, crd in all_crds().items():
        path = directory / name
        path.write_text(render(crd))
        written.append(path)
    return written


# ---- reference documentation (docs/crd-reference.md) ------------------------------------------


def _md(text: str) -> str:
    """Table-cell safe: no pipes or line breaks."""
    return text.replace("|", "\\|").replace("\n", " ").strip()


def _type_text(node: dict[str, Any]) -> str:
    kind = node.get("type", "")
    if kind == "array":
        return f"[]{_type_text(node.get('items', {}))}"
    if kind == "object" and isinstance(node.get("additionalProperties"), dict):
        return f"map[string]{_type_text(node['additionalProperties'])}"
    if kind == "object" and node.get("x-kubernetes-preserve-unknown-fields") and not node.get("properties"):
        return "object (free-form)"
    if node.get("format"):
        return f"{kind} ({node['format']})"
    return str(kind)


def _constraints(node: dict[str, Any]) -> str:
    parts: list[str] = []
    if "enum" in node:
        parts.append("one of " + ", ".join(f"`{v}`" for v in node["enum"]))
    parts += _range(node)
    for low, high, unit in (("minLength", "maxLength", "chars"), ("minItems", "maxItems", "items")):
        parts += _size(node.get(low), node.get(high), unit)
    if "pattern" in node:
        parts.append(f"pattern `{node['pattern']}`")
    if node.get("x-kubernetes-list-type") == "map":
        keys = ", ".join(node.get("x-kubernetes-list-map-keys", []))
        parts.append(f"list map keyed by `{keys}`")
    return "; ".join(parts)


def _range(node: dict[str, Any]) -> list[str]:
    parts: list[str] = []
    low, high = node.get("minimum"), node.get("maximum")
    if low is not None and high is not None:
        parts.append(f"{low} to {high}")
    elif low is not None:
        parts.append(f">= {low}")
    elif high is not None:
        parts.append(f"<= {high}")
    if "exclusiveMinimum" in node:
        parts.append(f"> {node['exclusiveMinimum']}")
    if "exclusiveMaximum" in node:
        parts.append(f"< {node['exclusiveMaximum']}")
    return parts


def _size(low: Any, high: Any, unit: str) -> list[str]:
    if low is not None and high is not None:
        return [f"{low} to {high} {unit}"]
    if high is not None:
        return [f"at most {high} {unit}"]
    if low is not None:
        return [f"at least {low} {unit}"]
    return []


def _default_text(node: dict[str, Any]) -> str:
    if "default" not in node:
        return ""
    value = node["default"]
    if value == {}:
        return "`{}` (nested defaults apply)"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    return f"`{value}`"


def _field_rows(node: dict[str, Any], path: str) -> list[str]:
    rows: list[str] = []
    required = set(node.get("required", []))
    for name, sub in node.get("properties", {}).items():
        here = f"{path}.{name}"
        cells = [
            f"`{here}`",
            _type_text(sub),
            "yes" if name in required else "",
            _default_text(sub),
            _constraints(sub),
            sub.get("description", ""),
        ]
        rows.append("| " + " | ".join(_md(c) for c in cells) + " |")
        rows += _field_rows(sub, here)
        items = sub.get("items")
        if sub.get("type") == "array" and isinstance(items, dict) and items.get("properties"):
            rows += _field_rows(items, f"{here}[]")
    return rows


def _crd_reference(crd: dict[str, Any]) -> list[str]:
    spec = crd["spec"]
    names = spec["names"]
    version = spec["versions"][0]
    schema = version["schema"]["openAPIV3Schema"]
    columns = ", ".join(c["name"] for c in version.get("additionalPrinterColumns", []))
    lines = [
        f"## {names['kind']}",
        "",
        schema.get("description", ""),
        "",
        f"- API: `{spec['group']}/{version['name']}`, {spec['scope'].lower()}, "
        f"plural `{names['plural']}`, short name `{', '.join(names.get('shortNames', []))}`",
        f"- status subresource: {'yes' if 'status' in version.get('subresources', {}) else 'no (no status)'}",
        f"- `kubectl get {names['plural']}` columns: {columns}",
        "",
    ]
    header = [
        "| field | type | required | default | bounds / values | description |",
        "|---|---|---|---|---|---|",
    ]
    for part in ("spec", "status"):
        if part not in schema["properties"]:
            continue
        lines += [f"### {names['kind']}.{part}", "", *header, *_field_rows(schema["properties"][part], part), ""]
    rules = list(_rules(schema["properties"]["spec"], "spec"))
    if rules:
        lines += [f"Checked at admission (CEL rules of {names['kind']}):", ""]
        lines += [f"- `{path}`: {rule['message']} (`{rule['rule']}`)" for path, rule in rules]
        lines.append("")
    return lines


def _rules(node: dict[str, Any], path: str) -> Any:
    """(path, rule) for every CEL rule in a schema, outermost first."""
    for rule in node.get("x-kubernetes-validations", []):
        yield path, rule
    for name, sub in node.get("properties", {}).items():
        yield from _rules(sub, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from _rules(node["items"], f"{path}[]")


def reference_markdown() -> str:
    """docs/crd-reference.md: every spec and status field of each CRD, from its OpenAPI schema."""
    lines = [
        "# CRD reference",
        "",
        "<!-- Generated by `makima crds --reference` (`make crds`) from makima.core.models; do not edit by hand. -->",
        "",
        "Every field the API server accepts, as the generated CustomResourceDefinitions declare it",
        "(`crds/`). Bounds are enforced by the API server; defaults are applied by it on create.",
        "The operator owns `status`: it carries no defaults, and people should not write it.",
        "",
    ]
    for crd in all_crds().values():
        lines += _crd_reference(crd)
    return "\n".join(lines).rstrip("\n") + "\n"
