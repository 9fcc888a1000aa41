"""The text an agent reads: planning, step and conflict-resolution prompts.

Pure string building, no I/O. What these prompts promise must match what the code does:

* the runner prepares the git workspace (start branch, merges of dependency branches),
  commits and pushes the step's branch, and opens the pull request — the agent never
  pushes, merges branches or opens pull requests itself;
* a step with dependencies starts from its first dependency's branch with the other
  dependencies' branches merged in; a step without dependencies starts from the
  directive's pull-request branch when one exists, else from the base branch;
* during a merge conflict the agent edits files only; the runner checks that no conflict
  markers remain and commits the merge.

Prompts are snapshot-tested (tests/unit/snapshots/); change them deliberately.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

SUBMIT_COMMAND = "makima directive batch-add-steps --json"
NO_NEW_STEPS_COMMAND = "makima directive no-new-steps"


@dataclass(frozen=True)
class PromptStep:
    """An existing step as the planner sees it on a re-plan."""

    name: str
    uid: str
    title: str
    phase: str
    generation: int
    order_index: int
    depends_on: tuple[str, ...] = ()
    branch: str | None = None
    description: str = ""


@dataclass(frozen=True)
class MergedStep:
    """A dependency whose branch is part of a step's workspace."""

    name: str
    title: str
    branch: str


@dataclass(frozen=True)
class StepWorkspace:
    """Where a step's workspace comes from, in words the agent can check."""

    base_branch: str
    start_step: MergedStep | None = None  # first dependency: the workspace continues its branch
    merged: tuple[MergedStep, ...] = ()  # other dependencies, merged in this order
    pr_branch: str | None = None  # directive's pull-request branch (used when no dependencies)
    extra: tuple[str, ...] = ()  # further lines about the workspace, if any


def _indent(text: str, prefix: str = "    ") -> str:
    text = text.strip()
    if not text:
        return prefix + "(none)"
    return "\n".join(prefix + line if line else prefix.rstrip() for line in text.splitlines())


# ---- planning -----------------------------------------------------------------------------------


def planning_prompt(
    *,
    title: str,
    goal: str,
    repo_url: str,
    base_branch: str,
    generation: int,
    existing: Sequence[PromptStep] = (),
    pr_branch: str | None = None,
) -> str:
    """The planner's instructions: explore, decompose the goal, submit a DAG of steps by name."""
    out: list[str] = []
    out.append(f'You are planning the work for the directive "{title}".')
    out.append("")
    out.append("GOAL")
    out.append(_indent(goal))
    out.append("")
    out.append(f"REPOSITORY: {repo_url} (base branch: {base_branch})")
    if pr_branch:
        out.append(f"PULL-REQUEST BRANCH: {pr_branch} (holds the merged work of earlier plans)")
    out.append(f"PLAN GENERATION: {generation}")
    out.append("")
    if existing:
        out += _replan_lines(existing)
    out += _job_lines(base_branch)
    return "\n".join(out) + "\n"


def _replan_lines(existing: Sequence[PromptStep]) -> list[str]:
    """On a re-plan: the steps that exist already, and what the planner may do about them."""
    out: list[str] = []
    out.append("THIS IS A RE-PLAN. The goal changed after earlier plans were made. These steps already")
    out.append("exist; they are kept as they are (succeeded steps are never redone, existing steps")
    out.append("cannot be edited or renamed). Add only the NEW steps needed to reach the goal as it")
    out.append("reads now. New steps may depend on existing steps by name.")
    out.append("")
    out.append("EXISTING STEPS")
    for step in existing:
        deps = ", ".join(step.depends_on) if step.depends_on else "-"
        where = f"generation {step.generation}, orderIndex {step.order_index}"
        out.append(f"- {step.name} [{step.phase}] {where}, dependsOn: {deps}")
        out.append(f"    id: {step.uid}")
        out.append(f"    title: {step.title}")
        if step.branch:
            out.append(f"    branch: {step.branch}")
        if step.description.strip():
            out.append(_indent(step.description, "    | "))
    out.append("")
    out.append("If the existing steps already reach the goal as it reads now, add nothing: say so with")
    out.append(f"   {NO_NEW_STEPS_COMMAND}")
    out.append("and stop (the pull request is then updated with the new goal).")
    out.append("")
    out.append("A new step that builds on the result of an existing step must list it in dependsOn;")
    out.append("otherwise it starts from the pull-request branch (if any) or the base branch, and sees")
    out.append("only work that was already merged there.")
    out.append("")
    return out


