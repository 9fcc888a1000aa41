"""A thin async wrapper around the `git` command.

Credentials reach git only through `GIT_ASKPASS`: a tiny script that echoes the
username or token from the environment (`MAKIMA_GIT_USERNAME`, `MAKIMA_GIT_TOKEN`) when git
asks. They are never put in a URL, an argument, a log line or an event. Git never prompts
on a terminal (`GIT_TERMINAL_PROMPT=0`) and commits as a fixed identity,
`makima <makima@localhost>`, so no global git configuration is needed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

IDENTITY_NAME = "makima"
IDENTITY_EMAIL = "makima@localhost"
ENV_GIT_TOKEN = "MAKIMA_GIT_TOKEN"
ENV_GIT_USERNAME = "MAKIMA_GIT_USERNAME"
DEFAULT_GIT_USERNAME = "x-access-token"  # what GitHub expects with a token as password

ASKPASS_SCRIPT = """#!/bin/sh
# makima askpass: git calls this with its prompt as $1; answer from the environment.
case "$1" in
  Username*|username*) printf '%s\\n' "${MAKIMA_GIT_USERNAME:-x-access-token}" ;;
  *) printf '%s\\n' "${MAKIMA_GIT_TOKEN:-}" ;;
esac
"""


@dataclass(frozen=True)
class GitCredentials:
    """Username and token for HTTPS remotes; `repr` never shows the token."""

    token: str | None = None
    username: str | None = None

    def __repr__(self) -> str:
        return f"GitCredentials(username={self.username!r}, token={'***' if self.token else None})"

    @classmethod
    def resolve(cls, pushed: Mapping[str, str] | None = None, env: Mapping[str, str] | None = None) -> GitCredentials:
        """From credentials pushed with the task (daemons), else from the environment (Jobs).

        Pushed keys may be `token`/`username` or the environment names.
        """
        env = os.environ if env is None else env
        pushed = pushed or {}
        token = pushed.get("token") or pushed.get(ENV_GIT_TOKEN) or env.get(ENV_GIT_TOKEN) or None
        username = pushed.get("username") or pushed.get(ENV_GIT_USERNAME) or env.get(ENV_GIT_USERNAME) or None
        return cls(token=token, username=username)


class GitError(Exception):
    """A git command failed; the message holds the command (no secrets) and its stderr."""

    def __init__(self, args: Sequence[str], code: int, stdout: str, stderr: str) -> None:
        self.args_ = list(args)
        self.code = code
        self.stdout = stdout
        self.stderr = stderr
        detail = (stderr.strip() or stdout.strip())[-2000:]
        super().__init__(f"git {' '.join(args)} failed ({code}): {detail}")


@dataclass
class GitResult:
    code: int
    stdout: str
    stderr: str

    @property
    def lines(self) -> list[str]:
        return [line for line in self.stdout.splitlines() if line]


def write_askpass(directory: Path) -> Path:
    """Write the askpass script into `directory` (created if needed) and return its path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "makima-askpass.sh"
    path.write_text(ASKPASS_SCRIPT)
    path.chmod(stat.S_IRWXU)
    return path


def git_env(
    askpass: Path | None,
    credentials: GitCredentials | None = None,
    base: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment every git call gets: no prompts, fixed identity, askpass credentials."""
    env = dict(os.environ if base is None else base)
    env.pop(ENV_GIT_TOKEN, None)
    env.pop(ENV_GIT_USERNAME, None)
    env.update(
        {
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_AUTHOR_NAME": IDENTITY_NAME,
            "GIT_AUTHOR_EMAIL": IDENTITY_EMAIL,
            "GIT_COMMITTER_NAME": IDENTITY_NAME,
            "GIT_COMMITTER_EMAIL": IDENTITY_EMAIL,
            "LC_ALL": "C",
        }
    )
    # Settings for every call, whatever the machine's git configuration says: no signing
    # prompts, no credential helper storing the token, quiet detached checkouts.
    overrides = {"commit.gpgsign": "false", "credential.helper": "", "advice.detachedHead": "false"}
    env["GIT_CONFIG_COUNT"] = str(len(overrides))
    for i, (key, value) in enumerate(overrides.items()):
        env[f"GIT_CONFIG_KEY_{i}"] = key
        env[f"GIT_CONFIG_VALUE_{i}"] = value
    env.pop("GIT_DIR", None)
    env.pop("GIT_WORK_TREE", None)
    if askpass is not None:
        env["GIT_ASKPASS"] = str(askpass)
        env.pop("SSH_ASKPASS", None)
    if credentials is not None and credentials.token:
        env[ENV_GIT_TOKEN] = credentials.token
        env[ENV_GIT_USERNAME] = credentials.username or DEFAULT_GIT_USERNAME
    return env


@dataclass
class Git:
    """Runs git in `cwd` with a fixed environment (see `git_env`)."""

    cwd: Path
    env: dict[str, str] = field(default_factory=lambda: git_env(None))

    def at(self, cwd: Path) -> Git:
        return Git(cwd=cwd, env=self.env)

    async def run(self, *args: str, check: bool = True, input: str | None = None) -> GitResult:
        log.debug("git %s (in %s)", " ".join(args), self.cwd)
        proc = await asyncio.create_subprocess_exec(
            "git",
            *args,
            cwd=str(self.cwd),
            env=self.env,
            stdin=asyncio.subprocess.PIPE if input is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await proc.communicate(input.encode() if input is not None else None)
        result = GitResult(
            proc.returncode if proc.returncode is not None else -1,
            out.decode(errors="replace"),
            err.decode(errors="replace"),
        )
        if check and result.code != 0:
            raise GitError(args, result.code, result.stdout, result.stderr)
        return result

    async def out(self, *args: str) -> str:
        return (await self.run(*args)).stdout.strip()

    async def rev_parse(self, ref: str) -> str | None:
        res = await self.run("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}", check=False)
        return (res.stdout.strip() or None) if res.code == 0 else None

    async def head(self) -> str:
        return await self.out("rev-parse", "HEAD")

    async def is_ancestor(self, ancestor: str, descendant: str) -> bool:
        res = await self.run("merge-base", "--is-ancestor", ancestor, descendant, check=False)
        return res.code == 0

    async def status_porcelain(self) -> list[str]:
        return (await self.run("status", "--porcelain", "--untracked-files=all")).lines

    async def unmerged_paths(self) -> list[str]:
        return sorted(set((await self.run("diff", "--name-only", "--diff-filter=U")).lines))

    async def changed_files(self, since: str, until: str = "HEAD") -> list[str]:
        return (await self.run("diff", "--name-only", since, until)).lines

    async def merge_in_progress(self) -> bool:
        git_dir = Path(await self.out("rev-parse", "--git-dir"))
        if not git_dir.is_absolute():
            git_dir = self.cwd / git_dir
        return (git_dir / "MERGE_HEAD").exists()
