"""TaskClient retries and errors, ApiReporter batching, agent output bounds."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from makima.core.protocol import EventType, Outcome, StepSubmission, TaskEvent, TaskResult
from makima.dataplane.client import ApiError, MissingEnvironment, TaskClient, retry_after_seconds
from makima.dataplane.runner import agent as agent_mod
from makima.dataplane.runner.agent import OutputStreamer
from makima.dataplane.runner.report import ApiReporter

from .doubles import FakeOperatorApi, RecordingReporter


class SleepRecorder:
    """Test double of asyncio.sleep: records the waits the client asks for, waits for none."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def client(api: FakeOperatorApi, task: str = "t1", **kw: Any) -> TaskClient:
    kw.setdefault("retry_delay", 0.01)
    return TaskClient.from_env(api.env(task), **kw)


async def test_idempotent_calls_retry_on_5xx(fake_api: FakeOperatorApi) -> None:
    fake_api.fail_next = [503, 502]
    async with client(fake_api) as c:
        assert await c.post_events([TaskEvent(type=EventType.HEARTBEAT)]) == 1
    assert len(fake_api.events["t1"]) == 1


async def test_step_submission_is_retried_on_5xx(fake_api: FakeOperatorApi) -> None:
    # The operator recognises a step it stored before, so a submission is safe to send again.
    fake_api.fail_next = [503, 500]
    async with client(fake_api, sleep=SleepRecorder()) as c:
        assert await c.submit_steps([StepSubmission(name="a", title="A")]) == 1
    assert [s["name"] for s in fake_api.steps["t1"]] == ["a"]


async def test_retries_outlast_an_operator_restart(fake_api: FakeOperatorApi) -> None:
    # 40 refusals in a row (an operator restarting for a minute at 1.5 s per try) and then an
    # answer: the result arrives. The seed gave up after 4 tries (about 3 s).
    fake_api.fail_next = [503] * 40
    sleeps = SleepRecorder()
    async with client(fake_api, sleep=sleeps, retry_delay=0.5, max_retry_delay=10) as c:
        await c.post_result(TaskResult(outcome=Outcome.SUCCEEDED, message="done"))
    assert fake_api.results["t1"].message == "done"
    assert len(sleeps.waits) == 40 and max(sleeps.waits) <= 10


async def test_retry_after_is_honoured(fake_api: FakeOperatorApi) -> None:
    fake_api.fail_next = [503, 429]
    fake_api.retry_after = "5"
    sleeps = SleepRecorder()
    async with client(fake_api, sleep=sleeps, retry_delay=0.01, max_retry_delay=1) as c:
        await c.post_events([TaskEvent(type=EventType.PROGRESS)])
    assert sleeps.waits and all(w >= 5 for w in sleeps.waits)


def test_retry_after_parsing() -> None:
    assert retry_after_seconds("5") == 5
    assert retry_after_seconds("-3") == 0
    assert retry_after_seconds("100000") == 60  # capped
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == 10
    assert retry_after_seconds("soon") is None and retry_after_seconds(None) is None


async def test_refused_token_is_final_at_once(fake_api: FakeOperatorApi) -> None:
    sleeps = SleepRecorder()
    fake_api.fail_next = [403]
    async with client(fake_api, sleep=sleeps) as c:
        with pytest.raises(ApiError) as err:
            await c.post_result(TaskResult(outcome=Outcome.SUCCEEDED))
    assert err.value.status == 403 and sleeps.waits == []
    assert len(fake_api.requests) == 1


async def test_bounded_retries_then_typed_error(fake_api: FakeOperatorApi) -> None:
    fake_api.fail_next = [500] * 10
    async with client(fake_api, retries=3, sleep=SleepRecorder()) as c:
        with pytest.raises(ApiError) as err:
            await c.get_task()
    assert err.value.status == 500
    assert len(fake_api.requests) == 4  # 1 + 3 retries


async def test_patience_bounds_the_retries(fake_api: FakeOperatorApi) -> None:
    fake_api.fail_next = [503] * 10_000
    async with client(fake_api, patience=0.5, retry_delay=0.05, max_retry_delay=0.1) as c:
        with pytest.raises(ApiError) as err:
            await c.get_task()
    assert err.value.status == 503 and len(fake_api.requests) > 1


def test_patience_from_the_environment(fake_api: FakeOperatorApi) -> None:
    env = {**fake_api.env("t1"), "MAKIMA_REPORT_PATIENCE_SECONDS": "42"}
    assert TaskClient.from_env(env).patience == 42
    assert TaskClient.from_env(fake_api.env("t1")).patience >= 120  # above the default heartbeat timeout


async def test_unreachable_api() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    async with TaskClient(
        f"http://127.0.0.1:{port}", "t1", "secret-token", patience=0.3, retry_delay=0.01, max_retry_delay=0.05
    ) as c:
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


async def test_events_are_spooled_through_an_outage_not_dropped(fake_api: FakeOperatorApi) -> None:
    # The operator answers 503 for longer than the client's patience: the seed dropped the
    # batch ("dropped 3 task events"); now it stays queued and goes out once the operator answers.
    fake_api.fail_next = [503] * 10_000
    async with client(fake_api, patience=0.2, retry_delay=0.01, max_retry_delay=0.02) as c:
        rep = ApiReporter(c, flush_seconds=60, max_batch=2)
        for i in range(3):
            await rep.event(EventType.OUTPUT, {"i": i})
        with pytest.raises(ApiError):
            await rep.flush()
        assert rep.pending == 3 and "t1" not in fake_api.events
        fake_api.fail_next = []
        await rep.flush()
    assert [e["payload"]["i"] for e in fake_api.events["t1"]] == [0, 1, 2]
    assert rep.pending == 0 and rep.dropped == 0


async def test_a_resent_batch_keeps_its_id(fake_api: FakeOperatorApi) -> None:
    ids: list[str | None] = []
    original = fake_api._events

    async def recording(request: Any) -> Any:
        ids.append((await request.json()).get("batchId"))
        return await original(request)

    fake_api._events = recording  # type: ignore[method-assign]
    fake_api.stop()
    fake_api.start()
    fake_api.fail_next = [503] * 10_000
    async with client(fake_api, patience=0.2, retry_delay=0.01, max_retry_delay=0.02) as c:
        rep = ApiReporter(c, flush_seconds=60)
        await rep.event(EventType.OUTPUT, {"line": "x"})
        with pytest.raises(ApiError):
            await rep.flush()
        fake_api.fail_next = []
        await rep.flush()
        await rep.event(EventType.OUTPUT, {"line": "y"})
        await rep.flush()
    assert len(ids) == 2 and ids[0] and ids[1] and ids[0] != ids[1]
