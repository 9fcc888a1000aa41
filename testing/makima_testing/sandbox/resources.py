"""Resource types served by the sandbox cluster (a test double): built-ins plus CRDs applied at run time."""

from __future__ import annotations

import dataclasses
from typing import Any

VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]


@dataclasses.dataclass(frozen=True)
class ResourceType:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    singular: str = ""
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    status_subresource: bool = False
    extra_subresources: tuple[str, ...] = ()
    # CRD `additionalPrinterColumns` (also used for the built-ins' columns, see tables.py).
    printer_columns: tuple[dict[str, Any], ...] = ()
    schema: dict[str, Any] | None = None  # the CRD version's openAPIV3Schema
    from_crd: str | None = None  # name of the CRD that declared it

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def key(self) -> tuple[str, str]:
        """Storage key: objects are stored once per group/plural, whatever the version asked."""
        return (self.group, self.plural)

    @property
    def subresources(self) -> tuple[str, ...]:
        return (("status",) if self.status_subresource else ()) + self.extra_subresources


def _b(group: str, version: str, plural: str, kind: str, namespaced: bool = True, **kw: Any) -> ResourceType:
    return ResourceType(group, version, plural, kind, namespaced, singular=kind.lower(), **kw)


BUILTINS: tuple[ResourceType, ...] = (
    _b("", "v1", "namespaces", "Namespace", False, short_names=("ns",), status_subresource=True),
    _b("", "v1", "pods", "Pod", short_names=("po",), status_subresource=True, extra_subresources=("log",)),
    _b("", "v1", "secrets", "Secret"),
    _b("", "v1", "configmaps", "ConfigMap", short_names=("cm",)),
    _b("", "v1", "serviceaccounts", "ServiceAccount", short_names=("sa",)),
    _b("", "v1", "events", "Event", short_names=("ev",)),
    _b("batch", "v1", "jobs", "Job", status_subresource=True),
    _b("coordination.k8s.io", "v1", "leases", "Lease"),
    _b("events.k8s.io", "v1", "events", "Event", short_names=("ev",)),
    _b(
        "apiextensions.k8s.io",
        "v1",
        "customresourcedefinitions",
        "CustomResourceDefinition",
        False,
        short_names=("crd", "crds"),
        status_subresource=True,
    ),
)

CRD_KEY = ("apiextensions.k8s.io", "customresourcedefinitions")
NAMESPACE_KEY = ("", "namespaces")


class Registry:
    """Which group/version/plural is served, and what it means."""

    def __init__(self) -> None:
        self._types: dict[tuple[str, str, str], ResourceType] = {}
        for rt in BUILTINS:
            self.add(rt)

    def add(self, rt: ResourceType) -> None:
        self._types[(rt.group, rt.version, rt.plural)] = rt

    def get(self, group: str, version: str, plural: str) -> ResourceType | None:
        return self._types.get((group, version, plural))

    def all(self) -> list[ResourceType]:
        return list(self._types.values())

    def by_key(self, key: tuple[str, str]) -> list[ResourceType]:
        return [rt for rt in self._types.values() if rt.key == key]

    def groups(self) -> dict[str, list[str]]:
        """Group -> served versions, preferred (first declared) first; the core group excluded."""
        result: dict[str, list[str]] = {}
        for rt in self._types.values():
            if rt.group and rt.version not in result.setdefault(rt.group, []):
                result[rt.group].append(rt.version)
        return result

    def apply_crd(self, crd: dict[str, Any]) -> None:
        """Serve (or re-serve) every served version of a CRD."""
        self.remove_crd(crd["metadata"]["name"])
        spec = crd.get("spec", {})
        names = spec.get("names", {})
        for version in spec.get("versions", []):
            if not version.get("served", True):
                continue
            subresources = version.get("subresources") or {}
            self.add(
                ResourceType(
                    group=spec["group"],
                    version=version["name"],
                    plural=names["plural"],
                    kind=names["kind"],
                    namespaced=spec.get("scope", "Namespaced") == "Namespaced",
                    singular=names.get("singular") or names["kind"].lower(),
                    short_names=tuple(names.get("shortNames") or ()),
                    categories=tuple(names.get("categories") or ()),
                    status_subresource="status" in subresources,
                    extra_subresources=("scale",) if "scale" in subresources else (),
                    printer_columns=tuple(version.get("additionalPrinterColumns") or ()),
                    schema=(version.get("schema") or {}).get("openAPIV3Schema"),
                    from_crd=crd["metadata"]["name"],
                )
            )

    def remove_crd(self, name: str) -> None:
        for gvp, rt in list(self._types.items()):
            if rt.from_crd == name:
                del self._types[gvp]
