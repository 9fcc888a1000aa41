"""The demo's git origin: a bare repository on this machine, and what the demo reads back from it.

Git runs through the runner's `Git` (fixed identity, no prompts, the person's global git
configuration left out), and the pull request is the record `LocalHost` keeps in the
repository (`refs/makima/pulls/<n>/meta`), read the way the runner wrote it.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path
from typing import Any

from makima.cli.demo.errors import DemoError
from makima.dataplane.runner.git import Git, GitError
from makima.dataplane.runner.hosts import PULLS_REF_PREFIX, LocalHost, local_repo_path

SEED_MESSAGE = "Initial commit: hello-project"
_NOT_SEED = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")


def _stage_seed(bare: Path, seed: Path) -> Path:
    """Check what the demo needs, clear `bare`, and copy `seed` to a new scratch directory."""
    if shutil.which("git") is None:
        raise DemoError("git is not on PATH; the demo needs it (the runner works on real repositories)")
    if not seed.is_dir():
        raise DemoError(f"the example project {seed} is missing (run the demo from a clone: `make demo`)")
    shutil.rmtree(bare, ignore_errors=True)
    bare.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="makima-demo-seed-")) / "work"
    shutil.copytree(seed, work, ignore=_NOT_SEED)
    return work


async def create_origin(bare: Path, seed: Path, base: str = "main", message: str = SEED_MESSAGE) -> Path:
    """A fresh bare repository at `bare` holding the files of `seed` as one commit on `base`."""
    work = await asyncio.to_thread(_stage_seed, bare, seed)
    git = Git(cwd=work)
    try:
        await git.run("init", "-q", "--bare", "-b", base, str(bare))
        await git.run("init", "-q", "-b", base)
        await git.run("add", "-A")
        await git.run("commit", "-q", "-m", message)
        await git.run("push", "-q", str(bare), f"HEAD:refs/heads/{base}")
    except GitError as exc:
        raise DemoError(str(exc)) from exc
    finally:
        await asyncio.to_thread(shutil.rmtree, work.parent, True)
    return bare


def local_path(repo_url: str) -> Path | None:
    """The bare repository behind a file:// URL or a plain path, if it is on this machine."""
    path = local_repo_path(repo_url)
    return path if path is not None and path.exists() else None


def meta_ref(number: int) -> str:
    """Where `LocalHost` keeps pull request `number`'s record."""
    return f"{PULLS_REF_PREFIX}{number}/meta"


async def pull_request(repo: Path, branch: str) -> dict[str, Any] | None:
    """The newest pull request recorded in `repo` whose head is `branch`."""
    pulls = await LocalHost(repo).list_pulls()  # sorted by number
    return next((p for p in reversed(pulls) if p.get("head") == branch), None)


async def commits(repo: Path, base: str, branch: str) -> str:
    """`git log --oneline base..branch`: what the pull request adds."""
    return (await Git(cwd=repo).run("log", "--oneline", f"{base}..{branch}")).stdout.rstrip()


async def diffstat(repo: Path, base: str, branch: str) -> str:
    """`git diff --stat base...branch`."""
    return (await Git(cwd=repo).run("diff", "--stat", f"{base}...{branch}")).stdout.rstrip()  # keep the alignment
