"""API semantics of the sandbox cluster (a test double): metadata, writes, deletion, garbage collection.

The HTTP layer (app.py) turns requests into calls here; controllers (jobs.py) call here too.
All methods are synchronous and must run on the sandbox's event loop.
"""

from __future__ import annotations

import asyncio
import base64
import builtins
import copy
import datetime
import secrets
import string
import uuid
from typing import Any

from makima_testing.sandbox import patching, validation
from makima_testing.sandbox.errors import ApiError, already_exists, bad_request, conflict, invalid, not_found
from makima_testing.sandbox.resources import CRD_KEY, NAMESPACE_KEY, Registry, ResourceType
from makima_testing.sandbox.selecting import field_selector, label_selector
from makima_testing.sandbox.store import Event, Store

_SYSTEM_META = ("uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "generation")
_NAME_ALPHABET = string.ascii_lowercase + string.digits


def now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Cluster:
    def __init__(self, store: Store | None = None, registry: Registry | None = None) -> None:
        self.store = store or Store()
        self.registry = registry or Registry()
        self._sweep_scheduled = False
        self.store.add_listener(self._on_event)
        for ns in ("default", "kube-system", "kube-public"):
            self.create(self.resource("", "v1", "namespaces"), None, {"metadata": {"name": ns}})

    # -- lookups -------------------------------------------------------------------------------

    def resource(self, group: str, version: str, plural: str) -> ResourceType:
        rt = self.registry.get(group, version, plural)
        if rt is None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        return rt

    def present(self, rt: ResourceType, obj: dict[str, Any]) -> dict[str, Any]:
        """The object as seen through `rt`'s version (no conversion: only apiVersion differs)."""
        return {"apiVersion": rt.api_version, "kind": rt.kind, **obj}

    def get(self, rt: ResourceType, namespace: str | None, name: str) -> dict[str, Any]:
        obj = self.store.get(rt.key, namespace or "", name)
        if obj is None:
            raise not_found(rt.group, rt.plural, name)
        return self.present(rt, obj)

    def list(
        self,
        rt: ResourceType,
        namespace: str | None,
        labels: str | None = None,
        fields: str | None = None,
    ) -> tuple[list[dict[str, Any]], str]:
        by_label, by_field = label_selector(labels), field_selector(fields)
        items = [
            self.present(rt, obj)
            for obj in self.store.items(rt.key, namespace if rt.namespaced else None)
            if by_label(obj) and by_field(obj)
        ]
        return items, str(self.store.resource_version)

    # -- writes ----------------------------------------------------------------------------------

    def create(
        self,
        rt: ResourceType,
        namespace: str | None,
        body: dict[str, Any],
        field_validation: str | None = None,
        *,
        dry_run: bool = False,
    ) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise bad_request("the body of the request was in an unknown format")
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {})
        if rt.namespaced:
            if namespace and meta.get("namespace") not in (None, "", namespace):
                raise bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request"
                )
            namespace = namespace or meta.get("namespace") or "default"
            self._check_namespace_open(namespace)
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        if not meta.get("name"):
            if not meta.get("generateName"):
                raise invalid(
                    rt.group,
                    rt.kind,
                    "",
                    [
                        {
                            "reason": "FieldValueRequired",
                            "message": "Required value: name or generateName is required",
                            "field": "metadata.name",
                        }
                    ],
                )
            meta["name"] = meta["generateName"] + "".join(secrets.choice(_NAME_ALPHABET) for _ in range(5))
        if self.store.get(rt.key, meta.get("namespace", ""), meta["name"]) is not None:
            raise already_exists(rt.group, rt.plural, meta["name"])
        for field in (*_SYSTEM_META, "resourceVersion", "managedFields"):
            meta.pop(field, None)
        meta.update(uid=str(uuid.uuid4()), creationTimestamp=now_iso(), generation=1)
        if rt.status_subresource:
            obj.pop("status", None)
        obj.pop("apiVersion", None)
        obj.pop("kind", None)
        self._admit(rt, obj, field_validation)
        self._builtin_defaults(rt, obj)
        if dry_run:  # validated and defaulted, as it would be stored; no resourceVersion, no event
            return self.present(rt, obj)
        stored = self.store.put(rt.key, obj, "ADDED")
        if rt.key == CRD_KEY:
            self.registry.apply_crd(stored)
        return self.present(rt, stored)

    def update(
        self,
        rt: ResourceType,
        namespace: str | None,
        name: str,
        body: dict[str, Any],
        subresource: str | None = None,
        field_validation: str | None = None,
        *,
        dry_run: bool = False,
    ) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise bad_request("the body of the request was in an unknown format")
        current = self.get(rt, namespace, name)
        meta = body.get("metadata") or {}
        if meta.get("name") not in (None, name):
            raise bad_request("the name of the object does not match the name on the URL")
        rv = meta.get("resourceVersion")
        if rv and rv != current["metadata"]["resourceVersion"]:
            raise conflict(rt.group, rt.plural, name)
        return self._write(rt, current, copy.deepcopy(body), subresource, field_validation, dry_run)

    def patch(
        self,
        rt: ResourceType,
        namespace: str | None,
        name: str,
        content_type: str,
        patch: Any,
        subresource: str | None = None,
        field_validation: str | None = None,
        *,
        dry_run: bool = False,
    ) -> dict[str, Any]:
        current = self.get(rt, namespace, name)
        patched = patching.apply_patch(content_type, copy.deepcopy(current), patch)
        rv = (patched.get("metadata") or {}).get("resourceVersion")
        if rv and rv != current["metadata"]["resourceVersion"]:
            raise conflict(rt.group, rt.plural, name)  # a patch naming a resourceVersion is a precondition
        return self._write(rt, current, patched, subresource, field_validation, dry_run)

    def _write(
        self,
        rt: ResourceType,
        current: dict[str, Any],
        new: dict[str, Any],
        subresource: str | None,
        field_validation: str | None,
        dry_run: bool = False,
    ) -> dict[str, Any]:
        name = current["metadata"]["name"]
        old = {k: v for k, v in current.items() if k not in ("apiVersion", "kind")}
        if subresource == "status":
            result = copy.deepcopy(old)  # a status write changes the status only
            if "status" in new:
                result["status"] = new["status"]
            else:
                result.pop("status", None)
        elif subresource:
            raise ApiError(405, "MethodNotAllowed", f"the sandbox cannot write the {subresource} subresource")
        else:
            result = {k: v for k, v in new.items() if k not in ("apiVersion", "kind")}
            meta = result.setdefault("metadata", {})
            for field in (*_SYSTEM_META, "name", "namespace"):
                if field in old["metadata"]:
                    meta[field] = old["metadata"][field]
                else:
                    meta.pop(field, None)
            meta.pop("managedFields", None)
            if rt.status_subresource:  # the main resource ignores status changes
                if "status" in old:
                    result["status"] = old["status"]
                else:
                    result.pop("status", None)
            added = set(meta.get("finalizers") or []) - set(old["metadata"].get("finalizers") or [])
            if old["metadata"].get("deletionTimestamp") and added:
                raise invalid(
                    rt.group,
                    rt.kind,
                    name,
                    [
                        {
                            "reason": "FieldValueForbidden",
                            "message": "Forbidden: no new finalizers can be added if the object is being deleted",
                            "field": "metadata.finalizers",
                        }
                    ],
                )
        self._admit(rt, result, field_validation)
        result["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
        if result == old:  # a no-op write stores nothing and notifies nobody, as on a real server
            return current
        if self._spec_changed(rt, old, result):
            result["metadata"]["generation"] = old["metadata"].get("generation", 1) + 1
        if dry_run:
            return self.present(rt, result)
        if result["metadata"].get("deletionTimestamp") and not result["metadata"].get("finalizers"):
            gone = self.store.remove(rt.key, result["metadata"].get("namespace", ""), name)
            return self.present(rt, gone or result)
        stored = self.store.put(rt.key, result, "MODIFIED")
        if rt.key == CRD_KEY:
            self.registry.apply_crd(stored)
        return self.present(rt, stored)

    @staticmethod
    def _spec_changed(rt: ResourceType, old: dict[str, Any], new: dict[str, Any]) -> bool:
        ignored = {"metadata", "status"} if rt.status_subresource else {"metadata"}
        return {k: v for k, v in old.items() if k not in ignored} != {k: v for k, v in new.items() if k not in ignored}

    # -- deletion and garbage collection -----------------------------------------------------

    def delete(
        self,
        rt: ResourceType,
        namespace: str | None,
        name: str,
        options: dict[str, Any] | None = None,
        *,
        dry_run: bool = False,
    ) -> dict[str, Any]:
        options = options or {}
        current = self.get(rt, namespace, name)
        meta = current["metadata"]
        pre = options.get("preconditions") or {}
        if pre.get("uid") not in (None, meta["uid"]) or pre.get("resourceVersion") not in (
            None,
            meta["resourceVersion"],
        ):
            raise conflict(rt.group, rt.plural, name)
        if dry_run:  # the object as it is: nothing is deleted, orphaned or marked
            return current
        # batch/v1 Jobs still default to orphaning their pods, as on a real server.
        default = "Orphan" if rt.key == ("batch", "jobs") else "Background"
        policy = options.get("propagationPolicy") or ("Orphan" if options.get("orphanDependents") else default)
        if policy == "Orphan":
            self._orphan(meta["uid"])
        if meta.get("deletionTimestamp"):
            return current
        obj = {k: v for k, v in current.items() if k not in ("apiVersion", "kind")}
        finalizers = list(meta.get("finalizers") or [])
        if policy == "Foreground" and self._dependents(meta["uid"]):
            finalizers.append("foregroundDeletion")
        if rt.key == NAMESPACE_KEY:
            finalizers = finalizers or ["kubernetes"]  # emptied by the namespace sweep
            obj.setdefault("status", {})["phase"] = "Terminating"
        if not finalizers:
            gone = self.store.remove(rt.key, meta.get("namespace", ""), name)  # CRDs: see _on_event
            return self.present(rt, gone or obj)
        obj["metadata"].update(
            deletionTimestamp=now_iso(),
            deletionGracePeriodSeconds=0,
            finalizers=finalizers,
            generation=meta.get("generation", 1) + 1,
        )
        stored = self.store.put(rt.key, obj, "MODIFIED")
        if policy == "Foreground":
            for key, dep in list(self._dependents(meta["uid"])):
                self._delete_quietly(key, dep, "Foreground")
        if rt.key == NAMESPACE_KEY:
            for key, dep in list(self.store.all_objects()):
                if dep["metadata"].get("namespace") == name:
                    self._delete_quietly(key, dep, "Background")
        self._schedule_sweep()
        return self.present(rt, stored)

    def delete_collection(
        self,
        rt: ResourceType,
        namespace: str | None,
        labels: str | None,
        fields: str | None,
        options: dict[str, Any] | None = None,
    ) -> builtins.list[dict[str, Any]]:
        items, _ = self.list(rt, namespace, labels, fields)
        return [self.delete(rt, obj["metadata"].get("namespace"), obj["metadata"]["name"], options) for obj in items]

    def _delete_quietly(self, key: tuple[str, str], obj: dict[str, Any], policy: str) -> None:
        types = self.registry.by_key(key)
        if not types:
            return
        try:
            self.delete(
                types[0], obj["metadata"].get("namespace"), obj["metadata"]["name"], {"propagationPolicy": policy}
            )
        except ApiError:
            pass  # gone meanwhile

    def _dependents(self, uid: str) -> builtins.list[tuple[tuple[str, str], dict[str, Any]]]:
        return [
            (key, obj)
            for key, obj in self.store.all_objects()
            if any(ref.get("uid") == uid for ref in obj["metadata"].get("ownerReferences") or [])
        ]

    def _orphan(self, uid: str) -> None:
        for key, obj in self._dependents(uid):
            refs = [r for r in obj["metadata"]["ownerReferences"] if r.get("uid") != uid]
            obj["metadata"]["ownerReferences"] = refs
            if not refs:
                del obj["metadata"]["ownerReferences"]
            self.store.put(key, obj, "MODIFIED")

    def _drop_crd(self, crd: dict[str, Any]) -> None:
        spec = crd.get("spec", {})
        self.registry.remove_crd(crd["metadata"]["name"])
        self.store.drop_resource((spec.get("group", ""), spec.get("names", {}).get("plural", "")))

    def _on_event(self, event: Event) -> None:
        if event.type == "DELETED":
            self._schedule_sweep()
            if event.key == CRD_KEY:
                self._drop_crd(event.obj)

    def _schedule_sweep(self) -> None:
        if self._sweep_scheduled:
            return
        self._sweep_scheduled = True
        try:
            asyncio.get_running_loop().call_soon(self._sweep)
        except RuntimeError:
            self._sweep()

    def _sweep(self) -> None:
        """The garbage collector and namespace controller, run soon after any deletion."""
        self._sweep_scheduled = False
        everything = list(self.store.all_objects())
        uids = {obj["metadata"]["uid"] for _, obj in everything}
        for key, obj in everything:
            meta = obj["metadata"]
            refs = meta.get("ownerReferences") or []
            if refs and not any(ref.get("uid") in uids for ref in refs) and not meta.get("deletionTimestamp"):
                self._delete_quietly(key, obj, "Background")
        for key, obj in list(self.store.all_objects()):
            meta = obj["metadata"]
            finalizers = meta.get("finalizers") or []
            if not meta.get("deletionTimestamp"):
                continue
            release = None
            if "foregroundDeletion" in finalizers and not self._dependents(meta["uid"]):
                release = "foregroundDeletion"
            if key == NAMESPACE_KEY and "kubernetes" in finalizers:
                inside = any(o["metadata"].get("namespace") == meta["name"] for _, o in self.store.all_objects())
                release = None if inside else "kubernetes"
            if release:
                meta["finalizers"] = [f for f in finalizers if f != release]
                if meta["finalizers"]:
                    self.store.put(key, obj, "MODIFIED")
                else:
                    self.store.remove(key, meta.get("namespace", ""), meta["name"])

    def _check_namespace_open(self, namespace: str) -> None:
        ns = self.store.get(NAMESPACE_KEY, "", namespace)
        if ns is None:
            raise not_found("", "namespaces", namespace)
        if ns["metadata"].get("deletionTimestamp"):
            raise ApiError(
                403,
                "Forbidden",
                f"unable to create new content in namespace {namespace} because it is being terminated",
            )

    # -- admission -----------------------------------------------------------------------------

    def _admit(self, rt: ResourceType, obj: dict[str, Any], field_validation: str | None) -> None:
        """Defaults, pruning and validation for CRD objects, per the CRD's schema."""
        if rt.schema is None:
            return
        validation.apply_defaults(obj, rt.schema)
        pruned = validation.prune(obj, rt.schema)
        if pruned and field_validation == "Strict":
            fields = ", ".join(f'unknown field "{p}"' for p in pruned)
            raise bad_request(
                f'{rt.kind} in version "{rt.version}" cannot be handled as a {rt.kind}: strict decoding error: {fields}'
            )
        causes = validation.validate(obj, rt.schema)
        if causes:
            raise invalid(rt.group, rt.kind, obj["metadata"].get("name", ""), causes)

    def _builtin_defaults(self, rt: ResourceType, obj: dict[str, Any]) -> None:
        """What the built-in kinds' strategies fill in on create (only what clients look at)."""
        meta = obj["metadata"]
        if rt.key == NAMESPACE_KEY:
            obj["status"] = {"phase": "Active"}
            meta.setdefault("labels", {})["kubernetes.io/metadata.name"] = meta["name"]
        elif rt.key == ("", "secrets"):
            obj.setdefault("type", "Opaque")
            string_data = obj.pop("stringData", None) or {}
            data = obj.setdefault("data", {})
            for k, v in string_data.items():
                data[k] = base64.b64encode(str(v).encode()).decode()
        elif rt.key == ("", "pods"):
            obj["status"] = {"phase": "Pending"}
        elif rt.key == ("batch", "jobs"):
            spec = obj.setdefault("spec", {})
            spec.setdefault("backoffLimit", 6)
            spec.setdefault("completions", 1)
            spec.setdefault("parallelism", 1)
            spec.setdefault("completionMode", "NonIndexed")
            spec.setdefault("suspend", False)
            labels = {
                "batch.kubernetes.io/controller-uid": meta["uid"],
                "batch.kubernetes.io/job-name": meta["name"],
                "controller-uid": meta["uid"],
                "job-name": meta["name"],
            }
            spec.setdefault("selector", {"matchLabels": {"batch.kubernetes.io/controller-uid": meta["uid"]}})
            template = spec.setdefault("template", {})
            template.setdefault("metadata", {}).setdefault("labels", {}).update(labels)
            obj["status"] = {}
        elif rt.key == CRD_KEY:
            names = obj.get("spec", {}).get("names", {})
            obj["status"] = {
                "acceptedNames": names,
                "storedVersions": [v["name"] for v in obj.get("spec", {}).get("versions", []) if v.get("storage")],
                "conditions": [
                    {"type": t, "status": "True", "reason": r, "message": "", "lastTransitionTime": now_iso()}
                    for t, r in (("NamesAccepted", "NoConflicts"), ("Established", "InitialNamesAccepted"))
                ],
            }
