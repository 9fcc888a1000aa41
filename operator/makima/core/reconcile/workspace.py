"""The three kinds of task decide() starts, each with its git workspace and prompt, built here once.

* planning: read-only, from the directive's pull-request branch if there is one;
* a step: from its first dependency's branch with the others merged in (the prompt names the
  same branches), or, without dependencies, from the pull-request branch, else the base;
* completion: every step branch merged, in topological order, into the directive branch.
"""

from __future__ import annotations

from collections.abc import Mapping

from makima.core import naming, prompts, usage
from makima.core.protocol import CompletionPlan, WorkspacePlan
from makima.core.reconcile.actions import CreatePlanningTask, DispatchStep, Route, StartCompletion
from makima.core.reconcile.facts import Facts
from makima.core.reconcile.steps import StepState


def _workspace(facts: Facts, start_from: str | None, merge: list[str], branch: str | None) -> WorkspacePlan:
    repository = facts.spec.repository
    return WorkspacePlan(
        repo_url=repository.url,
        base_branch=repository.base_branch,
        start_from=start_from,
        merge=merge,
        branch=branch,
    )


def planning_task(facts: Facts, generation: int, attempt: int, route: Route) -> CreatePlanningTask:
    spec = facts.spec
    existing = [
        prompts.PromptStep(
            name=s.name,
            uid=s.uid,
            title=s.spec.title,
            phase=s.status.phase.value,
            generation=s.spec.generation,
            order_index=s.spec.order_index,
            depends_on=tuple(s.spec.depends_on),
            branch=s.status.branch,
            description=s.spec.description,
        )
        for s in (facts.by_name[name] for name in facts.order)
    ]
    prompt = prompts.planning_prompt(
        title=spec.title,
        goal=spec.goal,
        repo_url=spec.repository.url,
        base_branch=spec.repository.base_branch,
        generation=generation,
        existing=existing,
        pr_branch=facts.pr_branch,
    )
    return CreatePlanningTask(
        task_id=naming.planning_task_id(facts.directive.metadata.uid, generation, attempt),
        generation=generation,
        attempt=attempt,
        goal_hash=facts.goal_hash,
        prompt=prompt,
        title=f"{'Re-plan' if generation > 1 else 'Plan'}: {spec.title}",
        workspace=_workspace(facts, start_from=facts.pr_branch, merge=[], branch=None),
        route=route,
        deadline_at=facts.now + facts.timeout,
    )


def step_task(
    facts: Facts, step: StepState, steps: Mapping[str, StepState], attempt: int, route: Route
) -> DispatchStep:
    spec, view = facts.spec, step.view
    deps = [steps[name] for name in view.spec.depends_on if name in steps]
    upstream = tuple(prompts.MergedStep(d.name, d.view.spec.title, d.git_branch) for d in deps)
    start = upstream[0] if upstream else None
    workspace = _workspace(
        facts,
        start_from=start.branch if start is not None else facts.pr_branch,
        merge=[d.branch for d in upstream[1:]],
        branch=naming.step_branch(view.name, view.uid),
    )
    prompt = prompts.step_prompt(
        directive_title=spec.title,
        goal=spec.goal,
        name=view.name,
        title=view.spec.title,
        description=view.spec.description,
        task_plan=view.spec.task_plan,
        workspace=prompts.StepWorkspace(
            base_branch=spec.repository.base_branch,
            start_step=start,
            merged=upstream[1:],
            pr_branch=facts.pr_branch,
        ),
        attempt=attempt,
    )
    return DispatchStep(
        name=view.name,
        uid=view.uid,
        attempt=attempt,
        task_id=naming.step_task_id(view.uid, attempt),
        route=route,
        workspace=workspace,
        prompt=prompt,
        deadline_at=facts.now + facts.timeout,
        title=f"{spec.title}: {view.spec.title}",
    )


def completion_task(
    facts: Facts, steps: Mapping[str, StepState], generation: int, attempt: int, route: Route
) -> StartCompletion:
    spec, meta = facts.spec, facts.directive.metadata
    branch = naming.directive_branch(meta.name, meta.uid)
    merge = [steps[name].git_branch for name in facts.order]
    body = prompts.pull_request_body(
        goal=spec.goal, steps=[(name, steps[name].view.spec.title) for name in facts.order]
    )
    spent = usage.pull_request_section(facts.tasks)
    if spent:  # what the agents used so far goes into the pull request body
        body = "\n\n".join(part for part in (body.rstrip(), spent) if part)
    return StartCompletion(
        task_id=naming.completion_task_id(meta.uid, generation, attempt),
        generation=generation,
        attempt=attempt,
        plan=CompletionPlan(
            directive_branch=branch,
            base_branch=spec.repository.base_branch,
            merge=merge,
            title=spec.title,
            body=body,
            draft=spec.pull_request.draft,
            open_pull_request=spec.pull_request.enabled,
        ),
        workspace=_workspace(facts, start_from=None, merge=merge, branch=branch),
        route=route,
        deadline_at=facts.now + facts.timeout,
    )
