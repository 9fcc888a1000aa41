"""The `Table` form of `kubectl get` (sandbox cluster, a test double).

CRDs use their `additionalPrinterColumns`; the built-ins get a few columns like the real server's.
"""

from __future__ import annotations

import datetime
import json
import re
from typing import Any

from makima_testing.sandbox.resources import ResourceType

TABLE_ACCEPT = "as=Table"


def wants_table(accept: str | None) -> bool:
    """True when the first acceptable media type asks for `as=Table`."""
    first = (accept or "").split(",")[0]
    return TABLE_ACCEPT in first.replace(" ", "")


_FILTER_RE = re.compile(r"^\[\?\(@\.([\w.-]+)\s*==\s*[\"']([^\"']*)[\"']\)\]")


def jsonpath(obj: Any, expr: str) -> Any:
    """Simple JSONPath: `.a.b`, `.a[0].b`, `.a[?(@.type=="Ready")].status`, optionally in `{}`."""
    expr = expr.strip()
    if expr.startswith("{") and expr.endswith("}"):
        expr = expr[1:-1]
    value: Any = obj
    rest = expr
    while rest and value is not None:
        if rest.startswith("."):
            match = re.match(r"^\.([\w-]+)", rest)
            if not match:
                return None
            value = value.get(match.group(1)) if isinstance(value, dict) else None
            rest = rest[match.end() :]
        elif filt := _FILTER_RE.match(rest):
            key, wanted = filt.groups()
            items = value if isinstance(value, list) else []
            value = next((i for i in items if str(jsonpath(i, "." + key)) == wanted), None)
            rest = rest[filt.end() :]
        elif idx := re.match(r"^\[(-?\d+)\]", rest):
            i = int(idx.group(1))
            value = value[i] if isinstance(value, list) and -len(value) <= i < len(value) else None
            rest = rest[idx.end() :]
        else:
            return None
    return value


def parse_time(value: str) -> datetime.datetime | None:
    try:
        return datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except (TypeError, ValueError):
        return None


def human_duration(seconds: float) -> str:
    """Like k8s.io/apimachinery/pkg/util/duration.HumanDuration."""
    s = int(seconds)
    if s < 0:
        return "0s"
    if s < 120:
        return f"{s}s"
    m = s // 60
    if m < 10:
        return f"{m}m{s % 60}s" if s % 60 else f"{m}m"
    if m < 180:
        return f"{m}m"
    h = m // 60
    if h < 8:
        return f"{h}h{m % 60}m" if m % 60 else f"{h}h"
    if h < 48:
        return f"{h}h"
    d = h // 24
    if h < 24 * 8:
        return f"{d}d{h % 24}h" if h % 24 else f"{d}d"
    if d < 365 * 2:
        return f"{d}d"
    return f"{d // 365}y"


def _age(value: Any, now: datetime.datetime) -> str:
    when = parse_time(value) if isinstance(value, str) else None
    return human_duration((now - when).total_seconds()) if when else "<unknown>"


def _cell(column: dict[str, Any], obj: dict[str, Any], now: datetime.datetime) -> Any:
    value = jsonpath(obj, column.get("jsonPath", ""))
    if value is None:
        return None
    kind = column.get("type", "string")
    if kind == "date":
        return _age(value, now)
    if kind in ("integer", "number", "boolean") and not isinstance(value, dict | list):
        return value
    return value if isinstance(value, str) else json.dumps(value)


def _builtin_columns(rt: ResourceType) -> list[dict[str, Any]]:
    columns = {
        "namespaces": [("Status", "string", ".status.phase")],
        "pods": [("Status", "string", ".status.phase")],
        "secrets": [("Type", "string", ".type")],
        "jobs": [
            ("Status", "string", ".status.conditions[-1].type"),
            ("Succeeded", "integer", ".status.succeeded"),
            ("Failed", "integer", ".status.failed"),
        ],
        "leases": [("Holder", "string", ".spec.holderIdentity")],
        "events": [("Reason", "string", ".reason"), ("Message", "string", ".message")],
    }.get(rt.plural, [])
    return [{"name": n, "type": t, "jsonPath": p} for n, t, p in columns] + [
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}
    ]


def columns_for(rt: ResourceType) -> list[dict[str, Any]]:
    if rt.from_crd:
        if rt.printer_columns:
            return list(rt.printer_columns)
        return [{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}]
    return _builtin_columns(rt)


def table(
    rt: ResourceType, objects: list[dict[str, Any]], resource_version: str, include: str = "Metadata"
) -> dict[str, Any]:
    now = datetime.datetime.now(datetime.UTC)
    columns = columns_for(rt)
    definitions = [{"name": "Name", "type": "string", "format": "name", "description": "Name", "priority": 0}] + [
        {
            "name": c["name"],
            "type": c.get("type", "string"),
            "format": c.get("format", ""),
            "description": c.get("description", ""),
            "priority": c.get("priority", 0),
        }
        for c in columns
    ]
    rows = []
    for obj in objects:
        row: dict[str, Any] = {"cells": [obj["metadata"]["name"]] + [_cell(c, obj, now) for c in columns]}
        if include == "Object":
            row["object"] = obj
        elif include != "None":
            row["object"] = {
                "kind": "PartialObjectMetadata",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": obj["metadata"],
            }
        rows.append(row)
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": resource_version},
        "columnDefinitions": definitions,
        "rows": rows,
    }
