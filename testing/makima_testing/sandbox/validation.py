"""CRD schema handling: defaulting, pruning and validation (sandbox cluster, a test double).

Translates a structural openAPIV3Schema to JSON Schema for `jsonschema`, and reports
errors like the API server: `details.causes[].field` such as `spec.repository.url`.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import jsonschema

_ROOT_KEEP = {"apiVersion", "kind", "metadata"}


def _to_jsonschema(schema: dict[str, Any]) -> dict[str, Any]:
    """Rewrite the Kubernetes dialect (nullable, int-or-string, x-kubernetes-*) into JSON Schema."""
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key.startswith("x-kubernetes-") or key in ("nullable", "default", "example", "externalDocs"):
            continue
        if key == "properties":
            out[key] = {name: _to_jsonschema(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = _to_jsonschema(value)
        elif key in ("allOf", "anyOf", "oneOf"):
            out[key] = [_to_jsonschema(sub) for sub in value]
        elif key == "not":
            out[key] = _to_jsonschema(value)
        else:
            out[key] = value
    if schema.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [*out.get("anyOf", []), {"type": "integer"}, {"type": "string"}]
    if schema.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if "format" in out and out["format"] not in ("date-time", "date"):
        out.pop("format")  # formats like int32/byte are not checked by the sandbox
    return out


def apply_defaults(obj: Any, schema: dict[str, Any]) -> Any:
    """Fill `default`s of absent properties, recursively (objects and array items)."""
    if isinstance(obj, dict):
        for name, sub in (schema.get("properties") or {}).items():
            if name not in obj and "default" in sub:
                obj[name] = copy.deepcopy(sub["default"])
            if name in obj:
                obj[name] = apply_defaults(obj[name], sub)
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for name in list(obj):
                if name not in (schema.get("properties") or {}):
                    obj[name] = apply_defaults(obj[name], extra)
    elif isinstance(obj, list) and isinstance(schema.get("items"), dict):
        return [apply_defaults(item, schema["items"]) for item in obj]
    return obj


def prune(obj: Any, schema: dict[str, Any], path: str = "", root: bool = True) -> list[str]:
    """Drop fields the schema does not declare (structural pruning); returns their paths."""
    pruned: list[str] = []
    if schema.get("x-kubernetes-preserve-unknown-fields") or schema.get("x-kubernetes-embedded-resource"):
        return pruned
    if isinstance(obj, dict):
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        for name in list(obj):
            child = f"{path}.{name}" if path else name
            if root and name in _ROOT_KEEP:
                continue
            if props is not None and name in props:
                pruned += prune(obj[name], props[name], child, root=False)
            elif isinstance(extra, dict):
                pruned += prune(obj[name], extra, child, root=False)
            elif extra is True:
                continue
            elif props is not None or schema.get("type") == "object":
                del obj[name]
                pruned.append(child)
    elif isinstance(obj, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(obj):
            pruned += prune(item, schema["items"], f"{path}[{i}]", root=False)
    return pruned


def _field_path(error: jsonschema.ValidationError) -> str:
    path = ""
    for part in error.absolute_path:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def _quote(value: Any) -> str:
    return json.dumps(value) if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def _cause(error: jsonschema.ValidationError) -> dict[str, str]:
    field = _field_path(error)
    if error.validator == "required":
        missing = str(error.message).split("'")[1] if "'" in error.message else ""
        full = f"{field}.{missing}" if field else missing
        return {"reason": "FieldValueRequired", "message": "Required value", "field": full}
    if error.validator == "type":
        wanted = error.validator_value
        wanted = wanted[0] if isinstance(wanted, list) else wanted
        return {
            "reason": "FieldValueTypeInvalid",
            "message": f'Invalid value: "{_typename(error.instance)}": {field} in body must be of type '
            f"{wanted}: {_quote(_typename(error.instance))}",
            "field": field,
        }
    if error.validator == "enum":
        allowed = ", ".join(_quote(v) for v in error.validator_value)
        return {
            "reason": "FieldValueNotSupported",
            "message": f"Unsupported value: {_quote(error.instance)}: supported values: {allowed}",
            "field": field,
        }
    return {
        "reason": "FieldValueInvalid",
        "message": f"Invalid value: {_quote(error.instance)}: {field} in body {_phrase(error)}",
        "field": field,
    }


def _typename(value: Any) -> str:
    names = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", dict: "object"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _phrase(error: jsonschema.ValidationError) -> str:
    v = error.validator_value
    phrases = {
        "minimum": f"should be greater than or equal to {v}",
        "maximum": f"should be less than or equal to {v}",
        "minLength": f"should be at least {v} chars long",
        "maxLength": f"may not be longer than {v}",
        "pattern": f"should match '{v}'",
        "minItems": f"should have at least {v} items",
        "maxItems": f"must have at most {v} items",
    }
    return phrases.get(str(error.validator), str(error.message))


def validate(obj: dict[str, Any], schema: dict[str, Any]) -> list[dict[str, str]]:
    """Return API-server-style causes for every schema violation (metadata is not checked here)."""
    subject = {k: v for k, v in obj.items() if k not in _ROOT_KEEP}
    js = _to_jsonschema(schema)
    js.get("properties", {}).pop("metadata", None)
    js.get("properties", {}).pop("apiVersion", None)
    js.get("properties", {}).pop("kind", None)
    if isinstance(js.get("required"), list):
        js["required"] = [r for r in js["required"] if r not in _ROOT_KEEP]
    validator = jsonschema.Draft202012Validator(js, format_checker=jsonschema.FormatChecker())
    errors = sorted(validator.iter_errors(subject), key=lambda e: list(map(str, e.absolute_path)))
    return _name_causes(obj, schema) + [_cause(e) for e in errors]


def _name_causes(obj: dict[str, Any], schema: dict[str, Any]) -> list[dict[str, str]]:
    """The one metadata restriction a CRD schema may make: metadata.name's length."""
    name_schema = ((schema.get("properties") or {}).get("metadata") or {}).get("properties", {}).get("name") or {}
    limit = name_schema.get("maxLength")
    name = (obj.get("metadata") or {}).get("name")
    if limit is None or not isinstance(name, str) or len(name) <= limit:
        return []
    return [
        {
            "reason": "FieldValueTooLong",
            "message": f"Too long: may not be more than {limit} bytes",
            "field": "metadata.name",
        }
    ]
