"""`makima demo`: the typer command. The run itself is imported when the command runs, so that
`makima --help` does not load the operator, the Kubernetes client or the test doubles."""

from __future__ import annotations

import asyncio
from pathlib import Path

import typer
from rich.console import Console

from makima.cli.demo.options import DEFAULT_EXAMPLE, DEFAULT_SEED, DEFAULT_STATE_DIR, DEFAULT_TIMEOUT, DemoOptions


def demo(
    state_dir: Path = typer.Option(
        DEFAULT_STATE_DIR, help="Where the demo keeps its PostgreSQL, repository, kubeconfig and operator log."
    ),
    timeout: float = typer.Option(
        DEFAULT_TIMEOUT, help="Seconds the directive has to reach Completed after it is applied."
    ),
    keep: bool = typer.Option(False, "--keep", help="Leave the sandbox and the operator running until Ctrl-C."),
    cluster: bool = typer.Option(
        False, "--cluster", help="Use the cluster KUBECONFIG points at (chart installed); start nothing locally."
    ),
    repo_url: str | None = typer.Option(
        None,
        help="With --cluster (required there): a git repository the cluster's Jobs can reach and push to "
        "(https/ssh; give spec.repository.credentialsSecret in the example for a private one).",
    ),
    database_url: str | None = typer.Option(
        None, help="Use this PostgreSQL DSN instead of the demo's embedded server (tests pass theirs)."
    ),
    namespace: str = typer.Option("default", "--namespace", "-n", help="Namespace of the directive."),
    example: Path = typer.Option(DEFAULT_EXAMPLE, help="The directive to apply."),
    seed: Path = typer.Option(DEFAULT_SEED, help="The project the local bare repository starts with."),
    live: bool | None = typer.Option(None, "--live/--no-live", help="Live step tree (default: on a terminal)."),
) -> None:
    """Run the example directive end to end on a local sandbox cluster (or --cluster)."""
    from makima.cli.demo.run import run_demo

    opts = DemoOptions(
        state_dir=state_dir,
        timeout=timeout,
        keep=keep,
        cluster=cluster,
        repo_url=repo_url,
        database_url=database_url,
        namespace=namespace,
        example=example,
        seed=seed,
        live=live,
    )
    console = Console()
    if not console.is_terminal:  # CI logs, pipes: no hard wrapping at 80 columns
        console = Console(soft_wrap=True, width=100)
    try:
        result = asyncio.run(run_demo(opts, console))
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    raise typer.Exit(result.exit_code)
