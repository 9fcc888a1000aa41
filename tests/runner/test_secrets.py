"""Credentials reach git only through askpass, and no secret appears in an event or log line.

The remote here is served over HTTP with basic auth by `git http-backend` behind a small
aiohttp stand-in (a test double), so a clone and a push only work if askpass answered.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from makima.core.protocol import AgentSettings, Outcome
from makima.dataplane.runner.agent import AgentContext, agent_env
from makima.dataplane.runner.git import write_askpass
from makima.dataplane.runner.run import run_task

from .conftest import files_on, git, step_spec
from .doubles import RecordingReporter

GIT_TOKEN = "gittoken-SECRET-42424242"
TASK_TOKEN = "tasktoken-SECRET-17171717"


class GitHttpStandIn:
    """Test double: smart-HTTP git server (git http-backend) requiring basic auth."""

    def __init__(self, root: Path, user: str, password: str) -> None:
        self.root = root
        self.expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        self.authorised = 0
        self.refused = 0
        self.paths: list[str] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.paths.append(request.path_qs)
        if request.headers.get("Authorization") != self.expected:
            self.refused += 1
            return web.Response(status=401, headers={"WWW-Authenticate": 'Basic realm="git"'})
        self.authorised += 1
        env = {
            "PATH": os.environ["PATH"],
            "GIT_PROJECT_ROOT": str(self.root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "PATH_INFO": request.path,
            "QUERY_STRING": request.query_string,
            "REQUEST_METHOD": request.method,
            "CONTENT_TYPE": request.headers.get("Content-Type", ""),
            "REMOTE_USER": "tester",
            "REMOTE_ADDR": "127.0.0.1",
            "GIT_CONFIG_NOSYSTEM": "1",
        }
        body = await request.read()
        proc = await asyncio.create_subprocess_exec(
            "git", "http-backend", env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        out, _ = await proc.communicate(body)
        head, _, payload = out.partition(b"\r\n\r\n")
        status, headers = 200, {}
        for line in head.decode().split("\r\n"):
            key, _, value = line.partition(":")
            if key.lower() == "status":
                status = int(value.strip().split()[0])
            elif key:
                headers[key] = value.strip()
        return web.Response(status=status, body=payload, headers=headers)


AGENT = (
    "import os, pathlib;"
    "print(dict(os.environ), flush=True);"
    "pathlib.Path('seen.txt').write_text(repr(os.environ.get('MAKIMA_GIT_TOKEN')) + ' ' + "
    "repr(os.environ.get('GIT_ASKPASS')) + ' ' + repr(len(os.environ.get('MAKIMA_TASK_TOKEN', ''))))"
)


async def test_token_reaches_git_only_via_askpass(
    remote: Path, tmp_path: Path, reporter: RecordingReporter, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    stand_in = GitHttpStandIn(remote.parent, "x-access-token", GIT_TOKEN)
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", stand_in.handle)
    server = TestServer(app)
    await server.start_server()
    try:
        url = str(server.make_url("/remote.git"))
        spec = step_spec(remote, "secret", AgentSettings(command=[sys.executable, "-c", AGENT]))
        spec = spec.model_copy(update={"workspace": spec.workspace.model_copy(update={"repo_url": url})})
        env = {**os.environ, "MAKIMA_GIT_TOKEN": GIT_TOKEN, "MAKIMA_TASK_TOKEN": TASK_TOKEN}
        result = await run_task(spec, reporter, tmp_path / "work", env=env, api_url="http://127.0.0.1:1")
    finally:
        await server.close()

    assert result.outcome == Outcome.SUCCEEDED, result.message
    assert stand_in.authorised >= 2 and stand_in.refused >= 1  # git asked, askpass answered
    # The agent saw neither the git token nor askpass; it did get the task token.
    assert files_on(remote, "makima/step-secret")["seen.txt"] == f"None None {len(TASK_TOKEN)}"
    # The agent printed its whole environment: the task token is redacted from the events.
    events = reporter.dump()
    assert "MAKIMA_TASK_TOKEN" in events and "***" in events
    for secret in (GIT_TOKEN, TASK_TOKEN):
        assert secret not in events
        assert secret not in caplog.text
        assert all(secret not in p for p in stand_in.paths)
        assert secret not in result.model_dump_json()
    workspace_url = git("config", "remote.origin.url", cwd=tmp_path / "work" / "repo")
    assert GIT_TOKEN not in workspace_url and "@" not in workspace_url
    # The askpass script lived in a private directory for each remote command only; no file
    # under the work dir holds the token.
    for path in (tmp_path / "work").rglob("*"):
        if path.is_file() and not path.is_symlink():
            assert GIT_TOKEN.encode() not in path.read_bytes(), path


def test_askpass_answers_only_for_the_repository_origin(tmp_path: Path) -> None:
    script = write_askpass(tmp_path)
    env = {
        "PATH": os.environ["PATH"],
        "MAKIMA_GIT_TOKEN": "s3cr3t-value",
        "MAKIMA_GIT_USERNAME": "bob",
        "MAKIMA_GIT_ORIGIN": "https://github.com",
    }

    def ask(prompt: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(script), prompt], env={**env, **extra}, capture_output=True, text=True)

    assert ask("Username for 'https://github.com': ").stdout == "bob\n"
    assert ask("Password for 'https://bob@github.com': ").stdout == "s3cr3t-value\n"
    # A remote the agent pointed elsewhere (or an insteadOf rewrite) gets nothing.
    for prompt in (
        "Password for 'https://bob@evil.example': ",
        "Password for 'http://bob@github.com': ",
        "Password for 'https://bob@github.com.evil.example': ",
        "Password for 'https://bob@github.com:8443': ",
    ):
        res = ask(prompt)
        assert res.returncode != 0 and res.stdout == "", prompt
    # Without an origin (no token for this repository) it answers nothing at all.
    res = ask("Password for 'https://bob@github.com': ", MAKIMA_GIT_ORIGIN="")
    assert res.returncode != 0 and "s3cr3t" not in res.stdout
    assert "s3cr3t-value" not in script.read_text()


def test_agent_env_strips_secrets_and_sets_context() -> None:
    base = {
        "MAKIMA_GIT_TOKEN": "x",
        "MAKIMA_GIT_USERNAME": "u",
        "GIT_ASKPASS": "/a",
        "MAKIMA_DAEMON_TOKEN": "d",
        "HOME": "/h",
    }
    ctx = AgentContext(
        task_id="t1", kind="step", directive="d", step="s", attempt=2, generation=3, api_url="http://api", token="tt"
    )
    env = agent_env(ctx, mode="conflict", conflict_files=["a", "b/c"], profile_env={"X": "1"}, base=base)
    assert not {"MAKIMA_GIT_TOKEN", "MAKIMA_GIT_USERNAME", "GIT_ASKPASS", "MAKIMA_DAEMON_TOKEN"} & set(env)
    assert env["HOME"] == "/h" and env["X"] == "1"
    assert env["MAKIMA_TASK_TOKEN"] == "tt" and env["MAKIMA_API_URL"] == "http://api"
    assert (env["MAKIMA_STEP"], env["MAKIMA_ATTEMPT"], env["MAKIMA_GENERATION"]) == ("s", "2", "3")
    assert env["MAKIMA_AGENT_MODE"] == "conflict" and env["MAKIMA_CONFLICT_FILES"] == "a\nb/c"
    assert "tt" not in repr(ctx)
