"""Prepare a task's git workspace: clone, start point, merges, the task branch.

Rule 5 of docs/architecture.md, "Life of a directive", says where a step starts.

1. Clone the repository (partial clone, `--filter=blob:none`; git ignores the filter
   where the remote does not support it, e.g. plain local paths).
2. Check out `start_from` (or the base branch when None).
3. Merge each branch of `merge` with `--no-ff`, in order. A conflict is handed to the
   agent in conflict mode with the conflict prompt and the conflicting files. Afterwards,
   files the agent changed and left without conflict markers are staged for it; if unmerged
   paths or conflict markers remain, the merge is aborted and the task fails listing them.
   Otherwise the merge is committed.
4. The task's `branch` (if any) is created at the result; without one (planning) the
   workspace stays on a detached HEAD.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from makima.core.prompts import conflict_prompt
from makima.core.protocol import EventType, WorkspacePlan
from makima.dataplane.runner.agent import AgentOutcome
from makima.dataplane.runner.git import Git, GitError
from makima.dataplane.runner.report import Reporter

log = logging.getLogger(__name__)

REMOTE = "origin"
_MARKER = re.compile(rb"^(<<<<<<<|>>>>>>>)( |$)", re.MULTILINE)

# (branch being merged, target description, conflicting paths) -> what the agent did
ConflictResolver = Callable[[str, str, list[str]], Awaitable[AgentOutcome]]


class WorkspaceError(Exception):
    """The workspace could not be prepared; the message is meant for the task result."""


class ConflictUnresolved(WorkspaceError):
    def __init__(self, branch: str, paths: list[str], detail: str = "") -> None:
        self.branch = branch
        self.paths = paths
        msg = f"merge of {branch} left unresolved conflicts in: {', '.join(paths)}"
        if detail:
            msg += f"\n{detail}"
        super().__init__(msg)


@dataclass
class Workspace:
    path: Path
    git: Git
    start: str  # commit the task's own work is measured from (after the merges)
    branch: str | None
    merged: list[str] = field(default_factory=list)


@dataclass
class MergeSummary:
    merged: list[str] = field(default_factory=list)
    already_merged: list[str] = field(default_factory=list)
    resolved_conflicts: dict[str, list[str]] = field(default_factory=dict)


def remote_ref(branch: str) -> str:
    return f"refs/remotes/{REMOTE}/{branch}"


async def clone(git: Git, repo_url: str, dest: Path, reporter: Reporter) -> Git:
    """Clone `repo_url` into `dest` (which must not exist or be empty); returns git at `dest`."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    await reporter.event(EventType.GIT, {"action": "clone", "message": "cloning the repository"})
    try:
        await git.at(dest.parent).run(
            "clone", "--filter=blob:none", "--no-checkout", "--origin", REMOTE, "--", repo_url, str(dest)
        )
    except GitError as exc:
        raise WorkspaceError(f"cannot clone the repository: {exc.stderr.strip()[-1000:]}") from exc
    repo = git.at(dest)
    repo.seal()
    return repo


async def require_remote_branch(git: Git, branch: str, what: str) -> str:
    sha = await git.rev_parse(remote_ref(branch))
    if sha is None:
        raise WorkspaceError(f"{what} {branch!r} does not exist in the repository")
    return sha


def has_conflict_markers(path: Path) -> bool:
    try:
        data = path.read_bytes()
    except (FileNotFoundError, IsADirectoryError):
        return False
    return bool(_MARKER.search(data))


