"""The `makima` command: wires each area's sub-commands together; no logic here."""

from __future__ import annotations

import typer

from .sandbox.cli import app as sandbox_app
from .store.cli import app as db_app

app = typer.Typer(no_args_is_help=True, help="makima: turn a written goal into a merged pull request.")
app.add_typer(sandbox_app, name="sandbox", help="Local Kubernetes API stand-in (a test double).")
app.add_typer(db_app, name="db", help="Task store (PostgreSQL) administration.")


@app.command()
def crds() -> None:
    """Print the CustomResourceDefinitions generated from the models."""
    from .crds import render_all

    typer.echo(render_all(), nl=False)


def main() -> None:
    app()
