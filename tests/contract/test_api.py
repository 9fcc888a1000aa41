"""API semantics that makima, kopf and kubectl rely on; run against the sandbox and a real cluster."""

from __future__ import annotations

import asyncio

import pytest

from tests.support.wait import eventually

from .conftest import TABLE, ApiFailure, Kube, widget


async def test_create_twice_is_already_exists(kube: Kube) -> None:
    await kube.post(kube.ns("widgets"), widget("a"))
    with pytest.raises(ApiFailure) as exc:
        await kube.post(kube.ns("widgets"), widget("a"))
    assert exc.value.status == 409
    assert exc.value.body["reason"] == "AlreadyExists"


async def test_metadata_is_filled_in(kube: Kube) -> None:
    made = await kube.post(kube.ns("widgets"), {**widget(""), "metadata": {"generateName": "gen-"}})
    meta = made["metadata"]
    assert meta["name"].startswith("gen-") and len(meta["name"]) > len("gen-")
    assert meta["uid"] and meta["creationTimestamp"] and meta["generation"] == 1
    again = await kube.post(kube.ns("widgets"), widget("b"))
    assert int(again["metadata"]["resourceVersion"]) > int(meta["resourceVersion"])


async def test_stale_update_conflicts(kube: Kube) -> None:
    made = await kube.post(kube.ns("widgets"), widget("a"))
    fresh = await kube.patch(kube.ns("widgets", "a"), {"spec": {"size": 7}})
    stale = {**made, "spec": {**made["spec"], "size": 9}}
    with pytest.raises(ApiFailure) as exc:
        await kube.put(kube.ns("widgets", "a"), stale)
    assert exc.value.status == 409 and exc.value.body["reason"] == "Conflict"
    # A merge patch naming a resourceVersion is a precondition too.
    with pytest.raises(ApiFailure) as exc:
        await kube.patch(
            kube.ns("widgets", "a"), {"metadata": {"resourceVersion": made["metadata"]["resourceVersion"]}}
        )
    assert exc.value.status == 409
    updated = await kube.put(kube.ns("widgets", "a"), {**fresh, "spec": {**fresh["spec"], "size": 9}})
    assert updated["spec"]["size"] == 9


async def test_json_patch_test_op(kube: Kube) -> None:
    made = await kube.post(kube.ns("widgets"), widget("a"))
    rv = made["metadata"]["resourceVersion"]
    ops = [
        {"op": "test", "path": "/metadata/resourceVersion", "value": rv},
        {"op": "add", "path": "/metadata/finalizers", "value": ["contract.makima.dev/x"]},
    ]
    done = await kube.patch(kube.ns("widgets", "a"), ops, ctype="application/json-patch+json")
    assert done["metadata"]["finalizers"] == ["contract.makima.dev/x"]
    with pytest.raises(ApiFailure) as exc:  # the same test again: rv moved on
        await kube.patch(kube.ns("widgets", "a"), ops, ctype="application/json-patch+json")
    assert exc.value.status == 422
    await kube.patch(kube.ns("widgets", "a"), {"metadata": {"finalizers": None}})


async def test_status_subresource_separation(kube: Kube) -> None:
    await kube.post(kube.ns("widgets"), {**widget("a"), "status": {"phase": "Ignored"}})
    got = await kube.get(kube.ns("widgets", "a"))
    assert "phase" not in got.get("status", {})
    # Main resource: status changes are ignored; spec changes bump the generation.
    main = await kube.patch(kube.ns("widgets", "a"), {"spec": {"size": 8}, "status": {"phase": "Nope"}})
    assert main["spec"]["size"] == 8 and "phase" not in main.get("status", {})
    assert main["metadata"]["generation"] == 2
    # Status subresource: spec changes are ignored; the generation stays.
    status = await kube.patch(kube.ns("widgets", "a") + "/status", {"spec": {"size": 1}, "status": {"phase": "Ready"}})
    assert status["status"]["phase"] == "Ready" and status["spec"]["size"] == 8
    assert status["metadata"]["generation"] == 2
    # Metadata-only changes do not bump the generation either.
    labelled = await kube.patch(kube.ns("widgets", "a"), {"metadata": {"labels": {"x": "y"}}})
    assert labelled["metadata"]["generation"] == 2


async def test_finalizers_hold_deletion(kube: Kube) -> None:
    obj = widget("a")
    obj["metadata"]["finalizers"] = ["contract.makima.dev/cleanup"]
    await kube.post(kube.ns("widgets"), obj)
    await kube.delete(kube.ns("widgets", "a"))
    held = await kube.get(kube.ns("widgets", "a"))
    assert held["metadata"]["deletionTimestamp"]
    assert held["metadata"]["finalizers"] == ["contract.makima.dev/cleanup"]
    await kube.patch(kube.ns("widgets", "a"), {"metadata": {"finalizers": None}})
    await eventually(lambda: kube.gone(kube.ns("widgets", "a")), "widget a gone", 15)


