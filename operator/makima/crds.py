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

from .models import GROUP, VERSION, DirectiveSpec, DirectiveStatus, DirectiveStepSpec, DirectiveStepStatus

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
    variants = node.get("anyOf") or node.get("oneOf")
    if variants:
        # Optional[X] comes as anyOf [X, null]: an absent field is how Kubernetes says "null".
        non_null = [v for v in variants if _resolve(v, defs).get("type") != "null"]
        if len(non_null) != 1:
            raise ValueError(f"cannot express a union of {len(non_null)} types structurally: {node}")
        outer = {k: v for k, v in node.items() if k not in ("anyOf", "oneOf")}
        if outer.get("default", ...) is None:
            outer.pop("default")
        return _structural({**_resolve(non_null[0], defs), **outer}, defs)

    out: dict[str, Any] = {k: v for k, v in node.items() if k in _KEEP}
    if "const" in node:
        out["enum"] = [node["const"]]
    kind = node.get("type")
    if kind == "object" or "properties" in node:
        out["type"] = "object"
        props = node.get("properties", {})
        if props:
            out["properties"] = {name: _structural(sub, defs) for name, sub in props.items()}
            if node.get("required"):
                out["required"] = list(node["required"])
        extra = node.get("additionalProperties")
        if not props:
            if isinstance(extra, dict) and extra:
                out["additionalProperties"] = _structural(extra, defs)
            else:
                out["x-kubernetes-preserve-unknown-fields"] = True
    elif kind == "array":
        out["items"] = _structural(node.get("items", {}), defs)
    elif kind is None:
        raise ValueError(f"schema node without a type: {node}")
    # Pydantic omits defaults made by default_factory; an empty object lets the API server
    # apply the nested defaults (execution.maxParallelSteps etc.) to objects written without them.
    out.pop("title", None)
    return out


def openapi_schema(model: type[BaseModel]) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    schema = _structural(raw, defs)
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
    status: type[BaseModel],
    columns: list[dict[str, Any]],
    description: str,
) -> dict[str, Any]:
    status_schema = _list_maps(openapi_schema(status))
    # The operator owns status; defaults there would make the server write it on create.
    _strip_defaults(status_schema)
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
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": description,
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": openapi_schema(spec),
                                "status": status_schema,
                            },
                        }
                    },
                }
            ],
        },
    }


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
        ],
        "A goal plus a git repository; makima plans it into steps and opens a pull request.",
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
        ],
        "One step of a directive's plan, run as a task on its own git branch.",
    )


def all_crds() -> dict[str, dict[str, Any]]:
    """File name -> CRD manifest."""
    return {
        "makima.dev_directives.yaml": directive_crd(),
        "makima.dev_directivesteps.yaml": directive_step_crd(),
    }


_HEADER = "# Generated by `makima crds` from makima.models; do not edit by hand.\n"


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
