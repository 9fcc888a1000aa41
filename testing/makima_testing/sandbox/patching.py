"""Merge, JSON and (simplified) strategic-merge patches (sandbox cluster, a test double)."""

from __future__ import annotations

import copy
from typing import Any

import jsonpatch

from makima_testing.sandbox.errors import ApiError, bad_request

MERGE = "application/merge-patch+json"
JSON = "application/json-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"
APPLY = "application/apply-patch+yaml"


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: dicts merge recursively, `null` deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def json_patch(target: dict[str, Any], ops: Any) -> dict[str, Any]:
    if not isinstance(ops, list):
        raise bad_request("json patch must be a list of operations")
    try:
        result: dict[str, Any] = jsonpatch.JsonPatch(ops).apply(target)
    except jsonpatch.JsonPatchTestFailed as exc:
        # The API server answers a failed `test` with 422 (kopf relies on this).
        raise ApiError(422, "Invalid", f"the server rejected our request: {exc}") from exc
    except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
        raise ApiError(422, "Invalid", f"the server rejected our request: {exc}") from exc
    return result


_ORDER = "$setElementOrder/"
_DELETE_PRIMITIVES = "$deleteFromPrimitiveList/"


def strategic_merge_patch(target: Any, patch: Any) -> Any:
    """A subset of strategic merge, enough for what client-side `kubectl apply` sends.

    Lists announced by `$setElementOrder/<field>` are merged by the key their order entries
    carry (e.g. `name`); `$patch: delete` items are removed; `$deleteFromPrimitiveList/`
    removes scalars. Other lists replace, as in a merge patch. The real server uses
    per-field Go struct tags instead of this inference.
    """
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if patch.get("$patch") == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    result = dict(target) if isinstance(target, dict) else {}
    orders = {k[len(_ORDER) :]: v for k, v in patch.items() if k.startswith(_ORDER)}
    for key, value in patch.items():
        if key.startswith(("$setElementOrder/", "$retainKeys", "$patch")):
            continue
        if key.startswith(_DELETE_PRIMITIVES):
            field = key[len(_DELETE_PRIMITIVES) :]
            result[field] = [v for v in result.get(field) or [] if v not in value]
            continue
        if value is None:
            result.pop(key, None)
        elif isinstance(value, list) and key in orders:
            result[key] = _merge_list(result.get(key) or [], value, orders[key])
        else:
            result[key] = strategic_merge_patch(result.get(key), value)
    for key, order in orders.items():
        if key not in patch:  # only the order changed (or items were removed elsewhere)
            result[key] = _merge_list(result.get(key) or [], [], order)
    return result


def _merge_list(current: list[Any], patch: list[Any], order: list[Any]) -> list[Any]:
    merge_key = next(iter(order[0])) if order and isinstance(order[0], dict) else None
    if merge_key is None:  # a set of scalars, ordered like `order`
        merged = list(dict.fromkeys([*current, *patch]))
        rank = {v: i for i, v in enumerate(order)}
        return sorted(merged, key=lambda v: rank.get(v, len(rank)))
    by_key = {item.get(merge_key): item for item in current if isinstance(item, dict)}
    for item in patch:
        name = item.get(merge_key)
        if item.get("$patch") == "delete":
            by_key.pop(name, None)
        else:
            by_key[name] = strategic_merge_patch(by_key.get(name), item)
    ordered = [by_key.pop(entry.get(merge_key)) for entry in order if entry.get(merge_key) in by_key]
    return ordered + list(by_key.values())


def apply_patch(content_type: str, target: dict[str, Any], patch: Any) -> dict[str, Any]:
    content_type = content_type.split(";")[0].strip()
    if content_type == MERGE:
        result = merge_patch(target, patch)
    elif content_type == JSON:
        result = json_patch(target, patch)
    elif content_type == STRATEGIC:
        result = strategic_merge_patch(target, patch)
    else:
        raise ApiError(415, "UnsupportedMediaType", f"the sandbox does not support the patch type {content_type!r}")
    if not isinstance(result, dict):
        raise bad_request("the patch did not produce an object")
    return result