def _digest(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except (FileNotFoundError, IsADirectoryError):
        return None


async def merge_branches(
    git: Git,
    branches: list[str],
    into: str,
    reporter: Reporter,
    resolver: ConflictResolver,
    *,
    skip_merged: bool = True,
) -> MergeSummary:
    """Merge `origin/<b>` for each b, `--no-ff`, in order; already merged ones are no-ops."""
    summary = MergeSummary()
    for branch in branches:
        sha = await require_remote_branch(git, branch, "branch to merge")
        if skip_merged and await git.is_ancestor(sha, "HEAD"):
            summary.already_merged.append(branch)
            await reporter.event(
                EventType.GIT, {"action": "merge", "branch": branch, "message": f"{branch} already merged"}
            )
            continue
        resolved = await merge_one(git, branch, into, reporter, resolver)
        summary.merged.append(branch)
        if resolved:
            summary.resolved_conflicts[branch] = resolved
    return summary


async def merge_one(git: Git, branch: str, into: str, reporter: Reporter, resolver: ConflictResolver) -> list[str]:
    """Merge one branch; returns the paths whose conflicts the agent resolved (usually none)."""
    message = f"Merge branch '{branch}' into {into}"
    res = await git.run("merge", "--no-ff", "--no-edit", "-m", message, remote_ref(branch), check=False)
    if res.code == 0:
        await reporter.event(EventType.GIT, {"action": "merge", "branch": branch, "message": f"merged {branch}"})
        return []
    conflicts = await git.unmerged_paths()
    if not conflicts:
        if await git.merge_in_progress():
            await git.run("merge", "--abort", check=False)
        raise WorkspaceError(f"cannot merge {branch}: {(res.stderr.strip() or res.stdout.strip())[-1000:]}")

    await reporter.event(
        EventType.GIT,
        {"action": "conflict", "branch": branch, "files": conflicts, "message": f"conflict merging {branch}"},
    )
    before = {p: _digest(git.cwd / p) for p in conflicts}
    outcome = await resolver(branch, into, conflicts)

    # Stage what the agent resolved but did not `git add`: changed, and free of markers.
    for path in await git.unmerged_paths():
        if path in before and _digest(git.cwd / path) != before[path] and not has_conflict_markers(git.cwd / path):
            await git.run("add", "-A", "--", path)
    remaining = set(await git.unmerged_paths())
    remaining.update(p for p in conflicts if has_conflict_markers(git.cwd / p))
    if remaining or not outcome.ok:
        if await git.merge_in_progress():
            await git.run("merge", "--abort", check=False)
        paths = sorted(remaining)
        detail = "" if outcome.ok else f"conflict resolution failed: {outcome.describe()}"
        if not paths:
            raise WorkspaceError(f"merge of {branch}: {detail}")
        raise ConflictUnresolved(branch, paths, detail)

    if await git.merge_in_progress():
        await git.run("commit", "--no-edit")
    elif not await git.is_ancestor(remote_ref(branch), "HEAD"):
        raise WorkspaceError(f"the agent ended the merge of {branch} without committing it")
    await reporter.event(
        EventType.GIT,
        {
            "action": "merge",
            "branch": branch,
            "resolved": conflicts,
            "message": f"merged {branch} (conflicts resolved)",
        },
    )
    return conflicts


async def prepare_workspace(
    plan: WorkspacePlan, dest: Path, git: Git, reporter: Reporter, resolver: ConflictResolver
) -> Workspace:
    """Clone, start from `start_from` (or base), merge `merge` in order, create `branch`."""
    repo = await clone(git, plan.repo_url, dest, reporter)
    start_branch = plan.start_from or plan.base_branch
    what = "start branch" if plan.start_from else "base branch"
    await require_remote_branch(repo, start_branch, what)
    if plan.branch:
        await repo.run("checkout", "-B", plan.branch, remote_ref(start_branch))
    else:
        await repo.run("checkout", "--detach", remote_ref(start_branch))
    await reporter.event(
        EventType.GIT,
        {"action": "checkout", "from": start_branch, "branch": plan.branch, "message": f"started from {start_branch}"},
    )
    summary = await merge_branches(repo, plan.merge, plan.branch or "HEAD", reporter, resolver)
    return Workspace(path=dest, git=repo, start=await repo.head(), branch=plan.branch, merged=summary.merged)


# ---- the conflict prompt ----------------------------------------------------------------------


def conflict_prompt_for(title: str, branch: str, into: str, files: list[str], purpose: str = "") -> str:
    """The shared conflict prompt (`makima.core.prompts.conflict_prompt`) for this merge."""
    return conflict_prompt(target=into, merging=branch, files=files, title=title, purpose=purpose)
