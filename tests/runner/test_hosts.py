"""Git hosts: the local host's artefact, GitHub against a recording stand-in, host choice."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from makima.dataplane.runner.git import GitCredentials
from makima.dataplane.runner.hosts import (
    GitHostError,
    GitHubHost,
    LocalHost,
    host_for,
    local_repo_path,
    parse_github_url,
)

from .conftest import git

TOKEN = "ghp_secretTOKEN0123456789"


class GitHubStandIn:
    """Test double of the GitHub pulls API: records every request."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.pulls: list[dict[str, Any]] = []

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/repos/{owner}/{repo}/pulls", self.list)
        app.router.add_post("/repos/{owner}/{repo}/pulls", self.create)
        app.router.add_patch("/repos/{owner}/{repo}/pulls/{n}", self.update)
        return app

    async def _record(self, request: web.Request) -> dict[str, Any]:
        body = await request.json() if request.can_read_body else None
        self.requests.append(
            {
                "method": request.method,
                "path": request.path,
                "query": dict(request.query),
                "auth": request.headers.get("Authorization"),
                "body": body,
            }
        )
        return body or {}

    async def list(self, request: web.Request) -> web.Response:
        await self._record(request)
        owner = request.match_info["owner"]
        head = request.query["head"]
        found = [
            p for p in self.pulls if f"{owner}:{p['head']['ref']}" == head and p["base"]["ref"] == request.query["base"]
        ]
        return web.json_response(found)

    async def create(self, request: web.Request) -> web.Response:
        body = await self._record(request)
        n = len(self.pulls) + 1
        pr = {
            "number": n,
            "html_url": f"https://github.com/o/r/pull/{n}",
            "title": body["title"],
            "body": body["body"],
            "draft": body["draft"],
            "head": {"ref": body["head"]},
            "base": {"ref": body["base"]},
        }
        self.pulls.append(pr)
        return web.json_response(pr, status=201)

    async def update(self, request: web.Request) -> web.Response:
        body = await self._record(request)
        pr = self.pulls[int(request.match_info["n"]) - 1]
        pr.update(body)
        return web.json_response(pr)


async def test_github_creates_once_then_updates(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    stand_in = GitHubStandIn()
    server = TestServer(stand_in.app())
    await server.start_server()
    try:
        host = GitHubHost("o", "r", TOKEN, api_url=str(server.make_url("")))
        first = await host.open_or_update("makima/demo", "main", "Title 1", "Body 1", False)
        second = await host.open_or_update("makima/demo", "main", "Title 2", "Body 2", False)
    finally:
        await server.close()
    assert (first.created, first.number, first.url) == (True, 1, "https://github.com/o/r/pull/1")
    assert (second.created, second.number) == (False, 1)
    assert [(r["method"], r["path"]) for r in stand_in.requests] == [
        ("GET", "/repos/o/r/pulls"),
        ("POST", "/repos/o/r/pulls"),
        ("GET", "/repos/o/r/pulls"),
        ("PATCH", "/repos/o/r/pulls/1"),
    ]
    assert stand_in.requests[0]["query"] == {"head": "o:makima/demo", "base": "main", "state": "open"}
    assert stand_in.requests[3]["body"] == {"title": "Title 2", "body": "Body 2"}
    assert all(r["auth"] == f"Bearer {TOKEN}" for r in stand_in.requests)
    assert stand_in.pulls[0]["title"] == "Title 2"
    assert TOKEN not in caplog.text
    assert TOKEN not in repr(host)


async def test_github_error_is_clear_and_token_free() -> None:
    app = web.Application()

    async def refuse(request: web.Request) -> web.Response:
        return web.json_response({"message": "Bad credentials"}, status=401)

    app.router.add_route("*", "/{tail:.*}", refuse)
    server = TestServer(app)
    await server.start_server()
    try:
        host = GitHubHost("o", "r", TOKEN, api_url=str(server.make_url("")))
        with pytest.raises(GitHostError) as err:
            await host.open_or_update("h", "main", "t", "b", False)
    finally:
        await server.close()
    assert "Bad credentials" in str(err.value) and TOKEN not in str(err.value)


async def test_github_without_token_fails_clearly() -> None:
    with pytest.raises(GitHostError, match="no GitHub token"):
        await GitHubHost("o", "r", None, api_url="http://127.0.0.1:9").open_or_update("h", "main", "t", "b", False)


async def test_local_host_records_pull_request(remote: Path) -> None:
    git("branch", "feature", "main", cwd=remote)
    host = LocalHost(remote)
    first = await host.open_or_update("feature", "main", "T", "B", True)
    assert (first.number, first.created, first.url) == (1, True, f"{host.repo_path.as_uri()}#pull/1")
    again = await host.open_or_update("feature", "main", "T2", "B2", False)
    assert (again.number, again.created) == (1, False)
    git("branch", "other", "main", cwd=remote)
    other = await host.open_or_update("other", "main", "O", "", False)
    assert other.number == 2
    meta = json.loads(git("cat-file", "blob", "refs/makima/pulls/1/meta", cwd=remote))
    assert meta["title"] == "T2" and meta["body"] == "B2" and meta["draft"] is False
    assert [p["number"] for p in await host.list_pulls()] == [1, 2]
    with pytest.raises(GitHostError, match="not in"):
        await host.open_or_update("missing", "main", "x", "", False)


def test_host_choice(tmp_path: Path, remote: Path) -> None:
    env: dict[str, str] = {}
    assert isinstance(host_for("https://github.com/o/r.git", GitCredentials(token="t"), env=env), GitHubHost)
    assert isinstance(host_for("git@github.com:o/r.git", env=env), GitHubHost)
    assert isinstance(host_for(remote.as_uri(), env=env), LocalHost)
    assert isinstance(host_for(str(remote), env=env), LocalHost)
    with pytest.raises(GitHostError, match="no git host") as err:
        host_for("https://user:pw@gitlab.example.com/o/r.git", env=env)
    assert "pw" not in str(err.value)
    gh = host_for("https://github.com/o/r", env={"MAKIMA_GITHUB_API_URL": "http://127.0.0.1:1"})
    assert isinstance(gh, GitHubHost) and gh.api_url == "http://127.0.0.1:1"
    assert parse_github_url("https://github.com/owner/my.repo.git") == ("owner", "my.repo")
    assert parse_github_url("https://example.com/o/r") is None
    assert local_repo_path(str(tmp_path / "nope")) is None
