"""TaskClient retries and errors, ApiReporter batching, agent output bounds."""

from __future__ import annotations

import socket

import pytest

from makima.client import ApiError, MissingEnvironment, TaskClient
from makima.protocol import EventType, StepSubmission, TaskEvent
from makima.runner import agent as agent_mod
from makima.runner.agent import OutputStreamer
from makima.runner.report import ApiReporter

from .doubles import FakeOperatorApi, RecordingReporter


def client(api: FakeOperatorApi, task: str = "t1") -> TaskClient:
    return TaskClient.from_env(api.env(task), retry_delay=0.01)


async def test_idempotent_calls_retry_on_5xx(fake_api: FakeOperatorApi) -> None:
    fake_api.fail_next = [503, 502]
    async with client(fake_api) as c:
        assert await c.post_events([TaskEvent(type=EventType.HEARTBEAT)]) == 1
    assert len(fake_api.events["t1"]) == 1


async def test_step_submission_is_not_retried_on_5xx(fake_api: FakeOperatorApi) -> None:
    fake_api.fail_next = [503]
    async with client(fake_api) as c:
        with pytest.raises(ApiError) as err:
            await c.submit_steps([StepSubmission(name="a", title="A")])
    assert err.value.status == 503 and err.value.body.error == "try again"
    assert "t1" not in fake_api.steps


async def test_bounded_retries_then_typed_error(fake_api: FakeOperatorApi) -> None:
    fake_api.fail_next = [500] * 10
    async with client(fake_api) as c:
        with pytest.raises(ApiError) as err:
            await c.get_task()
    assert err.value.status == 500
    assert len(fake_api.requests) == 4  # 1 + 3 retries


async def test_unreachable_api() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    async with TaskClient(f"http://127.0.0.1:{port}", "t1", "secret-token", retries=1, retry_delay=0.01) as c:
        with pytest.raises(ApiError) as err:
            await c.get_task()
    assert err.value.status == 0 and "cannot reach" in str(err.value)
    assert "secret-token" not in str(err.value) and "secret-token" not in repr(c)


def test_missing_environment() -> None:
    with pytest.raises(MissingEnvironment, match="MAKIMA_TASK_TOKEN"):
        TaskClient.from_env({"MAKIMA_API_URL": "http://x", "MAKIMA_TASK_ID": "t"})


async def test_api_reporter_batches(fake_api: FakeOperatorApi) -> None:
    async with client(fake_api) as c:
        async with ApiReporter(c, flush_seconds=60, max_batch=3) as rep:
            for i in range(7):
                await rep.event(EventType.PROGRESS, {"i": i})
        await rep.submit_pull_request("file:///r.git#pull/1", "makima/x")
    assert [e["payload"]["i"] for e in fake_api.events["t1"]] == list(range(7))
    posts = [r for r in fake_api.requests if r[1].endswith("/events")]
    assert len(posts) == 3  # 3 + 3 + 1
    assert fake_api.pull_requests["t1"][0].branch == "makima/x"


async def test_output_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(agent_mod, "MAX_TOTAL_LINES", 250)
    rep = RecordingReporter()
    streamer = OutputStreamer(rep, "task", flush_seconds=60, max_lines=100)
    await streamer.line("stdout", "x" * 10_000)
    for i in range(400):
        await streamer.line("stdout", f"line {i}")
    await streamer.flush()
    lines = rep.output_lines()
    assert len(lines[0]) < 5000 and lines[0].endswith("[line truncated]")
    assert len(lines) == 251 and "truncated after 250 lines" in lines[-1]
    assert all(len(p["lines"]) <= 100 for p in rep.of(EventType.OUTPUT))
    assert streamer.tail[-1] == "line 399"  # the tail is kept for the failure message
