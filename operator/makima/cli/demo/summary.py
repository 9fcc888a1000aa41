"""How the demo ends: the pull request (or why there is none), and the commands to look further."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console

from makima.cli.demo import origin
from makima.cli.demo.stack import LocalStack
from makima.cli.views import step_name
from makima.core.naming import LABEL_DIRECTIVE

SECOND_EXAMPLE_FILE = "second-directive.yaml"


async def print_pull_request(console: Console, directive: dict[str, Any], repo: Path | None) -> None:
    """The pull request from the directive's status; with the repository on this machine, also
    its record, commits and diffstat, read from there."""
    spec, status = directive["spec"], directive.get("status") or {}
    pr = status.get("pullRequest") or {}
    base = (spec.get("repository") or {}).get("baseBranch", "main")
    branch = pr.get("branch")
    console.rule("[bold green]pull request")
    record = await origin.pull_request(repo, branch) if repo is not None and branch else None
    if record is not None:
        title, state = record.get("title", ""), record.get("state", "open")
        console.print(f"[bold]#{record['number']}[/] {title}  [dim]({state})[/]")
    console.print(f"  url     {pr.get('url') or '(none)'}", highlight=False)
    console.print(f"  branch  {branch} → {base}", highlight=False)
    if repo is None or not branch:
        return
    if record is not None:
        meta = origin.meta_ref(int(record["number"]))
        console.print(f"  record  git --git-dir={repo} cat-file blob {meta}", highlight=False)
    console.print(f"\n[bold]commits[/] [dim](git log --oneline {base}..{branch})[/]")
    console.print(await origin.commits(repo, base, branch), highlight=False)
    console.print(f"\n[bold]diffstat[/] [dim](git diff --stat {base}...{branch})[/]")
    console.print(await origin.diffstat(repo, base, branch), highlight=False)


def kubectl_lines(kubeconfig: Path | None, namespace: str, name: str, tree_shown: bool = True) -> list[str]:
    ns = "" if namespace == "default" else f" -n {namespace}"
    lines = [f"export KUBECONFIG={kubeconfig}"] if kubeconfig is not None else []
    return [
        *lines,
        f"kubectl get directives{ns}",
        f"kubectl get dstep{ns} -l {LABEL_DIRECTIVE}={name}",
        f"kubectl describe directive{ns} {name}",
        f"makima get directive{ns} {name}    # the step tree" + (", as above" if tree_shown else ""),
    ]


def keep_lines(
    stack: LocalStack,
    namespace: str,
    name: str,
    tree_shown: bool,
    second: Path | None = None,
    step: str | None = None,
) -> list[str]:
    """What a person pastes into another shell while `--keep` runs: every line works as is."""
    ns = "" if namespace == "default" else f" -n {namespace}"
    lines = kubectl_lines(stack.kubeconfig, namespace, name, tree_shown)
    lines.insert(1, f"export MAKIMA_API_URL={stack.api_url}")
    lines.insert(2, f"export MAKIMA_READER_TOKEN=$(cat {stack.reader_token_file})")
    lines.append(f"makima logs{ns} {name}" + (f" --step {step}" if step else "") + "    # a task's events")
    lines.append(f"makima dashboard{ns}    # the DAG live in a browser, on http://127.0.0.1:8765")
    if second is not None:
        lines.append(f"kubectl apply -f {second}    # a second directive, on the same local repository")
    return lines


def write_second_example(body: dict[str, Any], state: Path) -> Path:
    """The applied example under another name, ready to apply (its URL is the local repository)."""
    second = copy.deepcopy(body)
    second["metadata"] = {"name": f"{body['metadata']['name']}-2"}
    path = state / SECOND_EXAMPLE_FILE
    path.write_text(
        "# Written by `makima demo --keep`: the example with the demo's repository URL filled in.\n"
        + yaml.safe_dump(second, sort_keys=False)
    )
    return path


def print_failure(console: Console, directive: dict[str, Any], steps: list[dict[str, Any]], reason: str) -> None:
    status = directive.get("status") or {}
    console.rule("[bold red]the directive did not complete")
    console.print(reason, highlight=False)
    console.print(f"phase: {status.get('phase', '(none)')}  progress: {status.get('progress', '-')}", highlight=False)
    if status.get("message"):
        console.print(f"message: {status['message']}", highlight=False)
    for cond in status.get("conditions") or []:
        console.print(
            f"  {cond.get('type')}={cond.get('status')} {cond.get('reason', '')}: {cond.get('message', '')}",
            highlight=False,
        )
    for step in steps:
        step_status = step.get("status") or {}
        phase, attempts = step_status.get("phase", "Pending"), step_status.get("attempts", 0)
        line = f"  step {step_name(step)}: {phase} (attempts {attempts})"
        console.print(line + (f" — {step_status['message']}" if step_status.get("message") else ""), highlight=False)
