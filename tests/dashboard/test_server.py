"""The dashboard's HTTP surface without a browser: its guards, its event stream, and that the
reader token never leaves the process. Against the sandbox (a test double of Kubernetes)."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from typing import Any

import aiohttp

from makima.dataplane.client import EventReader
from makima_testing.sandbox.server import SandboxThread
from tests.support.wait import eventually

from ..integration.conftest import Api
from .conftest import DashboardFactory
from .test_browser_views import directive, put_steps

SECRET = "never-show-this-reader-token"


async def read_sse(resp: aiohttp.ClientResponse, want: int) -> list[tuple[str, Any]]:
    """The first `want` events of a server-sent event stream."""
    events: list[tuple[str, Any]] = []
    name = ""
    async with asyncio.timeout(30):
        async for raw in resp.content:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                events.append((name, json.loads(line[6:])))
                if len(events) == want:
                    return events
    return events


async def test_guards_stream_and_secrecy(
    sandbox: SandboxThread, api: Api, dashboard: DashboardFactory, tmp_path: Path
) -> None:
    await api.apply_directive(directive("one", "First"))
    await put_steps(api, "one", [{"name": "a", "dependsOn": [], "orderIndex": 0, "phase": "Succeeded"}])
    # An operator API that is not there: the token is configured, logs fail, and still no leak.
    url = await dashboard(sandbox.kubeconfig, api_url="http://127.0.0.1:9", reader_token=SECRET)
    async with aiohttp.ClientSession() as http:
        # Another name in Host (DNS rebinding) is refused.
        async with http.get(url + "/", headers={"Host": "attacker.example:80"}) as r:
            assert r.status == 421
        # An action without the dashboard's header (a form on another site) is refused, and nothing changes.
        async with http.post(url + "/api/action?name=one&action=pause") as r:
            assert r.status == 403
        async with http.post(
            url + "/api/action?name=one&action=pause",
            headers={"X-Makima-Dashboard": "1", "Origin": "http://attacker.example"},
        ) as r:
            assert r.status == 403
        assert (await api.directive("one"))["spec"].get("paused") is not True
        async with http.post(url + "/api/action?name=one&action=pause", headers={"X-Makima-Dashboard": "1"}) as r:
            assert r.status == 200, await r.text()
            assert (await r.json())["message"] == "directive/one paused"
        assert (await api.directive("one"))["spec"]["paused"] is True
        async with http.post(url + "/api/action?name=nope&action=pause", headers={"X-Makima-Dashboard": "1"}) as r:
            assert r.status == 404
        async with http.post(url + "/api/action?name=one&action=explode", headers={"X-Makima-Dashboard": "1"}) as r:
            assert r.status == 400

        # Static files only from the package's folder.
        async with http.get(url + "/static/..%2Fserver.py") as r:
            assert r.status == 404
        async with http.get(url + "/") as r:
            assert r.status == 200
            assert "default-src 'none'" in r.headers["Content-Security-Policy"]

        # The list streams a snapshot, then each change, from a watch in a thread of its own...
        before = set(threading.enumerate())
        async with http.get(url + "/api/watch/directives?namespace=default") as r:
            assert r.headers["Content-Type"].startswith("text/event-stream")
            (first,) = await read_sse(r, 1)
            assert first[0] == "directives" and [i["name"] for i in first[1]["items"]] == ["one"]
            await api.apply_directive(directive("two", "Second"))
            (added,) = await read_sse(r, 1)
            assert added[0] == "directive" and added[1]["name"] == "two"
            watchers = [t for t in set(threading.enumerate()) - before if t.name.startswith("dashboard-watch-")]
            assert len(watchers) == 1, watchers
        # ...which ends once the page has gone (at the watch's next event or bookmark).
        await eventually(lambda: not watchers[0].is_alive(), "the watch thread ended", 30)

        # A step's attempts need the operator API: its failure is reported, the token is not.
        async with http.get(url + "/api/step?name=one&step=a") as r:
            body = await r.text()
            assert r.status == 200 and "operator API" in body
        # A log stream is only opened for one of the step's own tasks.
        async with http.get(url + "/api/watch/log?name=one&step=a&task=00000000-0000-0000-0000-000000000000") as r:
            assert r.status == 404

        seen = []
        for path in ("/", "/api/config", "/static/app.js", "/static/app.css", "/api/step?name=one&step=a"):
            async with http.get(url + path) as r:
                seen.append(await r.text())
        assert all(SECRET not in text for text in seen)
    assert SECRET not in repr(EventReader("http://x", SECRET))


def test_the_dashboard_command(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from makima.cli.main import app

    result = CliRunner().invoke(app, ["dashboard", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "127.0.0.1:8765" in result.output and "--reader-token-file" in result.output
    missing = tmp_path / "missing-token"
    result = CliRunner().invoke(app, ["dashboard", "--reader-token-file", str(missing)], env={"COLUMNS": "200"})
    assert result.exit_code == 1
    assert f"cannot read the reader token file {missing}" in result.output


async def test_makima_demo_keep_prints_a_dashboard_command_that_works(pg_dsn: str, tmp_path: Path) -> None:
    """`makima demo --keep`: the pasted exports plus the `makima dashboard` line start a dashboard
    (a real process) that reads the demo's directive and its step attempts with the reader token."""
    import io
    import os
    import signal
    import subprocess
    import sys

    from rich.console import Console

    from makima.cli.demo.options import DemoOptions
    from makima.cli.demo.run import run_demo
    from tests.integration.test_demo import _exported

    out = io.StringIO()
    opts = DemoOptions(state_dir=tmp_path / "state", database_url=pg_dsn, live=False, keep=True)
    demo = asyncio.create_task(run_demo(opts, Console(file=out, width=160, soft_wrap=True)))
    proc: subprocess.Popen[str] | None = None
    try:
        await eventually(lambda: "Press Ctrl-C" in out.getvalue() or demo.done(), "the demo keeps running", 180)
        assert not demo.done(), out.getvalue()
        pasted = [line.strip() for line in out.getvalue().split("keep running", 1)[1].splitlines()]
        env = {**os.environ, **_exported(pasted)}
        line = next(x for x in pasted if x.startswith("makima dashboard"))
        args = line.split("#")[0].split()[1:]
        makima = [sys.executable, "-c", "from makima.cli.main import main; main()"]
        argv = [*makima, *args, "--port", "0"]
        proc = await asyncio.to_thread(subprocess.Popen, argv, env=env, stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        first = await asyncio.to_thread(proc.stdout.readline)
        assert first.startswith("makima dashboard on http://127.0.0.1:"), first
        url = first.split()[3]
        async with aiohttp.ClientSession() as http:
            async with http.get(url + "/api/config") as r:
                assert (await r.json())["logs"] is True
            async with http.get(url + "/api/step?name=greeter&step=core") as r:
                body = await r.json()
        assert body["step"]["phase"] == "Succeeded"
        assert [a["outcome"] for a in body["attempts"]] == ["succeeded"], body
        assert body["problem"] is None
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGINT)
            await asyncio.to_thread(proc.wait, 30)
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C for the demo, as the person would
        await asyncio.wait_for(demo, 120)
