"""Errors are JSON, bodies are bounded, fuzzed input never makes a 500; health and metrics."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from makima.core.protocol import MAX_BODY_BYTES, ErrorBody
from makima.core.tasks import TaskKind, TaskState

from .conftest import Api, bearer, make_task


async def _error(resp: Any) -> ErrorBody:
    assert resp.content_type == "application/json"
    return ErrorBody.model_validate(await resp.json())


async def test_oversize_body_is_413_json_and_nothing_is_stored(api: Api) -> None:
    task, token = await make_task(api.store)
    big = json.dumps({"events": [{"type": "output", "payload": {"line": "x" * MAX_BODY_BYTES}}]})
    resp = await api.client.post(
        f"/v1/tasks/{task.id}/events", data=big, headers={**bearer(token), "Content-Type": "application/json"}
    )
    assert resp.status == 413
    assert "body size" in (await _error(resp)).error
    assert await api.store.events(task.id) == []


async def test_unknown_fields_are_422_with_the_field_named(api: Api) -> None:
    task, token = await make_task(api.store)
    resp = await api.client.post(
        f"/v1/tasks/{task.id}/result", json={"outcome": "succeeded", "brnach": "typo"}, headers=bearer(token)
    )
    assert resp.status == 422
    assert [p.field for p in (await _error(resp)).problems] == ["brnach"]
    resp = await api.client.post(
        f"/v1/tasks/{task.id}/events", json={"events": [{"type": "progress", "extra": 1}]}, headers=bearer(token)
    )
    assert resp.status == 422
    assert [p.field for p in (await _error(resp)).problems] == ["events.0.extra"]
    stored = await api.store.get_task(task.id)
    assert stored is not None and stored.state is TaskState.DISPATCHED


async def test_malformed_json_nul_and_routing_errors_are_json(api: Api) -> None:
    task, token = await make_task(api.store)
    url = f"/v1/tasks/{task.id}/result"
    for data, status in [(b"", 400), (b"{", 400), (b"NaN", 400), (b"[" * 300 + b"]" * 300, 400)]:
        resp = await api.client.post(url, data=data, headers=bearer(token))
        assert resp.status == status
        await _error(resp)
    resp = await api.client.post(url, json={"outcome": "failed", "message": "a\x00b"}, headers=bearer(token))
    assert resp.status == 422 and (await _error(resp)).problems[0].field == "message"
    resp = await api.client.get("/v1/nowhere")
    assert resp.status == 404
    await _error(resp)
    resp = await api.client.delete(url)
    assert resp.status == 405 and "POST" in resp.headers["Allow"]
    await _error(resp)


async def test_healthz_and_readyz(api: Api) -> None:
    assert (await api.client.get("/healthz")).status == 200
    assert (await api.client.get("/readyz")).status == 200
    api.readiness.ready = False
    resp = await api.client.get("/readyz")
    assert resp.status == 503
    await _error(resp)
    assert (await api.client.get("/healthz")).status == 200


async def test_metrics_expose_report_and_daemon_series(api: Api) -> None:
    task, token = await make_task(api.store)
    await api.client.post(f"/v1/tasks/{task.id}/events", json={"events": [{"type": "progress"}]}, headers=bearer(token))
    await api.client.post(
        f"/v1/tasks/{task.id}/result", json={"outcome": "succeeded"}, headers=bearer("nope-nope-nope")
    )
    resp = await api.client.get("/metrics")
    assert resp.status == 200 and resp.content_type.startswith("text/plain")
    text = await resp.text()
    assert 'makima_task_reports_total{report="events"}' in text
    assert 'makima_task_reports_total{report="refused"}' in text
    assert "makima_daemons_connected" in text


# ---- fuzzing ---------------------------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=30,
)
# Bodies that look like the real thing, with random values: they reach deeper than pure noise.
FIELDS = st.sampled_from(
    [
        "events",
        "type",
        "payload",
        "outcome",
        "branch",
        "commit",
        "message",
        "steps",
        "name",
        "title",
        "dependsOn",
        "orderIndex",
        "taskPlan",
        "url",
        "changed_files",
        "pull_request_url",
    ]
)
SHAPED = st.recursive(
    st.none() | st.integers(-2, 2) | st.sampled_from(["progress", "succeeded", "failed", "a", "", "a\x00"]) | JSON,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(FIELDS, children, max_size=4),
    max_leaves=20,
)
BODIES = st.one_of(
    JSON.map(lambda v: json.dumps(v).encode()),
    SHAPED.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=200),
)
ENDPOINTS = st.sampled_from(["events", "result", "steps", "pull-request"])
KINDS = st.sampled_from(list(TaskKind))


@settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(body=BODIES, endpoint=ENDPOINTS, kind=KINDS, with_token=st.booleans())
async def test_fuzzed_bodies_never_produce_a_500(
    api: Api, body: bytes, endpoint: str, kind: TaskKind, with_token: bool
) -> None:
    task, token = await make_task(api.store, kind=kind, state=TaskState.RUNNING)
    headers = {**(bearer(token) if with_token else {}), "Content-Type": "application/json"}
    resp = await api.client.post(f"/v1/tasks/{task.id}/{endpoint}", data=body, headers=headers)
    assert resp.status < 500, await resp.text()
    if resp.status >= 400:
        await _error(resp)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    path=st.text(alphabet=st.characters(codec="ascii", exclude_characters="?#/%"), max_size=40),
    query=st.text(max_size=30),
    auth=st.text(
        alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=40
    ),
)
async def test_fuzzed_paths_queries_and_headers_never_produce_a_500(api: Api, path: str, query: str, auth: str) -> None:
    for url in (f"/v1/tasks/{path}", f"/v1/tasks/{path}/events"):
        resp = await api.client.get(url, params={"since": query, "limit": query}, headers={"Authorization": auth})
        assert resp.status < 500, await resp.text()


async def test_api_server_serves_on_an_ephemeral_port(api: Api) -> None:
    import aiohttp

    from makima.control.api import ApiServer

    server = ApiServer(api.deps, host="127.0.0.1", port=0)
    await server.start()
    try:
        assert server.port > 0
        async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{server.port}/healthz") as resp:
            assert resp.status == 200
    finally:
        await server.stop()