async def test_cascading_deletion(kube: Kube) -> None:
    owner = await kube.post(kube.ns("widgets"), widget("owner"))
    ref = {
        "apiVersion": "contract.makima.dev/v1",
        "kind": "Widget",
        "name": "owner",
        "uid": owner["metadata"]["uid"],
        "blockOwnerDeletion": True,
    }
    child = {**widget("child"), "metadata": {"name": "child", "ownerReferences": [ref]}}
    await kube.post(kube.ns("widgets"), child)
    cm = {"metadata": {"name": "cm", "ownerReferences": [ref]}, "data": {"a": "b"}}
    await kube.post(kube.ns("configmaps", group_version="/api/v1"), cm)
    await kube.delete(kube.ns("widgets", "owner"), {"propagationPolicy": "Background"})
    # The real garbage collector starts monitoring a new CRD's kind at its next discovery
    # resync (every 30 s), so a just-created CRD's objects may wait that long.
    await eventually(lambda: kube.gone(kube.ns("widgets", "child")), "the child widget collected", 120)
    await eventually(
        lambda: kube.gone(kube.ns("configmaps", "cm", group_version="/api/v1")), "the ConfigMap collected", 120
    )


async def test_watch_resumes_from_resource_version(kube: Kube) -> None:
    listed = await kube.get(kube.ns("widgets"))
    since = listed["metadata"]["resourceVersion"]
    await kube.post(kube.ns("widgets"), widget("a"))
    await kube.patch(kube.ns("widgets", "a"), {"spec": {"size": 4}})
    await kube.delete(kube.ns("widgets", "a"))
    events = await kube.watch(kube.ns("widgets"), {"resourceVersion": since}, lambda ev: len(ev) >= 3)
    assert [e["type"] for e in events] == ["ADDED", "MODIFIED", "DELETED"]
    versions = [int(e["object"]["metadata"]["resourceVersion"]) for e in events]
    assert versions == sorted(versions)
    # Resuming from the middle skips what came before.
    middle = events[0]["object"]["metadata"]["resourceVersion"]
    rest = await kube.watch(kube.ns("widgets"), {"resourceVersion": middle}, lambda ev: len(ev) >= 2)
    assert [e["type"] for e in rest] == ["MODIFIED", "DELETED"]


async def test_watch_too_old_is_410(kube: Kube) -> None:
    events = await kube.watch(kube.ns("widgets"), {"resourceVersion": "1"}, lambda ev: len(ev) >= 1)
    assert events[0]["type"] == "ERROR"
    assert events[0]["object"]["code"] == 410


async def test_watch_timeout_and_live_events(kube: Kube) -> None:
    opened = asyncio.Event()

    async def later() -> None:
        await opened.wait()  # written while the watch is open
        await kube.post(kube.ns("widgets"), widget("late"))

    writer = asyncio.create_task(later())
    events = await kube.watch(kube.ns("widgets"), {"timeoutSeconds": "2"}, lambda ev: False, timeout=15, opened=opened)
    await writer
    assert [e["object"]["metadata"]["name"] for e in events if e["type"] == "ADDED"] == ["late"]


async def test_watch_selector_transitions(kube: Kube) -> None:
    await kube.post(kube.ns("widgets"), {**widget("a"), "metadata": {"name": "a", "labels": {"tier": "x"}}})

    opened = asyncio.Event()

    async def relabel() -> None:
        await opened.wait()  # relabelled while the watch is open
        await kube.patch(kube.ns("widgets", "a"), {"metadata": {"labels": {"tier": "y"}}})

    writer = asyncio.create_task(relabel())
    events = await kube.watch(kube.ns("widgets"), {"labelSelector": "tier=x"}, lambda ev: len(ev) >= 2, opened=opened)
    await writer
    assert [e["type"] for e in events] == ["ADDED", "DELETED"]


async def test_label_and_field_selectors(kube: Kube) -> None:
    for name, labels in {"a": {"env": "prod", "team": "x"}, "b": {"env": "dev"}, "c": {}}.items():
        await kube.post(kube.ns("widgets"), {**widget(name), "metadata": {"name": name, "labels": labels}})

    async def names(**params: str) -> list[str]:
        got = await kube.get(kube.ns("widgets"), params=params)
        return sorted(i["metadata"]["name"] for i in got["items"])

    assert await names(labelSelector="env=prod") == ["a"]
    assert await names(labelSelector="env==prod") == ["a"]
    assert await names(labelSelector="env!=prod") == ["b", "c"]
    assert await names(labelSelector="env in (prod, dev)") == ["a", "b"]
    assert await names(labelSelector="env notin (prod)") == ["b", "c"]
    assert await names(labelSelector="team") == ["a"]
    assert await names(labelSelector="!team") == ["b", "c"]
    assert await names(labelSelector="env,!team") == ["b"]
    assert await names(fieldSelector="metadata.name=b") == ["b"]
    assert await names(fieldSelector="metadata.name!=b") == ["a", "c"]
    assert await names(fieldSelector=f"metadata.namespace={kube.namespace}") == ["a", "b", "c"]
    everywhere = await kube.get("/apis/contract.makima.dev/v1/widgets", params={"labelSelector": "env=prod"})
    assert [i["metadata"]["namespace"] for i in everywhere["items"]] == [kube.namespace]


