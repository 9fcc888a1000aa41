"""What a pod's first container gets as a local process: its env, and its volumes as directories.

Shared by the sandbox's Job controller and the real-cluster tests' node agent (both test doubles
of a kubelet). The caller fetches the Secrets and ConfigMaps that `references()` names — however
it reaches them — and passes their decoded data; `environment()` then decides the env, and
`write_volumes()` lays out the volume directories.

What a kubelet does that this does not: mountPaths are not honoured — each volume is a
directory, named in env `MAKIMA_SANDBOX_MOUNT_<VOLUME_NAME>` (upper-cased, `-` -> `_`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

Ref = tuple[str, str]  # ("secrets" | "configmaps", name)
Data = Mapping[Ref, Mapping[str, str] | None]  # None: the object does not exist


class ConfigError(Exception):
    """The pod names a Secret/ConfigMap (key) that does not exist (yet): it waits, as on a node."""


_SOURCES = (("secrets", "secretKeyRef", "secretRef"), ("configmaps", "configMapKeyRef", "configMapRef"))
_VOLUMES = (("secrets", "secret", "secretName"), ("configmaps", "configMap", "name"))


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' `$(VAR)` expansion; `$$(VAR)` escapes it; unknown variables stay as written."""
    return re.sub(
        r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
        lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)),
        text,
    )


def container_of(pod: Mapping[str, Any]) -> dict[str, Any]:
    return dict((pod["spec"].get("containers") or [{}])[0])


def references(pod: Mapping[str, Any]) -> set[Ref]:
    """Every Secret and ConfigMap the first container's env, envFrom and the volumes name."""
    container = container_of(pod)
    refs: set[Ref] = set()
    for source in container.get("envFrom") or []:
        for kind, _key_ref, whole_ref in _SOURCES:
            if source.get(whole_ref):
                refs.add((kind, source[whole_ref]["name"]))
    for var in container.get("env") or []:
        for kind, key_ref, _whole_ref in _SOURCES:
            ref = (var.get("valueFrom") or {}).get(key_ref)
            if ref:
                refs.add((kind, ref["name"]))
    for volume in pod["spec"].get("volumes") or []:
        for kind, field, name_key in _VOLUMES:
            if field in volume:
                refs.add((kind, volume[field][name_key]))
    return refs


def _lookup(data: Data, kind: str, name: str, optional: bool) -> Mapping[str, str] | None:
    found = data.get((kind, name))
    if found is None and not optional:
        raise ConfigError(f'{kind[:-1]} "{name}" not found')
    return found


def environment(
    pod: Mapping[str, Any], data: Data, base: Mapping[str, str], node: str, volume_dirs: Mapping[str, Path]
) -> dict[str, str]:
    """The first container's env: `base`, then envFrom, env (values, key refs, fieldRefs), then
    one `MAKIMA_SANDBOX_MOUNT_<VOLUME>` per volume."""
    meta, container = pod["metadata"], container_of(pod)
    namespace = meta["namespace"]
    env = dict(base)
    for source in container.get("envFrom") or []:
        prefix = source.get("prefix", "")
        for kind, _key_ref, whole_ref in _SOURCES:
            ref = source.get(whole_ref)
            if ref:
                found = _lookup(data, kind, ref["name"], bool(ref.get("optional")))
                env.update({prefix + k: v for k, v in (found or {}).items()})
    fields = {
        "metadata.name": meta["name"],
        "metadata.namespace": namespace,
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": node,
        "status.hostIP": "127.0.0.1",
        "status.podIP": "127.0.0.1",
    }
    for var in container.get("env") or []:
        value = _value(var, data, env, fields, namespace)
        if value is not None:
            env[var["name"]] = value
    for name, path in volume_dirs.items():
        env["MAKIMA_SANDBOX_MOUNT_" + name.upper().replace("-", "_")] = str(path)
    return env


def _value(
    var: Mapping[str, Any], data: Data, env: Mapping[str, str], fields: Mapping[str, str], namespace: str
) -> str | None:
    if "value" in var:
        return expand(str(var["value"]), env)
    source = var.get("valueFrom") or {}
    for kind, key_ref, _whole_ref in _SOURCES:
        ref = source.get(key_ref)
        if ref:
            optional = bool(ref.get("optional"))
            found = _lookup(data, kind, ref["name"], optional)
            if found is None or ref["key"] not in found:
                if optional:
                    return None
                raise ConfigError(f"couldn't find key {ref['key']} in {kind[:-1]} {namespace}/{ref['name']}")
            return str(found[ref["key"]])
    if "fieldRef" in source:
        return fields.get(str(source["fieldRef"].get("fieldPath", "")), "")
    return ""


def write_volumes(pod: Mapping[str, Any], data: Data, root: Path) -> dict[str, Path]:
    """Each volume as a directory under `root`, Secret and ConfigMap volumes filled with their keys."""
    dirs: dict[str, Path] = {}
    for volume in pod["spec"].get("volumes") or []:
        path = root / volume["name"]
        path.mkdir(parents=True, exist_ok=True)
        for kind, field, name_key in _VOLUMES:
            if field in volume:
                ref = volume[field]
                found = _lookup(data, kind, ref[name_key], bool(ref.get("optional")))
                items = ref.get("items") or [{"key": k, "path": k} for k in (found or {})]
                for item in items:
                    target = path / item["path"]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_text((found or {}).get(item["key"], ""))
        dirs[volume["name"]] = path
    return dirs


def working_dir(pod: Mapping[str, Any], volume_dirs: Mapping[str, Path], fallback: Path) -> Path:
    """The volume mounted at the container's workingDir, if any, else `fallback`."""
    container = container_of(pod)
    for mount in container.get("volumeMounts") or []:
        if mount.get("mountPath") == container.get("workingDir") and mount["name"] in volume_dirs:
            return volume_dirs[mount["name"]]
    return fallback
