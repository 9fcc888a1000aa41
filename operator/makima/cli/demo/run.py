"""One demo run: start what is needed, apply the example, watch it, end with the pull request."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.text import Text

from makima.cli.demo import cluster, origin, summary
from makima.cli.demo.errors import DemoError, Interrupted
from makima.cli.demo.logfile import logs_to_file
from makima.cli.demo.options import DemoOptions, DemoResult
from makima.cli.demo.stack import LocalStack, StackError, local_stack
from makima.cli.demo.watch import watch
from makima.cli.views import step_name
from makima.control.kube import UserKube

# The demo's operator retries a failed step sooner than a production one would.
RETRY_BASE_SECONDS, RETRY_MAX_SECONDS = 1.0, 10.0


@contextlib.contextmanager
def interrupts() -> Iterator[asyncio.Event]:
    """An event set by SIGINT/SIGTERM while inside.

    kopf installs its own SIGINT handler (it would stop the operator and leave the demo
    puzzled); ours, installed after it, lets the demo stop everything in order instead.
    """
    event = asyncio.Event()
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, event.set)
            installed.append(sig)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread
            pass
    try:
        yield event
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


class Stages:
    """One line per start-up stage, with its duration."""

    def __init__(self, console: Console) -> None:
        self.console = console

    @contextlib.contextmanager
    def stage(self, what: str) -> Iterator[None]:
        started = time.monotonic()
        yield
        took = time.monotonic() - started
        self.console.print(Text.assemble(("  ✓ ", "green"), what, (f"  {took:.1f} s", "dim")))


def load_example(path: Path, repo_url: str) -> dict[str, Any]:
    if not path.is_file():
        raise DemoError(f"the example directive {path} is missing (run the demo from a clone: `make demo`)")
    doc: dict[str, Any] = copy.deepcopy(yaml.safe_load(path.read_text()))
    doc["spec"]["repository"]["url"] = repo_url
    return doc


async def run_demo(opts: DemoOptions, console: Console | None = None) -> DemoResult:
    """The quickstart; returns the exit code with what was observed (tests look at it)."""
    console = console or Console()
    log_path = opts.state_dir / "operator.log"
    console.rule("[bold]makima demo")
    try:
        if opts.cluster:
            return await _on_cluster(opts, console)
        return await _locally(opts, console, log_path)
    except Interrupted as exc:
        console.print(f"makima demo: {exc}; stopped what it started", highlight=False)
        return DemoResult(130)
    except (DemoError, StackError) as exc:
        console.print(f"[bold red]makima demo:[/] {exc}", highlight=False)
        if not opts.cluster:
            console.print(f"operator log: {log_path}", highlight=False)
        return DemoResult(2)


def _live(opts: DemoOptions, console: Console) -> bool:
    return console.is_terminal if opts.live is None else opts.live


async def _on_cluster(opts: DemoOptions, console: Console) -> DemoResult:
    """`--cluster`: nothing is started; the example goes where KUBECONFIG points."""
    started = time.monotonic()
    if not opts.repo_url:
        raise DemoError(
            "--cluster needs --repo-url: a git repository the cluster's Jobs can reach and push to "
            "(the local bare repository of the sandbox demo is not visible from a cluster)"
        )
    body = load_example(opts.example, opts.repo_url)
    kubeconfig = os.environ.get("KUBECONFIG")
    try:
        kube = await asyncio.to_thread(cluster.connect, kubeconfig)
    except Exception as exc:  # the client raises several kinds; all mean "no usable config"
        raise DemoError(f"no usable kubeconfig (KUBECONFIG={kubeconfig or ''}): {exc}") from exc
    try:
        console.print(f"cluster {kube.host} (KUBECONFIG), namespace {opts.namespace}", highlight=False)
        try:
            await asyncio.to_thread(cluster.check_crds, kube)
        except DemoError:
            raise
        except Exception as exc:
            raise DemoError(f"cannot reach the cluster at {kube.host}: {exc}") from exc
        with interrupts() as interrupted:
            repo = origin.local_path(opts.repo_url)
            return await _apply_and_watch(opts, console, kube, body, repo, None, interrupted, started)
    finally:
        kube.close()


async def _locally(opts: DemoOptions, console: Console, log_path: Path) -> DemoResult:
    """The sandbox, PostgreSQL, the operator and a bare repository, all on this machine."""
    started = time.monotonic()
    example = yaml.safe_load(opts.example.read_text()) if opts.example.is_file() else None
    base = (example or {}).get("spec", {}).get("repository", {}).get("baseBranch", "main")
    opts.state_dir.mkdir(parents=True, exist_ok=True)
    console.print(f"state dir {opts.state_dir}; operator log {log_path}", highlight=False)
    stages = Stages(console)
    with logs_to_file(log_path):
        bare = opts.state_dir / "origin.git"
        with stages.stage(f"bare repository {bare} (seeded from {opts.seed})"):
            repo = await origin.create_origin(bare, opts.seed, base)
        body = load_example(opts.example, f"file://{repo}")
        async with local_stack(
            opts.state_dir,
            database_url=opts.database_url,
            stage=stages.stage,
            retry_base_seconds=RETRY_BASE_SECONDS,
            retry_max_seconds=RETRY_MAX_SECONDS,
        ) as stack:
            with interrupts() as interrupted:
                kube = await asyncio.to_thread(cluster.connect, str(stack.kubeconfig))
                try:
                    result = await _apply_and_watch(opts, console, kube, body, repo, stack, interrupted, started)
                finally:
                    kube.close()
                if result.exit_code != 0:
                    console.print(f"operator log: {log_path}", highlight=False)
                elif opts.keep:
                    lines = _keep_lines(opts, stack, body, result, _live(opts, console))
                    await _keep_running(console, lines, interrupted)
                return result


def _keep_lines(
    opts: DemoOptions, stack: LocalStack, body: dict[str, Any], result: DemoResult, tree_shown: bool
) -> list[str]:
    second = summary.write_second_example(body, opts.state_dir)
    steps = [step_name(s) for s in result.steps]
    step = "core" if "core" in steps else (steps[0] if steps else None)
    name = body["metadata"]["name"]
    return summary.keep_lines(stack, opts.namespace, name, tree_shown, second, step)


async def _keep_running(console: Console, lines: list[str], interrupted: asyncio.Event) -> None:
    console.rule("[bold]the sandbox and the operator keep running")
    console.print("In another shell:", highlight=False)
    for line in lines:
        console.print(f"  {line}", highlight=False)
    console.print("Press Ctrl-C to stop them.", highlight=False)
    await interrupted.wait()
    console.print("stopping…", highlight=False)


async def _apply_and_watch(
    opts: DemoOptions,
    console: Console,
    kube: UserKube,
    body: dict[str, Any],
    repo: Path | None,
    stack: LocalStack | None,
    interrupted: asyncio.Event,
    started: float,
) -> DemoResult:
    name = body["metadata"]["name"]
    live = _live(opts, console)
    if await asyncio.to_thread(cluster.replace_directive, kube, opts.namespace, body):
        console.print(f"deleted the earlier directive {opts.namespace}/{name} first", highlight=False)
    console.print(
        f"applied {opts.example.name}: {opts.namespace}/{name} on {body['spec']['repository']['url']}",
        highlight=False,
    )
    applied = time.monotonic()
    operator_task = stack.operator.task if stack is not None else None
    directive, steps, timed_out = await watch(
        kube, opts.namespace, name, opts.timeout, console, live, operator_task=operator_task, interrupted=interrupted
    )
    elapsed = time.monotonic() - applied
    phase = (directive.get("status") or {}).get("phase")
    if timed_out or phase != "Completed":
        why = (
            f"no Completed phase within {opts.timeout:g} s (--timeout)" if timed_out else f"the directive ended {phase}"
        )
        summary.print_failure(console, directive, steps, why)
        return DemoResult(1, directive, steps, repo, elapsed)
    await summary.print_pull_request(console, directive, repo)
    if not opts.keep:  # with --keep they come, ready to paste, under "keep running"
        kubeconfig = stack.kubeconfig if stack is not None else None
        console.rule("[bold]the same with kubectl")
        if kubeconfig is not None:
            console.print("[dim](the sandbox stops when the demo ends: run `makima demo --keep` to use these)[/]")
        for line in summary.kubectl_lines(kubeconfig, opts.namespace, name, tree_shown=live):
            console.print(f"  {line}", highlight=False)
    total = time.monotonic() - started
    console.print(
        f"\n[bold green]done:[/] {name} Completed in {elapsed:.1f} s after apply, {total:.1f} s in all.",
        highlight=False,
    )
    return DemoResult(0, directive, steps, repo, elapsed)