def _job_lines(base_branch: str) -> list[str]:
    """What the planner does, the fields of a step, what dependsOn means, the rules."""
    out: list[str] = []
    out.append("YOUR JOB")
    out.append("1. Explore the repository (read-only) to understand the code you will change.")
    out.append("2. Break the goal into concrete steps. Each step is done by one coding agent in its")
    out.append("   own git branch, without your context: make every step self-contained.")
    out.append("3. Submit all new steps in ONE command (it validates the whole batch; nothing is")
    out.append("   created if it reports a problem — fix the batch and submit again):")
    out.append("")
    out.append(
        f'   {SUBMIT_COMMAND} \'[{{"name":"add-parser","title":"Add the config parser",'
        '"description":"...","taskPlan":"...","dependsOn":[],"orderIndex":0}]\''
    )
    out.append("")
    out.append("STEP FIELDS")
    out.append("- name: unique id of the step, lower-case letters, digits and '-' (max 63), e.g. add-parser.")
    out.append("  Other steps refer to it by this name.")
    out.append("- title: one line saying what the step achieves.")
    out.append("- description: what to do and how to tell it is done (acceptance criteria).")
    out.append("- taskPlan: full instructions for the agent: files, functions, patterns to follow, tests to")
    out.append("  add or run.")
    out.append("- dependsOn: names of steps (in this batch or existing) whose result this step needs.")
    out.append("- orderIndex: phase number (0, 1, 2, ...). A step starts only after every step of the same")
    out.append("  plan generation with a lower orderIndex has succeeded. Steps with the same orderIndex can")
    out.append("  run in parallel. A dependency must not have a higher orderIndex than the step itself.")
    out.append("")
    out.append("WHAT dependsOn MEANS FOR THE WORKSPACE")
    out.append("- A step with dependencies starts from the branch of its FIRST dependency; the branches of")
    out.append("  its other dependencies are merged in before the agent starts. So it sees exactly the")
    out.append("  work of the steps it depends on (and what they depended on).")
    out.append("- A step without dependencies starts from the pull-request branch if one exists, else from")
    out.append(f"  the base branch ({base_branch}). It does NOT see the work of other steps of this plan.")
    out.append("- Therefore: if step B changes or uses what step A creates, B must list A in dependsOn.")
    out.append("  Put the dependency whose work B continues most directly first.")
    out.append("- Steps that touch different files and do not need each other's work can run in parallel")
    out.append("  without dependencies between them; when all steps have succeeded every step branch is")
    out.append("  merged into one pull request.")
    out.append("")
    out.append("RULES")
    out.append("- Do not change files, commit, push, merge branches or open pull requests: planning is")
    out.append("  read-only. The system runs the steps and does all git work.")
    out.append("- Prefer a few substantial steps over many tiny ones; no step for 'open a PR' or 'merge'.")
    out.append("- Your work is done when the submit command has accepted the batch.")
    return out


# ---- step -----------------------------------------------------------------------------------------


