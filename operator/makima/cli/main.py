"""The `makima` command: wires each area's sub-commands together; no logic here."""

from __future__ import annotations

from pathlib import Path

import typer

from makima.cli.daemon import app as daemon_app
from makima.cli.dashboard.cli import register as register_dashboard
from makima.cli.db import app as db_app
from makima.cli.demo.command import demo as demo_command
from makima.cli.people import register as register_people_commands
from makima.cli.sandbox import app as sandbox_app
from makima.cli.task import agent_app, directive_app, task_app

app = typer.Typer(no_args_is_help=True, help="makima: turn a written goal into a merged pull request.")
app.add_typer(sandbox_app, name="sandbox", help="Local Kubernetes API stand-in (a test double).")
app.add_typer(db_app, name="db", help="Task store (PostgreSQL) administration.")
app.add_typer(daemon_app, name="daemon", help="Run a task daemon, or manage daemon tokens.")
app.add_typer(task_app, name="task", help="Run a task (inside a Job pod or a daemon).")
app.add_typer(agent_app, name="agent", help="Built-in agents (the scripted agent for tests and demos).")
app.add_typer(directive_app, name="directive", help="Task-side directive commands (planner, completion).")


@app.command()
def crds(
    out: Path | None = typer.Option(None, help="Write one file per CRD into this directory instead."),
    reference: bool = typer.Option(False, "--reference", help="Print the CRD reference (Markdown) instead."),
) -> None:
    """Print the CustomResourceDefinitions generated from the models."""
    from makima.core.crds import reference_markdown, render_all, write_all

    if reference:
        typer.echo(reference_markdown(), nl=False)
    elif out is None:
        typer.echo(render_all(), nl=False)
    else:
        for path in write_all(out):
            typer.echo(f"wrote {path}")


@app.command("operator")
def operator_(
    namespace: list[str] = typer.Option([], "--namespace", "-n", help="Namespace to watch (repeat); default all."),
    kubeconfig: str | None = typer.Option(None, envvar="KUBECONFIG", help="Kubeconfig; default in-cluster."),
    api_listen: str | None = typer.Option(None, help="host:port for the operator API (MAKIMA_API_LISTEN)."),
    poll_only: bool = typer.Option(False, help="Timer only, no event fast path (benchmark baseline)."),
    log_json: bool = typer.Option(False, help="Structured JSON logs."),
) -> None:
    """Run the operator: kopf controller, task API, daemon hub, metrics."""
    import asyncio

    from pydantic import ValidationError

    from makima.cli.logs import setup_logging
    from makima.control.config import OperatorSettings
    from makima.control.leadership import LeadershipLost
    from makima.control.runtime import run_operator

    overrides: dict[str, object] = {}
    if namespace:
        overrides["namespaces"] = namespace
    if api_listen:
        overrides["api_listen"] = api_listen
    if poll_only:
        overrides["poll_only"] = True
    if log_json:
        overrides["log_json"] = True
    try:
        settings = OperatorSettings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:  # checked at start, not when the first reader is refused
        for err in exc.errors(include_input=False, include_url=False):
            field = "MAKIMA_" + "_".join(str(p) for p in err["loc"]).upper()
            typer.echo(f"error: invalid setting {field}: {err['msg']}", err=True)
        raise typer.Exit(2) from None
    setup_logging(json_logs=settings.log_json)
    try:
        asyncio.run(run_operator(settings, kubeconfig=kubeconfig))
    except LeadershipLost as exc:  # another replica may be active now: start again as a standby
        typer.echo(f"error: {exc}; exiting so that this replica starts again as a standby", err=True)
        raise typer.Exit(1) from None


app.command("demo")(demo_command)
register_people_commands(app)
register_dashboard(app)


def main() -> None:
    app()
