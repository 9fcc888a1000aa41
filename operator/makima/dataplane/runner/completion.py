"""The completion task: merge the step branches into the directive branch and open the PR.

1. Check out the directive branch from the remote if it exists, else create it from the
   base branch.
2. Merge the branches of `completion.merge`, in the order given (topological), `--no-ff`:
   only the DAG's sinks, checked with git. A branch already contained in the directive
   branch is a no-op (a re-completion after a re-plan merges only what is new), and a
   branch contained in another branch being merged is not merged on its own: the step
   that built on it merged it already, with any conflict resolved there, so merging both
   would bring that conflict back. A conflict goes to the agent (conflict mode); that is
   the only time the agent runs here.
3. Push the directive branch (a plain fast-forward push: it only ever grows).
4. Open the pull request, or update the open one, through the git host, and report its URL
   both in the result and through `POST /v1/tasks/{id}/pull-request`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from makima.core.protocol import CompletionPlan, EventType, Outcome, TaskResult, TaskSpec
from makima.dataplane.client import ApiError
from makima.dataplane.runner.git import Git
from makima.dataplane.runner.hosts import GitHost
from makima.dataplane.runner.report import Reporter
from makima.dataplane.runner.workspace import (
    ConflictResolver,
    WorkspaceError,
    clone,
    merge_branches,
    remote_ref,
    require_remote_branch,
)

log = logging.getLogger(__name__)

HostFactory = Callable[[str], GitHost]


async def run_completion(
    spec: TaskSpec,
    dest: Path,
    git: Git,
    reporter: Reporter,
    resolver_for: Callable[[Path], ConflictResolver],
    host_factory: HostFactory,
) -> TaskResult:
    plan: CompletionPlan | None = spec.completion
    if plan is None:
        raise WorkspaceError("completion task without a completion plan")
    repo = await clone(git, spec.workspace.repo_url, dest, reporter)
    await require_remote_branch(repo, plan.base_branch, "base branch")
    existing = await repo.rev_parse(remote_ref(plan.directive_branch))
    start_ref = remote_ref(plan.directive_branch) if existing else remote_ref(plan.base_branch)
    await repo.run("checkout", "-B", plan.directive_branch, start_ref)
    start = await repo.head()
    await reporter.event(
        EventType.GIT,
        {
            "action": "checkout",
            "branch": plan.directive_branch,
            "from": plan.directive_branch if existing else plan.base_branch,
            "message": ("updating " if existing else "creating ") + plan.directive_branch,
        },
    )

    sinks, contained = await sink_branches(repo, plan.merge)
    for branch, container in contained.items():
        await reporter.event(
            EventType.GIT,
            {"action": "merge", "branch": branch, "message": f"{branch} is contained in {container}; merged with it"},
        )
    summary = await merge_branches(repo, sinks, plan.directive_branch, reporter, resolver_for(dest))
    head = await repo.head()
    if head != existing:
        await repo.run("push", "origin", f"HEAD:refs/heads/{plan.directive_branch}")
        await reporter.event(
            EventType.GIT, {"action": "push", "branch": plan.directive_branch, "commit": head, "message": "pushed"}
        )
    changed = await repo.changed_files(start, head)

    parts = [f"merged {len(summary.merged)} branch(es)"]
    if summary.already_merged:
        parts.append(f"{len(summary.already_merged)} already merged")
    if contained:
        parts.append(f"{len(contained)} contained in another step branch")
    pr_url: str | None = None
    if plan.open_pull_request:
        host = host_factory(spec.workspace.repo_url)
        info = await host.open_or_update(plan.directive_branch, plan.base_branch, plan.title, plan.body, plan.draft)
        pr_url = info.url
        parts.append(("opened " if info.created else "updated ") + f"pull request {info.url}")
        await reporter.event(
            EventType.PROGRESS,
            {"message": parts[-1], "pullRequest": info.url, "number": info.number, "created": info.created},
        )
        try:
            await reporter.submit_pull_request(info.url, plan.directive_branch)
        except ApiError as exc:  # the URL also travels in the result
            log.warning("could not report the pull request: %s", exc)
    return TaskResult(
        outcome=Outcome.SUCCEEDED,
        branch=plan.directive_branch,
        commit=head,
        changed_files=len(changed),
        message="; ".join(parts),
        pull_request_url=pr_url,
    )


async def sink_branches(repo: Git, branches: list[str]) -> tuple[list[str], dict[str, str]]:
    """(branches to merge, in order; {branch: a branch containing it}) for `branches`.

    A branch already in HEAD stays in the list (merging it is a no-op, reported as such).
    Of the others, one whose tip is an ancestor of another's is left out; of two at the
    same commit, the later in the order is kept.
    """
    tips = {b: await require_remote_branch(repo, b, "branch to merge") for b in dict.fromkeys(branches)}
    head = await repo.head()
    pending = [b for b in tips if not await repo.is_ancestor(tips[b], head)]
    contained: dict[str, str] = {}
    for i, branch in enumerate(pending):
        for j, other in enumerate(pending):
            if i == j or other in contained:
                continue
            if tips[branch] == tips[other] and j < i:
                continue  # the same commit: keep the later one
            if await repo.is_ancestor(tips[branch], tips[other]):
                contained[branch] = other
                break
    return [b for b in tips if b not in contained], contained
