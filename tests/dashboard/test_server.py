"""The dashboard's HTTP surface without a browser: its guards, its event stream, and that the
reader token never leaves the process. Against the sandbox (a test double of Kubernetes)."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from makima.client import EventReader
from makima.sandbox.server import SandboxThread

from ..integration.conftest import Api
from .conftest import DashboardFactory
from .test_browser_views import directive, put_steps

SECRET = "never-show-this-reader-token"


async def wait_until(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


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
        await wait_until(lambda: not watchers[0].is_alive(), "the watch thread to end")

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

    from makima.cli import app

    result = CliRunner().invoke(app, ["dashboard", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "127.0.0.1:8765" in result.output and "--reader-token-file" in result.output
    missing = tmp_path / "missing-token"
    result = CliRunner().invoke(app, ["dashboard", "--reader-token-file", str(missing)], env={"COLUMNS": "200"})
    assert result.exit_code == 1
    assert f"cannot read the reader token file {missing}" in result.output


async def test_demo_keep_prints_the_dashboard_command(tmp_path: Path) -> None:
    import io

    from rich.console import Console

    from makima.demo import _keep_running

    out = io.StringIO()
    done = asyncio.Event()
    done.set()
    line = "makima dashboard --kubeconfig k --api-url http://127.0.0.1:1 --reader-token-file t"
    await _keep_running(Console(file=out, width=200), tmp_path / "k", "default", "greeter", done, line)
    assert line in out.getvalue()


async def test_the_demo_stack_gives_the_dashboard_a_reader_token_the_operator_accepts(
    pg_dsn: str, tmp_path: Path
) -> None:
    import io
    import shlex

    from rich.console import Console

    from makima.demo import DemoOptions, local_stack

    opts = DemoOptions(state_dir=tmp_path / "state", database_url=pg_dsn, live=False)
    async with local_stack(opts, Console(file=io.StringIO())) as run:
        assert run.dashboard is not None
        argv = shlex.split(run.dashboard)
        assert argv[:2] == ["makima", "dashboard"]
        flags = dict(zip(argv[2::2], argv[3::2], strict=True))
        assert flags["--kubeconfig"] == str(run.kubeconfig)
        token_file = Path(flags["--reader-token-file"])
        mode = (await asyncio.to_thread(token_file.stat)).st_mode
        assert mode & 0o077 == 0  # only the owner reads it
        token = await asyncio.to_thread(token_file.read_text)
        assert token not in run.dashboard
        reader = EventReader(flags["--api-url"], token)
        try:
            # The operator accepts the token: an unknown task is 404, not 401/403.
            try:
                await reader.events("00000000-0000-0000-0000-000000000000")
            except Exception as exc:
                assert getattr(exc, "status", None) == 404, exc
            else:
                raise AssertionError("an unknown task was found")
            bad = EventReader(flags["--api-url"], "wrong-token")
            try:
                await bad.events("00000000-0000-0000-0000-000000000000")
            except Exception as exc:
                assert getattr(exc, "status", None) in (401, 403), exc
            finally:
                await bad.close()
        finally:
            await reader.close()