def step_prompt(
    *,
    directive_title: str,
    goal: str,
    name: str,
    title: str,
    description: str,
    task_plan: str,
    workspace: StepWorkspace,
    attempt: int = 1,
) -> str:
    """The instructions for the agent that executes one step."""
    out: list[str] = []
    out.append(f'You are carrying out one step of the directive "{directive_title}".')
    out.append("")
    out.append(f"STEP: {name} — {title}")
    if attempt > 1:
        out.append(f"(attempt {attempt}: an earlier attempt did not finish; start from the workspace as it is)")
    out.append("")
    out.append("OVERALL GOAL (for context; do only this step)")
    out.append(_indent(goal))
    out.append("")
    out.append("DESCRIPTION")
    out.append(_indent(description))
    out.append("")
    out.append("INSTRUCTIONS")
    out.append(_indent(task_plan or "Carry out the step as described above."))
    out.append("")
    out.append("YOUR WORKSPACE")
    if workspace.start_step is not None:
        start = workspace.start_step
        out.append(f"- It continues from the branch of step '{start.name}' ({start.title}): {start.branch}.")
        for merged in workspace.merged:
            out.append(f"- The branch of step '{merged.name}' ({merged.title}) has been merged in: {merged.branch}.")
        out.append("  The work of these steps is already in your files; build on it, do not redo it.")
    elif workspace.pr_branch:
        out.append(f"- It starts from the directive's pull-request branch {workspace.pr_branch},")
        out.append("  which holds the merged work of the earlier plans.")
    else:
        out.append(f"- It starts from the base branch {workspace.base_branch}.")
    out.extend(f"- {line}" for line in workspace.extra)
    out.append("")
    out.append("RULES")
    out.append("- Edit files and run the project's tests as needed. Leave the work in the working tree:")
    out.append("  the system commits it and pushes this step's branch when you finish.")
    out.append("- Do not push, merge branches, rebase, or open pull requests.")
    out.append("- Stay within this step; other steps handle the rest of the goal.")
    out.append("- If you cannot complete the step, say clearly why and exit with a non-zero status.")
    return "\n".join(out) + "\n"


# ---- merge conflicts --------------------------------------------------------------------------------


def conflict_prompt(
    *,
    target: str,
    merging: str,
    files: Sequence[str],
    title: str = "",
    purpose: str = "",
    merging_intent: str = "",
    target_intent: str = "",
) -> str:
    """Ask the agent to resolve a merge the runner started; the runner commits the result.

    `target` is the branch being merged into, `merging` the branch merged in; `title` names
    the task (step or directive) for context; `purpose` says why the merge happens (e.g.
    "preparing the workspace of step 'd'"); the intents summarise what each side was for.
    """
    why = purpose or "preparing the workspace"
    out: list[str] = []
    out.append(f"A git merge stopped with conflicts while {why}.")
    if title.strip():
        out.append(f"Task: {title.strip()}")
    out.append("")
    out.append(f"Merging {merging} into {target}.")
    if target_intent.strip():
        out.append("")
        out.append(f"WHAT {target} IS FOR")
        out.append(_indent(target_intent))
    if merging_intent.strip():
        out.append("")
        out.append(f"WHAT {merging} IS FOR")
        out.append(_indent(merging_intent))
    out.append("")
    out.append("CONFLICTING FILES")
    out.extend(f"- {f}" for f in sorted(files))
    out.append("")
    out.append("WHAT TO DO")
    out.append("- Open each conflicting file and resolve every conflict region (<<<<<<<, =======, >>>>>>>).")
    out.append("- Keep the intent of BOTH sides: combine the changes; drop one side only where the")
    out.append("  other one already covers it.")
    out.append("- Remove every conflict marker. Make sure the result builds and its tests pass if you can.")
    out.append("- Do not commit, abort the merge, reset, switch branches or push (staging with `git add`")
    out.append("  is fine): the system checks that no conflict markers remain and commits the merge itself.")
    out.append("- If the two sides cannot be reconciled, explain why and exit with a non-zero status.")
    return "\n".join(out) + "\n"


# ---- pull request -------------------------------------------------------------------------------


def pull_request_body(*, goal: str, steps: Sequence[tuple[str, str]]) -> str:
    """The pull request's description: the goal and the steps (name, title) that built it."""
    out = ["## Goal", "", goal.strip(), "", "## Steps", ""]
    out.extend(f"- `{name}`: {title}" for name, title in steps)
    out.append("")
    out.append("_Opened by makima._")
    return "\n".join(out) + "\n"
