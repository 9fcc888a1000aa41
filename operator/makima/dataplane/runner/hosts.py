"""Git hosts: open a pull request, or update the one already open for the same head and base.

- `LocalHost` serves bare repositories on disk (`file://` URLs or plain paths) and records
  the pull request inside the repository itself, so the quickstart has a real artefact:

    refs/makima/pulls/<n>/head   -> the head branch's commit when last opened/updated
    refs/makima/pulls/<n>/meta   -> a blob holding JSON:
        {"number": n, "title": …, "body": …, "head": "makima/…", "base": "main",
         "headCommit": sha, "state": "open", "draft": false,
         "createdAt": iso8601, "updatedAt": iso8601, "url": "file:///…/repo.git#pull/<n>"}

  Read one with `git --git-dir=repo.git cat-file blob refs/makima/pulls/1/meta`. Opening
  again for the same head and base updates that pull request (title, body, draft, head
  commit) instead of creating another. Numbers are allocated with a compare-and-set
  `update-ref`, so two writers never share one.
- `GitHubHost` speaks the GitHub REST API v3: find the open pull request for head/base,
  create it if there is none, else PATCH its title and body. The token goes in the
  `Authorization` header only. The API base URL is configurable (`MAKIMA_GITHUB_API_URL`).

`host_for(repo_url)` picks the host from the repository URL.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlparse

import aiohttp

from makima.dataplane.runner.git import Git, GitCredentials, GitError, git_env

ENV_GITHUB_API_URL = "MAKIMA_GITHUB_API_URL"
ENV_GIT_HOST = "MAKIMA_GIT_HOST"  # force a host kind: "github" or "local"
GITHUB_API_URL = "https://api.github.com"
PULLS_REF_PREFIX = "refs/makima/pulls/"
_ZERO = "0" * 40


class GitHostError(Exception):
    """The host refused or could not be reached; the message never holds a credential."""


@dataclass(frozen=True)
class PullRequestInfo:
    url: str
    number: int
    created: bool


class GitHost(Protocol):
    async def open_or_update(self, head: str, base: str, title: str, body: str, draft: bool) -> PullRequestInfo: ...


# ---- local bare repositories ------------------------------------------------------------------


def local_repo_path(repo_url: str) -> Path | None:
    """The on-disk path of a `file://` URL or an existing plain path; None otherwise."""
    if repo_url.startswith("file://"):
        return Path(unquote(urlparse(repo_url).path))
    if "://" not in repo_url and not re.match(r"^[\w.-]+@[\w.-]+:", repo_url):
        path = Path(repo_url).expanduser()
        if path.exists():
            return path.resolve()
    return None


class LocalHost:
    def __init__(self, repo_path: Path, git: Git | None = None) -> None:
        self.repo_path = repo_path.resolve()
        self.git = git or Git(cwd=self.repo_path, env=git_env(None))
        self.git = self.git.at(self.repo_path)

    def url(self, number: int) -> str:
        return f"{self.repo_path.as_uri()}#pull/{number}"

    async def list_pulls(self) -> list[dict[str, Any]]:
        refs = (await self.git.run("for-each-ref", "--format=%(refname)", PULLS_REF_PREFIX)).lines
        pulls = []
        for ref in refs:
            if ref.endswith("/meta"):
                raw = await self.git.out("cat-file", "blob", ref)
                try:
                    pulls.append(json.loads(raw))
                except ValueError:
                    continue
        return sorted(pulls, key=lambda p: int(p.get("number", 0)))

    async def get_pull(self, number: int) -> dict[str, Any] | None:
        res = await self.git.run("cat-file", "blob", f"{PULLS_REF_PREFIX}{number}/meta", check=False)
        return json.loads(res.stdout) if res.code == 0 else None

    async def open_or_update(self, head: str, base: str, title: str, body: str, draft: bool) -> PullRequestInfo:
        head_commit = await self.git.rev_parse(f"refs/heads/{head}")
        if head_commit is None:
            raise GitHostError(f"cannot open a pull request: branch {head!r} is not in {self.repo_path}")
        if await self.git.rev_parse(f"refs/heads/{base}") is None:
            raise GitHostError(f"cannot open a pull request: base branch {base!r} is not in {self.repo_path}")
        now = datetime.now(UTC).isoformat(timespec="seconds")
        pulls = await self.list_pulls()
        existing = next(
            (p for p in pulls if p.get("head") == head and p.get("base") == base and p.get("state") == "open"), None
        )
        if existing is not None:
            number = int(existing["number"])
            await self.git.run("update-ref", f"{PULLS_REF_PREFIX}{number}/head", head_commit)
            created = False
            meta = dict(existing)
        else:
            number = max((int(p.get("number", 0)) for p in pulls), default=0) + 1
            for _ in range(100):
                try:
                    await self.git.run("update-ref", f"{PULLS_REF_PREFIX}{number}/head", head_commit, _ZERO)
                    break
                except GitError:
                    number += 1  # taken meanwhile
            else:
                raise GitHostError("cannot allocate a pull request number")
            created = True
            meta = {"number": number, "createdAt": now, "state": "open"}
        meta.update(
            {
                "title": title,
                "body": body,
                "head": head,
                "base": base,
                "headCommit": head_commit,
                "draft": draft,
                "updatedAt": now,
                "url": self.url(number),
            }
        )
        blob = (await self.git.run("hash-object", "-w", "--stdin", input=json.dumps(meta, indent=2) + "\n")).stdout
        await self.git.run("update-ref", f"{PULLS_REF_PREFIX}{number}/meta", blob.strip())
        return PullRequestInfo(url=self.url(number), number=number, created=created)


class RemoteRefsHost(LocalHost):
    """A git server with no pull-request API (git daemon, plain HTTP or SSH): the same record
    as `LocalHost`, kept in the server's own refs. They are fetched into a scratch bare
    repository, updated there, and pushed back (the PR refs are makima's own, so forced)."""

    def __init__(self, remote_url: str, git: Git, scratch: Path) -> None:
        self.remote = remote_url
        scratch.mkdir(parents=True, exist_ok=True)
        super().__init__(scratch, git)

    def url(self, number: int) -> str:
        return f"{_safe_url(self.remote)}#pull/{number}"

    async def open_or_update(self, head: str, base: str, title: str, body: str, draft: bool) -> PullRequestInfo:
        await self.git.run("init", "-q", "--bare", str(self.repo_path))
        fetched = await self.git.run(
            "fetch",
            "-q",
            "--no-tags",
            "--",
            self.remote,
            f"+{PULLS_REF_PREFIX}*:{PULLS_REF_PREFIX}*",
            f"+refs/heads/{head}:refs/heads/{head}",
            f"+refs/heads/{base}:refs/heads/{base}",
            check=False,
        )
        if fetched.code != 0:
            raise GitHostError(f"cannot read pull requests from {_safe_url(self.remote)}: {fetched.stderr.strip()}")
        info = await super().open_or_update(head, base, title, body, draft)
        refs = [f"{PULLS_REF_PREFIX}{info.number}/{part}" for part in ("head", "meta")]
        refspecs = [f"{r}:{r}" for r in refs]
        pushed = await self.git.run("push", "-q", "--force", "--", self.remote, *refspecs, check=False)
        if pushed.code != 0:
            raise GitHostError(f"cannot record the pull request in {_safe_url(self.remote)}: {pushed.stderr.strip()}")
        return info


def is_plain_git_remote(repo_url: str) -> bool:
    """git://, http(s)://, ssh:// or scp-like user@host:path URLs."""
    return bool(re.match(r"^(git|https?|ssh)://", repo_url) or re.match(r"^[\w.-]+@[\w.-]+:", repo_url))


# ---- GitHub -----------------------------------------------------------------------------------

_GITHUB_URL = re.compile(
    r"^(?:https?://(?:[^@/]+@)?github\.com/|ssh://git@github\.com/|git@github\.com:)"
    r"(?P<owner>[\w.-]+)/(?P<repo>[\w.-]+?)(?:\.git)?/?$"
)


def parse_github_url(repo_url: str) -> tuple[str, str] | None:
    m = _GITHUB_URL.match(repo_url.strip())
    return (m["owner"], m["repo"]) if m else None


class GitHubHost:
    def __init__(
        self,
        owner: str,
        repo: str,
        token: str | None,
        *,
        api_url: str | None = None,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self.owner = owner
        self.repo = repo
        self._token = token
        self.api_url = (api_url or os.environ.get(ENV_GITHUB_API_URL) or GITHUB_API_URL).rstrip("/")
        self._session = session

    def __repr__(self) -> str:
        return f"GitHubHost({self.owner}/{self.repo}, api_url={self.api_url!r})"

    async def open_or_update(self, head: str, base: str, title: str, body: str, draft: bool) -> PullRequestInfo:
        if not self._token:
            raise GitHostError("no GitHub token: set the directive's credentials Secret (MAKIMA_GIT_TOKEN)")
        session = self._session or aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        try:
            existing = await self._find(session, head, base)
            if existing is None:
                status, data = await self._call(
                    session,
                    "POST",
                    f"/repos/{self.owner}/{self.repo}/pulls",
                    {"title": title, "head": head, "base": base, "body": body, "draft": draft},
                )
                if status == 201 and isinstance(data, dict):
                    return PullRequestInfo(url=data["html_url"], number=int(data["number"]), created=True)
                if status == 422:  # "A pull request already exists": someone raced us
                    existing = await self._find(session, head, base)
                if existing is None:
                    raise GitHostError(f"GitHub refused to create the pull request ({status}): {_gh_message(data)}")
            number = int(existing["number"])
            status, data = await self._call(
                session, "PATCH", f"/repos/{self.owner}/{self.repo}/pulls/{number}", {"title": title, "body": body}
            )
            if status != 200 or not isinstance(data, dict):
                raise GitHostError(f"GitHub refused to update pull request #{number} ({status}): {_gh_message(data)}")
            return PullRequestInfo(url=data.get("html_url") or existing["html_url"], number=number, created=False)
        except aiohttp.ClientError as exc:
            raise GitHostError(f"cannot reach GitHub at {self.api_url}: {exc}") from exc
        finally:
            if self._session is None:
                await session.close()

    async def _find(self, session: aiohttp.ClientSession, head: str, base: str) -> dict[str, Any] | None:
        status, data = await self._call(
            session,
            "GET",
            f"/repos/{self.owner}/{self.repo}/pulls",
            params={"head": f"{self.owner}:{head}", "base": base, "state": "open"},
        )
        if status != 200 or not isinstance(data, list):
            raise GitHostError(f"GitHub refused to list pull requests ({status}): {_gh_message(data)}")
        return next((p for p in data if isinstance(p, dict)), None)

    async def _call(
        self,
        session: aiohttp.ClientSession,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        params: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        headers = {
            "Authorization": f"Bearer {self._token}",
            "Accept": "application/vnd.github+json",
            "X-GitHub-Api-Version": "2022-11-28",
            "User-Agent": "makima",
        }
        async with session.request(method, self.api_url + path, json=body, params=params, headers=headers) as resp:
            text = await resp.text()
            try:
                return resp.status, json.loads(text) if text else None
            except ValueError:
                return resp.status, text


def _gh_message(data: Any) -> str:
    if isinstance(data, dict):
        msg = str(data.get("message", ""))
        errors = data.get("errors")
        if isinstance(errors, list):
            msg += "; " + "; ".join(str(e.get("message", e)) if isinstance(e, dict) else str(e) for e in errors)
        return msg or json.dumps(data)[:500]
    return str(data)[:500]


# ---- choice -----------------------------------------------------------------------------------


def host_for(
    repo_url: str,
    credentials: GitCredentials | None = None,
    *,
    env: Mapping[str, str] | None = None,
    git: Git | None = None,
    scratch: Path | None = None,
) -> GitHost:
    """GitHub for github.com URLs, LocalHost for file:// URLs and existing paths, and for any
    other git server (given `git`, with the task's credentials, and a `scratch` folder) the
    same record kept in the server's refs."""
    env = os.environ if env is None else env
    forced = env.get(ENV_GIT_HOST, "").lower()
    creds = credentials or GitCredentials.resolve(env=env)
    gh = parse_github_url(repo_url)
    if forced == "github" or (gh and forced != "local"):
        if gh is None:
            raise GitHostError(f"{ENV_GIT_HOST}=github but {repo_url!r} is not a GitHub repository URL")
        return GitHubHost(gh[0], gh[1], creds.token, api_url=env.get(ENV_GITHUB_API_URL))
    path = local_repo_path(repo_url)
    if path is not None:
        return LocalHost(path)
    if git is not None and scratch is not None and is_plain_git_remote(repo_url):
        return RemoteRefsHost(repo_url, git, scratch)
    raise GitHostError(
        f"no git host for {_safe_url(repo_url)}: supported are github.com, local repositories "
        "(file:// URLs or paths) and git servers (git://, http(s)://, ssh://)"
    )


def _safe_url(url: str) -> str:
    """The URL without any user-info part (never echo credentials someone put in a URL)."""
    return re.sub(r"(://)[^@/]+@", r"\1", url)
