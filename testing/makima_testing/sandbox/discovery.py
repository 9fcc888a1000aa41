"""Discovery and OpenAPI documents (sandbox cluster, a test double).

Plain `APIVersions`/`APIGroupList`/`APIResourceList` JSON (no aggregated discovery), and an
OpenAPI v3 just rich enough for kubectl: each PATCH operation advertises the `fieldValidation`
query parameter, so kubectl leaves validation to the server instead of downloading schemas.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from makima_testing.sandbox.resources import VERBS, Registry, ResourceType

VERSION = {
    "major": "1",
    "minor": "32",
    "gitVersion": "v1.32.0-makima-sandbox",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2025-01-01T00:00:00Z",
    "goVersion": "go1.23",
    "compiler": "gc",
    "platform": "linux/amd64",
}

LOCAL_ADDRESS = [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]


def api_versions() -> dict[str, Any]:
    return {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": LOCAL_ADDRESS}


def _group(name: str, versions: list[str]) -> dict[str, Any]:
    entries = [{"groupVersion": f"{name}/{v}", "version": v} for v in versions]
    return {"name": name, "versions": entries, "preferredVersion": entries[0]}


def api_group_list(registry: Registry) -> dict[str, Any]:
    groups = [_group(name, versions) for name, versions in sorted(registry.groups().items())]
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}


def api_group(registry: Registry, name: str) -> dict[str, Any] | None:
    versions = registry.groups().get(name)
    return {"kind": "APIGroup", "apiVersion": "v1", **_group(name, versions)} if versions else None


def resource_list(registry: Registry, group: str, version: str) -> dict[str, Any] | None:
    types = [rt for rt in registry.all() if rt.group == group and rt.version == version]
    if not types:
        return None
    resources: list[dict[str, Any]] = []
    for rt in sorted(types, key=lambda r: r.plural):
        resources.append(
            {
                "name": rt.plural,
                "singularName": rt.singular,
                "namespaced": rt.namespaced,
                "kind": rt.kind,
                "verbs": VERBS,
                "shortNames": list(rt.short_names),
                "categories": list(rt.categories),
            }
        )
        for sub in rt.subresources:
            verbs = ["get"] if sub == "log" else ["get", "patch", "update"]
            resources.append(
                {
                    "name": f"{rt.plural}/{sub}",
                    "singularName": "",
                    "namespaced": rt.namespaced,
                    "kind": "Pod" if sub == "log" else rt.kind,
                    "verbs": verbs,
                }
            )
    gv = f"{group}/{version}" if group else version
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}


def _gv_path(group: str, version: str) -> str:
    return f"apis/{group}/{version}" if group else f"api/{version}"


def _gv_document(types: list[ResourceType]) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    schemas: dict[str, Any] = {}
    for rt in types:
        gvk = {"group": rt.group, "version": rt.version, "kind": rt.kind}
        base = "/" + _gv_path(rt.group, rt.version)
        item = (
            f"{base}/namespaces/{{namespace}}/{rt.plural}/{{name}}" if rt.namespaced else f"{base}/{rt.plural}/{{name}}"
        )
        ok = {"200": {"description": "OK"}}
        validation = [{"name": "fieldValidation", "in": "query", "schema": {"type": "string"}}]
        body = {
            "content": {
                t: {"schema": {"type": "object"}}
                for t in ("application/json-patch+json", "application/merge-patch+json")
            }
        }
        paths[item] = {
            op: {
                "operationId": f"{op}{rt.kind}",
                "x-kubernetes-action": op,
                "x-kubernetes-group-version-kind": gvk,
                "parameters": validation,
                "responses": ok,
                **({"requestBody": body} if op == "patch" else {}),
            }
            for op in ("get", "put", "patch", "delete")
        }
        schema = dict(rt.schema or {"type": "object", "x-kubernetes-preserve-unknown-fields": True})
        schema["x-kubernetes-group-version-kind"] = [gvk]
        schemas[f"{rt.group or 'core'}.{rt.version}.{rt.kind}"] = schema
    return {
        "openapi": "3.0.0",
        "info": {"title": "makima sandbox (a test double)", "version": VERSION["gitVersion"]},
        "paths": paths,
        "components": {"schemas": schemas},
    }


def openapi_v3(registry: Registry) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The root index and every group-version document, keyed by their relative path."""
    docs: dict[str, dict[str, Any]] = {}
    by_gv: dict[str, list[ResourceType]] = {}
    for rt in registry.all():
        by_gv.setdefault(_gv_path(rt.group, rt.version), []).append(rt)
    index: dict[str, Any] = {}
    for path, types in sorted(by_gv.items()):
        doc = _gv_document(types)
        docs[path] = doc
        digest = hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:32].upper()
        index[path] = {"serverRelativeURL": f"/openapi/v3/{path}?hash={digest}"}
    return {"paths": index}, docs