async def test_schema_rejection_with_field_paths(kube: Kube) -> None:
    bad = widget("bad", size=-1, mode="Sometimes")
    del bad["spec"]["title"]
    with pytest.raises(ApiFailure) as exc:
        await kube.post(kube.ns("widgets"), bad)
    assert exc.value.status == 422
    assert exc.value.body["reason"] == "Invalid"
    fields = {c["field"] for c in exc.value.body["details"]["causes"]}
    assert {"spec.title", "spec.size", "spec.mode"} <= fields
    with pytest.raises(ApiFailure) as exc:  # updates are validated too
        await kube.post(kube.ns("widgets"), widget("ok"))
        await kube.patch(kube.ns("widgets", "ok"), {"spec": {"size": "big"}})
    assert exc.value.status == 422
    assert [c["field"] for c in exc.value.body["details"]["causes"]] == ["spec.size"]


async def test_defaults_applied(kube: Kube) -> None:
    made = await kube.post(kube.ns("widgets"), widget("a", repository={"url": "https://x.invalid/r.git"}))
    assert made["spec"]["size"] == 3 and made["spec"]["mode"] == "Auto"
    assert made["spec"]["repository"]["baseBranch"] == "main"


async def test_unknown_fields_pruned(kube: Kube) -> None:
    made = await kube.post(kube.ns("widgets"), widget("a", bogus=1))
    assert "bogus" not in made["spec"]


async def test_table_uses_printer_columns(kube: Kube) -> None:
    await kube.post(kube.ns("widgets"), widget("a", size=5))
    await kube.patch(kube.ns("widgets", "a") + "/status", {"status": {"phase": "Ready"}})
    table = await kube.get(kube.ns("widgets"), accept=TABLE)
    assert table["kind"] == "Table"
    assert [c["name"] for c in table["columnDefinitions"]] == ["Name", "Phase", "Size", "Age"]
    name, phase, size, age = table["rows"][0]["cells"]
    assert (name, phase, size) == ("a", "Ready", 5)
    assert isinstance(age, str) and age.endswith(("s", "m"))
    single = await kube.get(kube.ns("widgets", "a"), accept=TABLE)
    assert single["rows"][0]["cells"][0] == "a"


async def test_dry_run_validates_and_stores_nothing(kube: Kube) -> None:
    """`kubectl apply --dry-run=server`: the answer is what would be stored; nothing is."""
    dry = {"dryRun": "All"}
    made = await kube.post(kube.ns("widgets"), widget("dry"), params=dry)
    assert made["metadata"]["name"] == "dry" and made["spec"]["size"] == 3  # defaulted
    status, _ = await kube.call("GET", kube.ns("widgets", "dry"), ok=False)
    assert status == 404
    with pytest.raises(ApiFailure) as exc:  # still validated
        await kube.post(kube.ns("widgets"), widget("bad", size=-1), params=dry)
    assert exc.value.status == 422

    real = await kube.post(kube.ns("widgets"), widget("w"))
    rv = real["metadata"]["resourceVersion"]
    patched = await kube.patch(kube.ns("widgets", "w"), {"spec": {"size": 9}}, params=dry)
    assert patched["spec"]["size"] == 9
    put = await kube.put(kube.ns("widgets", "w"), {**real, "spec": {**real["spec"], "size": 8}}, params=dry)
    assert put["spec"]["size"] == 8
    await kube.delete(kube.ns("widgets", "w"), params=dry)
    stored = await kube.get(kube.ns("widgets", "w"))
    assert stored["spec"]["size"] == 3 and stored["metadata"]["resourceVersion"] == rv
    assert "deletionTimestamp" not in stored["metadata"]

    # and no watcher heard of any of it
    events = await kube.watch(
        kube.ns("widgets"), {"resourceVersion": rv, "timeoutSeconds": "1"}, until=lambda evs: False, timeout=10
    )
    assert [e for e in events if e["type"] != "BOOKMARK"] == []
    with pytest.raises(ApiFailure) as exc:
        await kube.post(kube.ns("widgets"), widget("x"), params={"dryRun": "Everything"})
    assert exc.value.status == 422 and "dryRun" in str(exc.value.body)
    assert (await kube.call("GET", kube.ns("widgets", "x"), ok=False))[0] == 404
