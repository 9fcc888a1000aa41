"""A thin async wrapper around the `git` command, and how git gets the credential.

The git token must never be within the agent's reach (the agent runs as the same user):

- it is not in the runner's environment (`makima task run` removes it at start and makes
  itself non-dumpable, see `proctree`), nor in any URL, argument, file, log line or event;
- only git commands that talk to the remote (`clone`, `fetch`, `push`, `ls-remote`) get it, in
  their own environment, and only while no agent process is alive (the runner ends the whole
  agent tree before it goes on);
- git asks for it through `GIT_ASKPASS`: a script written afresh into a new private directory
  for each such command, which answers only for the repository's own origin
  (`MAKIMA_GIT_ORIGIN`, scheme://host[:port]) — a remote URL the agent redirected elsewhere
  gets nothing;
- the agent may have edited the clone's `.git/config` and its home directory's git config
  (a `credential.helper`, hooks, a proxy, `insteadOf` rewrites): before every remote command
  the clone's config is restored to what the runner saw right after cloning, the global
  config is the snapshot taken when the runner started, and hooks, fsmonitor and credential
  helpers are switched off on the command line (the highest-precedence scope).

Git never prompts on a terminal (`GIT_TERMINAL_PROMPT=0`) and commits as a fixed identity,
`makima <makima@localhost>`, so no global git configuration is needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import stat
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from makima.dataplane.runner import proctree

log = logging.getLogger(__name__)

IDENTITY_NAME = "makima"
IDENTITY_EMAIL = "makima@localhost"
ENV_GIT_TOKEN = "MAKIMA_GIT_TOKEN"
ENV_GIT_USERNAME = "MAKIMA_GIT_USERNAME"
ENV_GIT_ORIGIN = "MAKIMA_GIT_ORIGIN"
DEFAULT_GIT_USERNAME = "x-access-token"  # what GitHub expects with a token as password

ASKPASS_SCRIPT = """#!/bin/sh
# makima askpass: git calls this with its prompt as $1, e.g. "Password for 'https://u@host': ".
# Answer only for the repository's origin ($MAKIMA_GIT_ORIGIN, scheme://host[:port]).
url=${1#*\\'}
url=${url%\\'*}
scheme=${url%%://*}
rest=${url#*://}
rest=${rest%%/*}
host=${rest##*@}
if [ -z "${MAKIMA_GIT_ORIGIN:-}" ] || [ "$scheme://$host" != "$MAKIMA_GIT_ORIGIN" ]; then
  echo "makima askpass: no credential for $scheme://$host" >&2
  exit 1
fi
case "$1" in
  Username*|username*) printf '%s\\n' "${MAKIMA_GIT_USERNAME:-x-access-token}" ;;
  *) printf '%s\\n' "${MAKIMA_GIT_TOKEN:-}" ;;
esac
"""

# Commands that talk to the remote: the only ones that get the credential.
NETWORK_COMMANDS = frozenset({"clone", "fetch", "push", "ls-remote", "pull"})

# Command-line scope: wins over anything the agent wrote into a repository or global config.
HARDENING = {
    "commit.gpgsign": "false",
    "credential.helper": "",
    "advice.detachedHead": "false",
    "core.hooksPath": os.devnull,
    "core.fsmonitor": "false",
    "protocol.ext.allow": "never",
}


def origin_of(url: str) -> str | None:
    """scheme://host[:port] of an HTTP(S) URL (what askpass compares with), else None."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    host = parts.netloc.rsplit("@", 1)[-1]
    return f"{parts.scheme}://{host}"


def global_config_snapshot(env: Mapping[str, str] | None = None) -> bytes:
    """The user's global git config as it is now (before any agent ran)."""
    env = os.environ if env is None else env
    if env.get("GIT_CONFIG_GLOBAL"):
        paths = [Path(env["GIT_CONFIG_GLOBAL"])]
    else:
        home = Path(env.get("HOME") or Path.home())
        xdg = Path(env.get("XDG_CONFIG_HOME") or home / ".config")
        paths = [xdg / "git" / "config", home / ".gitconfig"]
    chunks = []
    for path in paths:
        with contextlib.suppress(OSError):
            if path.is_file():
                chunks.append(path.read_bytes())
    return b"\n".join(chunks)


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
    # Settings for every call, whatever the machine's (or the agent's) git configuration says:
    # no signing prompts, no credential helper storing the token, no hooks, quiet checkouts.
    env["GIT_CONFIG_COUNT"] = str(len(HARDENING))
    for i, (key, value) in enumerate(HARDENING.items()):
        env[f"GIT_CONFIG_KEY_{i}"] = key
        env[f"GIT_CONFIG_VALUE_{i}"] = value
    env.pop("GIT_DIR", None)
    env.pop("GIT_WORK_TREE", None)
    env.pop("GIT_ASKPASS", None)
    env.pop("SSH_ASKPASS", None)
    env.pop(ENV_GIT_ORIGIN, None)
    if askpass is not None:
        env["GIT_ASKPASS"] = str(askpass)
    if credentials is not None and credentials.token:
        env[ENV_GIT_TOKEN] = credentials.token
        env[ENV_GIT_USERNAME] = credentials.username or DEFAULT_GIT_USERNAME
    return env


@dataclass
class Guard:
    """What remote commands need beyond the plain environment (shared by every `Git.at`)."""

    credentials: GitCredentials | None = None
    origin: str | None = None  # scheme://host the credential is for
    global_config: bytes = b""
    sealed: dict[Path, bytes] = field(default_factory=dict)  # clone dir -> its .git/config after cloning


@dataclass
class Git:
    """Runs git in `cwd` with a fixed environment (see `git_env`)."""

    cwd: Path
    env: dict[str, str] = field(default_factory=lambda: git_env(None))
    guard: Guard = field(default_factory=Guard)

    def at(self, cwd: Path) -> Git:
        return Git(cwd=cwd, env=self.env, guard=self.guard)

    def seal(self) -> None:
        """Remember this clone's config as it is now; restored before every remote command."""
        config = self.cwd / ".git" / "config"
        self.guard.sealed[self.cwd.absolute()] = config.read_bytes()

    def _restore(self) -> None:
        sealed = self.guard.sealed.get(self.cwd.absolute())
        if sealed is None:
            return
        dot_git = self.cwd / ".git"
        if dot_git.is_symlink() or not dot_git.is_dir():
            raise GitError(["(workspace check)"], 1, "", "the workspace's .git is no longer the runner's clone")
        with contextlib.suppress(FileNotFoundError):
            (dot_git / "commondir").unlink()  # would point git at another repository's config
        config = dot_git / "config"
        if config.is_symlink() or config.is_dir():
            shutil.rmtree(config) if config.is_dir() and not config.is_symlink() else config.unlink()
        config.write_bytes(sealed)

    async def run(self, *args: str, check: bool = True, input: str | None = None) -> GitResult:
        log.debug("git %s (in %s)", " ".join(args), self.cwd)
        network = bool(args) and args[0] in NETWORK_COMMANDS
        if network:
            # Nothing the agent left behind may be alive while git holds the credential.
            await proctree.end_tree(None, None, None)
        self._restore()
        private = Path(tempfile.mkdtemp(prefix="makima-git-"))
        env = self._env_in(private, network)
        try:
            proc = await asyncio.create_subprocess_exec(
                "git",
                *args,
                cwd=str(self.cwd),
                env=env,
                stdin=asyncio.subprocess.PIPE if input is not None else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            proctree.track(proc.pid)
            try:
                out, err = await proc.communicate(input.encode() if input is not None else None)
            except asyncio.CancelledError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                raise
            finally:
                proctree.untrack(proc.pid)
        finally:
            shutil.rmtree(private, ignore_errors=True)
        result = GitResult(
            proc.returncode if proc.returncode is not None else -1,
            out.decode(errors="replace"),
            err.decode(errors="replace"),
        )
        if check and result.code != 0:
            raise GitError(args, result.code, result.stdout, result.stderr)
        return result

    def _env_in(self, private: Path, network: bool) -> dict[str, str]:
        """One command's environment: the global config snapshot; for a remote command a fresh
        askpass and the token (when there is one for the repository's origin)."""
        guard = self.guard
        global_config = private / "gitconfig"
        global_config.write_bytes(guard.global_config)
        env = dict(self.env)
        if network:
            credentials = guard.credentials if guard.origin else None
            env = git_env(write_askpass(private), credentials, base=self.env)
            if guard.origin:
                env[ENV_GIT_ORIGIN] = guard.origin
        env["GIT_CONFIG_GLOBAL"] = str(global_config)
        return env

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


ATTEMPT_REFS = "refs/makima/attempts"  # refs/makima/attempts/<branch>/<attempt>: which attempt pushed


@dataclass(frozen=True)
class FencedPush:
    pushed: bool
    message: str = ""


def attempt_ref(branch: str, attempt: int) -> str:
    return f"{ATTEMPT_REFS}/{branch}/{attempt:05d}"


async def push_fenced(repo: Git, branch: str, attempt: int, head: str, *, tries: int = 5) -> FencedPush:
    """Push `head` to `branch` unless a newer attempt of the same step pushed it: the newest attempt wins.

    Each attempt rebuilds its step branch from its start point, so its push is forced, but
    fenced: every push also writes `refs/makima/attempts/<branch>/<attempt>` in the same
    atomic push, leased on the branch tip read just before. So an attempt that was declared
    lost and wakes up late can never overwrite its retry's push (it sees the retry's marker,
    or loses the lease), and a retry is never stopped by a lost attempt that pushed in
    between (it reads the new tip, sees only older markers, and pushes over it).
    """
    prefix = f"{ATTEMPT_REFS}/{branch}/"
    detail = ""
    for _ in range(tries):
        listed = await repo.run("ls-remote", "origin", f"refs/heads/{branch}", f"{prefix}*")
        tip = ""
        newest = 0
        for line in listed.lines:
            sha, _, ref = line.partition("\t")
            if ref == f"refs/heads/{branch}":
                tip = sha
            elif ref.startswith(prefix) and ref[len(prefix) :].isdigit():
                newest = max(newest, int(ref[len(prefix) :]))
        if newest > attempt:
            return FencedPush(
                False, f"attempt {newest} of this step already pushed {branch}; attempt {attempt} is stale"
            )
        result = await repo.run(
            "push",
            "--atomic",
            f"--force-with-lease=refs/heads/{branch}:{tip}",
            "origin",
            f"{head}:refs/heads/{branch}",
            f"+{head}:{attempt_ref(branch, attempt)}",
            check=False,
        )
        if result.code == 0:
            return FencedPush(True)
        detail = result.stderr.strip()[-500:]
        log.info("push of %s lost a race (%s); reading the remote again", branch, detail.splitlines()[-1:] or "")
    return FencedPush(False, f"could not push {branch} after {tries} tries: {detail}")
