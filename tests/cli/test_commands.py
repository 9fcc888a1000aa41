"""The people commands (`makima get/describe/retry/pause/resume/logs`) against the sandbox
cluster (a test double of the Kubernetes API) and, for `logs`, the real operator API
(`makima.control.api.build_app`) on a real PostgreSQL store."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from kubernetes import client
from typer.testing import CliRunner, Result

from makima.cli.main import app
from makima.control.api import ApiDeps, build_app
from makima.control.executors.daemons import DaemonHub, DaemonSettings
from makima.control.kube import load_config
from makima.control.store import TaskStore
from makima.core.crds import all_crds
from makima.core.tasks import TaskState
from makima_testing.sandbox import SandboxThread
from tests.api.conftest import fixed_spec, make_task
from tests.support.wait import eventually

GROUP, VERSION = "makima.dev", "v1alpha1"
READER_TOKEN = "reader-token-for-tests-0123456789"


class Cluster:
    """The sandbox with our CRDs, plus helpers that write objects as the operator would."""

    def __init__(self, sandbox: SandboxThread) -> None:
        self.sandbox = sandbox
        self.api = load_config(str(sandbox.kubeconfig))
        self.custom: Any = client.CustomObjectsApi(self.api)
        for crd in all_crds().values():
            sandbox.apply(crd)

    def run(self, *args: str, env: dict[str, str] | None = None) -> Result:
        return CliRunner().invoke(
            app, [*args, "--kubeconfig", str(self.sandbox.kubeconfig)], env={"COLUMNS": "200", **(env or {})}
        )

    def directive(self, name: str, status: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
        self.sandbox.apply(
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "Directive",
                "metadata": {"name": name, "namespace": "default"},
                "spec": {
                    "title": f"Title of {name}",
                    "goal": "Do the thing.",
                    "repository": {"url": "https://git.example/repo.git"},
                    **spec,
                },
            }
        )
        if status:
            self.set_status("directives", name, status)
        return self.get("directives", name)

    def step(
        self, directive: str, name: str, order: int = 0, depends_on: tuple[str, ...] = (), **status: Any
    ) -> dict[str, Any]:
        obj_name = f"{directive}-{name}"
        self.sandbox.apply(
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "DirectiveStep",
                "metadata": {
                    "name": obj_name,
                    "namespace": "default",
                    "labels": {"makima.dev/directive": directive, "makima.dev/step": name},
                },
                "spec": {
                    "directive": directive,
                    "title": name.title(),
                    "dependsOn": list(depends_on),
                    "orderIndex": order,
                },
            }
        )
        if status:
            self.set_status("directivesteps", obj_name, status)
        return self.get("directivesteps", obj_name)

    def set_status(self, plural: str, name: str, status: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object_status(GROUP, VERSION, "default", plural, name, {"status": status})

    def get(self, plural: str, name: str) -> dict[str, Any]:
        obj: dict[str, Any] = self.custom.get_namespaced_custom_object(GROUP, VERSION, "default", plural, name)
        return obj

    def event(self, kind: str, name: str, reason: str, message: str, type_: str = "Normal") -> None:
        self.sandbox.apply(
            {
                "apiVersion": "v1",
                "kind": "Event",
                "metadata": {"name": f"{name}.{reason.lower()}", "namespace": "default"},
                "involvedObject": {"apiVersion": f"{GROUP}/{VERSION}", "kind": kind, "name": name},
                "type": type_,
                "reason": reason,
                "message": message,
                "lastTimestamp": "2025-03-01T11:00:00Z",
                "count": 1,
            }
        )


@pytest.fixture
def cluster(sandbox: SandboxThread) -> Iterator[Cluster]:
    c = Cluster(sandbox)
    yield c
    c.api.close()  # type: ignore[no-untyped-call]


# ---- get -----------------------------------------------------------------------------------


def test_get_lists_directives_with_phase_progress_and_pr(cluster: Cluster) -> None:
    cluster.directive(
        "add-search",
        status={"phase": "Completed", "progress": "3/3", "pullRequest": {"url": "https://git.example/pull/7"}},
    )
    cluster.directive("fix-login", status={"phase": "Executing", "progress": "1/4"}, paused=True)
    result = cluster.run("get")
    assert result.exit_code == 0, result.output
    header, *rows = result.output.splitlines()
    assert header.split() == ["NAME", "TITLE", "PHASE", "PROGRESS", "PR", "AGE"]
    assert rows[0].split()[:1] + rows[0].split()[4:7] == [
        "add-search",
        "Completed",
        "3/3",
        "https://git.example/pull/7",
    ]
    assert "Executing (paused)" in rows[1] and "1/4" in rows[1]
    # the same rows; AGE may tick between the two runs, so it is left out of the comparison
    again = cluster.run("get", "directives").output.splitlines()
    assert [line.rsplit(None, 1)[0] for line in again] == [
        line.rsplit(None, 1)[0] for line in result.output.splitlines()
    ]


def test_get_piped_at_80_columns_keeps_the_pull_request(cluster: Cluster) -> None:
    url = "https://git.example/an-organisation/a-repository-with-a-long-name/pull/12345"
    cluster.directive("add-search", status={"phase": "Completed", "progress": "3/3", "pullRequest": {"url": url}})
    result = cluster.run("get", env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    header, row = result.output.splitlines()
    assert header.split() == ["NAME", "TITLE", "PHASE", "PROGRESS", "PR", "AGE"]
    assert url in row


def test_get_empty_namespace(cluster: Cluster) -> None:
    result = cluster.run("get", "-n", "nowhere")
    assert result.exit_code == 0
    assert 'No directives in namespace "nowhere"' in result.output


def test_get_directive_shows_the_step_tree(cluster: Cluster) -> None:
    cluster.directive("diamond", status={"phase": "Executing", "progress": "1/4"})
    cluster.step("diamond", "a", attempts=1, phase="Succeeded", branch="makima/step-a-1")
    cluster.step("diamond", "b", depends_on=("a",), phase="Running", attempts=1)
    cluster.step("diamond", "c", depends_on=("a",), phase="Ready")
    cluster.step("diamond", "d", order=1, depends_on=("b", "c"))
    result = cluster.run("get", "directive", "diamond")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("diamond  Title of diamond")
    assert "phase Executing  progress 1/4" in lines[1]
    assert [line.lstrip("│├└─ ").split()[:2] for line in lines[2:]] == [
        ["phase", "0"],
        ["a", "Succeeded"],
        ["b", "Running"],
        ["c", "Ready"],
        ["phase", "1"],
        ["d", "Pending"],
    ]
    assert "Succeeded  attempts 1" in lines[3] and "makima/step-a-1" in lines[3]
    assert lines[-1].rstrip().endswith("← b, c")
    assert cluster.run("get", "diamond").output == result.output  # the kind word is optional


def test_get_watch_redraws_until_interrupted(cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    cluster.directive("w1", status={"phase": "Executing", "progress": "0/1"})
    cluster.step("w1", "only", phase="Running", attempts=1)
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 1:  # between the two draws the step finishes
            cluster.set_status("directivesteps", "w1-only", {"phase": "Succeeded"})
            cluster.set_status("directives", "w1", {"phase": "Completed", "progress": "1/1"})
        else:
            raise KeyboardInterrupt

    monkeypatch.setattr("makima.cli.people.time.sleep", sleep)
    result = cluster.run("get", "directive", "w1", "--watch", "--interval", "0.5")
    assert result.exit_code == 0, result.output
    assert sleeps == [0.5, 0.5]
    assert "phase Completed  progress 1/1" in result.output
    assert "only  Succeeded" in result.output


def test_unknown_directive_is_a_clear_error(cluster: Cluster) -> None:
    for command in (["get", "directive", "nope"], ["describe", "nope"], ["pause", "nope"], ["retry", "nope"]):
        result = cluster.run(*command)
        assert result.exit_code == 1, command
        assert 'directive "nope" not found in namespace "default"' in result.output
        assert "Traceback" not in result.output


def test_unreachable_cluster_is_a_clear_error(tmp_path: Any) -> None:
    from makima_testing.sandbox.server import kubeconfig_text

    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(kubeconfig_text("http://127.0.0.1:9"))
    result = CliRunner().invoke(app, ["get", "--kubeconfig", str(kubeconfig)])
    assert result.exit_code == 1
    assert "cannot reach the Kubernetes API" in result.output


# ---- pause / resume ------------------------------------------------------------------------


def test_pause_and_resume_flip_spec_paused(cluster: Cluster) -> None:
    cluster.directive("d1")
    result = cluster.run("pause", "d1")
    assert result.exit_code == 0 and "directive/d1 paused" in result.output
    assert cluster.get("directives", "d1")["spec"]["paused"] is True
    result = cluster.run("resume", "d1", "-n", "default")
    assert result.exit_code == 0 and "directive/d1 resumed" in result.output
    assert cluster.get("directives", "d1")["spec"]["paused"] is False


# ---- retry ---------------------------------------------------------------------------------


def test_retry_asks_the_operator_through_the_directive_annotation(cluster: Cluster) -> None:
    """An editor's `makima retry` writes the Directive's retry annotation, never a step's status
    (that is the operator's record; decide() acts on the annotation, see tests/unit)."""
    cluster.directive("r1", status={"phase": "Failed"})
    cluster.step("r1", "ok", phase="Succeeded", attempts=1, finishedAt="2025-03-01T11:00:00Z")
    cluster.step("r1", "bad", phase="Failed", attempts=3, message="agent exited 2")
    cluster.step("r1", "after", order=1, depends_on=("bad",), phase="Skipped", message="dependency bad Failed")
    result = cluster.run("retry", "r1", "--wait", "0")
    assert result.exit_code == 0, result.output
    assert "retry requested for 2 step(s): bad, after" in result.output
    request = cluster.get("directives", "r1")["metadata"]["annotations"]["makima.dev/retry"]
    assert request and ":" not in request, "every Failed and Skipped step"
    assert cluster.get("directivesteps", "r1-bad")["status"]["phase"] == "Failed", "the CLI leaves status alone"

    cluster.step("r1", "bad", phase="Succeeded", attempts=4)
    cluster.step("r1", "after", order=1, depends_on=("bad",), phase="Succeeded", attempts=1)
    again = cluster.run("retry", "r1", "--wait", "0")
    assert again.exit_code == 0 and "no Failed or Skipped steps to retry" in again.output


def test_retry_a_named_step_only(cluster: Cluster) -> None:
    cluster.directive("r2")
    cluster.step("r2", "x", phase="Failed", attempts=1)
    cluster.step("r2", "y", phase="Failed", attempts=2)
    result = cluster.run("retry", "r2", "--step", "y", "--wait", "0")
    assert result.exit_code == 0, result.output
    assert cluster.get("directives", "r2")["metadata"]["annotations"]["makima.dev/retry"].endswith(":y")
    unknown = cluster.run("retry", "r2", "--step", "zz")
    assert unknown.exit_code == 1 and "directive r2 has no step zz" in unknown.output


def test_retry_reports_when_the_operator_has_acted(cluster: Cluster) -> None:
    """The CLI waits for status.retryHandled to name its request (here a test plays the operator)."""
    import threading

    cluster.directive("r3")
    cluster.step("r3", "x", phase="Failed", attempts=1)

    def operator_acts() -> None:
        for _ in range(200):
            value = (cluster.get("directives", "r3")["metadata"].get("annotations") or {}).get("makima.dev/retry")
            if value:
                cluster.set_status("directives", "r3", {"retryHandled": value})
                return
            threading.Event().wait(0.05)

    actor = threading.Thread(target=operator_acts)
    actor.start()
    result = cluster.run("retry", "r3", "--wait", "60")
    actor.join()
    assert result.exit_code == 0, result.output
    assert "the operator moved them back to Pending" in result.output


# ---- describe ------------------------------------------------------------------------------


def test_describe_shows_conditions_steps_and_events(cluster: Cluster) -> None:
    cluster.directive(
        "desc",
        status={
            "phase": "Failed",
            "message": "step build Failed after 3 attempts",
            "conditions": [
                {
                    "type": "Planned",
                    "status": "True",
                    "reason": "StepsCreated",
                    "message": "2 steps",
                    "lastTransitionTime": "2025-03-01T11:00:00Z",
                },
                {
                    "type": "Ready",
                    "status": "False",
                    "reason": "StepFailed",
                    "message": "step build failed",
                    "lastTransitionTime": "2025-03-01T11:05:00Z",
                },
            ],
        },
    )
    cluster.step("desc", "build", phase="Failed", attempts=3, message="agent exited 2")
    cluster.event("Directive", "desc", "Planned", "2 steps planned")
    cluster.event("DirectiveStep", "desc-build", "StepFailed", "build: agent exited 2", type_="Warning")
    cluster.event("Directive", "someone-else", "Planned", "not ours")
    result = cluster.run("describe", "desc")
    assert result.exit_code == 0, result.output
    out = result.output
    assert "Phase         Failed" in out and "step build Failed after 3 attempts" in out
    assert "Planned  True    StepsCreated" in out and "Ready    False   StepFailed" in out
    assert "build  Failed" in out and "attempts 3" in out
    assert "Normal   Planned" in out and "2 steps planned" in out
    assert "Warning  StepFailed" in out and "DirectiveStep/desc-build" in out
    assert "not ours" not in out
    with_kind = cluster.run("describe", "directive", "desc")
    assert with_kind.exit_code == 0 and with_kind.output.splitlines()[:3] == out.splitlines()[:3]


# ---- logs (real operator API, real store) ---------------------------------------------------


class _NoCallbacks:
    async def __call__(self, *args: Any) -> Any:
        return [] if len(args) == 2 and isinstance(args[1], list) else None


@contextlib.asynccontextmanager
async def operator_api(store: TaskStore, served: list[str] | None = None) -> AsyncIterator[str]:
    """The operator's API on the test's store; `served` collects the path of every answered request."""
    deps = ApiDeps(
        store=store,
        hub=DaemonHub(store, DaemonSettings()),
        spec_for=fixed_spec,
        validate_steps=_NoCallbacks(),
        on_task_report=_NoCallbacks(),
        verify_daemon_token=_NoCallbacks(),
        reader_token=READER_TOKEN,
    )
    app = build_app(deps)
    if served is not None:

        async def record(request: web.Request, response: web.StreamResponse) -> None:
            served.append(request.path)

        app.on_response_prepare.append(record)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield str(server.make_url("")).rstrip("/")
    finally:
        await server.close()


def logs_env(url: str, token: str = READER_TOKEN) -> dict[str, str]:
    return {"MAKIMA_API_URL": url, "MAKIMA_READER_TOKEN": token}


async def test_logs_prints_output_lines_and_other_events(cluster: Cluster, store: TaskStore) -> None:
    task, _ = await make_task(store, state=TaskState.RUNNING)
    await store.append_events(
        task.id,
        [
            ("progress", {"message": "cloning"}),
            ("output", {"source": "agent", "stream": "stdout", "lines": ["hello", "[not markup] world"]}),
            ("result", {"outcome": "succeeded"}),
        ],
    )
    cluster.directive("lg", status={"phase": "Executing"})
    cluster.step("lg", "build", phase="Succeeded", attempts=1, task={"id": task.id})
    async with operator_api(store) as url:
        result = await asyncio.to_thread(cluster.run, "logs", "lg", "--step", "build", env=logs_env(url))
        assert result.exit_code == 0, result.output
        # for people: time, kind, message; one line per line of agent output
        clock = r"\d\d:\d\d:\d\d"
        patterns = [
            rf"{clock}  progress  cloning",
            rf"{clock}  output    hello",
            rf"{clock}  output    \[not markup\] world",
            rf"{clock}  result    succeeded",
        ]
        lines = result.output.splitlines()
        assert len(lines) == len(patterns), lines
        for line, pattern in zip(lines, patterns, strict=True):
            assert re.fullmatch(pattern, line), (line, pattern)
        # the only step that has run is the default
        default = await asyncio.to_thread(cluster.run, "logs", "lg", env=logs_env(url))
        assert default.output == result.output
        since = await asyncio.to_thread(cluster.run, "logs", "lg", "--since", "2", env=logs_env(url))
        assert since.output.splitlines() == lines[3:]
        # for machines: one JSON event per line, as stored
        machine = await asyncio.to_thread(cluster.run, "logs", "lg", "-o", "json", env=logs_env(url))
        events = [json.loads(line) for line in machine.output.splitlines()]
        assert [(e["seq"], e["type"]) for e in events] == [(1, "progress"), (2, "output"), (3, "result")]
        assert events[1]["payload"]["lines"] == ["hello", "[not markup] world"]

        wrong = await asyncio.to_thread(cluster.run, "logs", "lg", env=logs_env(url, "not-the-reader-token"))
        assert wrong.exit_code == 1
        assert "refused the reader token" in wrong.output and "not-the-reader-token" not in wrong.output

    missing = cluster.run("logs", "lg", env={"MAKIMA_READER_TOKEN": ""})
    assert missing.exit_code == 1 and "set MAKIMA_READER_TOKEN" in missing.output
    # the command runs its own event loop: from this test's, in a thread (as the calls above)
    down = await asyncio.to_thread(cluster.run, "logs", "lg", env=logs_env("http://127.0.0.1:9"))
    assert down.exit_code == 1 and "cannot reach the operator API" in down.output
    nostep = await asyncio.to_thread(cluster.run, "logs", "lg", "--step", "nope", env=logs_env("http://127.0.0.1:9"))
    assert nostep.exit_code == 1 and "has no step nope (steps: build)" in nostep.output


async def test_logs_planning_task(cluster: Cluster, store: TaskStore) -> None:
    from makima.core.tasks import TaskKind

    task, _ = await make_task(store, kind=TaskKind.PLANNING, state=TaskState.SUCCEEDED)
    await store.append_events(task.id, [("output", {"lines": ["planned 3 steps"]})])
    cluster.directive("pl", status={"phase": "Executing", "planningTask": task.id})
    async with operator_api(store) as url:
        result = await asyncio.to_thread(cluster.run, "logs", "pl", "--planning", env=logs_env(url))
    assert result.exit_code == 0, result.output
    assert re.fullmatch(r"\d\d:\d\d:\d\d  output    planned 3 steps\n", result.output)


async def test_logs_follow_until_the_step_ends_across_a_retry(cluster: Cluster, store: TaskStore) -> None:
    first, _ = await make_task(store, state=TaskState.RUNNING)
    second, _ = await make_task(store, state=TaskState.RUNNING)
    await store.append_events(first.id, [("output", {"lines": ["attempt one"]})])
    cluster.directive("fw", status={"phase": "Executing"})
    cluster.step("fw", "build", phase="Running", attempts=1, task={"id": first.id})
    served: list[str] = []

    def reads(task_id: str) -> int:
        """Event reads the follower has been answered for `task_id`."""
        return served.count(f"/v1/tasks/{task_id}/events")

    async def read_again(task_id: str, what: str) -> None:
        # Two more answered reads: the second one started after whatever happened before this call.
        before = reads(task_id)
        await eventually(lambda: reads(task_id) >= before + 2, what, 30)

    async with operator_api(store, served) as url:
        follow = asyncio.create_task(
            asyncio.to_thread(cluster.run, "logs", "fw", "--step", "build", "-f", env=logs_env(url))
        )
        await read_again(first.id, "the follower reading attempt one")
        await store.append_events(first.id, [("output", {"lines": ["attempt one failed"]})])
        await read_again(first.id, "the follower reading attempt one's new event")
        cluster.set_status("directivesteps", "fw-build", {"phase": "Running", "attempts": 2, "task": {"id": second.id}})
        await eventually(lambda: reads(second.id) >= 1, "the follower switching to attempt two", 30)
        await store.append_events(second.id, [("output", {"lines": ["attempt two"]})])
        await read_again(second.id, "the follower reading attempt two's event")
        assert not follow.done()  # the step still runs: the follower keeps following
        cluster.set_status("directivesteps", "fw-build", {"phase": "Succeeded"})
        result = await asyncio.wait_for(follow, 10)
    assert result.exit_code == 0, result.output
    assert [line.split("  ")[-1] for line in result.output.splitlines()] == [
        "attempt one",
        "attempt one failed",
        f"--- step build, attempt 2 (task {second.id}) ---",
        "attempt two",
    ]
